"""Batched device decoding (issue 10), with torchvision's CPU decoder standing in for nvJPEG: which
rows go to the device, that broken rows are bad rows exactly as on the CPU path, and how far the
device path's pixels are from PIL's. The same code runs with device cuda on a GPU worker."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import bomb_png, jpeg_bytes, save_random_resnet18, write_project
from PIL import Image

from sqlinfer import Project
from sqlinfer.worker.gpu_decode import route, wants_gpu_decode
from sqlinfer.worker.jpeg import inspect_jpeg
from sqlinfer.worker.score import BatchBuffers, prepare, score


def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


PHOTO = Image.open(io.BytesIO(jpeg_bytes(7, 120, 90))).convert("RGB")
CORPUS = {
    "jpeg_420": jpeg_bytes(1, 100, 80),
    "png": encoded(PHOTO, "PNG"),
    "cmyk": encoded(PHOTO.convert("CMYK")),
    "gray": encoded(PHOTO.convert("L")),
    "truncated": jpeg_bytes(2, 100, 80)[:900],
    "empty": b"",
    "progressive": encoded(PHOTO, progressive=True),
    "jpeg_444": encoded(PHOTO, subsampling=0),
    "text": b"not an image at all",
}
NAMES = list(CORPUS)


def test_inspect_reads_the_frame_and_refuses_what_the_gpu_cannot_take() -> None:
    info = inspect_jpeg(CORPUS["jpeg_420"])
    assert info is not None and (info.width, info.height, info.components) == (100, 80, 3)
    assert info.gpu_reason is None
    assert inspect_jpeg(CORPUS["progressive"]).coding == "progressive"
    assert inspect_jpeg(CORPUS["cmyk"]).gpu_reason == "CMYK/YCCK"
    assert inspect_jpeg(CORPUS["gray"]).gpu_reason == "grayscale"
    assert inspect_jpeg(CORPUS["truncated"]).gpu_reason.startswith("truncated")
    assert inspect_jpeg(CORPUS["png"]) is None and inspect_jpeg(b"") is None


MODELS = """\
models:
  - name: {name}
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {{resize: 72, crop: 64, decoder: {decoder}, max_pixels: {max_pixels}}}
    output: logits
    device: cpu
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = write_project(tmp_path_factory.mktemp("decode") / "p", "models:\n" + "".join(
        MODELS.format(name=name, decoder=decoder, max_pixels=max_pixels).split("models:\n")[1]
        for name, decoder, max_pixels in [("on_cpu", "cpu", 89_478_485), ("batched", "gpu", 89_478_485),
                                          ("auto", "auto", 89_478_485), ("small", "gpu", 5000)]))
    (root / "weights").mkdir()
    save_random_resnet18(root / "weights" / "r18.safetensors")
    return {m.plan.name: m for m in Project.load(root).resolve_models()}


def test_routing_sends_only_whole_supported_jpegs_within_max_pixels(models: dict) -> None:
    routed = route(list(CORPUS.values()), models["batched"].plan.preprocess)
    assert [NAMES[r] for r in routed.device_rows] == ["jpeg_420", "progressive", "jpeg_444"]
    small = route(list(CORPUS.values()), models["small"].plan.preprocess)  # 100x80 > 5000 pixels
    assert small.device_rows == [] and len(small.cpu_rows) == len(CORPUS)


def test_decoder_choice() -> None:
    from sqlinfer.models.declaration import Preprocess

    assert wants_gpu_decode(Preprocess(crop=8), "cuda:1") is True
    assert wants_gpu_decode(Preprocess(crop=8), "cpu") is False
    assert wants_gpu_decode(Preprocess(crop=8, decoder="cpu"), "cuda:0") is False
    assert wants_gpu_decode(Preprocess(crop=8, decoder="gpu"), "cpu") is True
    assert wants_gpu_decode(Preprocess(crop=8, color_mode="L"), "cuda:0") is False
    assert wants_gpu_decode(None, "cuda:0") is False


def prepared(model, decode_device: str | None):
    buffers = BatchBuffers(model.plan, len(CORPUS), pinned=False)
    return prepare(model.plan, list(CORPUS.values()), buffers.take(len(CORPUS)), None, decode_device)


def test_bad_rows_are_the_cpu_paths_and_cpu_rows_are_exact(models: dict) -> None:
    cpu = prepared(models["on_cpu"], None)
    batched = prepared(models["batched"], "cpu")
    assert batched.on_device is not None and tuple(batched.on_device.shape) == (len(CORPUS), 3, 64, 64)
    assert batched.ok.tolist() == cpu.ok.tolist()
    assert [(NAMES[r], e.kind) for r, e in batched.errors] == [(NAMES[r], e.kind) for r, e in cpu.errors]
    assert {NAMES[r] for r, _ in cpu.errors} == {"truncated", "empty", "text"}
    for row, name in enumerate(NAMES):
        if not cpu.ok[row]:
            continue
        device_pixels = batched.on_device[row].permute(1, 2, 0).numpy().astype(int)
        difference = np.abs(device_pixels - cpu.pixels[row].astype(int))
        if name in ("jpeg_420", "progressive", "jpeg_444"):
            # torch's antialiased resize against PIL's: a few levels at most, on average far less.
            assert difference.max() <= 8 and difference.mean() < 1.0, (name, difference.max(), difference.mean())
        else:
            assert difference.max() == 0, name  # decoded by PIL, uploaded as it is


def test_scores_match_the_cpu_path_and_bad_rows_are_null(models: dict) -> None:
    blobs = [jpeg_bytes(i, 70 + 3 * i, 60 + 2 * i) for i in range(12)] + [b"", CORPUS["truncated"], bomb_png()]

    def run(model) -> list:
        arrays = iter([pa.array(blobs[:8], type=pa.binary()), pa.array(blobs[8:], type=pa.binary())])
        return [row for array in score(model.plan, lambda: model.weights, arrays, lambda _: None)
                for row in array.to_pylist()]

    exact, batched, auto = run(models["on_cpu"]), run(models["batched"]), run(models["auto"])
    assert [row is None for row in batched] == [row is None for row in exact] == [False] * 12 + [True] * 3
    assert auto == exact  # auto decodes on the CPU of a CPU worker
    top = [int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(exact[:12], batched[:12], strict=True)]
    assert sum(top) >= 11
    assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(exact[:12], batched[:12], strict=True)) < 0.05


def test_explicit_decoder_is_part_of_the_fingerprint_auto_is_not(models: dict, tmp_path: Path) -> None:
    default = write_project(tmp_path / "d", MODELS.format(name="auto", decoder="auto", max_pixels=89_478_485)
                            .replace(", decoder: auto", ""))
    (default / "weights").mkdir()
    save_random_resnet18(default / "weights" / "r18.safetensors")
    (model,) = Project.load(default).resolve_models()
    assert model.plan.fingerprint == models["auto"].plan.fingerprint
    assert models["on_cpu"].plan.fingerprint != models["auto"].plan.fingerprint
