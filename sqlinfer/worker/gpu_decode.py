"""Batched JPEG decoding on the model's device, then resize and center crop there too.

On a CUDA worker the rows of a batch that :func:`~sqlinfer.worker.jpeg.inspect_jpeg` finds whole
and supported go to ``torchvision.io.decode_jpeg`` together (nvJPEG); every other row (PNG, CMYK,
grayscale, truncated, over ``max_pixels``, ...) is decoded on the CPU by
:func:`~sqlinfer.worker.decode.decode_image`, so bad rows are reported exactly as without GPU
decoding. Sizes and order of operations are the CPU path's (torchvision's eval transforms):
resize (shorter side, or an exact size) with antialiasing, then center crop with zero padding.
Pixels differ from PIL's by a few levels (chroma upsampling in nvJPEG, antialiasing in torch's
resize): ``decoder: cpu`` keeps the torchvision-exact CPU pipeline.

``device`` may be ``cpu``: torchvision's CPU decoder then stands in for nvJPEG, which is how the
routing is tested on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlinfer.models.declaration import Preprocess
from sqlinfer.worker.decode import resize_size
from sqlinfer.worker.jpeg import inspect_jpeg

if TYPE_CHECKING:
    import torch


def wants_gpu_decode(pp: Preprocess | None, device: str) -> bool:
    """Whether a batch for ``device`` decodes JPEGs on the device (``preprocess.decoder``)."""
    if pp is None or pp.color_mode != "RGB" or pp.decoder == "cpu":
        return False
    return pp.decoder == "gpu" or device.startswith("cuda")


@dataclass
class Routed:
    """A batch's rows split between the device decoder and the CPU."""

    device_rows: list[int]
    cpu_rows: list[int]


def route(values: Sequence[bytes | None], pp: Preprocess) -> Routed:
    """Rows the device decoder can take: whole, supported JPEGs within ``max_pixels``."""
    device_rows, cpu_rows = [], []
    for row, data in enumerate(values):
        info = inspect_jpeg(data) if data else None
        if info is not None and info.gpu_reason is None and info.width * info.height <= pp.max_pixels:
            device_rows.append(row)
        else:
            cpu_rows.append(row)
    return Routed(device_rows, cpu_rows)


def decode_on_device(blobs: Sequence[bytes], pp: Preprocess, device: str) -> list[Resized] | None:
    """The JPEGs decoded, resized and cropped on ``device``, in groups of images of one size (each
    group resized in one call). None when the decoder refuses the batch (it fails a batch as a
    whole): the caller decodes the rows on the CPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        images: list[torch.Tensor] = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
    by_size: dict[tuple[int, ...], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(position)
    return [Resized(positions, resize_and_crop(torch.stack([images[p] for p in positions]) if len(positions) > 1
                                               else images[positions[0]].unsqueeze(0), pp))
            for positions in by_size.values()]


@dataclass
class Resized:
    """Images of one size after :func:`resize_and_crop`: their positions in the decoded list, and
    N x C x H x W float32 pixels of integer value (0-255)."""

    positions: list[int]
    pixels: torch.Tensor


def resize_and_crop(images: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """torchvision's Resize + CenterCrop on N x C x H x W uint8 images, sizes as
    :func:`decode_image`'s, in float32. The arithmetic is torchvision's on a GPU (to float,
    interpolate, clamp for bicubic, round), but the clamping and rounding touch only the cropped
    part, and each step is one call for the group: through torchvision's own ``resize`` and
    ``center_crop``, resizing took 60 us of Python per image on an H200 host, more than nvJPEG
    took to decode it."""
    import torch
    from torch.nn.functional import interpolate
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional

    height, width = images.shape[-2:]
    pixels = images.to(torch.float32)
    resized = False
    if pp.resize is not None:
        new_width, new_height = resize_size(width, height, pp.resize)
        if (new_width, new_height) != (width, height):
            smooth = pp.interpolation in ("bilinear", "bicubic")  # antialiased, as torchvision's
            pixels = interpolate(pixels, size=[new_height, new_width], mode=InterpolationMode(pp.interpolation).value,
                                 align_corners=False if smooth else None, antialias=smooth)
            resized = True
    if pp.crop is not None:
        crop_h, crop_w = (pp.crop, pp.crop) if isinstance(pp.crop, int) else pp.crop
        height, width = pixels.shape[-2:]
        if crop_h <= height and crop_w <= width:  # a view, at torchvision's offsets
            top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
            pixels = pixels[..., top:top + crop_h, left:left + crop_w]
        else:  # zero-padded, as torchvision's
            pixels = functional.center_crop(pixels, [crop_h, crop_w])
    if resized:
        if pp.interpolation == "bicubic":
            pixels = pixels.clamp_(0, 255)
        pixels = pixels.round_()
    return pixels


def device_batch(rows: int, shape: tuple[int, ...], device: str) -> Any:
    """An empty N x C x H x W uint8 batch on ``device``, channels-last like the CPU path's buffers."""
    import torch

    channels, height, width = shape
    return torch.empty((rows, channels, height, width), dtype=torch.uint8, device=device).to(
        memory_format=torch.channels_last)
