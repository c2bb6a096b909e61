"""Flavors: how a declared model's weights are read on the driver and its network built on a worker.

Every flavor module exposes three functions:

- ``load_weights(item, root) -> Weights``: driver side, reads/serializes the weights once;
- ``build(decl, weights) -> torch.nn.Module``: worker side (and the driver's check), from bytes;
- ``defaults(decl) -> Defaults``: preprocessing and class names to use when not declared.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

from sqlinfer.spec import Located, Preprocess


@dataclass(frozen=True)
class Weights:
    """What the driver broadcasts to workers: the weights as one serialized blob."""

    format: Literal["safetensors", "torchscript"]
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Defaults:
    preprocess: Preprocess | None = None
    labels: tuple[str, ...] | None = None


def get(flavor: str) -> ModuleType:
    return importlib.import_module(f"sqlinfer.flavors.{flavor}")


def weights_path(item: Located, root: Path) -> Path:
    """The declared weights file, which must exist inside the project folder."""
    assert item.decl.weights is not None
    path = (root / item.decl.weights).resolve()
    if not path.is_relative_to(root.resolve()):
        raise item.error(f"weights path {item.decl.weights!r} leaves the project folder",
                         code="config.path_outside_project", key="weights")
    if not path.is_file():
        raise item.error(f"weights file not found: {path}", code="config.missing_weights", key="weights")
    return path


def state_dict_weights(item: Located, path: Path) -> Weights:
    """A state_dict file (`.safetensors`, or `.pt/.pth` read with ``weights_only=True``) as safetensors bytes."""
    import torch
    from safetensors.torch import save

    if path.suffix == ".safetensors":
        data = path.read_bytes()
        try:
            from safetensors.torch import load

            load(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad weights file
            raise item.error(f"cannot read safetensors file {path.name}: {exc}",
                             code="config.bad_weights", key="weights") from None
        return Weights("safetensors", data)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise item.error(f"cannot load {path.name} as a state_dict (weights_only=True): {exc}",
                         code="config.bad_weights", key="weights") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise item.error(f"{path.name} does not hold a state_dict (a mapping of names to tensors)",
                         code="config.bad_weights", key="weights")
    return Weights("safetensors", save(state_tensors(state)))


def state_tensors(state: dict) -> dict:
    """Tensors safetensors can store: contiguous, and no two sharing memory."""
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def load_state(module: "torch.nn.Module", weights: Weights) -> None:  # type: ignore[name-defined]  # noqa: F821
    from safetensors.torch import load

    module.load_state_dict(load(weights.data), strict=True)
