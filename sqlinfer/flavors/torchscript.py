"""Flavor `torchscript`: a module saved with ``torch.jit.save`` (scripted or traced)."""

from __future__ import annotations

import io
from pathlib import Path

from sqlinfer.flavors import Defaults, Weights, weights_path
from sqlinfer.spec import Located, ModelDecl


def load_weights(item: Located, root: Path) -> Weights:
    return Weights("torchscript", weights_path(item, root).read_bytes())


def build(decl: ModelDecl, weights: Weights):  # noqa: ANN201
    import torch

    return torch.jit.load(io.BytesIO(weights.data), map_location="cpu")


def defaults(decl: ModelDecl) -> Defaults:
    return Defaults()
