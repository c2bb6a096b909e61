"""Flavor `python`: the user's own ``nn.Module`` class (``class: package.module:ClassName``),
constructed with ``kwargs`` and loaded from a state_dict file, or from the weights of a model
logged with ``mlflow.pytorch`` (``weights: models:/NAME@ALIAS``; :mod:`sqlinfer.models.mlflow_registry`).

The module must be importable on the workers: either installed in their Python environment, or a
``.py`` file inside the project folder, which sqlinfer ships to the workers (``SparkContext.addPyFile``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.models.declaration import Located, ModelDecl
from sqlinfer.models.flavors.base import (
    REGISTRY_SCHEMES,
    Flavor,
    Weights,
    load_state,
    safetensors_file,
    state_dict_weights,
    weights_path,
)

if TYPE_CHECKING:
    import torch


def split_class_path(decl: ModelDecl) -> tuple[str, str]:
    assert decl.class_path is not None
    module, _, name = decl.class_path.partition(":")
    return module, name


def project_module_file(decl: ModelDecl, root: Path) -> Path | None:
    """The project's own file for the declared module, if the module lives in the project."""
    module, _ = split_class_path(decl)
    candidate = root.joinpath(*module.split(".")).with_suffix(".py")
    return candidate if candidate.is_file() else None


def package_files(module: str, root: Path) -> tuple[Path, ...]:
    """The ``.py`` files of the top-level package (or module) ``module`` belongs to: the project's
    when the project has the module (as :func:`check_class` imports it), else the one this Python
    would import. Found without importing anything (a top-level name's spec needs no import): a
    kept session's client stays quick, and a class's helpers in sibling modules count as its code."""
    top = module.split(".")[0]
    if root.joinpath(*module.split(".")).with_suffix(".py").is_file():
        own = root / top
        return tuple(sorted(own.rglob("*.py"))) if own.is_dir() else (own.with_suffix(".py"),)
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ()
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(sorted(path for folder in spec.submodule_search_locations for path in Path(folder).rglob("*.py")))
    return (Path(spec.origin),) if spec.origin and Path(spec.origin).is_file() else ()


def load_class(decl: ModelDecl) -> Any:
    """What ``class`` names (the driver checks that it is an nn.Module class before any build)."""
    module_name, class_name = split_class_path(decl)
    return getattr(importlib.import_module(module_name), class_name)


def check_class(item: Located, root: Path) -> None:
    """The declared class imports (a project module first) and is an nn.Module class."""
    if project_module_file(item.decl, root) is not None and str(root) not in sys.path:
        # Driver side; workers get the file through SparkContext.addPyFile.
        sys.path.insert(0, str(root))
    import torch

    try:
        cls = load_class(item.decl)
    except (ImportError, AttributeError) as exc:
        raise item.error(f"cannot import {item.decl.class_path}: {exc}", code="config.bad_class",
                         key="class") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        # `class: os:system` with `kwargs: {command: ...}` would otherwise be called to "build" it.
        raise item.error(f"{item.decl.class_path} is not a torch.nn.Module class", code="config.bad_class",
                         key="class")


def build_class(decl: ModelDecl, weights: Weights) -> torch.nn.Module:
    """The declared class, constructed with ``kwargs`` and loaded with the state_dict in ``weights``."""
    module: torch.nn.Module = load_class(decl)(**decl.kwargs)
    load_state(module, weights)
    return module


class Python(Flavor):
    def validate(self, decl: ModelDecl) -> None:
        if not decl.class_path:
            raise ValueError("flavor python needs `class: module:Class`")
        if ":" not in decl.class_path:
            raise ValueError("`class` must look like module.path:ClassName")
        if not decl.weights:
            raise ValueError("flavor python needs `weights` (a file)")

    def load_weights(self, item: Located, root: Path) -> Weights:
        check_class(item, root)
        if item.decl.weights and item.decl.weights.startswith(REGISTRY_SCHEMES):
            from sqlinfer.models.mlflow_registry import state_dict_weights as registry_weights

            return registry_weights(item, item.decl.weights, root)
        return state_dict_weights(item, weights_path(item, root))

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return safetensors_file(item, root)

    def describe(self, item: Located, weights: Weights) -> str:
        resolved = f" = {weights.origin}" if weights.origin not in ("", item.decl.weights) else ""
        return f"{item.decl.class_path}, {item.decl.weights}{resolved}"

    def source_files(self, item: Located, root: Path) -> tuple[Path, ...] | None:
        module_file = project_module_file(item.decl, root)
        return (module_file,) if module_file else None

    def code_files(self, item: Located, root: Path) -> tuple[Path, ...]:
        return package_files(split_class_path(item.decl)[0], root)

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        return build_class(decl, weights)


FLAVOR = Python()
