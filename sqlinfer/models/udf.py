"""Registering resolved models as Spark SQL functions.

Each model becomes a scalar-iterator Arrow UDF (``Iterator[pa.Array] -> Iterator[pa.Array]``, the
pandas-free form of Spark's iterator pandas UDF): the weights are shipped once from the driver
(below), and each Python worker builds the network at most once (:mod:`sqlinfer.worker.model_cache`) and
scores each task with :func:`sqlinfer.worker.score.score`. A second function,
``<function>_checked``, returns ``struct<result, error: struct<kind, message>>``: why a row has
no result, in SQL, from the same single decode.
Per-worker counters (model builds, weights reads, rows, timings) come back through a Spark accumulator.

Weights larger than ``spark.sqlinfer.weightsBroadcastLimitMB`` (1024 MB by default) go to the
workers as a file instead (``SparkContext.addFile``): a broadcast is pickled whole in the driver
and Spark's pickle and block limits bite near 2 GB, while a file is fetched once per executor and
read by each worker that builds the network, still once per worker process.

With a local master the workers share the driver's disk, and weights that are a file byte for
byte (a ``.safetensors`` state_dict, an ONNX graph, a TorchScript archive) are read by each
worker from that file, after checking it is the file the driver read (its stamp,
:class:`sqlinfer.models.flavors.base.FileStamp`). A broadcast would copy them three times first:
pickled by the driver into a file, read by the JVM, cut into compressed blocks; for resnet18's
45 MB that was 0.35-0.5 s of a command's start and 0.2-0.4 s of JVM CPU (docs/performance.md).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.models.flavors.base import FileStamp, Weights
from sqlinfer.models.resolve import ResolvedModel
from sqlinfer.runtime.settings import is_local

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.accumulators import AccumulatorParam
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType


Counters = dict[str, float]

BROADCAST_LIMIT = "spark.sqlinfer.weightsBroadcastLimitMB"
DEFAULT_BROADCAST_LIMIT_MB = 1024.0


def weights_transport(weights: Weights, limit_mb: float, local: bool) -> str:
    """How ``weights`` reach the workers: ``local file`` (a local master, weights that are a
    file), else ``broadcast``, or ``file`` above the limit."""
    if local and weights.file is not None:
        return "local file"
    return "broadcast" if len(weights.data) <= limit_mb * 1024 * 1024 else "file"


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
    """Counters of one registered model UDF, summed over every task that has finished, and an
    unnamed companion UDF that builds the network in the worker that runs it (``builder``: its
    input passes through; :func:`sqlinfer.runtime.warm_up.build_models_in_workers`)."""

    accumulator: Accumulator[Counters]
    builder: Any = None

    def totals(self) -> dict[str, float]:
        """Each counter summed over processes; timestamps (``*_at``) have no sum and are left out."""
        out: dict[str, float] = {}
        # A copy first: the accumulator server's thread adds keys as new workers report, and a
        # build's progress line (sqlinfer/build/progress.py) reads these while tasks finish.
        for key, value in list(self.accumulator.value.items()):
            name = key.split("@")[0]
            if not name.endswith("_at"):
                out[name] = out.get(name, 0) + value
        return out

    def per_process(self, counter: str) -> dict[int, float]:
        return {int(key.split("@")[1]): value for key, value in list(self.accumulator.value.items())
                if key.split("@")[0] == counter}


def register(spark: SparkSession, model: ResolvedModel, files: Path) -> UdfStats:
    """Register ``model`` on ``spark`` under its UDF name and return its counters. Weights shipped
    as a file are written to ``files`` first (the driver serves them from there)."""
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    from sqlinfer.worker.score import build_only, score

    sc = spark.sparkContext
    for path in model.python_files:
        sc.addPyFile(str(path))
    accumulator = sc.accumulator({}, _counter_param())
    plan = model.plan

    def count(values: dict[str, float]) -> None:
        pid = os.getpid()
        accumulator.add({f"{name}@{pid}": value for name, value in values.items()})

    limit = float(spark.conf.get(BROADCAST_LIMIT, str(DEFAULT_BROADCAST_LIMIT_MB)))
    transport = weights_transport(model.weights, limit, is_local(sc.master))
    if transport == "local file":
        load_weights = read_in_place(model.weights, count)
    elif transport == "file":
        load_weights = _shipped_as_file(sc, model.weights, files, count)
    else:
        load_weights = _broadcast(sc, model.weights, count)

    def predict(arrays: Iterator[Any]) -> Iterator[Any]:
        return score(plan, load_weights, arrays, count)

    def build(arrays: Iterator[Any]) -> Iterator[Any]:
        return build_only(plan, load_weights, arrays, count)

    def predict_checked(arrays: Iterator[Any]) -> Iterator[Any]:
        return score(plan, load_weights, arrays, count, with_reasons=True)

    with warnings.catch_warnings():
        # PySpark prefers type hints to an explicit UDF type; both mean the same here.
        warnings.simplefilter("ignore", UserWarning)
        for name, function, return_type in ((plan.udf_name, predict, plan.decl.return_type),
                                            (plan.checked_udf_name, predict_checked, plan.checked_return_type)):
            spark.udf.register(name, arrow_udf(function, data_type(return_type), ArrowUDFType.SCALAR_ITER))
        builder = arrow_udf(build, data_type("long"), ArrowUDFType.SCALAR_ITER)
    return UdfStats(accumulator, builder)


def data_type(ddl: str) -> DataType:
    """A return type such as ``array<struct<label:string,index:int,score:float>>`` as PySpark's
    DataType, parsed here: PySpark parses a type string in the JVM, whose parser is cold in a new
    session (about 50 ms a function, a fifth of a short command's registration)."""
    from pyspark.sql import types

    simple = {"string": types.StringType(), "int": types.IntegerType(), "float": types.FloatType(),
              "double": types.DoubleType(), "long": types.LongType(), "binary": types.BinaryType()}
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[<>:,]", ddl)
    position = 0

    def take(expected: str | None = None) -> str:
        nonlocal position
        token = tokens[position]
        if expected is not None and token != expected:
            raise ValueError(f"expected {expected!r} at {token!r} in {ddl!r}")
        position += 1
        return token

    def parse() -> DataType:
        name = take().lower()
        if name == "array":
            take("<")
            element = parse()
            take(">")
            return types.ArrayType(element)
        if name == "struct":
            take("<")
            fields = []
            while True:
                field = take()
                take(":")
                fields.append(types.StructField(field, parse()))
                if take() == ">":
                    return types.StructType(fields)
        return simple[name]

    parsed = parse()
    if position != len(tokens):
        raise ValueError(f"unexpected {tokens[position]!r} in {ddl!r}")
    return parsed


class _Broadcasts:
    """The weights broadcasts of one SparkContext, by (format, digest): models with the same
    weights (one network declared for two outputs) share one, and so do two commands of a kept
    session that score with the same weights. Each command that uses a broadcast marks it."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Any] = {}
        self.used: set[tuple[str, str]] = set()

    @staticmethod
    def of(sc: Any) -> _Broadcasts:
        shelf: _Broadcasts = sc.__dict__.setdefault("_sqlinfer_broadcasts", _Broadcasts())
        return shelf

    def get(self, sc: Any, weights: Weights) -> Any:
        key = (weights.format, weights.digest)
        if key not in self.by_key:
            self.by_key[key] = sc.broadcast(weights)
        self.used.add(key)
        return self.by_key[key]


def release_unused_broadcasts(sc: Any) -> int:
    """Destroy the weights broadcasts that no model used since the last call, and return how many.
    A kept session calls it between commands: its SparkContext outlives them, and each change of a
    broadcast model's weights would otherwise keep the old weights (pickled in the driver, in the
    JVM's blocks) for the session's life."""
    shelf = _Broadcasts.of(sc)
    stale = [key for key in shelf.by_key if key not in shelf.used]
    for key in stale:
        shelf.by_key.pop(key).destroy()
    shelf.used.clear()
    return len(stale)


def _broadcast(sc: Any, weights: Weights, count: Callable[[Counters], None]) -> Callable[[], Weights]:
    """The weights as a Spark broadcast; the loader runs in a worker when it builds the network."""
    shared = _Broadcasts.of(sc).get(sc, weights)

    def load() -> Weights:
        count({"weights_reads": 1})
        value: Weights = shared.value
        return value

    return load


def read_in_place(weights: Weights, count: Callable[[Counters], None]) -> Callable[[], Weights]:
    """The weights read by each worker from the file the driver read them from (a local master).
    Only the file's stamp travels in the closure; a file changed since the driver read it fails
    the task with a message that says so, instead of scoring with weights nobody checked."""
    assert weights.file is not None
    stamp, kind, origin = weights.file, weights.format, weights.origin

    def load() -> Weights:
        count({"weights_reads": 1})
        path = Path(stamp.path)
        try:
            now = FileStamp.of(path)
        except OSError as exc:
            raise RuntimeError(f"sqlinfer: the weights file {path} is gone since this command read it "
                               f"({exc.strerror}); run the command again") from None
        if now != stamp:
            raise RuntimeError(f"sqlinfer: the weights file {path} changed since this command read and "
                               "checked it; run the command again to use the new weights")
        return Weights(kind, path.read_bytes(), origin, stamp)

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
