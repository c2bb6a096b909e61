"""A GPU worker's decoder processes (issue 10): the same pixels and the same bad rows as decoding
in the worker, shared buffers that leave nothing in /dev/shm, decoders that die with their worker,
and a dead decoder's rows decoded anyway. Real processes and real shared memory; no GPU needed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import bomb_png, jpeg_bytes, write_project
from PIL import Image

from sqlinfer import Project
from sqlinfer.models.declaration import Preprocess
from sqlinfer.worker.decode_pool import DecodePool
from sqlinfer.worker.score import BatchBuffers, prepare, row_decoders

PP = Preprocess(resize=72, crop=64)
PHOTO = Image.open(io.BytesIO(jpeg_bytes(7, 120, 90))).convert("RGB")


def encoded(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# Good rows of several kinds between the bad ones, so chunks mix both.
CORPUS = [jpeg_bytes(i, 80 + 7 * i, 60 + 5 * i) for i in range(10)] + [
    encoded(PHOTO, "PNG"), encoded(PHOTO.convert("CMYK")), encoded(PHOTO.convert("L")), b"",
    jpeg_bytes(3, 100, 80)[:900], bomb_png(), b"not an image", encoded(PHOTO, progressive=True), None]
BAD = {13: "empty", 14: "undecodable", 15: "too_large", 16: "undecodable", 18: "empty"}  # 15: PIL refuses the bomb


@pytest.fixture(scope="module")
def pool() -> DecodePool:
    pool = DecodePool(2)
    yield pool
    pool.close()


def in_this_process(pp: Preprocess, values: list) -> tuple[np.ndarray, dict[int, str]]:
    from sqlinfer.worker.decode import BadInput, decode_image

    out = np.zeros((len(values), 64, 64, 3), np.uint8)
    bad = {}
    for row, value in enumerate(values):
        try:
            decode_image(value, pp, out[row])
        except BadInput as exc:
            bad[row] = exc.kind
    return out, bad


def test_the_pool_decodes_like_this_process(pool: DecodePool) -> None:
    pp = Preprocess(resize=72, crop=64, max_pixels=15_000)  # row 9, 143x105, is over it
    expected, expected_bad = in_this_process(pp, CORPUS)
    assert expected_bad == {**BAD, 9: "too_large"}
    (out, *_) = pool.buffers((len(CORPUS), 64, 64, 3), 2)
    out[...] = 0
    errors = pool.decode(CORPUS, range(len(CORPUS)), pp, out)
    assert {row: error.kind for row, error in errors} == expected_bad
    assert [row for row, _ in errors] == sorted(expected_bad)  # in row order
    assert str(dict(errors)[9]) == "too_large: 143x105 image is over max_pixels=15000"
    good = [row for row in range(len(CORPUS)) if row not in expected_bad]
    assert np.array_equal(out[good], expected[good])


def test_only_the_given_rows_are_written(pool: DecodePool) -> None:
    out = pool.buffers((8, 64, 64, 3), 1)[0][:6]
    out[...] = 7
    errors = pool.decode(CORPUS[:6], [1, 4], PP, out)
    assert errors == []
    untouched = [0, 2, 3, 5]
    assert (out[untouched] == 7).all() and not (out[[1, 4]] == 7).all()


def test_buffers_are_made_once_and_leave_no_files(pool: DecodePool) -> None:
    first = pool.buffers((4, 64, 64, 3), 3)
    again = pool.buffers((4, 64, 64, 3), 3)
    assert [a.ctypes.data for a in first] == [a.ctypes.data for a in again]
    assert len({a.ctypes.data for a in first}) == 3
    if Path("/dev/shm").is_dir():
        assert not list(Path("/dev/shm").glob("sqlinfer-batch-*"))
    with pytest.raises(ValueError, match="one of this pool's buffers"):
        pool.decode(CORPUS[:2], [0, 1], PP, np.zeros((2, 64, 64, 3), np.uint8))


def test_a_dead_decoders_rows_are_decoded_in_the_worker() -> None:
    pool = DecodePool(2)
    try:
        first, second = (decoder.process for decoder in pool._decoders)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        out = pool.buffers((len(CORPUS), 64, 64, 3), 1)[0]
        errors = pool.decode(CORPUS, range(len(CORPUS)), PP, out)
        expected, expected_bad = in_this_process(PP, CORPUS)
        assert {row: error.kind for row, error in errors} == expected_bad
        good = [row for row in range(len(CORPUS)) if row not in expected_bad]
        assert np.array_equal(out[good], expected[good])
        # Every decoder dead: the worker decodes everything itself.
        second.kill()
        second.wait(timeout=10)
        out[...] = 0
        assert {row: e.kind for row, e in pool.decode(CORPUS, range(len(CORPUS)), PP, out)} == expected_bad
        assert np.array_equal(out[good], expected[good])
    finally:
        pool.close()


def test_decoders_exit_with_their_worker(tmp_path: Path) -> None:
    # A Spark worker may end with os._exit, running no cleanup: its decoders must not outlive it.
    script = textwrap.dedent("""
        import os
        from sqlinfer.worker.decode_pool import DecodePool
        pool = DecodePool(2)
        print(" ".join(str(d.process.pid) for d in pool._decoders), flush=True)
        os._exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pids = [int(pid) for pid in proc.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)
    assert not any(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


MODELS = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: squeezenet1_1
    kwargs: {num_classes: 5}
    weights: random
    preprocess: {resize: 72, crop: 64}
    output: logits
"""


def test_prepare_with_the_pool_gives_the_batch_of_serial_decoding(pool: DecodePool, tmp_path: Path) -> None:
    (model,) = Project.load(write_project(tmp_path / "p", MODELS)).resolve_models()
    serial = prepare(model.plan, CORPUS, BatchBuffers(model.plan, len(CORPUS), pinned=False).take(len(CORPUS)))
    shared = BatchBuffers(model.plan, len(CORPUS), pinned=False, pool=pool)
    pooled = prepare(model.plan, CORPUS, shared.take(len(CORPUS)), pool)
    assert pooled.ok.tolist() == serial.ok.tolist() == [row not in BAD for row in range(len(CORPUS))]
    assert [(row, e.kind) for row, e in pooled.errors] == [(row, e.kind) for row, e in serial.errors]
    assert np.array_equal(pooled.pixels[pooled.ok], serial.pixels[serial.ok])


def test_only_gpu_workers_with_several_cores_decode_in_processes(tmp_path: Path) -> None:
    (model,) = Project.load(write_project(tmp_path / "p", MODELS)).resolve_models()
    assert row_decoders(model.plan, "cpu", 8) is None  # the cores run the network
    assert row_decoders(model.plan, "cuda:0", 1) is None  # one core: decode in the worker
    decoders = row_decoders(model.plan, "cuda:0", 2)
    assert decoders is not None and decoders.processes == 2
    assert row_decoders(model.plan, "cuda:0", 2) is decoders  # one pool per worker process


def test_decoders_that_cannot_start_leave_the_decoding_to_the_worker(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A Python that exits at once stands in for one where sqlinfer cannot be imported.
    monkeypatch.setattr(sys, "executable", "/bin/false")
    pool = DecodePool(2)
    try:
        out = pool.buffers((len(CORPUS), 64, 64, 3), 1)[0]
        assert "the image decoder processes are not running" in capsys.readouterr().err
        errors = pool.decode(CORPUS, range(len(CORPUS)), PP, out)
        expected, expected_bad = in_this_process(PP, CORPUS)
        assert {row: error.kind for row, error in errors} == expected_bad
        good = [row for row in range(len(CORPUS)) if row not in expected_bad]
        assert np.array_equal(out[good], expected[good])
    finally:
        pool.close()
