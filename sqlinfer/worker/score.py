"""One task's loop in a model UDF: rebatch -> decode ahead -> forward -> Arrow.

The flow for one Spark task: Arrow batches of input values -> fixed-size model batches
(``batch_size``, whatever Arrow's batch size) -> decode/preprocess on a background thread while the
previous batch runs through the network -> Arrow output arrays. A batch's outputs are turned into
Arrow after the next batch has started, so on a GPU the device always has queued work.

Where the time goes and why the code looks like this (docs/performance.md has the figures):
- the forward pass is over 90% of a CPU worker's time: torch gets the task's cores
  (``spark.task.cpus``), convolutional networks run channels-last, which oneDNN runs faster, and
  batch norms are folded into the convolutions before them;
- images are decoded straight into a reusable channels-last (N, H, W, C) uint8 batch buffer, PIL's
  own pixel order, so the batch becomes the network's input without a transposing copy;
- on a GPU the task's cores decode rows in parallel, in processes (:mod:`sqlinfer.worker.decode_pool`,
  threads would wait on the GIL), into pinned shared buffers; JPEGs may be decoded on the GPU
  itself (:mod:`sqlinfer.worker.gpu_decode`); the next batch is uploaded on a second CUDA stream
  while the network runs, outputs come back without blocking, and the network may run in
  fp16/bf16 (``precision``);
- the network is built on a background thread while the first batch decodes, and once per process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.network import Network, Outputs
from sqlinfer.models.plan import ModelPlan
from sqlinfer.worker import arrow_numpy, decode_pool, text
from sqlinfer.worker.arrow_outputs import output_array, with_errors
from sqlinfer.worker.decode import BadInput, decode_image, read_tensor
from sqlinfer.worker.device import choose_device, task_threads
from sqlinfer.worker.gpu_decode import decode_on_device, device_batch, route, wants_gpu_decode
from sqlinfer.worker.model_cache import Stats, get_model

_MALLOC_TUNED = False
_LIBC: Any = None  # glibc, once tune_malloc has found it


class InputError(RuntimeError):
    """A bad row under ``on_error: fail``: fails the task (and so the query), naming model and row."""


@dataclass
class PreparedBatch:
    pixels: np.ndarray  # rows x input (images: N, H, W, C uint8; text: N, 2, L ids and masks); rows with ok hold data
    ok: np.ndarray  # bool per row
    errors: list[tuple[int, BadInput]] = field(default_factory=list)
    seconds: float = 0.0
    on_device: Any = None  # on a GPU (or with device decoding): the whole batch on the device, N x C x H x W
    task_rows: list[int] | None = None  # each row's place in the task's input, when not in input order


def tune_malloc() -> None:
    """Keep freed memory in the process for the next batch (glibc only; once per process).

    glibc serves allocations over 32 MB (a CPU forward pass's larger activations at batch 16)
    with a fresh mmap and returns them on free, so every batch pays page faults and page zeroing
    for them again: about 8% of a single-threaded resnet18 forward pass. Without mmap and with a
    high trim threshold the heap keeps those pages; :func:`release_free_memory` gives them back
    at the end of each task. ``SQLINFER_MALLOC_TUNING=0`` leaves malloc alone.
    """
    global _MALLOC_TUNED, _LIBC
    if _MALLOC_TUNED or os.environ.get("SQLINFER_MALLOC_TUNING", "1") == "0":
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 1 << 30)
        _LIBC = libc
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# Rows between two trims inside a task (release_free_memory): a long task's heap grows the way
# many short tasks' did, and a task may hold millions of rows.
TRIM_EVERY_ROWS = 512


def release_free_memory() -> None:
    """At the end of a task, and every :data:`TRIM_EVERY_ROWS` rows of it, give the heap's free
    pages back to the system (``malloc_trim``).

    The heap that :func:`tune_malloc` keeps grew task after task as images of other sizes left
    free pages in other places: a worker's peak 1,205 -> 1,256 MB over 24 tasks of 125 JPEGs,
    1,186 -> 1,193 MB when trimmed after each task, at the same speed (a trim and the page faults
    it causes are milliseconds against a task's seconds). Within one task of 1,000 rows the peak
    grew the same way (the bench's scale section: 605 -> 666 MB from tasks of 125 rows to tasks
    of 1,000), hence the trims inside a task."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _values(array: pa.Array) -> list[Any]:
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        # One numpy view per row instead of a Python float per element.
        values = array.flatten()
        flat = arrow_numpy.view(values)
        offsets = arrow_numpy.view(array.offsets)
        offsets = offsets - offsets[0]  # a sliced array's offsets need not start at 0
        nulls = arrow_numpy.nulls(array)
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
    straight into them. With decoder processes they live in the pool's shared memory. On a GPU
    they are pinned, so host-to-device copies need no staging copy and can run asynchronously.
    Three buffers: one being uploaded or in the network, one being decoded, one spare."""

    def __init__(self, plan: ModelPlan, batch_size: int, pinned: bool, pool: decode_pool.DecodePool | None = None,
                 count: int = 3) -> None:
        import torch

        shape: tuple[int, ...]
        if plan.decl.input == "image":
            channels, height, width = plan.input_shape
            shape, dtype = (batch_size, height, width, channels), torch.uint8  # decode_image's layout
        else:
            shape, dtype = (batch_size, *plan.input_shape), torch.float32
        if pool is not None:
            self._arrays = pool.buffers(shape, count)
            for array in self._arrays if pinned else ():
                pool.pin(array)
        else:
            self._arrays = [torch.empty(shape, dtype=dtype, pin_memory=pinned).numpy() for _ in range(count)]
        self._next = 0

    def take(self, rows: int) -> np.ndarray:
        array = self._arrays[self._next % len(self._arrays)]
        self._next += 1
        return array[:rows]


class SideStream:
    """Where a batch is made ready on a CUDA device while the network runs the previous one: a
    second stream for the upload and for device decoding. On other devices it does nothing."""

    def __init__(self, device: str) -> None:
        import torch

        self._stream = torch.cuda.Stream(torch.device(device)) if device.startswith("cuda") else None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Queue the enclosed work on the side stream, and wait for it (on this thread) at the end,
        so the batch is on the device, and its host buffer free, once :func:`prepare` returns."""
        if self._stream is None:
            yield
            return
        import torch

        with torch.cuda.stream(self._stream):
            yield
        self._stream.synchronize()


def prepare(plan: ModelPlan, values: list[Any], out: np.ndarray, pool: decode_pool.DecodePool | None = None,
            decode_device: str | None = None, upload_to: str | None = None,
            side: SideStream | None = None) -> PreparedBatch:
    """Decode/reshape ``values`` into ``out`` (a slice of :class:`BatchBuffers`), row by row, or
    spread over ``pool``'s decoder processes. With ``decode_device``, the JPEG rows it can take are
    decoded there together (:mod:`sqlinfer.worker.gpu_decode`) and the whole batch ends up on that
    device; with ``upload_to`` (a CUDA device) the batch is copied there. Both happen on ``side``."""
    started = time.perf_counter()
    pp = plan.preprocess  # set for image input, None for tensors
    ok = np.ones(len(values), dtype=bool)
    errors: list[tuple[int, BadInput]] = []
    on_device = None
    cpu_rows: Sequence[int] = range(len(values))
    side = side or SideStream("cpu")
    if decode_device is not None and pp is not None:
        routed = route(values, pp)
        with side.active():
            groups = decode_on_device([values[r] for r in routed.device_rows], pp, decode_device) \
                if routed.device_rows else []
            if groups is not None:  # else the decoder refused the batch: every row on the CPU
                cpu_rows = routed.cpu_rows
                on_device = device_batch(len(values), plan.input_shape, decode_device)
                for group in groups:
                    shape = tuple(group.pixels.shape[1:])
                    for pixels, position in zip(group.pixels, group.positions, strict=True):
                        row = routed.device_rows[position]
                        if shape != plan.input_shape:
                            errors.append((row, BadInput("wrong_size", f"image is {shape} after "
                                                         f"preprocessing, expected {plan.input_shape}")))
                        else:
                            on_device[row].copy_(pixels)  # to uint8: the values are whole already
    if pool is not None and pp is not None and len(cpu_rows) > 1:
        errors += pool.decode(values, cpu_rows, pp, out)
    else:
        for row in cpu_rows:
            try:
                if pp is not None:
                    decode_image(values[row], pp, out[row])
                else:
                    read_tensor(values[row], out[row])
            except BadInput as exc:
                ok[row] = False
                errors.append((row, exc))
    for row, _ in errors:
        ok[row] = False
    errors.sort(key=lambda item: item[0])
    with side.active():
        if on_device is not None and len(cpu_rows):
            # The rows decoded on the CPU join the batch on the device: one upload, then a gather.
            import torch

            index = torch.as_tensor(list(cpu_rows), device=on_device.device)
            on_device[index] = _as_tensor(out, plan).to(on_device.device, non_blocking=True)[index]
        elif on_device is None and upload_to is not None:
            on_device = _as_tensor(out, plan).to(upload_to, non_blocking=True)
    return PreparedBatch(out, ok, errors, time.perf_counter() - started, on_device)


def _as_tensor(out: np.ndarray, plan: ModelPlan) -> Any:
    """A batch buffer as the network's input tensor (images: a channels-last N, C, H, W view)."""
    import torch

    tensor = torch.from_numpy(out)
    return tensor.permute(0, 3, 1, 2) if plan.decl.input == "image" else tensor


def decode_ahead(pool: ThreadPoolExecutor, chunks: Iterator[list[Any]],
                 prepare_chunk: Callable[[list[Any]], PreparedBatch]) -> Iterator[PreparedBatch]:
    """The prepared batches of ``chunks``, each prepared on ``pool`` while the caller works on the
    one before. The first starts now, before the caller asks for it (the model builds meanwhile)."""
    first = next(chunks, None)
    if first is None:
        return iter(())
    pending = pool.submit(prepare_chunk, first)

    def batches() -> Iterator[PreparedBatch]:
        nonlocal pending
        for chunk in chunks:
            current = pending.result()
            pending = pool.submit(prepare_chunk, chunk)
            yield current
        yield pending.result()

    return batches()


def row_decoders(plan: ModelPlan, device: str, threads: int) -> decode_pool.DecodePool | None:
    """Decoder processes for a GPU worker's image rows, one per task core: the network needs
    little CPU there, and threads would be held back by the GIL. None on CPU workers, where the
    task's cores run the network and one thread decodes ahead."""
    if device == "cpu" or threads < 2 or plan.decl.input != "image" or not decode_pool.supported():
        return None
    return decode_pool.shared_pool(threads)


def image_or_tensor_batches(plan: ModelPlan, device: str, threads: int,
                            batch_size: int) -> Callable[[list[Any]], PreparedBatch]:
    """How a task turns rows of images or tensors into batches: decoded into reusable buffers."""
    on_gpu = device != "cpu"
    pool = row_decoders(plan, device, threads)
    buffers = BatchBuffers(plan, batch_size, pinned=on_gpu, pool=pool)
    decode_device = device if wants_gpu_decode(plan.preprocess, device) else None
    side = SideStream(device)

    def prepare_chunk(chunk: list[Any]) -> PreparedBatch:
        return prepare(plan, chunk, buffers.take(len(chunk)), pool, decode_device, device if on_gpu else None, side)

    return prepare_chunk


def text_batches(plan: ModelPlan, load_weights: Callable[[], Weights]) -> Callable[[list[Any]], PreparedBatch]:
    """How a task turns rows of text into batches: tokenized, padded to each batch's longest row."""
    tokenizer = text.tokenizer_for(plan.fingerprint, load_weights)

    def prepare_chunk(chunk: list[Any]) -> PreparedBatch:  # (task row, text) pairs from LengthOrder
        started = time.perf_counter()
        tokens, ok, errors = text.tokenize(tokenizer, [value for _, value in chunk])
        return PreparedBatch(tokens, ok, errors, time.perf_counter() - started, task_rows=[row for row, _ in chunk])

    return prepare_chunk


def score(plan: ModelPlan, load_weights: Callable[[], Weights], arrays: Iterator[pa.Array],
          stats: Stats, with_reasons: bool = False) -> Iterator[pa.Array]:
    """Score one task's input: the body of the UDF. ``with_reasons`` (the ``_checked`` companion
    function): each output row is ``{result, error}``, and a bad row never fails the task."""
    import torch

    tune_malloc()
    device = choose_device(plan.decl.device)
    threads = task_threads()
    torch.set_num_threads(threads)
    batch_size = plan.batch_size(device)
    on_gpu = device != "cpu"
    try:
        if plan.decl.input == "text":
            order = text.LengthOrder(batch_size)
            prepare_chunk = text_batches(plan, load_weights)
            chunks = order.chunks(rebatch(arrays, order.window))
            yield from order.restore(_run(plan, load_weights, chunks, prepare_chunk, stats, with_reasons, on_gpu))
        else:
            prepare_chunk = image_or_tensor_batches(plan, device, threads, batch_size)
            yield from _run(plan, load_weights, rebatch(arrays, batch_size), prepare_chunk, stats, with_reasons,
                            on_gpu)
    finally:
        release_free_memory()


def build_only(plan: ModelPlan, load_weights: Callable[[], Weights], arrays: Iterator[pa.Array],
               stats: Stats) -> Iterator[pa.Array]:
    """The body of a model's builder UDF (sqlinfer.runtime.warm_up.build_models_in_workers): the
    network built in this worker, or found built, and the input passed through unscored."""
    get_model(plan, load_weights, stats)
    yield from arrays


def _run(plan: ModelPlan, load_weights: Callable[[], Weights], chunks: Iterator[list[Any]],
         prepare_chunk: Callable[[list[Any]], PreparedBatch], stats: Stats, with_reasons: bool,
         on_gpu: bool) -> Iterator[pa.Array]:
    """The batches of ``chunks`` prepared ahead, through the network, as Arrow arrays in order."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlinfer") as threads_pool:
        # The model builds while the first batch decodes.
        model_future = threads_pool.submit(get_model, plan, load_weights, stats)
        batches = decode_ahead(threads_pool, chunks, prepare_chunk)
        model = model_future.result()
        rows_done = 0
        running: Running | None = None
        for batch in batches:
            # Start this batch, then finish the one before while this one runs on the GPU. (On a
            # CPU the forward pass has run by now: its outputs go out at once, as soon as ready.)
            started = _launch(model, batch, rows_done, fail_on_bad_rows=not with_reasons)
            if rows_done // TRIM_EVERY_ROWS != (rows_done + len(batch.ok)) // TRIM_EVERY_ROWS:
                release_free_memory()
            rows_done += len(batch.ok)
            if running is not None:
                yield running.finish(stats, with_reasons)
            running = started
            if not on_gpu:
                yield running.finish(stats, with_reasons)
                running = None
        if running is not None:
            yield running.finish(stats, with_reasons)


@dataclass
class Running:
    """A batch in the network: its outputs come back with :meth:`finish`."""

    model: Network
    batch: PreparedBatch
    outputs: Outputs | None  # None: no good rows
    seconds: float  # spent starting it

    def finish(self, stats: Stats, with_reasons: bool = False) -> pa.Array:
        started = time.perf_counter()
        plan = self.model.plan
        outputs = self.outputs.result() if self.outputs is not None else np.zeros((0, plan.num_outputs), np.float32)
        result = output_array(plan.decl.output, outputs, self.batch.ok, plan.labels, plan.decl.k)
        stats({"rows": len(self.batch.ok), "bad_rows": len(self.batch.errors), "batches": 1,
               "forward_seconds": self.seconds + time.perf_counter() - started,
               "decode_seconds": self.batch.seconds})
        return with_errors(result, self.batch.errors) if with_reasons else result


def _launch(model: Network, batch: PreparedBatch, rows_before: int, fail_on_bad_rows: bool) -> Running:
    decl = model.plan.decl
    if batch.errors and decl.on_error == "fail" and fail_on_bad_rows:
        numbers = batch.task_rows or [rows_before + row for row in range(len(batch.ok))]
        row, error = min(batch.errors, key=lambda item: numbers[item[0]])  # the first in the task's input
        number = numbers[row]
        raise InputError(f"sqlinfer: model {decl.name!r} ({decl.udf_name}): bad input at row "
                         f"{number} of this task: {error} (on_error: fail; "
                         "use on_error: null to get NULL for such rows)")
    started = time.perf_counter()
    everything = batch.ok.all()
    if not batch.ok.any():
        outputs = None
    elif batch.on_device is not None:
        import torch

        if batch.on_device.is_cuda:
            # Made on the side stream: keep its memory from being reused for the next upload
            # before this stream's work on it is done.
            batch.on_device.record_stream(torch.cuda.current_stream(batch.on_device.device))
        rows = batch.on_device if everything else \
            batch.on_device[torch.as_tensor(batch.ok, device=batch.on_device.device)]
        outputs = model.launch(rows)
    else:
        good = batch.pixels if everything else batch.pixels[batch.ok]
        outputs = model.launch(_as_tensor(good, model.plan))
    return Running(model, batch, outputs, time.perf_counter() - started)
