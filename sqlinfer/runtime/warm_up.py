"""Work started in the background as soon as a session exists, so the first query finds it done:
the Python workers (their daemon imports torch) and the Hive metastore (Derby opens, or creates
its schema); and, once a build knows which models its nodes call, those networks built in the
workers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlinfer.runtime import timeline

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _pass_through(batches: Iterator) -> Iterator:
    """The warm-up UDF: runs in the Python workers and does nothing else."""
    yield from batches


def warm_up_workers(spark: SparkSession) -> threading.Thread:
    """Start the Python worker daemon and a worker per task slot now, on a background thread.

    The first model query otherwise waits for them: the JVM starts the daemon only when a task
    first needs Python, and the daemon imports torch before it forks workers (sqlinfer/runtime/daemon.py).
    Done here, that start overlaps the driver's own work (model registration, SQL compilation,
    query planning). The warm-up is an Arrow UDF of the same kind as the model UDFs, so its
    workers are the ones the model queries reuse (Spark keeps one worker pool per kind of
    Python runner). Failures are ignored: the first real query then starts the workers itself.
    """
    def run() -> None:
        try:
            import warnings

            from pyspark.sql.functions import ArrowUDFType, arrow_udf
            from pyspark.sql.types import LongType

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                # A DataType, not "long": PySpark parses a type string in the JVM's cold parser.
                udf = arrow_udf(_pass_through, LongType(), ArrowUDFType.SCALAR_ITER)
            slots = max(1, spark.sparkContext.defaultParallelism)
            spark.sparkContext.setLocalProperty("spark.job.description", "sqlinfer: start Python workers")
            spark.range(slots, numPartitions=slots).select(udf("id")).collect()
        except Exception:
            pass

    thread = threading.Thread(target=run, name="sqlinfer-warm-up", daemon=True)
    thread.start()
    return thread


def warm_up_catalog(spark: SparkSession) -> threading.Thread:
    """Open the Hive metastore now, on a background thread: its first use takes seconds (on a
    new project, Derby creates its schema), and the first statement that needs it (compiling a
    node, CREATE DATABASE, a table lookup) would wait for all of it. Started here, it overlaps
    model registration and the workers' start; a statement that comes sooner waits for the rest.

    It is opened through the session's shared state, not through its catalog: the catalog opens
    the metastore while holding its own lock, which every temporary view and its look-up also
    take, so a source's view (which needs no metastore) waited for all of it (the bench's build:
    1.5 s of the 1.7 s its source took to register)."""
    def run() -> None:
        try:
            spark._jsparkSession.sharedState().externalCatalog()  # opens it (and makes `default`)
            timeline.mark("metastore opened")
        except Exception:
            pass

    thread = threading.Thread(target=run, name="sqlinfer-warm-up-catalog", daemon=True)
    thread.start()
    return thread


def build_models_in_workers(spark: SparkSession, builders: list[Any]) -> threading.Thread:
    """Build the networks of ``builders`` (each model's ``UdfStats.builder``) in the Python
    workers now, on a background thread: one task per task slot, each building every network
    in the worker it runs in (each worker keeps its networks, sqlinfer/worker/model_cache.py).

    A build starts it as soon as it knows which models its nodes call. The workers are idle then,
    while the driver still waits for the metastore (about a second on the reference machine), and
    the first query's tasks find their networks built instead of building them (0.3 s a worker
    for a ResNet-18 on a CPU; more where weights move to a GPU). A query that comes sooner waits
    for these tasks in Spark's queue, as it would have waited for its own builds. Failures are
    ignored: the first real query then builds the networks itself and reports what fails.
    """
    def run() -> None:
        try:
            from pyspark.sql.functions import col

            slots = max(1, spark.sparkContext.defaultParallelism)
            spark.sparkContext.setLocalProperty("spark.job.description", "sqlinfer: build models in Python workers")
            spark.range(slots, numPartitions=slots).select(*[b(col("id")) for b in builders]).collect()
        except Exception:
            pass

    thread = threading.Thread(target=run, name="sqlinfer-build-models", daemon=True)
    thread.start()
    return thread
