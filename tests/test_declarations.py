"""Bad declarations are reported as `path:line: message` before any Spark job (no Spark here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import save_random_resnet18, write_project
from sqlinfer import Project, SqlinferError

GOOD = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 40, crop: 32}
    output: topk
    k: 3
"""


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "r18.safetensors"
    save_random_resnet18(path)
    return path


def project_with(tmp_path: Path, weights_file: Path, models_yml: str) -> Path:
    root = write_project(tmp_path / "p", models_yml)
    (root / "weights").mkdir(exist_ok=True)
    (root / "weights" / "r18.safetensors").write_bytes(weights_file.read_bytes())
    return root


def error_of(root: Path) -> SqlinferError:
    with pytest.raises(SqlinferError) as info:
        Project.load(root).resolved  # noqa: B018 - resolving is what raises
    return info.value


def test_good_declaration_resolves_with_defaults(tmp_path: Path, weights_file: Path) -> None:
    project = Project.load(project_with(tmp_path, weights_file, GOOD))
    (model,) = project.resolved
    assert model.plan.udf_name == "tiny_predict"
    assert model.plan.input_shape == (3, 32, 32)
    # Declared resize/crop win; mean/std and the 1000 class names come from torchvision's metadata.
    assert model.plan.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.plan.labels is not None and len(model.plan.labels) == 1000
    assert model.plan.labels[0] == "tench"
    assert model.plan.num_outputs == 1000
    assert model.plan.decl.return_type == "array<struct<label:string,index:int,score:float>>"


@pytest.mark.parametrize(("change", "code", "line", "words"), [
    (("    k: 3\n", "    k: 3\n    colour: red\n"), "config.unknown_key", 9, "unknown key 'colour'"),
    (("flavor: torchvision", "flavor: tensorflow"), "config.invalid_value", 3, "flavor"),
    (("architecture: resnet18", "architecture: resnet9000"), "config.unknown_architecture", 4, "resnet9000"),
    (("weights/r18.safetensors", "weights/missing.safetensors"), "config.missing_weights", 5, "not found"),
    (("weights/r18.safetensors", "../../etc/passwd"), "config.path_outside_project", 5, "leaves the project"),
    (("    k: 3\n", "    k: 0\n"), "config.invalid_value", 8, "k"),
    (("output: topk", "output: [topk]"), "config.invalid_value", 7, "output"),
    (("    k: 3\n", "    k: 3\n    kwargs: {num_classes: 10}\n"), "config.weights_mismatch", 5, "do not fit"),
    (("{resize: 40, crop: 32}", "{resize: 40, crop: null}"), "config.invalid_value", 6, "fixed size"),
])
def test_bad_declaration_names_file_and_line(tmp_path: Path, weights_file: Path, change: tuple[str, str],
                                            code: str, line: int, words: str) -> None:
    old, new = change
    assert old in GOOD
    root = project_with(tmp_path, weights_file, GOOD.replace(old, new))
    error = error_of(root)
    assert error.code == code
    assert error.path == str(root / "models.yml")
    assert error.line == line
    assert words in error.message
    assert str(error).startswith(f"{root / 'models.yml'}:{line}: ")


def test_duplicate_udf_name_points_at_second_declaration(tmp_path: Path, weights_file: Path) -> None:
    second = GOOD.split("\n", 1)[1].replace("name: tiny", "name: other\n    udf: tiny_predict")
    root = project_with(tmp_path, weights_file, GOOD + second)
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert info.value.code == "config.duplicate_name"
    assert info.value.line == 9
    assert "tiny_predict" in info.value.message


def test_yaml_syntax_error_has_line(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD.replace("output: topk", "output: [topk"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert info.value.code == "config.yaml_syntax"
    assert info.value.line in (7, 8, 9)


def test_yaml_is_loaded_safely(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD.replace("name: tiny", "name: !!python/object/apply:os.system ['true']"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert info.value.code == "config.yaml_syntax"
    assert info.value.line == 2


def test_pt_state_dict_loads_with_weights_only(tmp_path: Path, weights_file: Path) -> None:
    import torch
    from safetensors.torch import load_file

    root = project_with(tmp_path, weights_file, GOOD.replace("r18.safetensors", "r18.pt"))
    torch.save(load_file(str(weights_file)), root / "weights" / "r18.pt")
    (model,) = Project.load(root).resolved
    assert model.weights.format == "safetensors"

    # A pickle that is not a plain state_dict (here: a whole module) is refused, not executed.
    torch.save(torch.nn.Linear(2, 2), root / "weights" / "r18.pt")
    error = error_of(root)
    assert error.code == "config.bad_weights"
    assert error.line == 5


def test_tensor_input_needs_shape(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD.replace("    preprocess: {resize: 40, crop: 32}\n", "    input: tensor\n"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert info.value.code == "config.invalid_value"
    assert "shape" in info.value.message
    assert info.value.line == 2


RESOLVE = """
import sys
from sqlinfer import Project
(model,) = Project.load(sys.argv[1]).resolved
print(model.plan.fingerprint, model.plan.num_outputs, len(model.plan.labels), model.plan.preprocess.resize,
      "torch" in sys.modules)
"""


def test_unchanged_models_come_from_the_cache_without_torch(tmp_path: Path, weights_file: Path) -> None:
    import subprocess
    import sys

    root = project_with(tmp_path, weights_file, GOOD)

    def resolve() -> list[str]:
        done = subprocess.run([sys.executable, "-c", RESOLVE, str(root)], capture_output=True, text=True, check=True)
        return done.stdout.split()

    first, second = resolve(), resolve()
    assert first[-1] == "True" and second[-1] == "False"  # the second command never imports torch
    assert first[:-1] == second[:-1] and first[1:4] == ["1000", "1000", "40"]
    assert (root / "target" / "resolved_models.json").is_file()


def test_changed_weights_are_checked_again(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD)
    assert Project.load(root).resolved[0].plan.num_outputs == 1000  # checked, and cached
    save_random_resnet18(root / "weights" / "r18.safetensors", num_classes=10)  # a 10-class head now
    error = error_of(root)  # the cache cannot hide that they no longer fit the declared network
    assert (error.code, error.path, error.line) == ("config.weights_mismatch", str(root / "models.yml"), 5)


def test_changed_declaration_is_checked_again(tmp_path: Path, weights_file: Path) -> None:
    root = project_with(tmp_path, weights_file, GOOD)
    assert Project.load(root).resolved[0].plan.input_shape == (3, 32, 32)
    (root / "models.yml").write_text(GOOD.replace("crop: 32", "crop: 24"))
    assert Project.load(root).resolved[0].plan.input_shape == (3, 24, 24)
