"""PySpark's Python worker daemon, with torch already imported when it forks the workers.

Spark starts one daemon per executor (``python -m <spark.python.daemon.module>``) and forks a
Python worker from it for each concurrent task. With PySpark's own daemon every worker imports
torch and torchvision itself, 3-5 s of CPU and most of a worker's ~900 MB, before its first row.
sqlinfer's session sets ``spark.python.daemon.module=sqlinfer.daemon``: this module imports them
once, then runs PySpark's unchanged daemon loop, so forked workers start with them loaded
(shared copy-on-write pages).

Forking after these imports is safe because none of them starts a thread (checked below; pandas
and pyarrow do start one, which is why PySpark imports them after the fork, and so do we).
"""

from __future__ import annotations

import os
import sys
import time

# Imported before the fork. Neither pyarrow nor pandas (both start threads on import).
PRELOAD = ("numpy", "PIL.Image", "torch", "torchvision", "safetensors.torch")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: assume the imports behaved
        return 1


def preload(modules: tuple[str, ...] = PRELOAD) -> float:
    """Import ``modules`` (those that fail are skipped: the worker reports the error later, where
    the user sees it) and return the seconds spent."""
    import importlib

    started = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure surfaces in the worker instead
            continue
    if _threads() > 1:
        print(f"sqlinfer.daemon: a preloaded module started a thread ({_threads()} threads) before "
              "the daemon forks its workers", file=sys.stderr)
    seconds = time.perf_counter() - started
    os.environ["SQLINFER_DAEMON_PRELOAD_SECONDS"] = f"{seconds:.3f}"  # forked workers inherit it
    return seconds


def main() -> None:
    if os.environ.get("SQLINFER_DAEMON_PRELOAD", "1") != "0":
        preload()
    from pyspark.daemon import manager

    manager()


if __name__ == "__main__":
    main()
