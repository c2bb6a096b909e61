"""docs/models.md's examples of the torchscript and python flavors, as written, on the digits
example: the network traced and saved with torch.jit predicts what its class and state_dict predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import digits_network, docs_example

from sqlinfer import Project
from sqlinfer.models.network import Network


def test_the_python_and_torchscript_examples_predict_alike(digits_models: Path) -> None:
    import torch

    traced = torch.jit.trace(digits_network(digits_models), torch.zeros(2, 1, 8, 8))
    torch.jit.save(traced, str(digits_models / "weights" / "digits_cnn.pt"))
    scripted = docs_example("docs/models.md", "name: digits_scripted")
    python = docs_example("docs/models.md", "class: digits_net:DigitsCNN         # digits_net.py")
    (digits_models / "models.yml").write_text(python + scripted.removeprefix("models:\n"))
    by_class, by_script = Project.load(digits_models).resolve_models()
    assert (by_class.plan.udf_name, by_class.weights.format) == ("digits_predict", "safetensors")
    assert (by_script.plan.udf_name, by_script.weights.format) == ("digits_scripted_predict", "torchscript")
    assert by_class.plan.labels == tuple("0123456789") and by_script.plan.num_outputs == 10

    pixels = np.random.default_rng(0).integers(0, 256, (16, 1, 8, 8)).astype(np.uint8)
    expected = Network(by_class.plan, by_class.weights, "cpu").forward(pixels)
    got = Network(by_script.plan, by_script.weights, "cpu").forward(pixels)
    assert got.shape == (16, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
