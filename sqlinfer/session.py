"""The one place that builds a SparkSession.

The embedded default is ``local[*]`` with Hive support: the metastore (Derby) and the warehouse
live under the project's ``target/`` folder, so tables built by one command are seen by the next.
``master`` and ``conf`` pass straight through to Spark for a real cluster.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer import jvm_cache

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Rows per Arrow batch sent to a Python worker. Small batches keep worker memory flat; the
# model's own batch size is independent of this (see docs/performance.md).
DEFAULT_ARROW_BATCH = 16
# Start the Python workers and open the metastore in the background as soon as the session exists
# (see warm_up_workers and warm_up_catalog).
WARM_UP_WORKERS = "spark.sqlinfer.warmUpWorkers"
LOG_CONFIG = Path(__file__).parent / "resources" / "log4j2.properties"


def session_conf(target: Path, master: str | None, conf: Mapping[str, Any]) -> dict[str, str]:
    """Spark settings for a project whose generated files live in ``target``; ``conf`` wins."""
    target = target.resolve()
    base_java_options = f"-Dderby.system.home={target} -Dlog4j2.configurationFile={LOG_CONFIG}"
    if str(master or conf.get("spark.master") or "local").startswith("local"):
        base_java_options += " " + local_jvm_options(str(conf.get("spark.driver.extraJavaOptions", "")))
    settings: dict[str, Any] = {
        "spark.master": master or "local[*]",
        "spark.app.name": "sqlinfer",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(target / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={target / 'metastore_db'};create=true",
        "spark.driver.extraJavaOptions": base_java_options,
        # Python workers must run this interpreter, or they will not find its packages.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": DEFAULT_ARROW_BATCH,
        # Python workers fork from a daemon that has already imported torch (sqlinfer/daemon.py):
        # each worker starts seconds sooner.
        "spark.python.daemon.module": "sqlinfer.daemon",
        # JDBC clients of `sqlinfer serve` see this session's UDFs only in single-session mode.
        "spark.sql.hive.thriftServer.singleSession": "true",
        "spark.ui.showConsoleProgress": "false",
        WARM_UP_WORKERS: "true",
    }
    # Java options add up: the user's go after sqlinfer's (derby.system.home, the log4j config).
    extra_java = conf.get("spark.driver.extraJavaOptions")
    settings.update(conf)
    if extra_java:
        settings["spark.driver.extraJavaOptions"] = f"{base_java_options} {extra_java}"
    if master:
        settings["spark.master"] = master
    return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in settings.items()}


def local_jvm_options(user_options: str) -> str:
    """JIT and GC settings for the embedded local JVM, which runs the tasks too.

    In a model job the JVM's own work per row is small next to the Python workers', but in a
    fresh JVM the C2 compiler and G1 spent more CPU than that work itself: about 37 s of JVM CPU
    for a 1,000-image build, 16 s with C1 only and the parallel collector, which made the whole
    build 20% faster on 2 cores (docs/performance.md). The user's options come later and win
    (e.g. -XX:TieredStopAtLevel=4); a collector the user picks replaces ours.
    """
    options = ["-XX:TieredStopAtLevel=1"]
    if not re.search(r"-XX:\+Use\w*GC\b", user_options):
        options.append("-XX:+UseParallelGC")
    return " ".join(options)


def build_session(target: Path, master: str | None = None, conf: Mapping[str, Any] | None = None) -> SparkSession:
    """A SparkSession for a project; reuses the running one if this process already has one."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from sqlinfer.metastore import ensure_metastore_free

    settings = session_conf(target, master, conf or {})
    ensure_metastore_free(settings)
    new_jvm = SparkContext._gateway is None  # type: ignore[attr-defined]  # else getOrCreate reuses it
    archive = _class_archive(settings) if new_jvm else jvm_cache.Plan(None, write=False)
    if (new_jvm and settings["spark.master"].startswith("local") and settings[WARM_UP_WORKERS] == "true"
            and settings["spark.python.daemon.module"] == "sqlinfer.daemon"):
        _start_early_daemon()
    target.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if settings["spark.master"].startswith("local"):
        # Everything stays on this machine: bind to loopback, not the first network interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        spark = builder.enableHiveSupport().getOrCreate()
    except BaseException:
        archive.abandon()
        raise
    end_jvm_at_exit(spark, archive)
    spark.sparkContext.setLogLevel(os.environ.get("SQLINFER_SPARK_LOG_LEVEL", "ERROR"))
    quiet_query_error_logs()
    quiet_accumulator_server(spark)
    if settings[WARM_UP_WORKERS] == "true":
        warm_up_catalog(spark)
        warm_up_workers(spark)
    return spark


def _start_early_daemon() -> None:
    """Torch imported for the worker daemon while the JVM starts (sqlinfer/daemon.py), ended at
    exit after the JVM (atexit runs last what was registered first)."""
    from sqlinfer import daemon

    early = daemon.start_early()
    if early is not None:
        atexit.register(daemon.end_early, early)


