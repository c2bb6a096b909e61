"""Hostile weights files (issue 11, item 6): a pickle or TorchScript archive that would run code is
refused at the models.yml line of its `weights:` and nothing in it runs; a weights path that leaves
the project is refused unless `allow_outside_project: true`; a truncated safetensors file is a
one-line error. Every hostile file is real, and each test first shows that loading it the unsafe
way does run its payload (the marker file appears), so a refusal is not a file that was harmless.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import shlex
import textwrap
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from helpers import write_project

import sqlinfer
from sqlinfer import Project, SqlinferError
from sqlinfer.models.flavors.torchscript import ArchiveError, check_archive

pytestmark = pytest.mark.reliability

TORCHVISION = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: squeezenet1_1
    preprocess: {resize: 40, crop: 32}
    weights: WEIGHTS
"""
PYTHON = """\
models:
  - name: tiny
    flavor: python
    class: torch.nn:Linear
    kwargs: {in_features: 6, out_features: 4}
    input: tensor
    shape: [6]
    output: logits
    weights: WEIGHTS
"""
TORCHSCRIPT = """\
models:
  - name: tiny
    flavor: torchscript
    input: tensor
    shape: [2, 3]
    output: logits
    weights: WEIGHTS
"""
DECLARATIONS = {"torchvision": TORCHVISION, "python": PYTHON, "torchscript": TORCHSCRIPT}


def weights_line(models_yml: str) -> int:
    return next(number for number, line in enumerate(models_yml.splitlines(), 1) if "weights:" in line)


def project(tmp_path: Path, flavor: str, weights: str, extra: str = "") -> Path:
    models_yml = DECLARATIONS[flavor].replace("WEIGHTS", weights) + extra
    return write_project(tmp_path / "project", models_yml)


def refusal(root: Path) -> SqlinferError:
    with pytest.raises(SqlinferError) as info:
        Project.load(root).resolve_models()
    return info.value


def assert_one_line_at_weights(error: SqlinferError, root: Path, flavor: str, code: str) -> None:
    models = root / "models.yml"
    assert (error.code, error.path, error.line) == (code, str(models), weights_line(models.read_text()))
    assert str(error).startswith(f"{models}:{error.line}: model 'tiny': ")
    assert "\n" not in str(error) and "\x1b" not in str(error)  # one line, no terminal escapes


# --- pickles ---------------------------------------------------------------------------------------

class CreatesFile:
    """Unpickled, it opens ``path`` for writing (creating it): what a hostile pickle does."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class RunsShell:
    """Unpickled, it runs ``touch path`` in a shell."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(self.path)}",))


def torch_zip_payload(weights: Path, marker: Path) -> None:
    """A torch.save checkpoint (the zip format) whose state_dict holds the payload."""
    import torch

    torch.save({"weight": CreatesFile(marker)}, weights)


def raw_pickle_payload(weights: Path, marker: Path) -> None:
    """An old-style .pth: a bare pickle, protocol 2."""
    weights.write_bytes(pickle.dumps({"weight": RunsShell(marker)}, protocol=2))


def unsafe_load(weights: Path) -> None:
    """What sqlinfer must never do: load the file the way that runs its payload."""
    import torch

    if zipfile.is_zipfile(weights):
        torch.load(weights, weights_only=False)
    else:
        pickle.loads(weights.read_bytes())  # the point: this runs the payload


@pytest.mark.parametrize("flavor", ["torchvision", "python"])
@pytest.mark.parametrize(("name", "write"), [("net.pt", torch_zip_payload), ("net.pth", raw_pickle_payload)])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, flavor: str, name: str,
                                                                 write: Any) -> None:
    root = project(tmp_path, flavor, f"weights/{name}")
    marker = tmp_path / "ran"
    (root / "weights").mkdir()
    write(root / "weights" / name, marker)

    error = refusal(root)
    assert not marker.exists()  # nothing ran
    assert_one_line_at_weights(error, root, flavor, "config.bad_weights")
    assert error.message.startswith(f"model 'tiny': cannot load {name} as a state_dict (weights_only=True, "
                                    "nothing in it runs): ")
    assert re.search(r"\b(open|system)\b", error.message), error.message  # torch names the refused global

    unsafe_load(root / "weights" / name)
    assert marker.exists()  # the file was hostile: loaded unsafely, it runs its payload


