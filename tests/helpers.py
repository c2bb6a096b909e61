"""Test data made on the spot: real JPEG/PNG bytes, random-init weights files, small projects."""

from __future__ import annotations

import io
import itertools
import struct
import textwrap
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, width: int = 96, height: int = 72, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise, so decoding does real work."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.5, 3)) % 256, (y * rng.uniform(0.5, 3)) % 256,
                     ((x + y) * rng.uniform(0.5, 2)) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(seed: int, width: int = 40, height: int = 30) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"img_{index:05d}.jpg"
        path.write_bytes(jpeg_bytes(index, 64 + index % 64, 48 + index % 40))
        paths.append(path)
    return paths


def bomb_png(side: int = 20_000) -> bytes:
    """A decompression bomb: a tiny PNG file that declares side x side pixels (all black)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def save_random_resnet18(path: Path, num_classes: int = 1000, seed: int = 0) -> None:
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def write_project(root: Path, models_yml: str, project_yml: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "models.yml").write_text(textwrap.dedent(models_yml))
    (root / "sqlinfer_project.yml").write_text(textwrap.dedent(project_yml or "name: test_project\n"))
    return root


_databases = itertools.count()


def own_database(root: Path) -> str:
    """Give a copied project its own database in the shared test metastore."""
    database = f"t{next(_databases)}_{root.parent.name[-12:].lower()}".replace("-", "_")
    project_file = root / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text() + f"database: {database}\n")
    return database


def env_without_modules(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The environment of a child Python, and of every Python it starts, in which importing any of
    ``names`` (top-level packages) fails as if they were not installed: a ``sitecustomize.py`` in
    ``folder``, put first on PYTHONPATH, inserts a meta-path finder that refuses them."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""\
        import importlib.abc
        import sys


        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {tuple(names)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None


        sys.meta_path.insert(0, NotInstalled())
        """))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
