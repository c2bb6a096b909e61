"""The onnx flavor without Spark: the digits CNN exported with torch.onnx gives the outputs of the
PyTorch declaration of the same weights; `sqlinfer models` shows the graph's input and output; a
file that is not a self-contained ONNX graph, and a machine without onnxruntime, are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import docs_example, env_without_modules, export_digits_onnx
from PIL import Image

from sqlinfer import Project
from sqlinfer.errors import ConfigError
from sqlinfer.models.network import Network

pytest.importorskip("onnxruntime")  # the `onnx` extra; the test extra installs it, so CI runs these

@pytest.fixture()
def onnx_project(digits_models: Path) -> Path:
    export_digits_onnx(digits_models, digits_models / "weights" / "digits_cnn.onnx")
    # The declaration docs/models.md shows, next to the example's own (the python flavor, same weights).
    declared = docs_example("docs/models.md", "name: digits_onnx").removeprefix("models:\n")
    models = digits_models / "models.yml"
    models.write_text(models.read_text() + declared)
    return digits_models


def test_the_onnx_graph_gives_the_outputs_of_the_pytorch_declaration(onnx_project: Path) -> None:
    torch_model, _probabilities, onnx_model = Project.load(onnx_project).resolve_models()
    assert onnx_model.weights.format == "onnx"
    assert onnx_model.plan.num_outputs == 10 and onnx_model.plan.input_shape == (1, 8, 8)
    digits = sorted((Path(__file__).resolve().parents[2] / "projects" / "digits" / "data").rglob("*.png"))[:64]
    pixels = np.stack([np.asarray(Image.open(path).convert("L"))[None] for path in digits])
    expected = Network(torch_model.plan, torch_model.weights, "cpu").forward(pixels)
    got = Network(onnx_model.plan, onnx_model.weights, "cpu").forward(pixels)
    assert got.shape == (64, 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_models_shows_the_graphs_input_and_output(onnx_project: Path) -> None:
    from sqlinfer.cli import main

    result = CliRunner().invoke(main, ["models", str(onnx_project)], prog_name="sqlinfer")
    assert result.exit_code == 0, result.output
    cells = [c.strip() for c in result.stdout.splitlines()[-1].split("|")]
    assert cells[:3] == ["digits_onnx_predict", "onnx", "weights/digits_cnn.onnx: pixels[N, 1, 8, 8] -> logits[N, 10]"]


def test_a_file_that_is_not_an_onnx_graph_is_a_config_error(onnx_project: Path) -> None:
    (onnx_project / "weights" / "digits_cnn.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ConfigError, match=r"cannot load digits_cnn.onnx as a self-contained ONNX graph") as info:
        Project.load(onnx_project).resolve_models()
    assert info.value.code == "config.bad_weights"
    assert info.value.path == str(onnx_project / "models.yml")
    assert info.value.line == (onnx_project / "models.yml").read_text().splitlines().index(
        "    weights: weights/digits_cnn.onnx") + 1


def test_a_graph_with_tensors_in_external_files_is_refused(onnx_project: Path) -> None:
    """onnxruntime reads such tensors relative to the working directory of the process that loads
    the graph: here the file is right there, and still the graph is refused, before any session."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((64, 10), dtype=np.float32), name="W")
    graph = helper.make_graph([helper.make_node("Flatten", ["pixels"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "W"], ["logits"])], "g",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [weights])
    onnx.save_model(helper.make_model(graph), str(onnx_project / "weights" / "digits_cnn.onnx"),
                    save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (onnx_project / "weights" / "w.bin").stat().st_size == 64 * 10 * 4
    with pytest.raises(ConfigError, match=r"digits_cnn.onnx keeps tensors in external files \(W\)") as info:
        Project.load(onnx_project).resolve_models()
    assert info.value.code == "config.bad_weights"


def test_half_precision_is_refused_at_its_line(onnx_project: Path) -> None:
    models = onnx_project / "models.yml"
    models.write_text(models.read_text() + "    precision: bf16\n")
    with pytest.raises(ConfigError, match="runs at the precision it was exported with") as info:
        Project.load(onnx_project)
    assert info.value.code == "config.invalid_value"


def test_without_onnxruntime_the_error_names_the_extra(onnx_project: Path, tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-m", "sqlinfer", "models", str(onnx_project)], capture_output=True,
                           text=True, env=env_without_modules(tmp_path / "site", ("onnxruntime",)))
    assert probe.returncode == 1
    line = (onnx_project / "models.yml").read_text().splitlines().index("    flavor: onnx") + 1
    assert probe.stderr.strip() == (f"error: {onnx_project / 'models.yml'}:{line}: model 'digits_onnx': flavor onnx "
                                    "needs onnxruntime: pip install 'sqlinfer[onnx]' [config.missing_extra]")
