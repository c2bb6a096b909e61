"""A project's Spark settings (pure functions, no Spark): sqlinfer's defaults, the user's settings on
top, the local JVM's options, and YAML values spelt as Spark spells them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sqlinfer.runtime.metastore import clear_hive_scratch
from sqlinfer.runtime.settings import (
    DAEMON_MODULE,
    DEFAULT_ARROW_BATCH,
    LOG_CONFIG,
    PLAIN_FLOATS,
    SPARK_JAR,
    WARM_UP_WORKERS,
    conf_text,
    local_jvm_options,
    session_conf,
    spark_log_path,
)
from sqlinfer.worker.device import usable_cores

C1 = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m -XX:MetaspaceSize=64m"
# The collector sqlinfer picks for the local JVM on this machine (serial on up to 2 cores).
LOCAL_JIT = f"{C1} -XX:+Use{'Serial' if usable_cores() <= 2 else 'Parallel'}GC"


def base_options(target: Path) -> str:
    return f"-Dderby.system.home={target} -Dlog4j2.configurationFile={LOG_CONFIG}"


def test_defaults(tmp_path: Path) -> None:
    target = tmp_path / "target"
    assert session_conf(target, None, {}) == {
        "spark.master": "local[*]",
        "spark.app.name": "sqlinfer",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": f"{target}/warehouse",
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={target}/metastore_db;create=true",
        "spark.hadoop.hive.downloaded.resources.dir": f"{target}/tmp/hive/${{hive.session.id}}_resources",
        "spark.driver.extraJavaOptions": f"{base_options(target)} {LOCAL_JIT}",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(DEFAULT_ARROW_BATCH),
        "spark.python.daemon.module": DAEMON_MODULE,
        "spark.sql.hive.thriftServer.singleSession": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.python.unix.domain.socket.enabled": "true",
        WARM_UP_WORKERS: "true",
        "spark.sql.extensions": PLAIN_FLOATS,
        "spark.driver.extraClassPath": str(SPARK_JAR),
    }


def test_sqlinfers_extension_joins_the_users(tmp_path: Path) -> None:
    """The user's extensions and class path are kept, sqlinfer's added once (also when the user
    names them already, as `sqlinfer serve`'s settings do)."""
    conf = session_conf(tmp_path, None, {"spark.sql.extensions": "com.example.Mine",
                                         "spark.driver.extraClassPath": "/opt/mine.jar"})
    assert conf["spark.sql.extensions"] == f"com.example.Mine,{PLAIN_FLOATS}"
    assert conf["spark.driver.extraClassPath"] == f"/opt/mine.jar:{SPARK_JAR}"
    again = session_conf(tmp_path, None, conf)
    assert (again["spark.sql.extensions"], again["spark.driver.extraClassPath"]) == (
        conf["spark.sql.extensions"], conf["spark.driver.extraClassPath"])


def test_the_log_config_and_daemon_module_exist() -> None:
    import importlib.util

    assert LOG_CONFIG.is_file()
    assert SPARK_JAR.is_file()
    assert importlib.util.find_spec(DAEMON_MODULE) is not None


def test_sparks_log_is_under_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert spark_log_path(Path("target")) == tmp_path / "target" / "logs" / "spark.log"


def test_relative_target_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conf = session_conf(Path("target"), None, {})
    assert conf["spark.sql.warehouse.dir"] == f"{tmp_path}/target/warehouse"


def test_user_settings_win(tmp_path: Path) -> None:
    conf = session_conf(tmp_path, None, {"spark.app.name": "mine", "spark.sql.execution.arrow.maxRecordsPerBatch": 64,
                                         "spark.executor.memory": "2g", "spark.sql.files.openCostInBytes": "4m"})
    assert (conf["spark.app.name"], conf["spark.sql.execution.arrow.maxRecordsPerBatch"],
            conf["spark.executor.memory"], conf["spark.sql.files.openCostInBytes"]) == ("mine", "64", "2g", "4m")


def test_master_argument_wins_over_conf(tmp_path: Path) -> None:
    assert session_conf(tmp_path, "local[2]", {"spark.master": "local[8]"})["spark.master"] == "local[2]"


def test_master_from_conf_without_argument(tmp_path: Path) -> None:
    assert session_conf(tmp_path, None, {"spark.master": "local[8]"})["spark.master"] == "local[8]"


@pytest.mark.parametrize(("value", "text"), [(True, "true"), (False, "false")])
def test_yaml_booleans_become_spark_booleans(tmp_path: Path, value: bool, text: str) -> None:
    conf = session_conf(tmp_path, None, {WARM_UP_WORKERS: value, "spark.sql.adaptive.enabled": value})
    assert (conf[WARM_UP_WORKERS], conf["spark.sql.adaptive.enabled"]) == (text, text)


@pytest.mark.parametrize("master", [None, "local", "local[2]", "local[*]"])
def test_a_local_jvm_gets_the_jit_and_gc_options(tmp_path: Path, master: str | None) -> None:
    options = session_conf(tmp_path, master, {})["spark.driver.extraJavaOptions"]
    assert options == f"{base_options(tmp_path)} {LOCAL_JIT}"


@pytest.mark.parametrize(("master", "conf"), [("spark://head:7077", {}), ("yarn", {}),
                                              (None, {"spark.master": "k8s://https://api:6443"})])
def test_a_cluster_driver_gets_only_sqlinfers_own_options(tmp_path: Path, master: str | None, conf: dict) -> None:
    assert session_conf(tmp_path, master, conf)["spark.driver.extraJavaOptions"] == base_options(tmp_path)


def test_users_java_options_come_after_sqlinfers(tmp_path: Path) -> None:
    conf = session_conf(tmp_path, "local[2]", {"spark.driver.extraJavaOptions": "-Dfoo=1 -XX:TieredStopAtLevel=4"})
    assert conf["spark.driver.extraJavaOptions"] == \
        f"{base_options(tmp_path)} {LOCAL_JIT} -Dfoo=1 -XX:TieredStopAtLevel=4"


def test_users_java_options_on_a_cluster(tmp_path: Path) -> None:
    conf = session_conf(tmp_path, "yarn", {"spark.driver.extraJavaOptions": "-Dfoo=1"})
    assert conf["spark.driver.extraJavaOptions"] == f"{base_options(tmp_path)} -Dfoo=1"


def test_a_collector_the_user_picks_replaces_ours(tmp_path: Path) -> None:
    conf = session_conf(tmp_path, None, {"spark.driver.extraJavaOptions": "-XX:+UseG1GC"})
    assert conf["spark.driver.extraJavaOptions"] == f"{base_options(tmp_path)} {C1} -XX:+UseG1GC"


@pytest.mark.parametrize(("user", "cores", "options"), [
    ("", 2, f"{C1} -XX:+UseSerialGC"),
    ("", 1, f"{C1} -XX:+UseSerialGC"),
    ("", 4, f"{C1} -XX:+UseParallelGC"),
    ("-Xmx4g", 16, f"{C1} -XX:+UseParallelGC"),
    ("-XX:+UseZGC -Xmx4g", 2, C1),
    ("-XX:+UseSerialGC", 16, C1),
    ("-XX:+UseParallelGC", 2, C1),
])
def test_local_jvm_options(user: str, cores: int, options: str) -> None:
    assert local_jvm_options(user, cores) == options


def test_the_collector_follows_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container or taskset that gives the JVM 2 of a machine's 16 cores: the serial collector,
    as on a 2-core machine (os.cpu_count() would say 16)."""
    from sqlinfer.worker import device

    monkeypatch.setattr(device.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda _pid: {4, 5}, raising=False)
    assert local_jvm_options("") == f"{C1} -XX:+UseSerialGC"
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    assert local_jvm_options("") == f"{C1} -XX:+UseParallelGC"


@pytest.mark.parametrize(("value", "text"), [
    (True, "true"), (False, "false"), (16, "16"), (0.5, "0.5"), ("2g", "2g"), ("True", "True"),
])
def test_conf_text(value: object, text: str) -> None:
    assert conf_text(value) == text


@pytest.mark.parametrize(("conf", "cleared"), [
    ({}, True),
    ({"spark.hadoop.hive.metastore.uris": "thrift://metastore:9083"}, False),
    ({"spark.hadoop.javax.jdo.option.ConnectionURL": "jdbc:postgresql://db/metastore"}, False),
])
def test_hive_session_folders_are_cleared_only_on_the_embedded_metastore(tmp_path: Path, conf: dict[str, str],
                                                                          cleared: bool) -> None:
    """Another metastore may have several processes on the project at once: their Hive session
    folders under target/ stay."""
    target = tmp_path / "target"
    settings = session_conf(target, None, conf)
    left = target / "tmp" / "hive" / "0b1c_resources"
    left.mkdir(parents=True)
    assert settings["spark.hadoop.hive.downloaded.resources.dir"] == f"{target}/tmp/hive/${{hive.session.id}}_resources"
    clear_hive_scratch(settings, target)
    assert left.exists() is not cleared
    assert (target / "tmp").exists()  # only the Hive folder goes
