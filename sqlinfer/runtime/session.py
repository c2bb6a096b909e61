"""The one place that builds a SparkSession (settings from :mod:`sqlinfer.runtime.settings`).

The embedded default is ``local[*]`` with Hive support: the metastore (Derby) and the warehouse
live under the project's ``target/`` folder, so tables built by one command are seen by the next.
``master`` and ``conf`` pass straight through to Spark for a real cluster.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.runtime import jvm_cache
from sqlinfer.runtime.jvm import end_jvm_at_exit, quiet_accumulator_server, quiet_query_error_logs
from sqlinfer.runtime.settings import DAEMON_MODULE, WARM_UP_WORKERS, session_conf
from sqlinfer.runtime.warm_up import warm_up_catalog, warm_up_workers

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def build_session(target: Path, master: str | None = None, conf: Mapping[str, Any] | None = None) -> SparkSession:
    """A SparkSession for a project; reuses the running one if this process already has one."""
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from sqlinfer.runtime.metastore import ensure_metastore_free

    settings = session_conf(target, master, conf or {})
    ensure_metastore_free(settings)
    new_jvm = SparkContext._gateway is None  # else getOrCreate reuses it
    archive = _class_archive(settings) if new_jvm else jvm_cache.Plan(None, write=False)
    if (new_jvm and settings["spark.master"].startswith("local") and settings[WARM_UP_WORKERS] == "true"
            and settings["spark.python.daemon.module"] == DAEMON_MODULE):
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
    """Torch imported for the worker daemon while the JVM starts (sqlinfer/runtime/daemon.py), ended at
    exit after the JVM (atexit runs last what was registered first)."""
    from sqlinfer.runtime import daemon

    early = daemon.start_early()
    if early is not None:
        atexit.register(daemon.end_early, early)


def _class_archive(settings: dict[str, str]) -> jvm_cache.Plan:
    """Class-data sharing for the JVM this call is about to start (sqlinfer/runtime/jvm_cache.py): its
    options go first in the driver's Java options, so the user's come later and win."""
    java_options = settings["spark.driver.extraJavaOptions"]
    archive = jvm_cache.plan(java_options, settings.get("spark.driver.extraClassPath", ""))
    if archive.options:
        settings["spark.driver.extraJavaOptions"] = f"{archive.options} {java_options}"
    return archive
