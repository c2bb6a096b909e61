"""One task's loop in a model UDF: rebatch -> decode ahead -> forward -> Arrow.

The flow for one Spark task: Arrow batches of input values -> fixed-size model batches
(``batch_size``, whatever Arrow's batch size) -> decode/preprocess on a background thread while the
previous batch runs through the network (two batches in flight at most) -> Arrow output arrays.

Where the time goes and why the code looks like this (docs/performance.md has the figures):
- the forward pass is over 90% of a CPU worker's time: torch gets the task's cores
  (``spark.task.cpus``), convolutional networks run channels-last, which oneDNN runs faster, and
  batch norms are folded into the convolutions before them;
- images are decoded straight into a reusable channels-last (N, H, W, C) uint8 batch buffer, PIL's
  own pixel order, so the batch becomes the network's input without a transposing copy;
- on a GPU the buffers are pinned and copied without blocking, the task's cores decode rows in
  parallel, and the network may run in fp16/bf16 (``precision``);
- the network is built on a background thread while the first batch decodes, and once per process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.network import Network
from sqlinfer.models.plan import ModelPlan
from sqlinfer.worker.arrow_outputs import to_arrow
from sqlinfer.worker.decode import BadInput, decode_image, read_tensor
from sqlinfer.worker.device import choose_device, task_threads
from sqlinfer.worker.gpu_decode import decode_on_device, device_batch, route, wants_gpu_decode
from sqlinfer.worker.model_cache import Stats, get_model

_MALLOC_TUNED = False


class InputError(RuntimeError):
    """A bad row under ``on_error: fail``: fails the task (and so the query), naming model and row."""


@dataclass
class PreparedBatch:
    pixels: np.ndarray  # rows x input (images: N, H, W, C uint8); only rows with ok=True hold data
    ok: np.ndarray  # bool per row
    errors: list[tuple[int, BadInput]] = field(default_factory=list)
    seconds: float = 0.0
    on_device: Any = None  # with device decoding: the whole batch, N x C x H x W uint8, on the device


def tune_malloc() -> None:
    """Keep freed memory in the process for the next batch (glibc only; once per process).

    glibc serves allocations over 32 MB (a CPU forward pass's larger activations at batch 16)
    with a fresh mmap and returns them on free, so every batch pays page faults and page zeroing
    for them again: about 8% of a single-threaded resnet18 forward pass. Without mmap and with a
    high trim threshold the heap keeps those pages (peak RSS +5%, flat from then on).
    ``SQLINFER_MALLOC_TUNING=0`` leaves malloc alone.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("SQLINFER_MALLOC_TUNING", "1") == "0":
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _values(array: pa.Array) -> list[Any]:
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        # One numpy view per row instead of a Python float per element.
        values = array.flatten()
        flat = values.to_numpy(zero_copy_only=False)
        offsets = array.offsets.to_numpy()
        offsets = offsets - offsets[0]  # a sliced array's offsets need not start at 0
        nulls = array.is_null().to_numpy(zero_copy_only=False)
        has_null_items = values.null_count > 0
        return [None if nulls[i] else (array[i].as_py() if has_null_items else flat[offsets[i]:offsets[i + 1]])
                for i in range(len(array))]
    return array.to_pylist()


def rebatch(arrays: Iterable[pa.Array], size: int) -> Iterator[list[Any]]:
    """Input values regrouped into lists of ``size`` (the last one shorter)."""
    pending: list[Any] = []
    for array in arrays:
        pending.extend(_values(array))
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


class BatchBuffers:
    """A ring of preallocated input batches, reused for the whole task: images are decoded
    straight into them. On a GPU they are pinned, so host-to-device copies need no staging copy
    and can run asynchronously. Three buffers: one in the network, one being decoded, one spare."""

    def __init__(self, plan: ModelPlan, batch_size: int, pinned: bool, count: int = 3) -> None:
        import torch

        shape: tuple[int, ...]
        if plan.decl.input == "image":
            channels, height, width = plan.input_shape
            shape, dtype = (batch_size, height, width, channels), torch.uint8  # decode_image's layout
        else:
            shape, dtype = (batch_size, *plan.input_shape), torch.float32
        self._arrays = [torch.empty(shape, dtype=dtype, pin_memory=pinned).numpy() for _ in range(count)]
        self._next = 0

    def take(self, rows: int) -> np.ndarray:
        array = self._arrays[self._next % len(self._arrays)]
        self._next += 1
        return array[:rows]


def prepare(plan: ModelPlan, values: list[Any], out: np.ndarray,
            rows_pool: ThreadPoolExecutor | None = None, decode_device: str | None = None) -> PreparedBatch:
    """Decode/reshape ``values`` into ``out`` (a slice of :class:`BatchBuffers`), row by row, or
    spread over ``rows_pool``'s threads (PIL releases the GIL while decoding). With
    ``decode_device``, the JPEG rows it can take are decoded there together
    (:mod:`sqlinfer.worker.gpu_decode`) and the whole batch ends up on that device."""
    started = time.perf_counter()
    pp = plan.preprocess  # set for image input, None for tensors
    ok = np.ones(len(values), dtype=bool)
    errors: list[tuple[int, BadInput]] = []
    on_device = None
    cpu_rows: Sequence[int] = range(len(values))
    if decode_device is not None and pp is not None:
        routed = route(values, pp)
        decoded = decode_on_device([values[r] for r in routed.device_rows], pp, decode_device) \
            if routed.device_rows else []
        if decoded is not None:  # else the decoder refused the batch: every row on the CPU
            cpu_rows = routed.cpu_rows
            on_device = device_batch(len(values), plan.input_shape, decode_device)
            for row, image in zip(routed.device_rows, decoded, strict=True):
                if tuple(image.shape) != plan.input_shape:
                    ok[row] = False
                    errors.append((row, BadInput("wrong_size", f"image is {tuple(image.shape)} after "
                                                 f"preprocessing, expected {plan.input_shape}")))
                else:
                    on_device[row] = image

    def one(row: int) -> None:
        try:
            if pp is not None:
                decode_image(values[row], pp, out[row])
            else:
                read_tensor(values[row], out[row])
        except BadInput as exc:
            ok[row] = False
            errors.append((row, exc))

    if rows_pool is None or len(cpu_rows) < 2:
        for row in cpu_rows:
            one(row)
    else:
        list(rows_pool.map(one, cpu_rows))
    errors.sort(key=lambda item: item[0])
    if on_device is not None and len(cpu_rows):
        import torch

        # The rows decoded on the CPU join the batch on the device: one upload, then a gather.
        host = torch.from_numpy(out).permute(0, 3, 1, 2).to(on_device.device, non_blocking=True)
        index = torch.as_tensor(list(cpu_rows), device=on_device.device)
        on_device[index] = host[index]
    return PreparedBatch(out, ok, errors, time.perf_counter() - started, on_device)


def score(plan: ModelPlan, load_weights: Callable[[], Weights], arrays: Iterator[pa.Array],
          stats: Stats) -> Iterator[pa.Array]:
    """Score one task's input: the body of the UDF."""
    import torch

    tune_malloc()
    device = choose_device(plan.decl.device)
    threads = task_threads()
    torch.set_num_threads(threads)
    batch_size = plan.batch_size(device)
    on_gpu = device != "cpu"
    buffers = BatchBuffers(plan, batch_size, pinned=on_gpu)
    # On CPU the task's cores run the network and one thread decodes ahead; on a GPU the network
    # needs little CPU, so the task's cores decode the rows of a batch in parallel.
    rows_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlinfer-decode") \
        if on_gpu and threads > 1 else None
    decode_device = device if wants_gpu_decode(plan.preprocess, device) else None
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlinfer") as pool:
            # The model builds while the first batch decodes.
            model_future = pool.submit(get_model, plan, load_weights, stats)
            chunks = rebatch(arrays, batch_size)
            first = next(chunks, None)
            if first is None:
                model_future.result()
                return
            pending: Future[PreparedBatch] = pool.submit(prepare, plan, first, buffers.take(len(first)), rows_pool,
                                                         decode_device)
            model = model_future.result()
            rows_done = 0
            for chunk in chunks:
                current = pending.result()
                # Decode the next batch during this forward pass.
                pending = pool.submit(prepare, plan, chunk, buffers.take(len(chunk)), rows_pool, decode_device)
                yield _run(model, current, rows_done, stats)
                rows_done += len(current.ok)
            yield _run(model, pending.result(), rows_done, stats)
    finally:
        if rows_pool is not None:
            rows_pool.shutdown(wait=True)


def _run(model: Network, batch: PreparedBatch, rows_before: int, stats: Stats) -> pa.Array:
    decl = model.plan.decl
    if batch.errors and decl.on_error == "fail":
        row, error = batch.errors[0]
        raise InputError(f"sqlinfer: model {decl.name!r} ({decl.udf_name}): bad input at row "
                         f"{rows_before + row} of this task: {error} (on_error: fail; "
                         "use on_error: null to get NULL for such rows)")
    started = time.perf_counter()
    good = batch.pixels if batch.ok.all() else batch.pixels[batch.ok]
    if not len(good):
        outputs = np.zeros((0, model.plan.num_outputs), np.float32)
    elif batch.on_device is not None:
        import torch

        on_device = batch.on_device if batch.ok.all() else \
            batch.on_device[torch.as_tensor(batch.ok, device=batch.on_device.device)]
        outputs = model.forward_tensor(on_device)
    elif decl.input == "image":
        outputs = model.forward_hwc(good)
    else:
        outputs = model.forward(good)
    result = to_arrow(decl.output, outputs, batch.ok, model.plan.labels, decl.k)
    stats({"rows": len(batch.ok), "bad_rows": len(batch.errors), "batches": 1,
           "forward_seconds": time.perf_counter() - started, "decode_seconds": batch.seconds})
    return result
