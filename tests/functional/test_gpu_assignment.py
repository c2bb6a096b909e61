"""Several tasks on one GPU, with real Spark scheduling (issue 10 item 5): the settings of
docs/gpu.md's worked example hand each task a GPU address, and sqlinfer's worker uses that one.

No GPU is needed: what is under test is the assignment, not CUDA. The GPUs are a fake
``nvidia-smi`` that lists two, read by docs/gpu.md's own discovery script, which so prints
``{"name": "gpu", "addresses": ["0", "1"]}``; inside each task a stand-in ``torch`` module says
CUDA is there with two devices, so that ``choose_device`` answers as on a GPU worker.

Why ``local-cluster[1,8,2048]`` and not ``local[N]``: Spark schedules GPUs only through a
cluster manager. In ``local[N]`` the one in-process executor offers the scheduler cores and no
other resources (``LocalSchedulerBackend``), so tasks that ask for a GPU never start (tried with
this pyspark: the stage stays at 0 running tasks). ``local-cluster[workers,cores,memoryMB]``
starts a standalone master and worker inside the driver JVM, from the pip-installed pyspark, and
real executor JVMs; the worker runs the discovery script (``spark.worker.resource.gpu.*``, the
settings docs/gpu.md puts in a standalone worker's ``SPARK_WORKER_OPTS``), gives each executor
its GPU, and the scheduler places tasks by cores and GPU share, as on a real cluster.

The job runs in a subprocess because this process may already hold the functional tests'
``local[2]`` session (tests/conftest.py), and a second SparkContext cannot live beside it.
With 8 cores, executors of 4 cores and 1 GPU, and tasks of 1 core and 0.25 GPU, the worker holds
two executors, one per GPU, and eight tasks run at once, four on each GPU. Each task waits until
all eight have started (a rendezvous in a folder), so the eight overlap whenever Spark lets them;
each reports its Spark resources, what sqlinfer made of them, its executor (its Python daemon's
pid) and when it ran. The test fails if a task's device is not the address Spark gave it, if one
GPU is left unused, or if a GPU is shared by other than four tasks at a time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import private_spark_home

from sqlinfer.build.config import load_project_file
from sqlinfer.runtime.daemon import EARLY_ENV
from sqlinfer.runtime.settings import session_conf

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
DOC = "docs/gpu.md"
TASKS = 8          # 2 GPUs x 1 / 0.25 tasks each, and 8 cores of 1 each: all at once
PER_GPU = 4        # 1 / spark.task.resource.gpu.amount
MASTER = "local-cluster[1,8,2048]"  # 1 worker of 8 cores and 2 GB: two 4-core, 1 GB executors
FAKE_NVIDIA_SMI = "#!/bin/sh\nprintf '0\\n1\\n'\n"  # what `nvidia-smi --query-gpu=index ...` prints on 2 GPUs

JOB = textwrap.dedent("""
    import json, os, sys, time
    from pyspark import SparkConf, SparkContext, TaskContext

    job = json.loads(open(sys.argv[1]).read())

    def task(_):
        from types import SimpleNamespace

        # A stand-in for torch on a CUDA worker with two GPUs: the assignment is under test, not
        # CUDA (and importing the real torch would cost each executor seconds of CPU).
        sys.modules["torch"] = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: True,
                                                                    device_count=lambda: 2))
        from sqlinfer.worker.device import assigned_gpu, choose_device

        context = TaskContext.get()
        started = time.time()
        open(os.path.join(job["rendezvous"], str(context.partitionId())), "w").close()
        deadline = time.monotonic() + job["wait"]
        while len(os.listdir(job["rendezvous"])) < job["tasks"] and time.monotonic() < deadline:
            time.sleep(0.02)
        yield {"partition": context.partitionId(), "spark": context.resources()["gpu"].addresses,
               "assigned": assigned_gpu(), "device": choose_device("auto"),
               "executor": os.getppid(), "started": started, "ended": time.time()}

    began = time.monotonic()
    sc = SparkContext(conf=SparkConf(loadDefaults=False).setAll(list(job["conf"].items())))
    started = time.monotonic()
    try:
        rows = sc.parallelize(range(job["tasks"]), job["tasks"]).mapPartitions(task).collect()
    finally:
        ran = time.monotonic()
        sc.stop()
    seconds = {"start": started - began, "job": ran - started, "stop": time.monotonic() - ran}
    print(json.dumps({"rows": rows, "seconds": seconds}))
