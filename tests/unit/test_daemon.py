"""The worker daemon's preload (sqlinfer/runtime/daemon.py): everything a worker imports before its
first row is imported before the fork, and the daemon stays single-threaded, so forking is safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

from sqlinfer.runtime.daemon import ARROW_JEMALLOC_CONF, EXTRA_ENV, PRELOAD

CHECK = """
import json, sys
from sqlinfer.runtime.daemon import _threads, preload, preload_modules
preload()
print(json.dumps({"threads": _threads(), "missing": [m for m in preload_modules() if m not in sys.modules],
                  "torchvision": "torchvision" in sys.modules, "pandas": "pandas" in sys.modules,
                  "dynamo": "torch._dynamo" in sys.modules}))
"""


def run_preload(env: dict[str, str]) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout), done.stderr


def test_preload_imports_the_worker_modules_and_starts_no_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != ARROW_JEMALLOC_CONF[0]}
    env["OMP_NUM_THREADS"] = "1"  # as Spark sets it for its daemon (spark.task.cpus)
    env.pop(EXTRA_ENV, None)  # a session that names no modules: torchvision, as before
    report, stderr = run_preload(env)
    assert {"pyarrow", "torch", "sqlinfer.worker.score"} <= set(PRELOAD)
    # torchvision without torch's compiler (sqlinfer/models/torchvision_import.py): 1 s of CPU less
    assert report == {"threads": 1, "missing": [], "torchvision": True, "pandas": False, "dynamo": False}
    assert stderr == ""


def test_preload_takes_the_modules_the_sessions_models_name() -> None:
    """A project whose models need no torchvision does not pay its import (about 1 s of CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", EXTRA_ENV: ""}
    report, _ = run_preload(env)
    assert report == {"threads": 1, "missing": [], "torchvision": False, "pandas": False, "dynamo": False}
    report, _ = run_preload({**env, EXTRA_ENV: "torchvision"})
    assert report["torchvision"] is True and report["missing"] == []


def test_projects_name_the_modules_of_their_flavors() -> None:
    """What Project.session puts in the daemon's variable: its flavors' worker_modules."""
    from sqlinfer.models import flavors

    assert flavors.worker_modules(["python", "python"]) == ()
    assert flavors.worker_modules(["torchscript", "torchvision", "python"]) == ("torchvision",)


def test_a_preload_that_starts_a_thread_is_reported() -> None:
    """jemalloc's background thread left on (the user's own setting wins): the daemon says so."""
    env = {**os.environ, ARROW_JEMALLOC_CONF[0]: "background_thread:true", "OMP_NUM_THREADS": "1"}
    report, stderr = run_preload(env)
    assert report["threads"] == 2
    assert "sqlinfer.daemon: a preloaded module started a thread (2 threads)" in stderr


def test_an_early_daemon_whose_driver_ends_removes_its_socket_and_folder(tmp_path) -> None:
    """A driver that ends (or is killed) before its session needs Python never runs its exit
    handler: the early daemon notices it has lost its parent and cleans up after itself."""
    start = ("from sqlinfer.runtime import daemon\n"
             "proc = daemon.start_early()\n"
             "print(proc.args[-1], proc.pid)\n")  # then exit at once, without daemon.end_early
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", start], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, check=True)
    path, pid = done.stdout.split()
    folder = os.path.dirname(path)
    assert folder.startswith(str(tmp_path)) and os.path.basename(folder).startswith("sqlinfer-daemon-")
    deadline = time.monotonic() + 60
    while os.path.exists(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(folder)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("sqlinfer-daemon-")] == []
    while _running(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(int(pid))


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its new parent to reap it is not)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


def test_the_cpu_is_told_without_torch_or_a_gpu(monkeypatch) -> None:
    """What the driver hands the early daemon to build must run on the CPU: `auto` counts as the
    CPU only where no GPU driver is loaded (a process that forks must not initialize CUDA)."""
    from sqlinfer.worker import device

    assert device.surely_cpu("cpu") and not device.surely_cpu("cuda")
    monkeypatch.setattr(device.os.path, "exists", lambda path: False)
    assert device.surely_cpu("auto")
    monkeypatch.setattr(device.os.path, "exists", lambda path: path == "/proc/driver/nvidia")
    assert not device.surely_cpu("auto") and device.surely_cpu("cpu")


LIN_MODELS = """\
models:
  - {name: lin, flavor: torchscript, weights: weights/lin.pt, input: tensor, shape: [2, 3]}
  - {name: lin_gpu, flavor: torchscript, weights: weights/lin.pt, input: tensor, shape: [2, 3], device: cuda}
"""

BUILD_IN_DAEMON = """
import json, pickle, sys
from pathlib import Path
from sqlinfer.runtime.daemon import NETWORKS_FILE, NetworkBuilder, _threads
from sqlinfer.worker import model_cache

file = Path(sys.argv[1]) / NETWORKS_FILE
(plan, _), = pickle.loads(file.read_bytes())
builder = NetworkBuilder(file)
builder.build_next()
builder.build_next()  # nothing left: no error
reported = []

def no_weights():
    raise AssertionError("the worker read the weights")

for _ in range(2):  # a worker's first task reports the inherited network, its next ones nothing
    network = model_cache.get_model(plan, no_weights, reported.append)
print(json.dumps({"threads": _threads(), "built": [key[1] for key in model_cache._NETWORKS],
                  "reported": reported, "module": type(network.module).__name__}))
"""


def test_the_early_daemon_builds_the_networks_its_driver_sends(tmp_path) -> None:
    """Prebuild.send (the driver) writes the local-file CPU models for the early daemon;
    NetworkBuilder (the daemon) builds them before any fork without starting a thread, and a
    worker forked from it finds the network built, reads no weights and reports it once."""
    import torch

    from sqlinfer import Project
    from sqlinfer.runtime.daemon import NETWORKS_FILE, Prebuild

    root = tmp_path / "p"
    (root / "weights").mkdir(parents=True)
    (root / "models.yml").write_text(LIN_MODELS)
    (root / "sqlinfer_project.yml").write_text("name: lin\n")
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))),
                   str(root / "weights" / "lin.pt"))
    models = Project.load(root).resolve_models()

    nowhere = Prebuild()
    nowhere.started(None)
    assert nowhere.send(models) == []

    folder = tmp_path / "daemon"
    folder.mkdir()
    prebuild = Prebuild()
    prebuild.started(str(folder / "daemon.sock"))
    prebuild.started(None)  # the first word counts
    assert prebuild.send(models) == ["lin_predict"]  # not the model declared for cuda
    # Nor a model whose class is a file of the project (the python flavor): Spark ships that file
    # to the workers, not to their daemon.
    assert prebuild.send([SimpleNamespace(plan=models[0].plan, weights=models[0].weights,
                                          python_files=(root / "net.py",))]) == []
    assert sorted(p.name for p in folder.iterdir()) == [NETWORKS_FILE]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", BUILD_IN_DAEMON, str(folder)], env=env, capture_output=True,
                          text=True, check=True)
    report = json.loads(done.stdout)
    assert report == {"threads": 1, "built": ["cpu"], "reported": [{"inherited": 1}],
                      "module": "RecursiveScriptModule"}, done.stderr


DAEMON_WITH_EXIT_HANDLER = """
import atexit, pathlib, sys
atexit.register(pathlib.Path(sys.argv[1]).write_text, "torn down")
from sqlinfer.runtime.daemon import run_pyspark_daemon
run_pyspark_daemon()
"""


def test_the_daemon_ends_without_pythons_teardown_when_spark_stops_it(tmp_path) -> None:
    """Spark stops its daemon with SIGTERM; the JVM's own exit then waits for the daemon's (up to
    300 ms), so the daemon skips Python's teardown (atexit handlers, module clean-up): it ends
    with PySpark's exit code, and an exit handler never runs."""
    import signal
    import struct

    marker = tmp_path / "teardown"
    env = {**os.environ, "PYTHON_UNIX_DOMAIN_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-c", DAEMON_WITH_EXIT_HANDLER, str(marker)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = struct.unpack("!i", proc.stdout.read(4))[0]  # PySpark's daemon says where it listens
        assert 0 < port < 65536
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1  # PySpark's code for a daemon ended by SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert not marker.exists()
    assert proc.stderr is not None and proc.stderr.read() == b""
