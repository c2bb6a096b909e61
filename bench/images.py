"""Photo-like JPEG test images, made on the spot so the bench needs no download.

Each image has what makes real photos cost what they cost to decode: smooth large-scale shading,
shapes with edges, and fine texture (noise), in the sizes phones and web crawls give at the low
end (320x240 to 640x480, landscape and portrait), saved at JPEG quality 85-92.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # Large-scale shading: a few random colors, upsampled smoothly.
    coarse = rng.integers(0, 256, (rng.integers(2, 6), rng.integers(2, 6), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 14))):  # objects: edges and flat regions
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(width // 16, width // 2))
        y1 = y0 + int(rng.integers(height // 16, height // 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=color)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    pixels = np.asarray(image).astype(np.int16)
    pixels += rng.normal(0, rng.uniform(4, 12), pixels.shape).astype(np.int16)  # sensor-like texture
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg(seed: int, min_width: int = 320, max_width: int = 640) -> bytes:
    """One JPEG of a random size between ``min_width`` x 3/4 and ``max_width`` x 3/4 (or portrait)."""
    rng = np.random.default_rng(seed)
    width = int(rng.integers(min_width, max_width + 1)) // 2 * 2
    height = width * 3 // 4
    if rng.random() < 0.25:
        width, height = height, width
    buffer = io.BytesIO()
    photo_like(rng, width, height).save(buffer, format="JPEG", quality=int(rng.integers(85, 93)))
    return buffer.getvalue()


def write(folder: Path, count: int, seed: int = 0, min_width: int = 320, max_width: int = 640) -> list[Path]:
    """``count`` images in ``folder`` (img_00000.jpg, ...); files already there are kept, so a
    second run with the same arguments reuses them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img_{index:05d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(jpeg(seed * 1_000_003 + index, min_width, max_width))
            os.replace(tmp, path)
        paths.append(path)
    for extra in sorted(folder.glob("img_*.jpg"))[count:]:  # a smaller N than last time
        extra.unlink()
    return paths


def link_copies(sources: list[Path], folder: Path, copies: int) -> list[Path]:
    """``copies`` x the images in ``folder`` as hard links (no extra disk), for the scale runs."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for copy in range(copies):
        for src in sources:
            wanted[folder / f"c{copy:02d}_{src.name}"] = src
    for existing in folder.glob("*.jpg"):
        if existing not in wanted:
            existing.unlink()
    for dest, src in wanted.items():
        if not dest.exists():
            try:
                os.link(src, dest)
            except OSError:  # another file system: copy instead
                dest.write_bytes(src.read_bytes())
    return sorted(wanted)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size
