"""The GPU path of the worker: the task's CUDA device, pinned batch buffers, fp16/bf16, and the same
predictions as on CPU. Skipped on machines without CUDA (CI has none)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import jpeg_bytes, save_random_resnet18, write_project

from sqlinfer import Project
from sqlinfer.worker.device import choose_device
from sqlinfer.worker.score import BatchBuffers, score

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def declaration(name: str, device: str, precision: str = "fp32") -> str:
    return (f"  - name: {name}\n    flavor: torchvision\n    architecture: resnet18\n"
            "    weights: weights/r18.safetensors\n    preprocess: {resize: 72, crop: 64}\n"
            f"    output: logits\n    device: {device}\n    precision: {precision}\n")


MODELS = "models:\n" + "".join([declaration("cpu", "cpu"), declaration("gpu", "auto"),
                                 declaration("half", "cuda", "fp16"), declaration("bf16", "cuda", "bf16")])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_project(tmp_path_factory.mktemp("gpu") / "p", MODELS)
    (root / "weights").mkdir()
    save_random_resnet18(root / "weights" / "r18.safetensors")
    return {m.plan.name: m for m in Project.load(root).resolve_models()}


def run(model, blobs: list[bytes]) -> tuple[np.ndarray, dict]:
    counters: dict[str, float] = {}

    def count(values: dict[str, float]) -> None:
        for key, value in values.items():
            counters[key] = counters.get(key, 0) + value

    arrays = (pa.array(blobs[i:i + 16], type=pa.binary()) for i in range(0, len(blobs), 16))
    out = list(score(model.plan, lambda: model.weights, arrays, count))
    return np.array([row for array in out for row in array.to_pylist()], dtype=np.float32), counters


def test_auto_picks_the_gpu_and_matches_cpu(models: dict) -> None:
    assert choose_device("auto").startswith("cuda")
    blobs = [jpeg_bytes(i, 80 + i, 60 + i) for i in range(70)]
    expected, _ = run(models["cpu"], blobs)
    actual, counters = run(models["gpu"], blobs)
    assert counters["builds"] == 1 and counters["rows"] == 70
    assert counters["batches"] == 2  # the CUDA default batch size (64) holds whatever Arrow sends
    np.testing.assert_allclose(actual, expected, atol=1e-3)


@pytest.mark.parametrize("name", ["half", "bf16"])
def test_reduced_precision_keeps_the_ranking(models: dict, name: str) -> None:
    blobs = [jpeg_bytes(100 + i) for i in range(20)]
    expected, _ = run(models["cpu"], blobs)
    actual, _ = run(models[name], blobs)
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, atol=0.1 if name == "half" else 0.3)
    agree = (actual.argmax(axis=1) == expected.argmax(axis=1)).mean()
    assert agree >= 0.9


def test_gpu_batches_are_pinned(models: dict) -> None:
    buffers = BatchBuffers(models["gpu"].plan, 8, pinned=True)
    batch = buffers.take(8)
    assert batch.shape == (8, 64, 64, 3)
    assert torch.from_numpy(batch).is_pinned()