def test_a_torchscript_archive_given_as_a_state_dict_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = project(tmp_path, "python", "weights/net.pt")
    (root / "weights").mkdir()
    (root / "weights" / "net.pt").write_bytes(writes_on_load(marker))
    error = refusal(root)
    assert not marker.exists()
    assert_one_line_at_weights(error, root, "python", "config.bad_weights")
    assert "TorchScript archives" in error.message


# --- TorchScript -----------------------------------------------------------------------------------

def _scripted_bytes(module: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def writes_on_load(marker: Path) -> bytes:
    """A TorchScript module whose __setstate__, which torch.jit.load runs, writes ``marker``."""
    import torch

    class WritesOnLoad(torch.nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.path = state[0]
            torch.save(torch.zeros(1), self.path)
            self.training = state[1]

    return _scripted_bytes(WritesOnLoad(str(marker)))


def writes_on_forward(marker: Path) -> bytes:
    """A TorchScript module that writes ``marker`` when it runs (sqlinfer's check runs it once)."""
    import torch

    class WritesOnForward(torch.nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.save(x, self.path)
            return x.flatten(1)

    return _scripted_bytes(WritesOnForward(str(marker)))


def respelled(archive: bytes, spelling: str) -> bytes:
    """``archive`` with its code's ``torch.save(`` written another way torch.jit.load accepts, as a
    hand-made archive would (the debug pickles, which map code positions, are left out)."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    replaced = 0
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".debug_pkl"):
                continue
            if info.filename.endswith(".py"):
                data, count = re.subn(rb"torch\.save\(", spelling.encode(), data)
                replaced += count
            target.writestr(info, data)
    assert replaced, "the archive's code has no torch.save( to respell"
    return out.getvalue()


def jit_load_and_run(data: bytes) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data))
    module(torch.zeros(1, 2, 3))


HOSTILE_ARCHIVES = {
    "torch.save in __setstate__ (runs in torch.jit.load)": lambda m: writes_on_load(m),
    "torch.save in forward (runs in the network check)": lambda m: writes_on_forward(m),
    "ops.aten.save": lambda m: respelled(writes_on_load(m), "ops.aten.save("),
    "getattr(torch, 'save')": lambda m: respelled(writes_on_load(m), "getattr(torch, 'save')("),
    "getattr(ops.aten, 'save')": lambda m: respelled(writes_on_load(m), "getattr(ops.aten, 'save')("),
}


@pytest.mark.parametrize("kind", list(HOSTILE_ARCHIVES))
def test_a_torchscript_archive_that_writes_a_file_is_refused_and_runs_nothing(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "ran"
    data = HOSTILE_ARCHIVES[kind](marker)
    root = project(tmp_path, "torchscript", "weights/net.pt")
    (root / "weights").mkdir()
    (root / "weights" / "net.pt").write_bytes(data)

    error = refusal(root)
    assert not marker.exists()  # neither loaded nor run
    assert_one_line_at_weights(error, root, "torchscript", "config.unsafe_torchscript")
    assert error.message.startswith("model 'tiny': net.pt was not loaded: its TorchScript can reach files, "
                                    "processes or other machines (")
    assert re.search(r"/code/__torch__/\S+\.py:\d+: uses (torch\.save|ops\.aten\.save|the name 'save')\)$",
                     error.message), error.message

    jit_load_and_run(data)
    assert marker.exists()  # torch.jit.load (and a forward pass) of this file does write the file


def test_a_plain_torchscript_network_passes_the_check_and_resolves(tmp_path: Path) -> None:
    import torch

    root = project(tmp_path, "torchscript", "weights/net.pt")
    (root / "weights").mkdir()
    (root / "weights" / "net.pt").write_bytes(
        _scripted_bytes(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))))
    (model,) = Project.load(root).resolve_models()
    assert (model.weights.format, model.plan.num_outputs) == ("torchscript", 4)


def test_real_networks_pass_the_archive_check() -> None:
    """No false alarm on what torch writes for ordinary networks: traced and scripted torchvision
    models and a dynamically quantized one (its packed weights are torch.classes.quantized)."""
    import torch
    import torchvision

    squeezenet = torchvision.models.squeezenet1_1(num_classes=10).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization and torch.jit are deprecated
        quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(4, 4)),
                                                           {torch.nn.Linear}, dtype=torch.qint8)
        torch.jit.save(torch.jit.trace(squeezenet, torch.zeros(1, 3, 32, 32)), buffer)
    for data in (buffer.getvalue(), _scripted_bytes(squeezenet), _scripted_bytes(quantized)):
        check_archive(data)


def archive(code: str, data_pkl: bytes = b"\x80\x02}q\x00.") -> bytes:
    """A minimal TorchScript-shaped zip: one code member and a data.pkl."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        target.writestr("archive/data.pkl", data_pkl)
        target.writestr("archive/code/__torch__.py", textwrap.dedent(code))
    return out.getvalue()


FORWARD = """\
class Net(Module):
  def forward(self: __torch__.Net, x: Tensor) -> Tensor:
    {}
"""


@pytest.mark.parametrize(("statement", "refused"), [
    ("return torch.mul(x, 2)", None),
    ("return ops.quantized.linear_dynamic(x, self.packed)", None),
    ("p : __torch__.torch.classes.quantized.LinearPackedParamsBase = self.p", None),
    ("return torch.from_file('/etc/passwd', True, 4)", "uses torch.from_file"),
    ("return ops.aten.from_file('/etc/passwd', True, 4)", "uses ops.aten.from_file"),
    ("return torch.ops.aten.save(x, '/tmp/x')", "uses torch.ops.aten.save"),
    ("ops.profiler._record_function_enter('x')", "uses ops.profiler"),
    ("return ops.c10d.allreduce_(x)", "uses ops.c10d"),
    ("s = torch.classes.dist_c10d.FileStore('/tmp/x', 1)", "uses torch.classes.dist_c10d"),
    ("f = getattr(torch, 'ops')", "uses the name 'ops'"),
    ("f = getattr(torch.ops, 'c10d')", "uses torch.ops"),
    ("return debugprims.load_tensor('x', [1], [1])", "uses debugprims.load_tensor"),
])
def test_the_archive_check_allows_computing_and_refuses_reaching_out(statement: str, refused: str | None) -> None:
    data = archive(FORWARD.format(statement))
    if refused is None:
        check_archive(data)
        return
    with pytest.raises(ArchiveError) as info:
        check_archive(data)
    assert info.value.unsafe
    assert str(info.value) == f"archive/code/__torch__.py:3: {refused}"


@pytest.mark.parametrize(("data", "unsafe", "message"), [
    (b"", False, "not a TorchScript archive (the zip torch.jit.save writes): File is not a zip file"),
    (b"PK\x03\x04 not really", False, "not a TorchScript archive (the zip torch.jit.save writes): "
                                      "File is not a zip file"),
    (archive("", data_pkl=b"\x80\x02c__torch__.torch.classes.dist_c10d\nFileStore\nq\x00."), True,
     "archive/data.pkl uses torch.classes.dist_c10d"),  # built by its C++ __setstate__ on load
    (archive("", data_pkl=b"\x80\x02X\n\x00\x00\x00aten::saveq\x00."), True,
     "archive/data.pkl names the operator ::save"),  # as a mobile archive's bytecode would
    (archive("x = (", data_pkl=b"\x80\x02}q\x00."), True,
     "archive/code/__torch__.py: its code cannot be checked (SyntaxError)"),
])
def test_archives_that_cannot_be_checked_or_name_refused_things(data: bytes, unsafe: bool, message: str) -> None:
    with pytest.raises(ArchiveError) as info:
        check_archive(data)
    assert (info.value.unsafe, str(info.value)) == (unsafe, message)


def test_an_archive_with_two_members_of_one_name_is_refused() -> None:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        with zipfile.ZipFile(out, "w") as target:
            target.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
            target.writestr("archive/code/__torch__.py", "x = 1\n")
            target.writestr("archive/code/__torch__.py", "torch.save(x, 'y')\n")
    with pytest.raises(ArchiveError, match="two members of the same name"):
        check_archive(out.getvalue())


# --- the python flavor's class ---------------------------------------------------------------------

def test_a_class_that_is_not_a_module_is_refused_before_it_is_called(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    marker = tmp_path / "ran"
    models_yml = PYTHON.replace("class: torch.nn:Linear", "class: os:system").replace(
        "kwargs: {in_features: 6, out_features: 4}", f"kwargs: {{command: 'touch {marker}'}}")
    root = write_project(tmp_path / "project", models_yml.replace("WEIGHTS", "weights/net.safetensors"))
    (root / "weights").mkdir()
    save_file({"weight": torch.zeros(4, 6), "bias": torch.zeros(4)}, str(root / "weights" / "net.safetensors"))
    error = refusal(root)
    assert not marker.exists()
    assert (error.code, error.line) == ("config.bad_class", 4)
    assert error.message == "model 'tiny': os:system is not a torch.nn.Module class"


# --- paths -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def squeezenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("outside") / "net.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.squeezenet1_1().state_dict().items()}, str(path))
    return path


def outside_weights(tmp_path: Path, squeezenet_file: Path, how: str) -> tuple[Path, str]:
    """A project whose weights are in ``tmp_path/elsewhere`` and what its `weights:` says."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "net.safetensors").write_bytes(squeezenet_file.read_bytes())
    root = tmp_path / "project"
    root.mkdir()
    if how == "dotdot":
        return root, "../elsewhere/net.safetensors"
    if how == "absolute":
        return root, str(elsewhere / "net.safetensors")
    (root / "weights").mkdir()
    (root / "weights" / "net.safetensors").symlink_to(elsewhere / "net.safetensors")
    return root, "weights/net.safetensors"


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_weights_outside_the_project_are_refused_unless_allowed(tmp_path: Path, squeezenet_file: Path,
                                                                 how: str) -> None:
    root, weights = outside_weights(tmp_path, squeezenet_file, how)
    write_project(root, TORCHVISION.replace("WEIGHTS", weights))
    error = refusal(root)
    assert_one_line_at_weights(error, root, "torchvision", "config.path_outside_project")
    link = f" (a link to {tmp_path.resolve() / 'elsewhere' / 'net.safetensors'})" if how == "symlink" else ""
    assert error.message == f"model 'tiny': weights path {weights!r} leaves the project folder{link}"

    write_project(root, TORCHVISION.replace("WEIGHTS", weights) + "    allow_outside_project: true\n")
    (model,) = Project.load(root).resolve_models()
    assert model.weights.data == squeezenet_file.read_bytes()


def test_a_labels_file_outside_the_project_is_refused_unless_allowed(tmp_path: Path, squeezenet_file: Path) -> None:
    root = tmp_path / "project"
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "net.safetensors").write_bytes(squeezenet_file.read_bytes())
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(1000)))
    declared = TORCHVISION.replace("WEIGHTS", "weights/net.safetensors") + "    labels: ../labels.txt\n"
    write_project(root, declared)
    error = refusal(root)
    assert (error.code, error.line) == ("config.path_outside_project", 7)
    assert error.message == "model 'tiny': labels path '../labels.txt' leaves the project folder"

    write_project(root, declared + "    allow_outside_project: true\n")
    (model,) = Project.load(root).resolve_models()
    assert model.plan.labels is not None and model.plan.labels[3] == "class 3"


def test_allowing_outside_paths_does_not_change_the_fingerprint(tmp_path: Path, squeezenet_file: Path) -> None:
    fingerprints = []
    for allow in ("false", "true"):
        root = tmp_path / allow
        (root / "weights").mkdir(parents=True)
        (root / "weights" / "net.safetensors").write_bytes(squeezenet_file.read_bytes())
        write_project(root, TORCHVISION.replace("WEIGHTS", "weights/net.safetensors")
                      + f"    allow_outside_project: {allow}\n")
        fingerprints.append(Project.load(root).resolve_models()[0].plan.fingerprint)
    assert fingerprints[0] == fingerprints[1]


# --- truncated safetensors -------------------------------------------------------------------------

@pytest.mark.parametrize("flavor", ["torchvision", "python"])
@pytest.mark.parametrize("keep", [0, 4, 8, 40, -100, -1])
def test_a_truncated_safetensors_file_is_a_clear_error(tmp_path: Path, squeezenet_file: Path, flavor: str,
                                                       keep: int) -> None:
    import torch
    from safetensors.torch import save

    whole = (squeezenet_file.read_bytes() if flavor == "torchvision"
             else save({"weight": torch.ones(4, 6), "bias": torch.ones(4)}))
    root = project(tmp_path, flavor, "weights/net.safetensors")
    (root / "weights").mkdir()
    (root / "weights" / "net.safetensors").write_bytes(whole[:keep])  # keep < 0: cut that many bytes off the end
    error = refusal(root)
    assert_one_line_at_weights(error, root, flavor, "config.bad_weights")
    assert error.message.startswith("model 'tiny': cannot read safetensors file net.safetensors: ")


def test_the_models_doc_example_allows_weights_outside_the_project(tmp_path: Path) -> None:
    from sqlinfer.models.flavors.base import weights_path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "allow_outside_project: true" in b]
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "resnet50.safetensors").write_bytes(b"weights")
    root = write_project(tmp_path / "project", block)
    (item,) = Project.load(root).models
    assert weights_path(item, root) == tmp_path.resolve() / "shared" / "resnet50.safetensors"

    write_project(root, block.replace("    allow_outside_project: true\n", ""))
    (item,) = Project.load(root).models
    with pytest.raises(SqlinferError) as info:
        weights_path(item, root)
    assert (info.value.code, info.value.line) == ("config.path_outside_project", 5)


def test_package_weights_must_name_an_installed_package_and_stay_inside_it(tmp_path: Path) -> None:
    """`weights: package:MODULE/PATH` reads a file of an installed package (the photos_efficientnet
    example's weights): the package must exist, and the path cannot leave its folder."""
    missing = project(tmp_path / "a", "python", "package:no_such_package_xyz/weights.pth")
    error = refusal(missing)
    assert_one_line_at_weights(error, missing, "python", "config.missing_weights")
    assert "no installed package 'no_such_package_xyz'" in error.message

    # sqlinfer is installed (this checkout): its folder holds no weights, and ../ leaves it.
    escaping = project(tmp_path / "b", "python", "package:sqlinfer/../pyproject.toml")
    assert_one_line_at_weights(refusal(escaping), escaping, "python", "config.path_outside_project")
    absent = project(tmp_path / "c", "python", "package:sqlinfer/weights.pth")
    error = refusal(absent)
    assert_one_line_at_weights(error, absent, "python", "config.missing_weights")
    assert f"weights file not found: {Path(sqlinfer.__file__).parent / 'weights.pth'}" in error.message
