"""The one place that builds a SparkSession (settings from :mod:`sqlinfer.runtime.settings`).

The embedded default is ``local[*]`` with Hive support: the metastore (Derby) and the warehouse
live under the project's ``target/`` folder, so tables built by one command are seen by the next.
``master`` and ``conf`` pass straight through to Spark for a real cluster. The JVM's stderr, and
so Spark's log, goes to ``target/logs/spark.log`` (:mod:`sqlinfer.runtime.jvm`).

The local-only speed-ups (the JVM class archive, the early worker daemon, loopback binding) apply
to local masters only; on a cluster the executors' Python is checked first instead
(:mod:`sqlinfer.runtime.executors`, docs/cluster.md).
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.errors import SessionError
from sqlinfer.runtime import daemon, jvm_cache, timeline
from sqlinfer.runtime.executors import check_executor_python, embedded_metastore_warning
from sqlinfer.runtime.jvm import (
    end_jvm_at_exit,
    open_spark_log,
    quiet_accumulator_server,
    quiet_arrow_udf_hint,
    quiet_query_error_logs,
)
from sqlinfer.runtime.settings import DAEMON_MODULE, WARM_UP_WORKERS, is_local, session_conf, spark_log_path
from sqlinfer.runtime.warm_up import warm_up_catalog, warm_up_workers

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def build_session(target: Path, master: str | None = None, conf: Mapping[str, Any] | None = None,
                  prebuild: daemon.Prebuild | None = None, *, light: bool = False) -> SparkSession:
    """A SparkSession for a project; reuses the running one if this process already has one.
    ``prebuild`` learns where the session's early daemon is, or that it has none; a ``light``
    session (a command that only answers) may use, and write, a light class archive
    (:mod:`sqlinfer.runtime.jvm_cache`)."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from sqlinfer.runtime.metastore import clear_hive_scratch, ensure_metastore_free

    timeline.mark("PySpark imported")
    quiet_arrow_udf_hint()
    settings = session_conf(target, master or _spark_submit_master(), conf or {})
    new_jvm = SparkContext._gateway is None  # else getOrCreate reuses it (and its metastore)
    new_context = SparkContext._active_spark_context is None
    if new_jvm:
        ensure_metastore_free(settings)
        clear_hive_scratch(settings, target.resolve())
    local = is_local(settings["spark.master"])
    archive = _class_archive(settings, light) if new_jvm and local else jvm_cache.Plan(None, write=False)
    if (new_jvm and local and settings[WARM_UP_WORKERS] == "true"
            and settings.get("spark.python.daemon.module") == DAEMON_MODULE):
        _start_early_daemon(prebuild)
    if prebuild is not None:
        prebuild.started(None)  # no early daemon (or it has said where it is: the first word counts)
    warning = embedded_metastore_warning(settings)
    if warning and new_context:
        sys.stderr.write(f"warning: {warning}\n")
    target.mkdir(parents=True, exist_ok=True)
    # PySpark gives Python functions the workers' interpreter from PYSPARK_PYTHON, which spark-submit
    # sets from spark.pyspark.python; here the JVM is started without it, so set it the same way.
    os.environ["PYSPARK_PYTHON"] = settings["spark.pyspark.python"]
    if local:
        # Everything stays on this machine: bind to loopback, not the first network interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        if new_jvm:
            _launch_jvm(settings, spark_log_path(target))
            timeline.mark("JVM started")
        spark = builder.enableHiveSupport().getOrCreate()
        timeline.mark("Spark session ready")
    except BaseException:
        archive.abandon()
        raise
    end_jvm_at_exit(spark, archive)
    spark.sparkContext.setLogLevel(os.environ.get("SQLINFER_SPARK_LOG_LEVEL", "ERROR"))
    quiet_query_error_logs()
    quiet_accumulator_server(spark)
    if new_context and not local:
        check_executor_python(spark)
    if settings[WARM_UP_WORKERS] == "true":
        warm_up_catalog(spark)
        warm_up_workers(spark)
    return spark


def _spark_submit_master() -> str | None:
    """The master ``spark-submit`` was given, when this process is its Python application
    (``spark-submit .../sqlinfer/__main__.py build PROJECT``, docs/cluster.md): spark-submit has
    started the JVM and passes its address in the environment, with its settings in the JVM."""
    from pyspark import SparkContext

    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    if SparkContext._gateway is None:
        from pyspark.java_gateway import launch_gateway

        SparkContext._ensure_initialized(gateway=launch_gateway())  # connects to spark-submit's JVM
    assert SparkContext._jvm is not None
    submitted: str | None = SparkContext._jvm.System.getProperty("spark.master")
    return submitted


def _launch_jvm(settings: dict[str, str], log: Path) -> None:
    """Start the JVM the session will use, its stdout and stderr going to ``log`` instead of the
    terminal.

    PySpark starts it inside ``getOrCreate`` with the terminal's stderr and no way to pass another,
    so it is started here, the way PySpark does (every setting a ``--conf`` of spark-submit), with
    ``popen_kwargs``; ``getOrCreate`` then finds it running. Its stdout carries nothing of the
    command's (PySpark prints results from Python), and a JVM that outlives the command (writing
    the class archive, :mod:`.jvm_cache`) must not hold the command's output open: a pipe reading
    it (``| tee``, a CI runner, ``subprocess.run``) would wait for the JVM.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.errors import PySparkRuntimeError
    from pyspark.java_gateway import launch_gateway

    conf = SparkConf(loadDefaults=False).setAll(list(settings.items()))
    with open_spark_log(log) as stderr:  # the JVM has its own copy of the file now
        try:
            gateway = launch_gateway(conf, popen_kwargs={"stdout": stderr, "stderr": stderr})
        except PySparkRuntimeError as exc:
            if exc.getCondition() != "JAVA_GATEWAY_EXITED":
                raise
            raise SessionError("the Spark JVM did not start: is Java 17 or later installed (java on PATH, or "
                               "JAVA_HOME)?", code="session.jvm_failed") from exc
    SparkContext._ensure_initialized(gateway=gateway)


def _start_early_daemon(prebuild: daemon.Prebuild | None) -> None:
    """Torch imported for the worker daemon while the JVM starts (sqlinfer/runtime/daemon.py), ended at
    exit after the JVM (atexit runs last what was registered first)."""
    early = daemon.start_early()
    if early is not None:
        atexit.register(daemon.end_early, early)
        if prebuild is not None:
            prebuild.started(daemon.socket_path(early))


def _class_archive(settings: dict[str, str], light: bool) -> jvm_cache.Plan:
    """Class-data sharing for the JVM this call is about to start (sqlinfer/runtime/jvm_cache.py): its
    options go first in the driver's Java options, so the user's come later and win."""
    java_options = settings["spark.driver.extraJavaOptions"]
    archive = jvm_cache.plan(java_options, settings.get("spark.driver.extraClassPath", ""), light=light)
    if archive.options:
        settings["spark.driver.extraJavaOptions"] = f"{archive.options} {java_options}"
    return archive
