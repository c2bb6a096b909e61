"""Flavor `python`: the user's own ``nn.Module`` class (``class: package.module:ClassName``),
constructed with ``kwargs`` and loaded from a state_dict file.

The module must be importable on the workers: either installed in their Python environment, or a
``.py`` file inside the project folder, which sqlinfer ships to the workers (``SparkContext.addPyFile``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from sqlinfer.flavors import Defaults, Weights, load_state, state_dict_weights, weights_path
from sqlinfer.spec import Located, ModelDecl


def split_class_path(decl: ModelDecl) -> tuple[str, str]:
    assert decl.class_path is not None
    module, _, name = decl.class_path.partition(":")
    return module, name


def project_module_file(decl: ModelDecl, root: Path) -> Path | None:
    """The project's own file for the declared module, if the module lives in the project."""
    module, _ = split_class_path(decl)
    candidate = root.joinpath(*module.split(".")).with_suffix(".py")
    return candidate if candidate.is_file() else None


def load_class(decl: ModelDecl) -> type:
    module_name, class_name = split_class_path(decl)
    return getattr(importlib.import_module(module_name), class_name)


def load_weights(item: Located, root: Path) -> Weights:
    if project_module_file(item.decl, root) is not None and str(root) not in sys.path:
        # Driver side; workers get the file through SparkContext.addPyFile.
        sys.path.insert(0, str(root))
    try:
        load_class(item.decl)
    except (ImportError, AttributeError) as exc:
        raise item.error(f"cannot import {item.decl.class_path}: {exc}", code="config.bad_class",
                         key="class") from None
    return state_dict_weights(item, weights_path(item, root))


def build(decl: ModelDecl, weights: Weights):  # noqa: ANN201
    module = load_class(decl)(**decl.kwargs)
    load_state(module, weights)
    return module


def defaults(decl: ModelDecl) -> Defaults:
    return Defaults()
