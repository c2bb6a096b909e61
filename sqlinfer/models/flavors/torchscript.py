"""Flavor `torchscript`: a module saved with ``torch.jit.save`` (scripted or traced)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from sqlinfer.models.declaration import Located, ModelDecl
from sqlinfer.models.flavors.base import Flavor, Weights, weights_path

if TYPE_CHECKING:
    import torch


class TorchScript(Flavor):
    def validate(self, decl: ModelDecl) -> None:
        if not decl.weights:
            raise ValueError("flavor torchscript needs `weights` (a file)")
        if decl.output == "embedding" and decl.embedding_layer:
            raise ValueError("embedding_layer is not supported for torchscript (hooks need eager modules)")

    def load_weights(self, item: Located, root: Path) -> Weights:
        return Weights("torchscript", weights_path(item, root).read_bytes())

    def file_weights(self, item: Located, root: Path) -> Weights | None:
        return self.load_weights(item, root)

    def build(self, decl: ModelDecl, weights: Weights) -> torch.nn.Module:
        import torch

        module: torch.nn.Module = torch.jit.load(io.BytesIO(weights.data), map_location="cpu")
        return module


FLAVOR = TorchScript()
