"""The worker daemon's preload (sqlinfer/runtime/daemon.py): everything a worker imports before its
first row is imported before the fork, and the daemon stays single-threaded, so forking is safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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
