"""The timed lines of ``bench/worker_bench.py``, one function per contender, all in one process.

Every function gets the same :class:`Inputs` (encoded images in memory, the weights, the sizes),
warms its contender up first (network built, cuDNN's kernels picked, loader workers started), then
times one pass over the images and returns a :class:`Timed` line. What each line means is in the
docstring of ``bench/worker_bench.py`` and in docs/performance.md ("The Spark-free GPU bench").

This module's top level imports only the standard library and numpy: ``multiprocessing``'s spawn
children import it to run :func:`decode_chunk`, and they need no torch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from sqlinfer.models.declaration import Preprocess
    from sqlinfer.models.resolve import ResolvedModel


@dataclass
class Inputs:
    """What every contender works on: the same images, weights and sizes."""

    blobs: list[bytes]
    architecture: str
    state: dict[str, Any]  # the state_dict read from the bench's safetensors file
    size: int  # network input (crop); images are resized to size * 256 / 224 first
    device: str  # "cpu" or "cuda"
    batch: int  # DataLoader batch and rows per Arrow batch
    forward_batch: int  # forward-only ceiling and the GPU-decode script
    workers: int  # DataLoader workers, decode threads and processes: the machine's cores

    @property
    def rows(self) -> int:
        return len(self.blobs)


@dataclass
class Timed:
    """One timed line: ``rows`` images in ``seconds``, between epoch times ``started`` and
    ``ended`` (the window of GPU utilization samples that belong to it)."""

    section: str
    name: str
    rows: int
    seconds: float
    started: float
    ended: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.rows / self.seconds


class Clock:
    """Wall time of a ``with`` block, as perf_counter seconds and as an epoch-time window."""

    started = ended = seconds = 0.0

    def __enter__(self) -> Clock:
        self.started, self._t0 = time.time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.ended = time.time()

    def line(self, section: str, name: str, rows: int, **extra: Any) -> Timed:
        return Timed(section, name, rows, self.seconds, self.started, self.ended, extra)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _true_fp32() -> Iterator[None]:
    """TF32 off, as sqlinfer's ``precision: fp32`` runs its network (PyTorch's default runs cuDNN
    convolutions in TF32)."""
    from sqlinfer.models.network import tf32_allowed

    with tf32_allowed(False):
        yield


def _warm_passes(inputs: Inputs) -> int:
    """Untimed batches before a line's timed pass: on a GPU cuDNN's benchmark mode tries its
    kernels on the first ones; a CPU needs one (first-call costs)."""
    return 3 if inputs.device == "cuda" else 1


def _cycled(blobs: list[bytes], count: int) -> list[bytes]:
    """``count`` images from ``blobs``, repeating them when there are fewer."""
    return [blobs[i % len(blobs)] for i in range(count)]


# --- a. the forward-only ceiling -------------------------------------------------------------------


def forward_only(inputs: Inputs, bf16: bool) -> Timed:
    """The network alone, on one preprocessed batch already on the device, channels-last; bf16 as
    ``module.to(torch.bfloat16)`` (what sqlinfer's bf16 does), fp32 with TF32 off (sqlinfer's fp32).
    As many passes as make ``inputs.rows`` images."""
    import torch

    from bench import plain

    dataset = plain.BytesDataset(_cycled(inputs.blobs, inputs.forward_batch), inputs.size)
    dtype = torch.bfloat16 if bf16 else torch.float32
    batch = torch.stack([dataset[i] for i in range(len(dataset))]).to(
        inputs.device, dtype=dtype, memory_format=torch.channels_last)
    model = plain.network(inputs.architecture, inputs.state, inputs.device).to(
        dtype=dtype, memory_format=torch.channels_last)
    passes = max(1, math.ceil(inputs.rows / inputs.forward_batch))
    with torch.inference_mode(), _true_fp32():
        for _ in range(_warm_passes(inputs)):
            model(batch)
        _sync(inputs.device)
        with Clock() as clock:
            for _ in range(passes):
                model(batch)
            _sync(inputs.device)
    label = "bf16 (module.to(bfloat16))" if bf16 else "fp32 (TF32 off)"
    return clock.line("a", f"forward only, batch {inputs.forward_batch} on the device, channels_last, {label}",
                      passes * inputs.forward_batch, setting="bf16" if bf16 else "fp32")


# --- b. plain PyTorch with a DataLoader ------------------------------------------------------------


def plain_loader(inputs: Inputs, setting: str) -> tuple[Timed, list[np.ndarray]]:
    """bench.plain's Dataset (torchvision's eval transforms over PIL) and a DataLoader with a worker
    per core, pinned memory and persistent workers: ``setting`` fp32, channels_last fp32 or
    channels_last + bf16 autocast. PyTorch's defaults otherwise (cuDNN convolutions in TF32)."""
    import torch
    from torch.utils.data import DataLoader

    from bench import plain

    channels_last = setting != "fp32"
    model = plain.network(inputs.architecture, inputs.state, inputs.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.preserve_format
    loader = DataLoader(plain.BytesDataset(inputs.blobs, inputs.size), batch_size=inputs.batch, shuffle=False,
                        num_workers=inputs.workers, pin_memory=inputs.device == "cuda",
                        persistent_workers=inputs.workers > 0)

    def run(loader: Any, limit: int | None) -> list[np.ndarray]:
        autocast = torch.autocast(inputs.device, dtype=torch.bfloat16) if setting == "channels_last_bf16" \
            else contextlib.nullcontext()
        outputs = []
        with torch.inference_mode(), autocast:
            for index, batch in enumerate(loader):
                if limit is not None and index >= limit:
                    break
                x = batch.to(inputs.device, non_blocking=True, memory_format=layout)
                outputs.append(model(x).float().cpu().numpy())
        return outputs

    # Warm-up: starts the (persistent) workers and runs the network on a few batches; the workers
    # then serve the timed pass from its first batch, as in the later epochs of a long job.
    run(loader, limit=max(_warm_passes(inputs), min(inputs.workers, len(loader) // 2)))
    with Clock() as clock:
        outputs = run(loader, limit=None)
    del loader  # its workers exit before the next line starts its own
    names = {"fp32": "fp32", "channels_last": "channels_last fp32",
             "channels_last_bf16": "channels_last + bf16 autocast"}
    return clock.line("b", f"plain PyTorch DataLoader ({inputs.workers} workers, pin_memory), batch "
                           f"{inputs.batch}, {names[setting]}", inputs.rows, setting=setting), outputs


def plain_reference(inputs: Inputs, rows: int) -> np.ndarray:
    """Untimed: plain PyTorch's fp32 logits of the first ``rows`` images with TF32 off, the
    reference of the prediction check."""
    import torch

    from bench import plain

    model = plain.network(inputs.architecture, inputs.state, inputs.device)
    dataset = plain.BytesDataset(inputs.blobs[:rows], inputs.size)
    outputs = []
    with torch.inference_mode(), _true_fp32():
        for start in range(0, rows, inputs.batch):
            batch = torch.stack([dataset[i] for i in range(start, min(rows, start + inputs.batch))])
            outputs.append(model(batch.to(inputs.device)).float().cpu().numpy())
    return np.concatenate(outputs)


# --- c. a hand-written GPU-decode script -----------------------------------------------------------


def gpu_decode_script(inputs: Inputs) -> Timed:
    """What a very good user writes for a GPU: ``torchvision.io.decode_jpeg(list, device="cuda")``
    on batches, resize + center crop + normalize on the GPU, the network channels-last in bf16
    (``module.to(bfloat16)``), one Python thread. CUDA only."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional

    from bench import plain

    device = inputs.device
    model = plain.network(inputs.architecture, inputs.state, device).to(
        dtype=torch.bfloat16, memory_format=torch.channels_last)
    mean = torch.tensor(plain.MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(plain.STD, device=device).view(1, -1, 1, 1)
    resize = inputs.size * 256 // 224
    # The files read into memory, as the other contenders have them (not timed).
    encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in inputs.blobs]

    def run(items: list[Any]) -> Any:
        images = decode_jpeg(items, mode=ImageReadMode.RGB, device=device)
        images = [functional.center_crop(functional.resize(image, [resize], antialias=True),
                                         [inputs.size, inputs.size]) for image in images]
        x = torch.stack(images).float().div_(255).sub_(mean).div_(std)
        return model(x.to(torch.bfloat16, memory_format=torch.channels_last)).float().cpu()

    step = inputs.forward_batch
    with torch.inference_mode():
        run(_cycled(encoded, step))
        _sync(device)
        with Clock() as clock:
            for start in range(0, len(encoded), step):
                run(encoded[start:start + step])
    return clock.line("c", f"GPU-decode script: decode_jpeg(list, device=cuda) batch {step} + resize/crop on "
                           "the GPU, channels_last bf16 (module.to(bfloat16)), one thread", inputs.rows)


# --- d. sqlinfer's worker path ---------------------------------------------------------------------


def arrow_batches(blobs: list[bytes], rows: int) -> list[pa.Array]:
    """The images as Spark hands them to a UDF: Arrow binary arrays of ``rows`` rows."""
    import pyarrow as pa

    return [pa.array(blobs[start:start + rows], type=pa.binary()) for start in range(0, len(blobs), rows)]


def sqlinfer_worker(inputs: Inputs, model: ResolvedModel, arrays: list[pa.Array],
                    label: str) -> tuple[Timed, np.ndarray]:
    """``sqlinfer.worker.score.score`` over ``arrays``: one Spark task's work, without Spark. A
    first call over a few batches builds the network (once per process, as on a Spark worker)."""
    from sqlinfer.worker.score import score

    totals: dict[str, float] = {}

    def stats(update: dict[str, float]) -> None:
        for key, value in update.items():
            if key != "built_at":
                totals[key] = totals.get(key, 0.0) + value

    plan, weights = model.plan, model.weights
    warm_rows = _warm_passes(inputs) * plan.batch_size(inputs.device)
    warm = arrays[:max(1, math.ceil(warm_rows / inputs.batch))]
    for _ in score(plan, lambda: weights, iter(warm), stats):
        pass
    totals.clear()
    with Clock() as clock:
        outputs = list(score(plan, lambda: weights, iter(arrays), stats))
    logits = np.concatenate([_rows(array) for array in outputs])
    timed = clock.line("d", f"sqlinfer worker.score (Arrow batches of {inputs.batch}, {inputs.workers} cores), "
                            f"{label}", len(logits), setting=label, batch_size=plan.batch_size(inputs.device),
                       builds=totals.get("builds", 0.0), bad_rows=totals.get("bad_rows", 0.0),
                       decode_seconds=totals.get("decode_seconds"), forward_seconds=totals.get("forward_seconds"))
    return timed, logits


def _rows(array: pa.Array) -> np.ndarray:
    """A column of logits (array<float>, no NULLs) as a rows x outputs float32 matrix."""
    if array.null_count:
        raise RuntimeError(f"sqlinfer returned {array.null_count} NULL rows for the bench's images")
    return np.asarray(array.flatten().to_numpy(), dtype=np.float32).reshape(len(array), -1)


# --- e. decode only --------------------------------------------------------------------------------


def _batches(blobs: list[bytes], rows: int) -> list[list[bytes]]:
    return [blobs[start:start + rows] for start in range(0, len(blobs), rows)]


def _decode_rows(values: Sequence[bytes], pp: Preprocess, out: np.ndarray) -> int:
    """decode_image for each value into ``out``'s rows; the number of bad rows."""
    from sqlinfer.worker.decode import BadInput, decode_image

    bad = 0
    for row, data in enumerate(values):
        try:
            decode_image(data, pp, out[row])
        except BadInput:
            bad += 1
    return bad


def _buffer(inputs: Inputs, rows: int) -> np.ndarray:
    return np.empty((rows, inputs.size, inputs.size, 3), dtype=np.uint8)


def decode_one_thread(inputs: Inputs, pp: Preprocess, rows: int) -> Timed:
    """PIL decode + resize + crop into a batch buffer, one row after the other."""
    out = _buffer(inputs, inputs.batch)
    batches = _batches(inputs.blobs[:rows], inputs.batch)
    _decode_rows(batches[0][:2], pp, out)  # imports and first-call costs
    with Clock() as clock:
        bad = sum(_decode_rows(values, pp, out) for values in batches)
    return clock.line("e", f"decode + resize + crop (PIL), 1 thread, first {rows} images", rows,
                      setting="1 thread", bad_rows=bad)


def decode_threads(inputs: Inputs, pp: Preprocess) -> Timed:
    """The same, each batch's rows spread over a thread per core (PIL releases the GIL only
    inside its C calls)."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlinfer.worker.decode import BadInput, decode_image

    out = _buffer(inputs, inputs.batch)

    def one(job: tuple[int, bytes]) -> int:
        try:
            decode_image(job[1], pp, out[job[0]])
        except BadInput:
            return 1
        return 0

    with ThreadPoolExecutor(max_workers=inputs.workers) as pool:
        list(pool.map(one, enumerate(inputs.blobs[:min(inputs.workers, inputs.batch)])))  # threads started
        with Clock() as clock:
            bad = sum(sum(pool.map(one, enumerate(values))) for values in _batches(inputs.blobs, inputs.batch))
    return clock.line("e", f"decode + resize + crop (PIL), {inputs.workers} threads", inputs.rows,
                      setting="threads", bad_rows=bad)


def _child_ready() -> None:
    """Pool initializer: the decoder's imports, paid before the timed pass."""
    import PIL.Image  # noqa: F401

    import sqlinfer.worker.decode  # noqa: F401


def decode_chunk(job: tuple[Preprocess, int, list[bytes]]) -> int:
    """In a child process: decode a chunk of rows into a local buffer; the number of bad rows.
    The pixels stay in the child: this line is the bar for the decoding alone."""
    pp, size, values = job
    return _decode_rows(values, pp, np.empty((len(values), size, size, 3), dtype=np.uint8))


def decode_processes(inputs: Inputs, pp: Preprocess) -> Timed:
    """The same in a process per core (multiprocessing Pool, spawn): the rows go to the children
    as bytes in chunks, 4 per process so that no process idles while another finishes a slow one."""
    import multiprocessing

    processes = inputs.workers
    per_chunk = max(1, math.ceil(inputs.rows / (4 * processes)))
    chunks = [(pp, inputs.size, inputs.blobs[s:s + per_chunk]) for s in range(0, inputs.rows, per_chunk)]
    with multiprocessing.get_context("spawn").Pool(processes, initializer=_child_ready) as pool:
        pool.map(decode_chunk, [(pp, inputs.size, inputs.blobs[:1])] * (2 * processes), chunksize=1)
        with Clock() as clock:
            bad = sum(pool.map(decode_chunk, chunks, chunksize=1))
    return clock.line("e", f"decode + resize + crop (PIL), {processes} processes (bytes in, pixels stay there)",
                      inputs.rows, setting="processes", bad_rows=bad)


def decode_pool(inputs: Inputs, pp: Preprocess) -> Timed | None:
    """sqlinfer's own process pool (``sqlinfer.worker.decode_pool.DecodePool``), decoding each
    Arrow batch's rows into one of two batch buffers in shared memory, as the worker uses it.
    None when this sqlinfer has no such module."""
    try:
        from sqlinfer.worker.decode_pool import DecodePool
    except ImportError:
        return None
    pool = DecodePool(inputs.workers)
    try:
        buffers = pool.buffers((inputs.batch, inputs.size, inputs.size, 3), 2)
        batches = _batches(inputs.blobs, inputs.batch)

        def decode(index: int, values: list[bytes]) -> int:
            return len(pool.decode(values, range(len(values)), pp, buffers[index % 2][:len(values)]))

        decode(0, batches[0])
        with Clock() as clock:
            bad = sum(decode(index, values) for index, values in enumerate(batches))
    finally:
        pool.close()
    return clock.line("e", f"sqlinfer decode pool ({inputs.workers} processes, shared-memory batches of "
                           f"{inputs.batch})", inputs.rows, setting="pool", bad_rows=bad)

