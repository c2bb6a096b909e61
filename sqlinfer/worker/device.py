"""Which device and how many threads a task gets: its Spark GPU resource and ``spark.task.cpus``.

pyspark is imported only inside the functions, and its absence (a GPU box without Spark, the
driver's own check) means: first GPU, all of the process's cores.
"""

from __future__ import annotations

import os


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
    except Exception:  # no pyspark or no task context (the driver's check): the first GPU
        pass
    return f"cuda:{index}"


def task_threads() -> int:
    """The cores this task may use (``spark.task.cpus``); without a task, all of the process's."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None:
            return max(1, int(context.cpus()))
    except Exception:  # no pyspark or no task context: the process's cores
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
