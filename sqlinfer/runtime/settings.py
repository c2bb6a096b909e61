"""The Spark settings of a project's session: the embedded default (``local[*]``, Hive metastore
and warehouse under the project's ``target/``), what sqlinfer needs of any session, the user's
``spark:`` / ``--conf`` on top, and where Spark's own log goes. Pure functions: nothing here
starts Spark."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlinfer.worker.device import usable_cores

# Rows per Arrow batch sent to a Python worker. Small batches keep worker memory flat; the
# model's own batch size is independent of this (see docs/performance.md).
DEFAULT_ARROW_BATCH = 16
# PySpark's worker daemon with torch imported before it forks (sqlinfer/runtime/daemon.py).
DAEMON_MODULE = "sqlinfer.runtime.daemon"
# Start the Python workers and open the metastore in the background as soon as the session exists
# (see warm_up_workers and warm_up_catalog).
WARM_UP_WORKERS = "spark.sqlinfer.warmUpWorkers"
# For a command that answers and exits (`sqlinfer compile`, a `sqlinfer sql` query that calls no
# model): no web UI to start, and no Python workers warmed up to compete for the cores with the
# query, then be killed at exit. A project's `spark:` section or --conf overrides them.
SHORT_COMMAND = {"spark.ui.enabled": "false", WARM_UP_WORKERS: "false"}
# Up to this many cores the local JVM collects garbage with the serial collector, above with the
# parallel one (see local_jvm_options).
SERIAL_GC_CORES = 2
RESOURCES = Path(__file__).resolve().parent.parent / "resources"
LOG_CONFIG = RESOURCES / "log4j2.properties"
# sqlinfer's Spark SQL extensions (built from resources/*.java by resources/build_jar.sh): the SQL
# guard of `sqlinfer serve`, and PlainFloats, which every session gets: Parquet writes keep no
# dictionary for float columns (model outputs), which never pays for them and cost the bench's warm
# query a fifth of the JVM's CPU (resources/PlainFloats.java).
SPARK_JAR = RESOURCES / "sqlinfer-spark.jar"
PLAIN_FLOATS = "sqlinfer.writes.PlainFloats"
EXTENSIONS = "spark.sql.extensions"
CLASS_PATH = "spark.driver.extraClassPath"
# Where the JVM's stdout and stderr go, under the project's target/: Spark's log lines (LOG_CONFIG writes
# them to stderr), the Python workers' output (the JVM copies it to its stderr) and the Java
# launcher's own messages. The terminal keeps sqlinfer's own lines only (docs/errors.md).
SPARK_LOG = Path("logs") / "spark.log"
# Where the Hive client's session folders go, under the project's target/ instead of /tmp. Hive
# makes a ``<session id>_resources`` folder for every session it starts and deletes it only when
# the session is closed, which the metastore client's session never is: one empty folder left in
# /tmp by every command that opened the metastore (hundreds a day on a busy machine). Here they
# are the project's, and the next session clears them (sqlinfer.runtime.metastore).
HIVE_SCRATCH = Path("tmp") / "hive"


def spark_log_path(target: Path) -> Path:
    """The Spark log of a project whose generated files live in ``target``."""
    return target.resolve() / SPARK_LOG


def session_conf(target: Path, master: str | None, conf: Mapping[str, Any]) -> dict[str, str]:
    """Spark settings for a project whose generated files live in ``target``; ``conf`` wins."""
    target = target.resolve()
    local = is_local(str(master or conf.get("spark.master") or "local"))
    base_java_options = f"-Dderby.system.home={target} -Dlog4j2.configurationFile={LOG_CONFIG}"
    if local:
        base_java_options += " " + local_jvm_options(str(conf.get("spark.driver.extraJavaOptions", "")))
    settings: dict[str, Any] = {
        "spark.master": master or "local[*]",
        "spark.app.name": "sqlinfer",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(target / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={target / 'metastore_db'};create=true",
        # Hadoop's configuration fills in ${hive.session.id}: one folder per Hive session, as Hive's default.
        "spark.hadoop.hive.downloaded.resources.dir": str(target / HIVE_SCRATCH / "${hive.session.id}_resources"),
        "spark.driver.extraJavaOptions": base_java_options,
        # Python workers must run this interpreter (or the one PYSPARK_PYTHON names), or they will
        # not find its packages.
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON") or sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": DEFAULT_ARROW_BATCH,
        # JDBC clients of `sqlinfer serve` see this session's UDFs only in single-session mode.
        "spark.sql.hive.thriftServer.singleSession": "true",
        "spark.ui.showConsoleProgress": "false",
        # The JVM talks to its Python workers over Unix domain sockets (Spark 4.1+; TCP on
        # loopback otherwise): each task's short request-and-reply exchanges then wait on no TCP
        # acknowledgement timer. One-row tasks: about 9 ms each instead of 53 (bench/floor.py).
        "spark.python.unix.domain.socket.enabled": "true",
        WARM_UP_WORKERS: "true",
    }
    if local:
        # Python workers fork from a daemon that has already imported torch (sqlinfer/runtime/daemon.py):
        # each worker starts seconds sooner. Only where the workers are known to import sqlinfer;
        # a cluster opts in with this setting once its executors have sqlinfer (docs/cluster.md).
        settings["spark.python.daemon.module"] = DAEMON_MODULE
    # Java options add up: the user's go after sqlinfer's (derby.system.home, the log4j config).
    extra_java = conf.get("spark.driver.extraJavaOptions")
    settings.update(conf)
    if extra_java:
        settings["spark.driver.extraJavaOptions"] = f"{base_java_options} {extra_java}"
    # The user's extensions and class path are kept, ours added. Where the jar is not on the driver
    # (a cluster's driver started elsewhere), Spark warns and the session goes on without the rule.
    settings[EXTENSIONS] = join_setting(str(conf.get(EXTENSIONS, "")), PLAIN_FLOATS, ",")
    settings[CLASS_PATH] = join_setting(str(conf.get(CLASS_PATH, "")), str(SPARK_JAR), os.pathsep)
    if master:
        settings["spark.master"] = master
    return {key: conf_text(value) for key, value in settings.items()}


def join_setting(existing: str, ours: str, separator: str) -> str:
    """A list-valued setting (extensions, a class path) with ``ours`` added once, at the end."""
    parts = [part for part in existing.split(separator) if part]
    return separator.join(parts if ours in parts else [*parts, ours])


def is_local(master: str) -> bool:
    """Whether the workers run on this machine with this Python (``local``, ``local[N]``,
    ``local-cluster[...]``), where the local-only speed-ups are valid."""
    return master.startswith("local")


def conf_text(value: Any) -> str:
    """A YAML value as Spark and Hive settings spell it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def local_jvm_options(user_options: str, cores: int | None = None) -> str:
    """JIT and GC settings for the embedded local JVM, which runs the tasks too, on a machine of
    ``cores`` cores (by default the cores this process may run on: its CPU affinity).

    In a model job the JVM's own work per row is small next to the Python workers', but in a
    fresh JVM the C2 compiler and G1 spent more CPU than that work itself: about 37 s of JVM CPU
    for a 1,000-image build, 16 s with C1 only and the parallel collector, which made the whole
    build 20% faster on 2 cores (docs/performance.md). On one or two cores the serial collector
    spends less again: the parallel collector's threads compete with the Python workers for the
    same cores (the bench's build, 5 alternating pairs on 2 cores: 9.4 s of JVM CPU against
    10.3 s, the build 0.4 s sooner). With more cores the parallel one keeps a busy SQL job's
    pauses short. The user's options come later and win (e.g. -XX:TieredStopAtLevel=4); a
    collector the user picks replaces ours.

    C1 alone gets a 48 MB code cache (240 MB with C2), which a long session fills (a `sqlinfer
    serve` under tests/functional/test_serve.py's load: "CodeCache is full. Compiler has been
    disabled", then method handles failed to link and Spark stopped its context), so the cache
    keeps the usual size: address space reserved, memory used only as code is compiled.

    The class metadata a session loads outside the class archive (Hive's, generated code) passes
    the JVM's first metaspace threshold (about 21 MB) while the metastore opens: a full,
    stop-the-world collection of 0.15 s, then, in the middle of a command's start. 64 MB is
    above what a build uses (about 27 MB), and memory is still committed only as it is used.
    """
    options = ["-XX:TieredStopAtLevel=1", "-XX:ReservedCodeCacheSize=240m", "-XX:MetaspaceSize=64m"]
    if not re.search(r"-XX:\+Use\w*GC\b", user_options):
        few_cores = (cores or usable_cores()) <= SERIAL_GC_CORES
        options.append("-XX:+UseSerialGC" if few_cores else "-XX:+UseParallelGC")
    return " ".join(options)
