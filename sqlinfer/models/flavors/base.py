"""The flavor contract (:class:`Flavor`) and what every flavor shares: the weights blob the driver
broadcasts, the defaults a flavor may supply, and reading state_dict files safely.

A ``.pt``/``.pth`` file is a pickle, and unpickling can run any code the file names; it is read
only with torch's restricted unpickler (``weights_only=True``: tensors, containers and numbers),
which refuses anything else before it is built. A weights file must be inside the project folder
(after following links) unless the declaration says ``allow_outside_project: true``.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlinfer.models.declaration import Located, ModelDecl, Preprocess
from sqlinfer.paths import inside

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class FileStamp:
    """A file as the driver found it just before reading it: where it is, its size, modification
    time and inode. A worker on the same machine compares it with the file's own before reading
    the file in place of a broadcast (sqlinfer/models/udf.py): a file changed since does not match."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        status = path.stat()
        return cls(str(path), status.st_size, status.st_mtime_ns, status.st_ino)


@dataclass(frozen=True)
class Weights:
    """What the driver ships to workers: the weights as one serialized blob, where they were read
    from when that is more than the blob (an MLflow model version), and the file the blob is,
    byte for byte, when it is one (None: weights generated, converted or downloaded)."""

    format: Literal["safetensors", "torchscript", "onnx", "pt2", "mlflow"]
    data: bytes
    origin: str = ""
    file: FileStamp | None = None

    @classmethod
    def read(cls, format: Literal["safetensors", "torchscript", "onnx"], path: Path) -> Weights:
        """A weights file as it is on disk, stamped before it is read: a file that changes while
        it is read has a later stamp than its bytes, and no worker will take it for them."""
        stamp = FileStamp.of(path)
        return cls(format, path.read_bytes(), file=stamp)

    @cached_property  # the blob may be gigabytes; several steps of a command name it
    def digest(self) -> str:
        # The origin counts: a registry alias moved to a version with the same bytes is still a new model.
        digest = hashlib.sha256(f"{self.origin}\0".encode() if self.origin else b"")
        digest.update(self.data)
        return digest.hexdigest()


@dataclass(frozen=True)
class Defaults:
    """Preprocessing and class names a flavor supplies where the declaration gives none."""

    preprocess: Preprocess | None = None
    labels: tuple[str, ...] | None = None


class Flavor(Protocol):
    """What each flavor module's ``FLAVOR`` does. Driver-side methods get the :class:`Located`
    declaration (errors name its file and line) and the project folder; ``build`` runs on the
    workers and in the driver's check, from the broadcast weights alone. A flavor class subclasses
    this protocol to take the defaults of ``check``, ``defaults`` and ``source_files``."""

    # Modules its networks import in the workers beyond torch: the worker daemon imports them
    # before it forks (sqlinfer/runtime/daemon.py), only for sessions with a model of this flavor.
    worker_modules: tuple[str, ...] = ()

    def validate(self, decl: ModelDecl) -> None:
        """Keys this flavor needs or refuses; raise ValueError (reported at the declaration's line).
        Runs while models.yml is read: no torch import."""

    def check(self, item: Located) -> None:
        """Checks that need the flavor's library but not the weights (e.g. a known architecture)."""
        return None

    def defaults(self, decl: ModelDecl) -> Defaults:
        """Preprocessing and labels to use where the declaration gives none."""
        return Defaults()

    def load_weights(self, item: Located, root: Path) -> Weights:
        """Read (or generate) the weights once, on the driver, as the blob the workers get."""

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        """The weights when the declared file is broadcast exactly as it is on disk (so an unchanged
        file means an unchanged model), else None (weights generated, downloaded or converted)."""

    def source_files(self, item: Located, root: Path) -> tuple[Path, ...] | None:
        """Project files the network's code comes from, shipped to the workers; None when the code
        lives outside the project, where its changes cannot be tracked."""
        return ()

    def code_files(self, item: Located, root: Path) -> tuple[Path, ...]:
        """Files whose edit must restart a kept session (sqlinfer/runtime/kept_session.py), whose
        workers keep the code they imported: the project's (:meth:`source_files`) by default."""
        return self.source_files(item, root) or ()

    def labels_in(self, weights: Weights) -> tuple[str, ...] | None:
        """Class names the weights carry (e.g. a config's ``id2label``), used where neither the
        declaration nor :meth:`defaults` gives any."""
        return None

    def describe(self, item: Located, weights: Weights) -> str:
        """Where the model comes from, for `sqlinfer models` (the weights file by default)."""
        return item.decl.weights or "-"

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        """The network, from the declaration and the broadcast weights (worker side)."""


