"""`precision` means what it says: fp32 runs with TF32 off, `tf32` turns it on, only while the
model's forward pass runs (the switches are process-wide). On CPU the switches are still set and
restored, which is what is checked here; a GPU run checks the numbers (tests/functional/test_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import write_project

from sqlinfer import Project
from sqlinfer.models.network import Network

DECLARATION = """\
  - name: {name}
    flavor: torchvision
    architecture: resnet18
    kwargs: {{num_classes: 4}}
    weights: random
    preprocess: {{resize: 36, crop: 32}}
    output: logits
    precision: {precision}
"""
MODELS = "models:\n" + DECLARATION.format(name="exact", precision="fp32") + DECLARATION.format(name="fast",
                                                                                               precision="tf32")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_project(tmp_path_factory.mktemp("precision") / "p", MODELS)
    return {m.plan.name: m for m in Project.load(root).resolve_models()}


def switches_during_forward(model) -> tuple[bool, bool]:
    network = Network(model.plan, model.weights, "cpu")
    seen: list[tuple[bool, bool]] = []
    network.module.register_forward_hook(
        lambda *_: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    network.forward_hwc(np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(("name", "expected"), [("exact", (False, False)), ("fast", (True, True))])
def test_tf32_is_on_only_when_declared_and_only_during_the_forward_pass(models: dict, name: str,
                                                                         expected: tuple[bool, bool]) -> None:
    outside = (not expected[0], not expected[1])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = outside
    try:
        assert switches_during_forward(models[name]) == expected
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == outside
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True


def test_tf32_changes_the_fingerprint_not_the_cpu_result(models: dict) -> None:
    assert models["exact"].plan.fingerprint != models["fast"].plan.fingerprint
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    exact = Network(models["exact"].plan, models["exact"].weights, "cpu").forward_hwc(pixels)
    fast = Network(models["fast"].plan, models["fast"].weights, "cpu").forward_hwc(pixels)
    np.testing.assert_array_equal(exact, fast)  # same random init (seed 0); TF32 does nothing on CPU