def _class_archive(settings: dict[str, str]) -> jvm_cache.Plan:
    """Class-data sharing for the JVM this call is about to start (sqlinfer/jvm_cache.py): its
    options go first in the driver's Java options, so the user's come later and win."""
    java_options = settings["spark.driver.extraJavaOptions"]
    archive = jvm_cache.plan(java_options, settings.get("spark.driver.extraClassPath", ""))
    if archive.options:
        settings["spark.driver.extraJavaOptions"] = f"{archive.options} {java_options}"
    return archive


_ENDING: set[int] = set()  # JVM pids whose end this process waits for at exit


def end_jvm_at_exit(spark: SparkSession, archive: jvm_cache.Plan) -> None:
    """When this process exits, end the session's JVM and wait for it.

    PySpark leaves the JVM to notice that Python is gone (its stdin closes) and shut down on its
    own, seconds after the command has returned: meanwhile it still holds the embedded metastore,
    and the next command on the project would find it locked. Waiting also lets a JVM that writes
    the class archive finish it (sqlinfer/jvm_cache.py).
    """
    proc = getattr(spark.sparkContext._gateway, "proc", None)  # type: ignore[attr-defined]
    if proc is None or proc.stdin is None or proc.pid in _ENDING:
        archive.abandon()  # a JVM this call did not start
        return
    _ENDING.add(proc.pid)

    def end() -> None:
        import logging

        # A warm-up thread may still wait on the JVM; py4j would log its broken call as an error.
        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        code = None
        try:
            # Stop Spark from here first: a JVM that stops with a task still running (a warm-up
            # after a quick command) logs errors about it.
            spark.sparkContext.cancelAllJobs()
            spark.stop()
        except Exception:  # noqa: BLE001 - stopped already, or the JVM is gone
            pass
        try:
            proc.stdin.close()  # the JVM's signal to exit (PythonGatewayServer)
            code = proc.wait(timeout=120)
        except Exception:  # noqa: BLE001 - exiting anyway; the JVM ends when its stdin closes
            pass
        archive.finish(code)

    atexit.register(end)


def _pass_through(batches: Iterator) -> Iterator:
    """The warm-up UDF: runs in the Python workers and does nothing else."""
    yield from batches


def warm_up_workers(spark: SparkSession) -> threading.Thread:
    """Start the Python worker daemon and a worker per task slot now, on a background thread.

    The first model query otherwise waits for them: the JVM starts the daemon only when a task
    first needs Python, and the daemon imports torch before it forks workers (sqlinfer/daemon.py).
    Done here, that start overlaps the driver's own work (model registration, SQL compilation,
    query planning). The warm-up is an Arrow UDF of the same kind as the model UDFs, so its
    workers are the ones the model queries reuse (Spark keeps one worker pool per kind of
    Python runner). Failures are ignored: the first real query then starts the workers itself.
    """
    def run() -> None:
        try:
            import warnings

            from pyspark.sql.functions import ArrowUDFType, arrow_udf

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                udf = arrow_udf(_pass_through, "long", ArrowUDFType.SCALAR_ITER)
            slots = max(1, spark.sparkContext.defaultParallelism)
            spark.sparkContext.setLocalProperty("spark.job.description", "sqlinfer: start Python workers")
            spark.range(slots, numPartitions=slots).select(udf("id")).collect()
        except Exception:  # noqa: BLE001 - the session stopped, or no Python on the executors yet
            pass

    thread = threading.Thread(target=run, name="sqlinfer-warm-up", daemon=True)
    thread.start()
    return thread


def warm_up_catalog(spark: SparkSession) -> threading.Thread:
    """Open the Hive metastore now, on a background thread: its first use takes seconds (on a
    new project, Derby creates its schema), and the first statement that needs it (compiling a
    node, CREATE DATABASE, a table lookup) would wait for all of it. Started here, it overlaps
    model registration and the workers' start; a statement that comes sooner waits for the rest."""
    def run() -> None:
        try:
            spark.catalog.databaseExists("default")
        except Exception:  # noqa: BLE001 - the real statement reports any metastore error
            pass

    thread = threading.Thread(target=run, name="sqlinfer-warm-up-catalog", daemon=True)
    thread.start()
    return thread


def quiet_accumulator_server(spark: SparkSession) -> None:
    """When the JVM ends before Python (a signal to the whole process group), PySpark's accumulator
    server prints an EOFError traceback from its thread; the end of the connection is expected."""
    server = getattr(spark.sparkContext, "_accumulatorServer", None)
    if server is not None:
        server.handle_error = lambda _request, _address: None


def quiet_query_error_logs() -> None:
    """PySpark logs every SQL error as JSON with a JVM stack trace before raising it; sqlinfer
    reports the same error once, with the file and line, so those logs are noise."""
    import logging

    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
