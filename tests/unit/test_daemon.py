"""The worker daemon's preload (sqlinfer/runtime/daemon.py): everything a worker imports before its
first row is imported before the fork, and the daemon stays single-threaded, so forking is safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlinfer.runtime.daemon import ARROW_JEMALLOC_CONF, PRELOAD

CHECK = """
import json, sys
from sqlinfer.runtime.daemon import PRELOAD, _threads, preload
preload()
print(json.dumps({"threads": _threads(), "missing": [m for m in PRELOAD if m not in sys.modules]}))
"""


def run_preload(env: dict[str, str]) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout), done.stderr


def test_preload_imports_the_worker_modules_and_starts_no_thread() -> None:
    env = {k: v for k, v in os.environ.items() if k != ARROW_JEMALLOC_CONF[0]}
    env["OMP_NUM_THREADS"] = "1"  # as Spark sets it for its daemon (spark.task.cpus)
    report, stderr = run_preload(env)
    assert {"pyarrow", "pandas", "torch", "sqlinfer.worker.score"} <= set(PRELOAD)
    assert report == {"threads": 1, "missing": []}
    assert stderr == ""


def test_a_preload_that_starts_a_thread_is_reported() -> None:
    """jemalloc's background thread left on (the user's own setting wins): the daemon says so."""
    env = {**os.environ, ARROW_JEMALLOC_CONF[0]: "background_thread:true", "OMP_NUM_THREADS": "1"}
    report, stderr = run_preload(env)
    assert report["threads"] == 2
    assert "sqlinfer.daemon: a preloaded module started a thread (2 threads)" in stderr