# `weights: package:MODULE/PATH`: a file that ships inside an installed Python package.
PACKAGE_PREFIX = "package:"
# `weights: models:/NAME@ALIAS` (python flavor), `uri:` (mlflow flavor): a model in MLflow.
REGISTRY_SCHEMES = ("models:/", "runs:/")


def _declared_path(item: Located, root: Path) -> Path:
    assert item.decl.weights is not None
    if item.decl.weights.startswith(PACKAGE_PREFIX):
        return package_file(item)
    return inside(root, item.decl.weights, what=f"model {item.decl.name!r}: weights path", path=item.path,
                  line=item.raw.line_of("weights"), allow_outside=item.decl.allow_outside_project)


def weights_path(item: Located, root: Path) -> Path:
    """The declared weights file, which must exist inside the project folder (or, for
    ``package:MODULE/PATH``, inside that installed package's folder)."""
    path = _declared_path(item, root)
    if not path.is_file():
        raise item.error(f"weights file not found: {path}", code="config.missing_weights", key="weights")
    return path


def model_folder(item: Located, root: Path) -> Path:
    """The declared weights folder (a saved model's directory), with the same rules as a file."""
    path = _declared_path(item, root)
    if not path.is_dir():
        raise item.error(f"model folder not found: {path}", code="config.missing_weights", key="weights")
    return path


def package_file(item: Located) -> Path:
    """``package:MODULE/PATH``: PATH inside the folder of the installed package MODULE (found by
    the import machinery, without running the package's own code), links followed; a path that leaves that folder is
    refused as a project path would be. Weights that ship as a pip package are found wherever the
    package is installed, and the project keeps no copy of them."""
    import importlib.util

    assert item.decl.weights is not None
    module, _, relative = item.decl.weights.removeprefix(PACKAGE_PREFIX).partition("/")
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders or not relative:
        raise item.error(f"weights {item.decl.weights!r}: no installed package {module!r} (install it, e.g. with "
                         "the extra the project's README names; the form is package:MODULE/PATH)",
                         code="config.missing_weights", key="weights")
    return inside(Path(folders[0]), relative, what=f"model {item.decl.name!r}: weights path", path=item.path,
                  line=item.raw.line_of("weights"))


def state_dict_weights(item: Located, path: Path) -> Weights:
    """A state_dict file (`.safetensors`, or `.pt/.pth` read with ``weights_only=True``) as safetensors bytes."""
    import torch
    from safetensors.torch import save

    if path.suffix == ".safetensors":
        weights = Weights.read("safetensors", path)
        try:
            from safetensors.torch import load

            load(weights.data)
        except Exception as exc:  # any parse failure is a bad weights file
            raise item.error(f"cannot read safetensors file {path.name}: {exc}",
                             code="config.bad_weights", key="weights") from None
        return weights
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write: the error below says it all.
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, or not a torch file
        raise item.error(f"cannot load {path.name} as a state_dict (weights_only=True, nothing in it runs): "
                         f"{refusal(exc)}", code="config.bad_weights", key="weights") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise item.error(f"{path.name} does not hold a state_dict (a mapping of names to tensors)",
                         code="config.bad_weights", key="weights")
    return Weights("safetensors", save(state_tensors(state)))


def refusal(exc: BaseException) -> str:
    """torch.load's reason for refusing a file, in one line. Its message is paragraphs of advice
    (one option being to load the file unsafely) around the line that names what the pickle holds,
    such as ``Unsupported global: GLOBAL posix.system was not an allowed global by default``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch puts terminal bold in it
    found = (re.search(r"WeightsUnpickler error:\s*(.+)", text)
             or re.search(r"^(.*\b(?:GLOBAL|Unsupported)\b.*)$", text, re.M))
    reason = found.group(1) if found else (text.splitlines() or [type(exc).__name__])[0]
    return reason.split(". ")[0].strip().rstrip(".")


def state_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """Tensors safetensors can store: contiguous, and no two sharing memory."""
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def safetensors_file(item: Located, root: Path) -> Weights | None:
    """A declared ``.safetensors`` file as it is on disk, or None for any other weights."""
    if item.decl.weights is None or not item.decl.weights.endswith(".safetensors"):
        return None
    return Weights.read("safetensors", weights_path(item, root))


def load_state(module: torch.nn.Module, weights: Weights) -> None:
    from safetensors.torch import load

    module.load_state_dict(load(weights.data), strict=True)
