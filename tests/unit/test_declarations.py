"""Bad declarations are reported as `path:line: message` before any Spark job (no Spark here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_project

from sqlinfer import Project, SqlinferError

GOOD = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: squeezenet1_1
    weights: weights/net.safetensors
    preprocess: {resize: 40, crop: 32}
    output: topk
    k: 3
"""


def save_random_squeezenet(path: Path, num_classes: int = 1000) -> None:
    """A random-init torchvision network small enough that resolving it takes a fraction of a second."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "net.safetensors"
    save_random_squeezenet(path)
    return path


def project_with(tmp_path: Path, weights_file: Path, models_yml: str) -> Path:
    root = write_project(tmp_path / "p", models_yml)
    (root / "weights").mkdir(exist_ok=True)
    (root / "weights" / "net.safetensors").write_bytes(weights_file.read_bytes())
    return root


def error_of(root: Path) -> SqlinferError:
    with pytest.raises(SqlinferError) as info:
        Project.load(root).resolve_models()  # resolving is what raises
    return info.value


def test_good_declaration_resolves_with_defaults(tmp_path: Path, weights_file: Path) -> None:
    project = Project.load(project_with(tmp_path, weights_file, GOOD))
    (model,) = project.resolve_models()
    assert model.plan.udf_name == "tiny_predict"
    assert model.plan.input_shape == (3, 32, 32)
    # Declared resize/crop win; mean/std and the 1000 class names come from torchvision's metadata.
    assert model.plan.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.plan.labels is not None and len(model.plan.labels) == 1000
    assert model.plan.labels[0] == "tench"
    assert model.plan.num_outputs == 1000
    assert model.plan.decl.return_type == "array<struct<label:string,index:int,score:float>>"


def test_a_list_of_outputs_returns_a_struct_with_a_field_per_kind(tmp_path: Path, weights_file: Path) -> None:
    """docs/models.md's example: the struct its comment gives, fields in the listed order."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    (line,) = [text for text in doc.splitlines() if text.strip().startswith("output: [label, probabilities]")]
    declared, returns = line.split("#")
    project = Project.load(project_with(tmp_path, weights_file, GOOD.replace("    output: topk\n", declared + "\n")))
    (model,) = project.resolve_models()
    assert model.plan.decl.output_kinds == ("label", "probabilities")
    assert model.plan.decl.return_type == returns.strip().replace(" ", "") == (
        "struct<label:struct<label:string,index:int,score:float>,probabilities:array<float>>")
    assert model.plan.labels is not None and len(model.plan.labels) == 1000  # labels checked as for `label`


@pytest.mark.parametrize(("change", "code", "line", "message"), [
    (("    k: 3\n", "    k: 3\n    colour: red\n"), "config.unknown_key", 9, "unknown key 'colour' in models['tiny']"),
    (("flavor: torchvision", "flavor: tensorflow"), "config.invalid_value", 3,
     "models['tiny'].flavor: 'tensorflow' is not a flavor (flavors: mlflow, onnx, python, torchscript, "
     "torchvision, transformers)"),
    (("architecture: squeezenet1_1", "architecture: resnet9000"), "config.unknown_architecture", 4,
     "model 'tiny': unknown torchvision architecture 'resnet9000' (did you mean 'resnet50'?) "
     "(see torchvision.models.list_models(module=torchvision.models))"),
    (("weights/net.safetensors", "weights/missing.safetensors"), "config.missing_weights", 5,
     "model 'tiny': weights file not found: {root}/weights/missing.safetensors"),
    (("weights/net.safetensors", "../../etc/passwd"), "config.path_outside_project", 5,
     "model 'tiny': weights path '../../etc/passwd' leaves the project folder"),
    (("    k: 3\n", "    k: 0\n"), "config.invalid_value", 8, "models['tiny'].k: Input should be greater than 0"),
    (("output: topk", "output: tpk"), "config.invalid_value", 7,
     "models['tiny'].output: Input should be 'logits', 'probabilities', 'label', 'topk' or 'embedding'"),
    # A mapping: pydantic's location goes on into the union member it tried (`.literal[...]`).
    (("output: topk", "output: {label: 1}"), "config.invalid_value", 7,
     "models['tiny'].output: Input should be 'logits', 'probabilities', 'label', 'topk' or 'embedding'"),
    (("output: topk", "output: [label, tpk]"), "config.invalid_value", 7,
     "models['tiny'].output: Input should be 'logits', 'probabilities', 'label', 'topk' or 'embedding'"),
    (("output: topk", "output: [topk, label, topk]"), "config.invalid_value", 7,
     "models['tiny'].output: topk listed twice"),
    (("output: topk", "output: []"), "config.invalid_value", 7, "models['tiny'].output: give at least one output kind"),
    (("output: topk", "output: [label, embedding]"), "config.invalid_value", 7,
     "models['tiny'].output: embedding cannot be combined with other outputs: declare a second model with the "
     "same weights for it"),
    (("    k: 3\n", "    k: 3\n    kwargs: {num_classes: 10}\n"), "config.weights_mismatch", 5,
     "model 'tiny': the weights do not fit the network: Error(s) in loading state_dict for SqueezeNet:"),
    (("{resize: 40, crop: 32}", "{resize: 40, crop: null}"), "config.invalid_value", 6,
     "model 'tiny': preprocess must give a fixed size: `crop`, or `resize: [h, w]`"),
])
def test_bad_declaration_names_file_and_line(tmp_path: Path, weights_file: Path, change: tuple[str, str],
                                            code: str, line: int, message: str) -> None:
    old, new = change
    assert old in GOOD
    root = project_with(tmp_path, weights_file, GOOD.replace(old, new))
    error = error_of(root)
    assert (error.code, error.path, error.line) == (code, str(root / "models.yml"), line)
    assert error.message == message.format(root=root)
    assert str(error) == f"{root / 'models.yml'}:{line}: {error.message} [{code}]"


