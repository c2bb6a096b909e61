"""Plain PyTorch, as a user writes it without sqlinfer: the network from torchvision with its
state_dict, torchvision's classic eval transforms over PIL images, a Dataset and a DataLoader.

The reference, the naive Spark recipe and the predict_batch_udf recipe all use these functions, so
the contenders differ only in how they run the same code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def import_torchvision() -> Any:
    """torchvision without the torch._dynamo its import drags in (1 s of CPU per process): the
    deferral sqlinfer's worker daemon applies (sqlinfer/models/torchvision_import.py), which a user
    can copy in twenty lines, so the end-to-end script is given it too."""
    from sqlinfer.models.torchvision_import import import_torchvision

    return import_torchvision()


def transform(size: int) -> Any:
    """Resize(size * 8/7) + CenterCrop(size) + ToTensor + Normalize: torchvision's ImageNet eval."""
    transforms = import_torchvision().transforms

    return transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size),
                               transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def load_state(weights: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(weights))


def network(architecture: str, state: dict, device: str = "cpu") -> Any:
    model = import_torchvision().models.get_model(architecture, weights=None)
    model.load_state_dict(state)
    return model.eval().to(device)


def tuned(model: Any) -> Any:
    """The two tricks sqlinfer applies that a user can too, in two lines: batch norms folded into
    the convolutions before them (torch.fx), and the channels-last layout oneDNN runs faster."""
    import torch
    from torch.fx.experimental.optimization import fuse

    return fuse(model).to(memory_format=torch.channels_last)


class BytesDataset:
    """Encoded images (bytes) -> normalized tensors; a map-style torch Dataset."""

    def __init__(self, blobs: list[bytes], size: int) -> None:
        self.blobs = blobs
        self.transform = transform(size)

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        return self.transform(Image.open(io.BytesIO(self.blobs[index])).convert("RGB"))


class FileDataset(BytesDataset):
    """The same, reading each file when it is needed (the end-to-end script)."""

    def __init__(self, paths: list[Path], size: int) -> None:
        super().__init__([], size)
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        from PIL import Image

        return self.transform(Image.open(self.paths[index]).convert("RGB"))
