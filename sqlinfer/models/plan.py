"""What a worker needs to know about a model, minus the weights: a small picklable description."""

from __future__ import annotations

from dataclasses import dataclass

from sqlinfer.models.declaration import ModelDecl, Preprocess

# Rows per forward pass when the declaration sets no `batch_size`, by the device the worker gets.
# From bench/ (docs/performance.md): on CPU small batches are fastest per image, as a batch's
# activations then stay in the core's cache: ResNet-18 at 224x224 on one thread of an AVX-512 core
# (2 MB of L2) spent 22.5 ms an image at batch 8 against 25.0 at 16 and 24-27 at 32.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


def checked_name(udf_name: str) -> str:
    """``<function>_checked``: the model function that also says why a row has no result."""
    return f"{udf_name}_checked"


@dataclass(frozen=True)
class ModelPlan:
    """A resolved declaration: defaults filled in, sizes fixed, labels read, fingerprint computed.

    It travels inside the UDF's closure; the weights travel separately as a Spark broadcast.
    """

    decl: ModelDecl
    preprocess: Preprocess | None  # image input only; defaults applied
    input_shape: tuple[int, ...]  # one row's tensor: (C, H, W) for images, the declared shape for tensors
    labels: tuple[str, ...] | None
    num_outputs: int
    fingerprint: str  # sha256 of the declaration, resolved preprocessing, labels and weights

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def udf_name(self) -> str:
        return self.decl.udf_name

    @property
    def checked_udf_name(self) -> str:
        """The companion function that returns each row's result with why it failed, if it did."""
        return checked_name(self.decl.udf_name)

    @property
    def checked_return_type(self) -> str:
        return f"struct<result: {self.decl.return_type}, error: struct<kind: string, message: string>>"

    def batch_size(self, device: str) -> int:
        return self.decl.batch_size or DEFAULT_BATCH_SIZE["cpu" if device == "cpu" else "cuda"]
