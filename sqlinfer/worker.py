"""Worker side of a model UDF: build each model once per Python process, then score batches.

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
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sqlinfer.flavors import Weights
from sqlinfer.outputs import to_arrow
from sqlinfer.plan import ModelPlan
from sqlinfer.preprocess import BadInput, decode_image, read_tensor

Stats = Callable[[dict[str, float]], None]

_MODELS: dict[tuple[str, str], LoadedModel] = {}
_BUILD_LOCK = threading.Lock()
_MALLOC_TUNED = False


class InputError(RuntimeError):
    """A bad row under ``on_error: fail``: fails the task (and so the query), naming model and row."""


@dataclass
class PreparedBatch:
    pixels: np.ndarray  # rows x input (images: N, H, W, C uint8); only rows with ok=True hold data
    ok: np.ndarray  # bool per row
    errors: list[tuple[int, BadInput]] = field(default_factory=list)
    seconds: float = 0.0


def choose_device(requested: str) -> str:
    """`cpu`, or the CUDA device of this task (Spark's task GPU resources), for `auto` and `cuda`."""
    import torch

    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("sqlinfer: device cuda was declared but this worker has no CUDA device")
        return "cpu"
    index = 0
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        gpus = context.resources().get("gpu") if context is not None else None
        if gpus is not None and gpus.addresses:
            index = int(gpus.addresses[0])
    except Exception:  # noqa: BLE001 - no task context (driver-side check): first GPU
        pass
    return f"cuda:{index}"


def task_threads() -> int:
    """The cores this task may use (``spark.task.cpus``); without a task, all of the process's."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            return max(1, int(context.cpus()))
    except Exception:  # noqa: BLE001
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class LoadedModel:
    """A built network on its device, with the input normalization and output head of its plan."""

    def __init__(self, plan: ModelPlan, weights: Weights, device: str) -> None:
        import torch

        from sqlinfer import flavors

        self.plan = plan
        self.device = torch.device(device)
        decl = plan.decl
        module = flavors.get(decl.flavor).build(decl, weights).eval()
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[decl.precision]
        if self.device.type == "cpu" and self.dtype == torch.float16:
            self.dtype = torch.float32  # fp16 kernels are slow or missing on CPU; keep exact results
        if decl.embedding_layer is None:
            # Hooks on a declared embedding layer need the network's modules as declared.
            module = fold_batch_norms(module)
        self.memory_format = torch.contiguous_format
        if decl.input == "image" and len(plan.input_shape) == 3 and _has_conv2d(module):
            # oneDNN (CPU) and cuDNN (GPU, fp16/bf16) run 2-d convolutions faster on NHWC data:
            # about 1.2x for resnet18 on CPU (bench/). Results differ only by float rounding.
            self.memory_format = torch.channels_last
        self.module = module.to(self.device, dtype=self.dtype)
        if self.memory_format is torch.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        self._features: list[Any] = []
        if decl.output == "embedding" and decl.flavor != "torchscript":
            self._hook_embedding(decl.embedding_layer)
        pp = plan.preprocess
        self.mean = self.std = None
        if pp is not None and pp.mean is not None:
            self.mean = torch.tensor(pp.mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        if pp is not None and pp.std is not None:
            self.std = torch.tensor(pp.std, dtype=torch.float32, device=self.device).view(-1, 1, 1)

    def _hook_embedding(self, layer: str | None) -> None:
        import torch

        modules = dict(self.module.named_modules())
        if layer is not None:
            if layer not in modules:
                raise ValueError(f"embedding_layer {layer!r} is not a module of the network")
            modules[layer].register_forward_hook(lambda _m, _i, out: self._features.append(out))
            return
        # Default: the penultimate features, i.e. the input of the last Linear layer.
        linears = [m for m in modules.values() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ValueError("no Linear layer to take the penultimate features from; set embedding_layer")
        linears[-1].register_forward_hook(lambda _m, inputs, _o: self._features.append(inputs[0]))

    def forward(self, pixels: np.ndarray) -> np.ndarray:
        """Rows of preprocessed input in the plan's ``input_shape`` (images: C x H x W, uint8 or
        float pixel values 0-255; tensors: float32) -> float32 output rows."""
        import torch

        return self.forward_tensor(torch.from_numpy(pixels))

    def forward_hwc(self, pixels: np.ndarray) -> np.ndarray:
        """Images as N x H x W x C uint8 (the worker's batch buffers) -> float32 output rows."""
        import torch

        # A permuted view: N, C, H, W in shape, channels-last in memory; no copy.
        return self.forward_tensor(torch.from_numpy(pixels).permute(0, 3, 1, 2))

    def forward_tensor(self, x: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            # From pinned memory (GPU) the copy runs asynchronously; the network waits for it.
            x = x.to(self.device, non_blocking=True)
            if self.plan.decl.input == "image":
                # The same operations, in the same order, as ToTensor() + Normalize().
                x = x.to(torch.float32).div_(255)
                if self.mean is not None:
                    x = x.sub_(self.mean)
                if self.std is not None:
                    x = x.div_(self.std)
            x = x.to(self.dtype, memory_format=self.memory_format)
            self._features.clear()
            out = self.module(x)
            if self.plan.decl.output == "embedding" and self._features:
                out = self._features[-1]
            self._features.clear()
            return out.reshape(out.shape[0], -1).float().cpu().numpy()


def fold_batch_norms(module: Any) -> Any:
    """The network with each eval-mode BatchNorm folded into the convolution before it (torch.fx):
    one pass over the activations less per layer, the same outputs up to float rounding. Networks
    without BatchNorm, or that torch.fx cannot trace, are returned as they are."""
    import torch

    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return module
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(module, inplace=True)
    except Exception:  # noqa: BLE001 - not traceable (data-dependent control flow, ...): keep it
        return module


def _has_conv2d(module: Any) -> bool:
    import torch

    try:
        return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    except Exception:  # noqa: BLE001 - e.g. a TorchScript module: keep its default layout
        return False


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


def get_model(plan: ModelPlan, load_weights: Callable[[], Weights], stats: Stats) -> LoadedModel:
    """The process-wide model for this plan and device, built on first use only."""
    device = choose_device(plan.decl.device)
    key = (plan.fingerprint, device)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _BUILD_LOCK:
        if key not in _MODELS:
            started = time.perf_counter()
            _MODELS[key] = LoadedModel(plan, load_weights(), device)
            # built_at (epoch seconds) lets the bench place the build on the cold start's timeline.
            stats({"builds": 1, "build_seconds": time.perf_counter() - started, "built_at": time.time()})
    return _MODELS[key]


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
            rows_pool: ThreadPoolExecutor | None = None) -> PreparedBatch:
    """Decode/reshape ``values`` into ``out`` (a slice of :class:`BatchBuffers`), row by row, or
    spread over ``rows_pool``'s threads (PIL releases the GIL while decoding)."""
    started = time.perf_counter()
    image = plan.decl.input == "image"
    ok = np.ones(len(values), dtype=bool)
    errors: list[tuple[int, BadInput]] = []

    def one(row: int) -> None:
        try:
            if image:
                decode_image(values[row], plan.preprocess, out[row])
            else:
                read_tensor(values[row], out[row])
        except BadInput as exc:
            ok[row] = False
            errors.append((row, exc))

    if rows_pool is None or len(values) < 2:
        for row in range(len(values)):
            one(row)
    else:
        list(rows_pool.map(one, range(len(values))))
        errors.sort(key=lambda item: item[0])
    return PreparedBatch(out, ok, errors, time.perf_counter() - started)


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
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlinfer") as pool:
            # The model builds while the first batch decodes.
            model_future = pool.submit(get_model, plan, load_weights, stats)
            chunks = rebatch(arrays, batch_size)
            first = next(chunks, None)
            if first is None:
                model_future.result()
                return
            pending: Future[PreparedBatch] = pool.submit(prepare, plan, first, buffers.take(len(first)), rows_pool)
            model = model_future.result()
            rows_done = 0
            for chunk in chunks:
                current = pending.result()
                # Decode the next batch during this forward pass.
                pending = pool.submit(prepare, plan, chunk, buffers.take(len(chunk)), rows_pool)
                yield _run(model, current, rows_done, stats)
                rows_done += len(current.ok)
            yield _run(model, pending.result(), rows_done, stats)
    finally:
        if rows_pool is not None:
            rows_pool.shutdown(wait=True)


def _run(model: LoadedModel, batch: PreparedBatch, rows_before: int, stats: Stats) -> pa.Array:
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
    elif decl.input == "image":
        outputs = model.forward_hwc(good)
    else:
        outputs = model.forward(good)
    result = to_arrow(decl.output, outputs, batch.ok, model.plan.labels, decl.k)
    stats({"rows": len(batch.ok), "bad_rows": len(batch.errors), "batches": 1,
           "forward_seconds": time.perf_counter() - started, "decode_seconds": batch.seconds})
    return result