def test_unknown_key_suggests_the_closest_one(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD.replace("architecture: squeezenet1_1", "archtecture: resnet18"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert (info.value.code, info.value.line) == ("config.unknown_key", 4)
    assert info.value.message == "unknown key 'archtecture' in models['tiny'] (did you mean 'architecture'?)"


def test_unknown_flavor_suggests_the_closest_one(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD.replace("flavor: torchvision", "flavor: torchvison"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert (info.value.code, info.value.line) == ("config.invalid_value", 3)
    assert info.value.message == ("models['tiny'].flavor: 'torchvison' is not a flavor (did you mean 'torchvision'?) "
                                  "(flavors: mlflow, onnx, python, torchscript, torchvision, transformers)")


def test_an_unnamed_model_is_named_by_its_position(tmp_path: Path, weights_file: Path) -> None:
    second = "  - flavor: torchvision\n    architecture: squeezenet1_1\n"
    root = project_with(tmp_path, weights_file, GOOD + second)
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert (info.value.code, info.value.line) == ("config.missing_key", 9)  # the line its mapping starts at
    assert info.value.message == "missing key 'name' in models[2]"


def test_duplicate_udf_name_points_at_second_declaration(tmp_path: Path, weights_file: Path) -> None:
    second = GOOD.split("\n", 1)[1].replace("name: tiny", "name: other\n    udf: tiny_predict")
    root = project_with(tmp_path, weights_file, GOOD + second)
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert (info.value.code, info.value.line) == ("config.duplicate_name", 9)
    assert info.value.message == \
        f"model 'other': duplicate model or UDF name 'tiny_predict' (also at {root / 'models.yml'}:2)"


def test_yaml_syntax_error_has_line(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD.replace("output: topk", "output: [topk"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert info.value.code == "config.yaml_syntax"
    assert info.value.line == 8  # where the unclosed list meets the next key
    assert info.value.message == "invalid YAML: expected ',' or ']', but got ':'"


def test_yaml_is_loaded_safely(tmp_path: Path, weights_file: Path) -> None:
    hostile = GOOD.replace("name: tiny", "name: !!python/object/apply:os.system ['true']")
    root = project_with(tmp_path, weights_file, hostile)
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert info.value.code == "config.yaml_syntax"
    assert info.value.line == 2


def test_pt_state_dict_loads_with_weights_only(tmp_path: Path, weights_file: Path) -> None:
    import torch
    from safetensors.torch import load_file

    root = project_with(tmp_path, weights_file, GOOD.replace("net.safetensors", "net.pt"))
    torch.save(load_file(str(weights_file)), root / "weights" / "net.pt")
    (model,) = Project.load(root).resolve_models()
    assert model.weights.format == "safetensors"  # handed to the workers as safetensors bytes


def test_pt_file_that_is_not_a_state_dict_is_refused(tmp_path: Path, weights_file: Path) -> None:
    import torch

    root = project_with(tmp_path, weights_file, GOOD.replace("net.safetensors", "net.pt"))
    # A pickle that is not a plain state_dict (here: a whole module) is refused, not executed.
    torch.save(torch.nn.Linear(2, 2), root / "weights" / "net.pt")
    error = error_of(root)
    assert (error.code, error.path, error.line) == ("config.bad_weights", str(root / "models.yml"), 5)


def test_tensor_input_needs_shape(tmp_path: Path, weights_file: Path) -> None:
    tensor = GOOD.replace("    preprocess: {resize: 40, crop: 32}\n", "    input: tensor\n")
    root = project_with(tmp_path, weights_file, tensor)
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert (info.value.code, info.value.line) == ("config.invalid_value", 2)
    assert info.value.message == "models['tiny']: input tensor needs `shape` (e.g. [1, 28, 28])"


RESOLVE = """
import sys
from sqlinfer import Project
(model,) = Project.load(sys.argv[1]).resolve_models()
print(model.plan.fingerprint, model.plan.num_outputs, len(model.plan.labels), model.plan.preprocess.resize,
      "torch" in sys.modules)
"""


def test_unchanged_models_come_from_the_cache_without_torch(tmp_path: Path, weights_file: Path) -> None:
    import subprocess
    import sys

    root = project_with(tmp_path, weights_file, GOOD)
    (checked,) = Project.load(root).resolve_models()  # checked with torch, and cached
    assert (root / "target" / "resolved_models.json").is_file()
    done = subprocess.run([sys.executable, "-c", RESOLVE, str(root)], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [checked.plan.fingerprint, "1000", "1000", "40", "False"]  # no torch imported


def test_changed_weights_are_checked_again(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD)
    assert Project.load(root).resolve_models()[0].plan.num_outputs == 1000  # checked, and cached
    save_random_squeezenet(root / "weights" / "net.safetensors", num_classes=10)  # a 10-class head now
    error = error_of(root)  # the cache cannot hide that they no longer fit the declared network
    assert (error.code, error.path, error.line) == ("config.weights_mismatch", str(root / "models.yml"), 5)


def test_changed_declaration_is_checked_again(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD)
    assert Project.load(root).resolve_models()[0].plan.input_shape == (3, 32, 32)
    (root / "models.yml").write_text(GOOD.replace("crop: 32", "crop: 24"))
    assert Project.load(root).resolve_models()[0].plan.input_shape == (3, 24, 24)
