"""Flavor `torchvision`: any classification network of ``torchvision.models`` by name.

Weights are a local state_dict file, a torchvision weights name (``IMAGENET1K_V2``, ``DEFAULT``),
resolved through torchvision's own cache and download, or ``random`` (a seeded random init made
on the driver, so every worker gets the same network).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.errors import closest
from sqlinfer.models.declaration import Located, ModelDecl, Preprocess
from sqlinfer.models.flavors.base import (
    Defaults,
    Flavor,
    Weights,
    load_state,
    safetensors_file,
    state_dict_weights,
    state_tensors,
    weights_path,
)
from sqlinfer.models.skip_init import constructed_for_weights
from sqlinfer.models.torchvision_import import import_torchvision

if TYPE_CHECKING:
    import torch

RANDOM = "random"


def classification_models() -> list[str]:
    torchvision = import_torchvision()

    return torchvision.models.list_models(module=torchvision.models)


def _weights_enum(decl: ModelDecl) -> Any:
    """torchvision's WeightsEnum of the architecture, or None."""
    torchvision = import_torchvision()

    try:
        return torchvision.models.get_model_weights(decl.architecture)
    except (ValueError, KeyError):
        return None


def _is_weights_name(decl: ModelDecl) -> bool:
    enum = _weights_enum(decl)
    return bool(decl.weights and enum is not None and "/" not in decl.weights and "." not in decl.weights
                and (decl.weights == "DEFAULT" or decl.weights in enum.__members__))


def _new(decl: ModelDecl) -> torch.nn.Module:
    torchvision = import_torchvision()

    module: torch.nn.Module = torchvision.models.get_model(decl.architecture, weights=None, **decl.kwargs)
    return module


class TorchVision(Flavor):
    worker_modules = ("torchvision",)

    def describe(self, item: Located, weights: Weights) -> str:
        return f"torchvision.models.{item.decl.architecture}, {item.decl.weights}"

    def validate(self, decl: ModelDecl) -> None:
        if not decl.architecture:
            raise ValueError("flavor torchvision needs `architecture` (e.g. resnet50)")

    def check(self, item: Located) -> None:
        known = classification_models()
        if item.decl.architecture not in known:
            assert item.decl.architecture is not None
            raise item.error(f"unknown torchvision architecture {item.decl.architecture!r}"
                             f"{closest(item.decl.architecture, known)} "
                             "(see torchvision.models.list_models(module=torchvision.models))",
                             code="config.unknown_architecture", key="architecture")

    def load_weights(self, item: Located, root: Path) -> Weights:
        return _load_weights(item, root)

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return safetensors_file(item, root)

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        # No random initialization: the strict load replaces every tensor (sqlinfer/models/skip_init.py).
        module = constructed_for_weights(lambda: _new(decl))
        load_state(module, weights)
        return module

    def defaults(self, decl: ModelDecl) -> Defaults:
        return _defaults(decl)


def _load_weights(item: Located, root: Path) -> Weights:
    import torch
    from safetensors.torch import save

    decl = item.decl
    if decl.weights in (None, RANDOM):
        if decl.weights is None:
            raise item.error("needs `weights`: a state_dict file, a torchvision weights name "
                             "(e.g. IMAGENET1K_V1) or `random`", code="config.missing_key")
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return Weights("safetensors", save(state_tensors(_new(decl).state_dict())))
    if _is_weights_name(decl):
        enum = _weights_enum(decl)
        try:
            state = enum[decl.weights].get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # download and cache failures of any kind
            raise item.error(f"cannot fetch torchvision weights {decl.weights}: {exc}",
                             code="config.bad_weights", key="weights") from None
        return Weights("safetensors", save(state_tensors(state)))
    return state_dict_weights(item, weights_path(item, root))


def _defaults(decl: ModelDecl) -> Defaults:
    """The weights' own transforms and class names (for a file, those of the architecture's DEFAULT
    weights: the metadata ships with torchvision, nothing is downloaded)."""
    enum = _weights_enum(decl)
    if enum is None:
        return Defaults()
    entry = enum[decl.weights] if _is_weights_name(decl) else getattr(enum, "DEFAULT", None)
    if entry is None:
        return Defaults()
    transform = entry.transforms()
    interpolation = getattr(transform, "interpolation", None)
    preprocess = Preprocess(
        resize=int(transform.resize_size[0]),
        crop=int(transform.crop_size[0]),
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        interpolation=interpolation.value if interpolation is not None else "bilinear",
    )
    return Defaults(preprocess=preprocess, labels=tuple(entry.meta.get("categories") or ()) or None)


FLAVOR = TorchVision()
