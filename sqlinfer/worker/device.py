"""Which device and how many threads a task gets: its Spark GPU resource and ``spark.task.cpus``.

Spark decides which GPU each task uses: with ``spark.executor.resource.gpu.amount`` and
``spark.task.resource.gpu.amount`` set, the scheduler hands every task one of its executor's GPU
addresses (several tasks the same one when the task amount is a fraction, e.g. 0.25 puts four
tasks on each GPU) and the task reads it from ``TaskContext.resources()["gpu"]``
(docs/gpu.md). :func:`assigned_gpu` reads that assignment and :func:`choose_device` turns it into
the torch device, so the two halves can be tested apart: the assignment without CUDA, the device
without Spark.

Addresses are taken as CUDA device ordinals in the worker's process, the convention of PySpark's
own ``TorchDistributor`` (``pyspark/ml/torch/distributor.py``): address ``N`` is ``cuda:N``, the
machine's GPU N when the worker sees them all, entry N (from 0) of ``CUDA_VISIBLE_DEVICES`` when
that is set. Spark itself gives addresses no meaning (they are whatever the discovery script
printed), so the script must print them on that scale; an address beyond the visible GPUs is
refused with an error that says so, rather than CUDA's "invalid device ordinal".

pyspark is imported only inside the functions, and its absence (a GPU box without Spark, the
driver's own check) means: no assignment, so the first GPU, and all of the process's cores.
"""

from __future__ import annotations

import os

# The resource name Spark's GPU settings use (spark.{executor,task}.resource.gpu.*).
GPU_RESOURCE = "gpu"


def assigned_gpu() -> int | None:
    """The GPU Spark assigned to the running task, as a CUDA ordinal; ``None`` outside a task,
    without pyspark, or when the session requests no GPUs (no ``gpu`` resource in the task).

    A task given several GPUs (a task amount above 1) uses the first: sqlinfer runs a model on
    one device per task. An address that is not a non-negative integer (a GPU UUID, a MIG
    instance) cannot be a ``cuda:N`` device, so it is a :class:`RuntimeError`, not a guess.
    """
    try:
        from pyspark import TaskContext
    except ImportError:  # a worker box without Spark (the GPU bench): nothing was assigned
        return None
    context = TaskContext.get()
    if context is None:  # the driver's own check, or a plain Python process
        return None
    gpu = context.resources().get(GPU_RESOURCE)
    if gpu is None or not gpu.addresses:
        return None
    address = str(gpu.addresses[0]).strip()
    if not address.isdigit():
        raise RuntimeError(
            f"sqlinfer: Spark assigned this task GPU address {address!r}, which is not a CUDA device "
            f"index: the GPU discovery script must print indexes such as \"0\", \"1\" (docs/gpu.md)")
    return int(address)


def choose_device(requested: str) -> str:
    """`cpu`, or for `auto` and `cuda` on a CUDA worker the GPU Spark assigned to this task
    (:func:`assigned_gpu`); ``cuda:0`` when nothing was assigned (no GPU settings, no Spark)."""
    import torch

    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("sqlinfer: device cuda was declared but this worker has no CUDA device")
        return "cpu"
    index = assigned_gpu()
    if index is None:
        return "cuda:0"
    visible = torch.cuda.device_count()
    if index >= visible:
        # Spark's address and CUDA's numbering disagree: usually a discovery script that prints
        # physical indexes (nvidia-smi's) while CUDA_VISIBLE_DEVICES hides some GPUs from the worker.
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise RuntimeError(
            f"sqlinfer: Spark assigned this task GPU {index} but this worker sees {visible} CUDA "
            f"device(s) (CUDA_VISIBLE_DEVICES={shown if shown is not None else 'unset'}): Spark's GPU "
            "addresses must be CUDA indexes in the worker, 0 to n-1 over the GPUs it sees (docs/gpu.md)")
    return f"cuda:{index}"


def surely_cpu(requested: str) -> bool:
    """Whether :func:`choose_device` gives the CPU for ``requested`` on this machine, told without
    torch and without touching a GPU (a process about to fork workers must not initialize CUDA):
    `cpu`, or `auto` on a machine with no GPU driver loaded (NVIDIA's or AMD's). False where it
    cannot tell."""
    if requested == "auto":
        return not any(os.path.exists(driver) for driver in ("/proc/driver/nvidia", "/dev/kfd"))
    return requested == "cpu"


def task_threads() -> int:
    """The cores this task may use (``spark.task.cpus``); without a task, all of the process's."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            return max(1, int(context.cpus()))
    except Exception:  # no pyspark or no task context: the process's cores
        pass
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or taskset's cpuset),
    not the machine's count that ``os.cpu_count()`` gives."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
