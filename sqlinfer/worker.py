"""Worker side of a model UDF: build each model once per Python process, then score batches.

The flow for one Spark task: Arrow batches of input values -> fixed-size model batches
(``batch_size``, whatever Arrow's batch size) -> decode/preprocess on a background thread while the
previous batch runs through the network (two batches in flight at most) -> Arrow output arrays.
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


class InputError(RuntimeError):
    """A bad row under ``on_error: fail``: fails the task (and so the query), naming model and row."""


@dataclass
class PreparedBatch:
    pixels: np.ndarray  # rows x input_shape; only rows with ok=True hold data
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
        self.module = module.to(self.device, dtype=self.dtype)
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
        """Rows of preprocessed input (uint8 images or float tensors) -> float32 output rows."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, non_blocking=True)
            if self.plan.decl.input == "image":
                # The same operations, in the same order, as ToTensor() + Normalize().
                x = x.to(torch.float32).div_(255)
                if self.mean is not None:
                    x = x.sub_(self.mean)
                if self.std is not None:
                    x = x.div_(self.std)
            x = x.to(self.dtype)
            self._features.clear()
            out = self.module(x)
            if self.plan.decl.output == "embedding" and self._features:
                out = self._features[-1]
            self._features.clear()
            return out.reshape(out.shape[0], -1).float().cpu().numpy()


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
            stats({"builds": 1, "build_seconds": time.perf_counter() - started})
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


def prepare(plan: ModelPlan, values: list[Any]) -> PreparedBatch:
    started = time.perf_counter()
    dtype = np.uint8 if plan.decl.input == "image" else np.float32
    pixels = np.empty((len(values),) + plan.input_shape, dtype=dtype)
    ok = np.ones(len(values), dtype=bool)
    errors: list[tuple[int, BadInput]] = []
    for row, value in enumerate(values):
        try:
            if plan.preprocess is not None:
                decode_image(value, plan.preprocess, pixels[row])
            else:
                read_tensor(value, pixels[row])
        except BadInput as exc:
            ok[row] = False
            errors.append((row, exc))
    return PreparedBatch(pixels, ok, errors, time.perf_counter() - started)


def score(plan: ModelPlan, load_weights: Callable[[], Weights], arrays: Iterator[pa.Array],
          stats: Stats) -> Iterator[pa.Array]:
    """Score one task's input: the body of the UDF."""
    import torch

    torch.set_num_threads(task_threads())
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlinfer") as pool:
        # The model builds while the first batch decodes.
        model_future = pool.submit(get_model, plan, load_weights, stats)
        chunks = rebatch(arrays, plan.batch_size(choose_device(plan.decl.device)))
        first = next(chunks, None)
        if first is None:
            model_future.result()
            return
        pending: Future[PreparedBatch] = pool.submit(prepare, plan, first)
        model = model_future.result()
        rows_done = 0
        for chunk in chunks:
            current = pending.result()
            pending = pool.submit(prepare, plan, chunk)  # decode the next batch during this forward
            yield _run(model, current, rows_done, stats)
            rows_done += len(current.ok)
        yield _run(model, pending.result(), rows_done, stats)


def _run(model: LoadedModel, batch: PreparedBatch, rows_before: int, stats: Stats) -> pa.Array:
    decl = model.plan.decl
    if batch.errors and decl.on_error == "fail":
        row, error = batch.errors[0]
        raise InputError(f"sqlinfer: model {decl.name!r} ({decl.udf_name}): bad input at row "
                         f"{rows_before + row} of this task: {error} (on_error: fail; "
                         "use on_error: null to get NULL for such rows)")
    started = time.perf_counter()
    good = batch.pixels if batch.ok.all() else batch.pixels[batch.ok]
    outputs = model.forward(good) if len(good) else np.zeros((0, model.plan.num_outputs), np.float32)
    result = to_arrow(decl.output, outputs, batch.ok, model.plan.labels, decl.k)
    stats({"rows": len(batch.ok), "bad_rows": len(batch.errors), "batches": 1,
           "forward_seconds": time.perf_counter() - started, "decode_seconds": batch.seconds})
    return result