""")


def example(key: str) -> str:
    """docs/gpu.md's example that contains ``key``, read through tests/unit/test_docs_examples.py's
    catalogue (loaded as tests/functional/test_docs_examples.py loads it: the two files share a name)."""
    name = "docs_examples_catalogue"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "unit" / "test_docs_examples.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return str(sys.modules[name].example(DOC, key).text)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of the (start, end) spans that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def gpu_settings(tmp_path: Path) -> dict[str, str]:
    """docs/gpu.md's settings as sqlinfer's session passes them to Spark: the project file's
    `spark:` section through session_conf, the standalone worker's SPARK_WORKER_OPTS added (what
    local-cluster's in-process worker reads from the application's conf), the discovery script
    being the doc's, run against a fake nvidia-smi."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    script = tmp_path / "gpus.sh"
    script.write_text(example("nvidia-smi --query-gpu=index"))
    for tool in (bin_dir / "nvidia-smi", script):
        tool.chmod(0o755)

    project = tmp_path / "project"
    project.mkdir()
    doc_path = "/opt/sqlinfer/gpus.sh"
    (project / "sqlinfer_project.yml").write_text(
        example("spark.task.resource.gpu.amount: 0.25").replace(doc_path, str(script)))
    config, _ = load_project_file(project)
    conf = session_conf(project / "target", MASTER, config.spark)

    worker_opts = example("SPARK_WORKER_OPTS=").split("=", 1)[1].strip().strip('"')
    for option in worker_opts.split():
        key, value = option.removeprefix("-D").split("=", 1)
        conf[key] = value.replace(doc_path, str(script))
    conf.update({
        "spark.ui.enabled": "false",
        "spark.executor.memory": "1g",
        # PySpark's own daemon: sqlinfer's imports torch and torchvision in every executor before
        # the first task (seconds of CPU each), which these tasks do not use.
        "spark.python.daemon.module": "pyspark.daemon",
        # The executors' JVMs run a few tiny tasks: the C1 compiler only, as sqlinfer's local driver.
        "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    })
    return conf


def test_each_task_uses_the_gpu_spark_assigned_it(tmp_path: Path) -> None:
    conf = gpu_settings(tmp_path)
    # What docs/gpu.md's example asks of Spark, as it reaches the session.
    assert {key: conf[key] for key in ("spark.executor.cores", "spark.task.cpus", "spark.executor.resource.gpu.amount",
                                       "spark.task.resource.gpu.amount", "spark.worker.resource.gpu.amount")} == \
        {"spark.executor.cores": "4", "spark.task.cpus": "1", "spark.executor.resource.gpu.amount": "1",
         "spark.task.resource.gpu.amount": "0.25", "spark.worker.resource.gpu.amount": "2"}
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"conf": conf, "tasks": TASKS, "rendezvous": str(rendezvous),
                               # Only a failing run waits this long: on a busy machine an executor
                               # can start a minute after the other.
                               "wait": 240}))
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {key: value for key, value in os.environ.items()
           if key not in (EARLY_ENV, "CUDA_VISIBLE_DEVICES")}  # not this process's early daemon; all GPUs seen
    env.update({"PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_HOME": str(private_spark_home(tmp_path)),
                "PATH": f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"})

    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script), str(job)], capture_output=True, text=True, env=env,
                          timeout=420)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    print(f"{TASKS} tasks on {MASTER}: {time.monotonic() - started:.1f} s in all; Spark's start, job, stop: "
          + ", ".join(f"{seconds:.1f} s" for seconds in result["seconds"].values()))

    assert sorted(row["partition"] for row in rows) == list(range(TASKS))
    for row in rows:  # each task: one address from Spark, and sqlinfer's device is that GPU
        (address,) = row["spark"]
        assert row["assigned"] == int(address), row
        assert row["device"] == f"cuda:{address}", row
    # Each executor got one GPU of the worker's two, and all its tasks that one.
    by_executor: dict[int, set[str]] = {}
    for row in rows:
        by_executor.setdefault(row["executor"], set()).update(row["spark"])
    assert sorted(map(sorted, by_executor.values())) == [["0"], ["1"]], by_executor
    # Both GPUs used, each by four tasks, and those four ran at the same time: 0.25 GPU a task.
    assert Counter(row["spark"][0] for row in rows) == {"0": PER_GPU, "1": PER_GPU}
    for address in ("0", "1"):
        spans = [(row["started"], row["ended"]) for row in rows if row["spark"] == [address]]
        assert most_at_once(spans) == PER_GPU, (address, spans)
    assert most_at_once([(row["started"], row["ended"]) for row in rows]) == TASKS
