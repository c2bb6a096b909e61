"""Registering resolved models as Spark SQL functions.

Each model becomes a scalar-iterator Arrow UDF (``Iterator[pa.Array] -> Iterator[pa.Array]``, the
pandas-free form of Spark's iterator pandas UDF): the weights are broadcast once from the driver,
and each Python worker builds the network at most once (:mod:`sqlinfer.worker.model_cache`) and
scores each task with :func:`sqlinfer.worker.score.score`. A second function,
``<function>_checked``, returns ``struct<result, error: struct<kind, message>>``: why a row has
no result, in SQL, from the same single decode.
Per-worker counters (model builds, rows, timings) come back through a Spark accumulator.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlinfer.models.resolve import ResolvedModel

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.accumulators import AccumulatorParam
    from pyspark.sql import SparkSession


Counters = dict[str, float]


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


def register(spark: SparkSession, model: ResolvedModel) -> UdfStats:
    """Register ``model`` on ``spark`` under its UDF name and return its counters."""
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    from sqlinfer.worker.score import score

    sc = spark.sparkContext
    for path in model.python_files:
        sc.addPyFile(str(path))
    weights = sc.broadcast(model.weights)
    accumulator = sc.accumulator({}, _counter_param())
    plan = model.plan

    def count(values: dict[str, float]) -> None:
        pid = os.getpid()
        accumulator.add({f"{name}@{pid}": value for name, value in values.items()})

    def predict(arrays: Iterator[Any]) -> Iterator[Any]:
        return score(plan, lambda: weights.value, arrays, count)

    def predict_checked(arrays: Iterator[Any]) -> Iterator[Any]:
        return score(plan, lambda: weights.value, arrays, count, with_reasons=True)

    with warnings.catch_warnings():
        # PySpark prefers type hints to an explicit UDF type; both mean the same here.
        warnings.simplefilter("ignore", UserWarning)
        spark.udf.register(plan.udf_name, arrow_udf(predict, plan.decl.return_type, ArrowUDFType.SCALAR_ITER))
        spark.udf.register(plan.checked_udf_name,
                           arrow_udf(predict_checked, plan.checked_return_type, ArrowUDFType.SCALAR_ITER))
    return UdfStats(accumulator)
