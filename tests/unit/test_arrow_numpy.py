"""Arrow arrays built and read through their buffers (sqlinfer/worker/arrow_numpy.py): the same
arrays pyarrow's own constructors make, and a worker's whole Arrow path without pandas."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from sqlinfer.worker.arrow_numpy import booleans, nulls, numbers, strings, view


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8])
def test_numbers_match_pyarrow_and_read_back(dtype: type) -> None:
    values = (np.arange(7) * 3 - 5).astype(dtype)
    array = numbers(values)
    assert array.equals(pa.array(values))
    assert view(array).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(view(array), values)
    np.testing.assert_array_equal(view(array.slice(2, 3)), values[2:5])  # a slice reads its own rows


def test_numbers_of_a_strided_array_are_copied_in_order() -> None:
    values = np.arange(10, dtype=np.float32)[::3]
    assert numbers(values).to_pylist() == [0.0, 3.0, 6.0, 9.0]


def test_booleans_match_pyarrow() -> None:
    flags = np.array([True, False, False, True, True, False, True, False, True, True, False])
    assert booleans(flags).equals(pa.array(flags))
    assert booleans(np.zeros(0, dtype=bool)).to_pylist() == []


def test_strings_with_nulls_and_non_ascii_match_pyarrow() -> None:
    values = ["cat", None, "", "smörgåsbord", "狗", None]
    array = strings(values)
    assert array.equals(pa.array(values, pa.string()))
    assert array.null_count == 2
    assert strings([]).to_pylist() == [] and strings(["a"]).null_count == 0


def test_nulls_of_sliced_arrays() -> None:
    array = pa.array([1.0, None, 3.0, None, None, 6.0, 7.0, None, 9.0, 10.0], pa.float32())
    assert nulls(array).tolist() == [v is None for v in array.to_pylist()]
    part = array.slice(3, 5)
    assert nulls(part).tolist() == [True, True, False, False, True]
    assert nulls(pa.array([1, 2])).tolist() == [False, False]


def test_views_of_empty_arrays() -> None:
    assert view(pa.array([], pa.float32())).shape == (0,)
    assert nulls(pa.array([], pa.float32())).shape == (0,)


WORKER_PATH = """
import json, sys
import numpy as np, pyarrow as pa
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import ArrayType, FloatType
from pyspark.worker import ArrowBatchTransformer
from sqlinfer.worker.arrow_numpy import numbers, strings
from sqlinfer.worker.arrow_outputs import to_arrow, with_errors
from sqlinfer.worker.decode import BadInput
from sqlinfer.worker.score import _values
from sqlinfer.worker.text import LengthOrder

outputs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
ok = np.array([True, False, True, True, True])
good = outputs[:4]
results = {kind: to_arrow(kind, good, ok, ("a", "b", "c"), 2)
           for kind in ("logits", "embedding", "probabilities", "label", "topk")}
results["label_without_names"] = to_arrow("label", good, ok, None, 1)
results["checked"] = with_errors(results["label"], [(1, BadInput("corrupt", "not an image"))])
tensors = pa.ListArray.from_arrays(numbers(np.array([0, 2, 4], np.int32)), numbers(np.arange(4, dtype=np.float32)))
rows = _values(tensors.slice(1))
order = LengthOrder(batch_size=2, window_batches=1)
batches = list(order.chunks([["ccc", "a"]]))
restored = list(order.restore([strings([text for _, text in batch]) for batch in batches]))
# What PySpark's worker does with the UDF's array: a record batch checked against the return type.
target = pa.schema([pa.field("_0", to_arrow_type(ArrayType(FloatType())))])
ArrowBatchTransformer.enforce_schema(pa.RecordBatch.from_arrays([results["logits"]], ["_0"]), target, safecheck=True)
print(json.dumps({"pandas": "pandas" in sys.modules, "rows": [row.tolist() for row in rows],
                  "restored": restored[0].to_pylist(), "nulls": {k: v.null_count for k, v in results.items()},
                  "label": results["label"].to_pylist()[0]["label"]}))
"""


def test_a_workers_arrow_path_never_imports_pandas() -> None:
    """pa.array() and Array.to_numpy() import pandas (0.25 s of CPU in every Python worker): the
    outputs of every kind, a checked function's errors, tensor rows and the text reordering, and
    PySpark's own check of the returned array, all in a process that has not imported it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", WORKER_PATH], env=env, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["pandas"] is False
    assert report["rows"] == [[2.0, 3.0]]
    assert report["restored"] == ["ccc", "a"]
    assert report["nulls"] == {"logits": 1, "embedding": 1, "probabilities": 1, "label": 1, "topk": 1,
                               "label_without_names": 1, "checked": 0}
    assert report["label"] in ("a", "b", "c")
