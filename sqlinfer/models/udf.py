"""Registering resolved models as Spark SQL functions.

Each model becomes a scalar-iterator Arrow UDF (``Iterator[pa.Array] -> Iterator[pa.Array]``, the
pandas-free form of Spark's iterator pandas UDF): the weights are broadcast once from the driver,
and each Python worker builds the network at most once (:mod:`sqlinfer.worker.model_cache`) and
scores each task with :func:`sqlinfer.worker.score.score`. A second function,
``<function>_checked``, returns ``struct<result, error: struct<kind, message>>``: why a row has
no result, in SQL, from the same single decode.
Per-worker counters (model builds, weights reads, rows, timings) come back through a Spark accumulator.

Weights larger than ``spark.sqlinfer.weightsBroadcastLimitMB`` (1024 MB by default) go to the
workers as a file instead (``SparkContext.addFile``): a broadcast is pickled whole in the driver
and Spark's pickle and block limits bite near 2 GB, while a file is fetched once per executor and
read by each worker that builds the network, still once per worker process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.resolve import ResolvedModel

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.accumulators import AccumulatorParam
    from pyspark.sql import SparkSession


Counters = dict[str, float]

BROADCAST_LIMIT = "spark.sqlinfer.weightsBroadcastLimitMB"
DEFAULT_BROADCAST_LIMIT_MB = 1024.0


def weights_transport(size: int, limit_mb: float) -> str:
    """How weights of ``size`` bytes reach the workers: ``broadcast``, or ``file`` above the limit."""
    return "broadcast" if size <= limit_mb * 1024 * 1024 else "file"


def _counter_param() -> AccumulatorParam[Counters]:
    """Sums of named counters, kept apart per worker process id: {"builds@1234": 1, ...}."""
    from pyspark.accumulators import AccumulatorParam

    class CounterParam(AccumulatorParam[Counters]):
        def zero(self, value: Counters) -> Counters:
            return {}

        def addInPlace(self, left: Counters, right: Counters) -> Counters:  # noqa: N802 - pyspark's name
            for key, value in right.items():
                left[key] = left.get(key, 0) + value
            return left

    return CounterParam()


@dataclass
class UdfStats:
    """Counters of one registered model UDF, summed over every task that has finished."""

    accumulator: Accumulator[Counters]

    def totals(self) -> dict[str, float]:
        """Each counter summed over processes; timestamps (``*_at``) have no sum and are left out."""
        out: dict[str, float] = {}
        for key, value in self.accumulator.value.items():
            name = key.split("@")[0]
            if not name.endswith("_at"):
                out[name] = out.get(name, 0) + value
        return out

    def per_process(self, counter: str) -> dict[int, float]:
        return {int(key.split("@")[1]): value for key, value in self.accumulator.value.items()
                if key.split("@")[0] == counter}


def register(spark: SparkSession, model: ResolvedModel, files: Path) -> UdfStats:
    """Register ``model`` on ``spark`` under its UDF name and return its counters. Weights shipped
    as a file are written to ``files`` first (the driver serves them from there)."""
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    from sqlinfer.worker.score import score

    sc = spark.sparkContext
    for path in model.python_files:
        sc.addPyFile(str(path))
    accumulator = sc.accumulator({}, _counter_param())
    plan = model.plan

    def count(values: dict[str, float]) -> None:
        pid = os.getpid()
        accumulator.add({f"{name}@{pid}": value for name, value in values.items()})

    limit = float(spark.conf.get(BROADCAST_LIMIT, str(DEFAULT_BROADCAST_LIMIT_MB)))
    if weights_transport(len(model.weights.data), limit) == "file":
        load_weights = _shipped_as_file(sc, model.weights, files, count)
    else:
        load_weights = _broadcast(sc, model.weights, count)

    def predict(arrays: Iterator[Any]) -> Iterator[Any]:
        return score(plan, load_weights, arrays, count)

    def predict_checked(arrays: Iterator[Any]) -> Iterator[Any]:
        return score(plan, load_weights, arrays, count, with_reasons=True)

    with warnings.catch_warnings():
        # PySpark prefers type hints to an explicit UDF type; both mean the same here.
        warnings.simplefilter("ignore", UserWarning)
        spark.udf.register(plan.udf_name, arrow_udf(predict, plan.decl.return_type, ArrowUDFType.SCALAR_ITER))
        spark.udf.register(plan.checked_udf_name,
                           arrow_udf(predict_checked, plan.checked_return_type, ArrowUDFType.SCALAR_ITER))
    return UdfStats(accumulator)


def _broadcast(sc: Any, weights: Weights, count: Callable[[Counters], None]) -> Callable[[], Weights]:
    """The weights as a Spark broadcast; the loader runs in a worker when it builds the network."""
    shared = sc.broadcast(weights)

    def load() -> Weights:
        count({"weights_reads": 1})
        value: Weights = shared.value
        return value

    return load


def _shipped_as_file(sc: Any, weights: Weights, files: Path, count: Callable[[Counters], None]
                     ) -> Callable[[], Weights]:
    """The weights as a file the driver serves (``SparkContext.addFile``): each executor fetches it
    once into its work folder, and each worker that builds the network reads it from there."""
    files.mkdir(parents=True, exist_ok=True)
    path = files / f"{weights.digest}.{weights.format}"
    if not path.exists() or path.stat().st_size != len(weights.data):
        partial = path.with_suffix(".partial")
        partial.write_bytes(weights.data)
        partial.replace(path)
    sc.addFile(str(path))
    name, kind, origin = path.name, weights.format, weights.origin

    def load() -> Weights:
        from pyspark import SparkFiles

        count({"weights_reads": 1})
        return Weights(kind, Path(SparkFiles.get(name)).read_bytes(), origin)

    return load
