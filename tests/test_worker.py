"""The worker loop without Spark: re-batching to `batch_size` whatever the input batching, one model
build per process, and output rows in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helpers import jpeg_bytes, save_random_resnet18, write_project
from sqlinfer import Project, worker

MODELS = """\
models:
  - name: w
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    kwargs: {num_classes: 5}
    preprocess: {resize: 36, crop: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
    output: logits
    batch_size: 6
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = write_project(tmp_path_factory.mktemp("w") / "p", MODELS)
    (root / "weights").mkdir()
    save_random_resnet18(root / "weights" / "r18.safetensors", num_classes=5)
    (resolved,) = Project.load(root).resolved
    return resolved


def score(model, blobs: list[bytes], arrow_batch: int) -> tuple[np.ndarray, dict[str, float]]:  # noqa: ANN001
    counters: dict[str, float] = {}

    def count(values: dict[str, float]) -> None:
        for key, value in values.items():
            counters[key] = counters.get(key, 0) + value

    arrays = (pa.array(blobs[i:i + arrow_batch], type=pa.binary()) for i in range(0, len(blobs), arrow_batch))
    out = list(worker.score(model.plan, lambda: model.weights, arrays, count))
    assert all(len(o) <= 6 for o in out)
    return np.array([row for array in out for row in array.to_pylist()]), counters


def test_results_do_not_depend_on_arrow_batch_size(model) -> None:  # noqa: ANN001
    blobs = [jpeg_bytes(i, 40 + i, 30 + i) for i in range(23)]
    worker._MODELS.clear()
    baseline, counters = score(model, blobs, arrow_batch=23)
    assert baseline.shape == (23, 5)
    assert counters["builds"] == 1
    assert counters["batches"] == 4  # 23 rows in model batches of 6: 6+6+6+5
    for arrow_batch in (1, 4, 7):
        result, counters = score(model, blobs, arrow_batch)
        np.testing.assert_allclose(result, baseline, atol=1e-5)
        assert counters.get("builds", 0) == 0  # cached in this process
        assert counters["rows"] == 23
    # Each row's output is its own: scoring one image alone gives the same numbers.
    alone, _ = score(model, [blobs[17]], arrow_batch=1)
    np.testing.assert_allclose(alone[0], baseline[17], atol=1e-5)


def test_empty_input_yields_nothing(model) -> None:  # noqa: ANN001
    result, counters = score(model, [], arrow_batch=4)
    assert len(result) == 0
    assert counters.get("rows", 0) == 0
