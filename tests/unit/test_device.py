"""The task's GPU (sqlinfer/worker/device.py) without Spark or CUDA: the assignment read from the
task's context, the device made of it, and docs/gpu.md's discovery script.

Unit tests run without Java, so no Spark task exists here: a stand-in object takes the place of
PySpark's ``TaskContext`` (the real one is used in tests/functional/test_gpu_assignment.py, with
real Spark scheduling), and ``torch.cuda`` is told it has GPUs where a test needs a CUDA worker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from pyspark import TaskContext

from sqlinfer.worker.device import assigned_gpu, choose_device

REPO = Path(__file__).resolve().parents[2]


class StandInTask:
    """What sqlinfer reads of a Spark task's context: its resources, as PySpark gives them."""

    def __init__(self, resources: dict[str, list[str]]) -> None:
        self._resources = {name: SimpleNamespace(name=name, addresses=addresses)
                           for name, addresses in resources.items()}

    def resources(self) -> dict[str, SimpleNamespace]:
        return self._resources


def in_task(monkeypatch: pytest.MonkeyPatch, **resources: list[str]) -> None:
    monkeypatch.setattr(TaskContext, "get", lambda: StandInTask(resources))


def cuda_worker(monkeypatch: pytest.MonkeyPatch, gpus: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)


def test_no_assignment_outside_a_task_or_without_gpus_or_pyspark(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TaskContext.get() is None and assigned_gpu() is None  # the real one: no task here
    in_task(monkeypatch)  # a task of a session without GPU settings
    assert assigned_gpu() is None
    in_task(monkeypatch, gpu=[])
    assert assigned_gpu() is None
    monkeypatch.setitem(sys.modules, "pyspark", None)  # `import pyspark` fails: a worker without Spark
    assert assigned_gpu() is None


def test_the_address_spark_assigned_is_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    in_task(monkeypatch, gpu=["1"])
    assert assigned_gpu() == 1
    cuda_worker(monkeypatch, gpus=2)
    assert choose_device("auto") == "cuda:1"
    assert choose_device("cuda") == "cuda:1"
    assert choose_device("cpu") == "cpu"
    in_task(monkeypatch, gpu=["0", "1"])  # a task given two GPUs runs on the first
    assert choose_device("auto") == "cuda:0"
    in_task(monkeypatch)  # no assignment: the first GPU
    assert choose_device("auto") == "cuda:0"


def test_no_cuda_means_cpu_for_auto_and_an_error_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    in_task(monkeypatch, gpu=["1"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="device cuda was declared but this worker has no CUDA device"):
        choose_device("cuda")


def test_an_address_that_is_no_cuda_index_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    in_task(monkeypatch, gpu=["GPU-5f3c2a"])
    with pytest.raises(RuntimeError, match=r"GPU address 'GPU-5f3c2a', which is not a CUDA device index"):
        assigned_gpu()


def test_an_address_beyond_the_visible_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The discovery script printed physical indexes, but the worker sees two GPUs only.
    in_task(monkeypatch, gpu=["3"])
    cuda_worker(monkeypatch, gpus=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(RuntimeError, match=r"assigned this task GPU 3 but this worker sees 2 CUDA device\(s\) "
                                           r"\(CUDA_VISIBLE_DEVICES=2,3\)"):
        choose_device("auto")


def catalogue() -> ModuleType:
    """tests/unit/test_docs_examples.py, loaded as tests/functional/test_docs_examples.py loads it."""
    name = "docs_examples_catalogue"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "unit" / "test_docs_examples.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize(("visible", "addresses"), [
    (None, ["0", "1", "2", "3"]),  # every GPU of the machine (the stand-in nvidia-smi lists four)
    ("2,3", ["0", "1"]),           # CUDA's numbering in a worker that sees GPUs 2 and 3
    ("GPU-5f3c2a,GPU-9d1e07", ["0", "1"]),
    ("", []),                      # CUDA sees no GPU
])
def test_the_docs_discovery_script_numbers_gpus_as_cuda_does(tmp_path: Path, visible: str | None,
                                                              addresses: list[str]) -> None:
    script = tmp_path / "gpus.sh"
    script.write_text(catalogue().example("docs/gpu.md", "nvidia-smi --query-gpu=index").text)
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n3\\n'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env['PATH']}"
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": addresses}
