"""Turning one input value into the network's input: image decoding and transforms, tensor reshaping.

Runs on the workers, one row at a time, writing straight into a preallocated batch buffer.
A row that cannot be read raises :class:`BadInput`; the caller turns it into NULL or a failure
according to the model's ``on_error``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sqlinfer.models.declaration import Preprocess

if TYPE_CHECKING:
    from PIL import Image

_RESAMPLE = {"bilinear": 2, "bicubic": 3, "nearest": 0}  # PIL.Image.Resampling values


class BadInput(ValueError):
    """One row's value cannot be made into an input; ``kind`` names why (empty, undecodable, ...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def resize_size(width: int, height: int, resize: int | Sequence[int]) -> tuple[int, int]:
    """(w, h) after torchvision's Resize: an int sets the shorter side, a pair is (h, w)."""
    if not isinstance(resize, int):
        return int(resize[1]), int(resize[0])
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def decode_image(data: bytes | None, pp: Preprocess, out: np.ndarray) -> None:
    """Decode encoded image bytes, resize and center-crop like torchvision's eval transforms, and
    write the pixels (uint8, H x W x C: PIL's own order, so no transposing copy; the worker's
    batches are channels-last) into ``out``. Normalization happens later, batched."""
    from PIL import Image

    if data is None or len(data) == 0:
        raise BadInput("empty", "no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > pp.max_pixels:
                raise BadInput("too_large", f"{width}x{height} image is over max_pixels={pp.max_pixels}")
            if image.mode == pp.color_mode:
                image.load()  # decode here, so a broken file is a BadInput; convert() would copy
            else:
                image = image.convert(pp.color_mode)
    except BadInput:
        raise
    except Image.DecompressionBombError as exc:  # declared over twice PIL's limit: refused unread
        raise BadInput("too_large", str(exc)) from None
    except Exception as exc:  # PIL raises many types for broken files
        raise BadInput("undecodable", f"{type(exc).__name__}: {exc}") from None
    resample = _RESAMPLE[pp.interpolation]
    if pp.resize is not None:
        size = resize_size(image.width, image.height, pp.resize)
        if size != image.size:
            image = image.resize(size, resample)
    if pp.crop is not None:
        crop_h, crop_w = (pp.crop, pp.crop) if isinstance(pp.crop, int) else pp.crop
        image = center_crop(image, crop_h, crop_w)
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[:2] != out.shape[:2]:
        raise BadInput("wrong_size", f"image is {pixels.shape[1]}x{pixels.shape[0]} after preprocessing, "
                       f"expected {out.shape[1]}x{out.shape[0]}")
    out[...] = pixels


def center_crop(image: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    """torchvision's center_crop for PIL images, including its zero padding of small images."""
    from PIL import Image

    width, height = image.size
    if crop_w > width or crop_h > height:
        padded = Image.new(image.mode, (max(width, crop_w), max(height, crop_h)))
        padded.paste(image, ((max(crop_w - width, 0)) // 2, (max(crop_h - height, 0)) // 2))
        image = padded
        width, height = image.size
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def read_tensor(values: Sequence[float] | np.ndarray | None, out: np.ndarray) -> None:
    """Copy one array<float> row into ``out`` (the declared shape); wrong lengths are bad rows."""
    if values is None:
        raise BadInput("empty", "NULL tensor")
    if not isinstance(values, np.ndarray) and any(v is None for v in values):
        # numpy would turn a NULL element into NaN without a word.
        raise BadInput("null_element", "the tensor has NULL or non-numeric elements")
    try:
        flat = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadInput("null_element", "the tensor has NULL or non-numeric elements") from None
    if flat.size != out.size:
        raise BadInput("wrong_length", f"{flat.size} values, the declared shape {tuple(out.shape)} "
                       f"needs {out.size}")
    out[...] = flat.reshape(out.shape)
