"""The one place that builds a SparkSession.

The embedded default is ``local[*]`` with Hive support: the metastore (Derby) and the warehouse
live under the project's ``target/`` folder, so tables built by one command are seen by the next.
``master`` and ``conf`` pass straight through to Spark for a real cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Rows per Arrow batch sent to a Python worker. Small batches keep worker memory flat; the
# model's own batch size is independent of this (see docs/performance.md).
DEFAULT_ARROW_BATCH = 16
LOG_CONFIG = Path(__file__).parent / "resources" / "log4j2.properties"


def session_conf(target: Path, master: str | None, conf: Mapping[str, Any]) -> dict[str, str]:
    """Spark settings for a project whose generated files live in ``target``; ``conf`` wins."""
    target = target.resolve()
    settings: dict[str, Any] = {
        "spark.master": master or "local[*]",
        "spark.app.name": "sqlinfer",
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(target / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={target / 'metastore_db'};create=true",
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={target} -Dlog4j2.configurationFile={LOG_CONFIG}",
        # Python workers must run this interpreter, or they will not find its packages.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": DEFAULT_ARROW_BATCH,
        # JDBC clients of `sqlinfer serve` see this session's UDFs only in single-session mode.
        "spark.sql.hive.thriftServer.singleSession": "true",
        "spark.ui.showConsoleProgress": "false",
    }
    settings.update(conf)
    if master:
        settings["spark.master"] = master
    return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in settings.items()}


def build_session(target: Path, master: str | None = None, conf: Mapping[str, Any] | None = None) -> SparkSession:
    """A SparkSession for a project; reuses the running one if this process already has one."""
    from pyspark.sql import SparkSession

    settings = session_conf(target, master, conf or {})
    target.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if settings["spark.master"].startswith("local"):
        # Everything stays on this machine: bind to loopback, not the first network interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("SQLINFER_SPARK_LOG_LEVEL", "ERROR"))
    return spark
