"""PySpark's Python worker daemon, with torch already imported when it forks the workers.

Spark starts one daemon per executor (``python -m <spark.python.daemon.module>``) and forks a
Python worker from it for each concurrent task. With PySpark's own daemon every worker imports
torch and torchvision itself, 3-5 s of CPU and most of a worker's ~900 MB, before its first row.
sqlinfer's session sets ``spark.python.daemon.module=sqlinfer.runtime.daemon``: this module imports them
once, then runs PySpark's unchanged daemon loop, so forked workers start with them loaded
(shared copy-on-write pages).

Forking after these imports is safe because none of them starts a thread (checked below). PySpark
imports pyarrow only after the fork because pyarrow's allocator, jemalloc, starts a background
thread; with that thread switched off (``JE_ARROW_MALLOC_CONF``) it is preloaded too, with the
worker's own modules: a new worker otherwise spent about 0.3 s of CPU importing them before its
first row, more while other workers start beside it. What only some models need (torchvision) is
preloaded only in sessions with such a model (:data:`EXTRA_ENV`).

Started early: Spark launches the daemon only when a first task needs Python, seconds after the
session starts, and then the imports (about 4 s) still stand between it and the first worker. So
on a local master the driver starts an *early daemon* at once (:func:`start_early`): a process that
does the imports while the JVM starts and then waits on a Unix socket, whose path the JVM inherits
in ``SQLINFER_EARLY_DAEMON``. The daemon Spark launches hands its stdin, stdout and stderr
(``SCM_RIGHTS``), environment, arguments and working directory over that socket and waits for it
to end; the early daemon takes them on and runs PySpark's daemon loop, so the JVM talks to a
daemon that is ready at once. When there is no early daemon to take (already taken, gone, another
machine), the launched daemon does the imports and runs the loop itself.

While it waits, the early daemon also builds the command's networks (:class:`Prebuild`): the
driver hands it the models whose weights are a local file and that run on the CPU, and it builds
them one by one until the launched daemon comes. Every worker it forks then inherits them, built
once instead of once per worker (0.24 s of CPU each for a ResNet-18), in time the cores would
otherwise idle away while the JVM starts, with their weights in pages the workers share.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlinfer.models.resolve import ResolvedModel

# Imported before the fork: what every worker imports before its first row, down to the image
# plugins PIL loads on its first open and pyarrow.compute (array slicing and takes), about 30 ms a
# worker. Not pandas: neither PySpark's worker for Arrow UDFs nor sqlinfer's imports it
# (sqlinfer/worker/arrow_numpy.py), and it cost the daemon 0.3 s of CPU in every command.
PRELOAD = ("numpy", "PIL.Image", "PIL.BmpImagePlugin", "PIL.GifImagePlugin", "PIL.JpegImagePlugin",
           "PIL.PpmImagePlugin", "PIL.PngImagePlugin", "torch", "safetensors.torch", "pyarrow", "pyarrow.compute",
           "pyspark.worker", "pyspark.sql.pandas.serializers", "sqlinfer.models.udf", "sqlinfer.worker.score")
# What only some models' workers import (a flavor's ``worker_modules``), named by the driver in this
# variable before the JVM starts, comma-separated (sqlinfer.project.Project.session); unset, the
# daemon preloads torchvision. torchvision costs about 0.1 s of CPU to import (1.2 s with the
# torch._dynamo its ops import, which sqlinfer defers), wasted in a session whose models never use it.
EXTRA_ENV = "SQLINFER_DAEMON_PRELOAD_EXTRA"
DEFAULT_EXTRA = ("torchvision",)
# jemalloc (pyarrow's allocator) without its background purging thread: purging then happens on
# the allocating threads, and the daemon stays single-threaded, so its forks are safe. A value
# the user set wins (and the thread check below says if it starts a thread).
ARROW_JEMALLOC_CONF = ("JE_ARROW_MALLOC_CONF", "background_thread:false")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # not Linux: assume the imports behaved
        return 1


def preload_modules() -> tuple[str, ...]:
    """:data:`PRELOAD` and the modules the session's models need (:data:`EXTRA_ENV`)."""
    extra = os.environ.get(EXTRA_ENV)
    return PRELOAD + (DEFAULT_EXTRA if extra is None else tuple(m for m in extra.split(",") if m))


def preload() -> float:
    """Import :func:`preload_modules` (those that fail are skipped: the worker reports the error
    later, where the user sees it) and return the seconds spent."""
    import importlib

    started = time.perf_counter()
    os.environ.setdefault(*ARROW_JEMALLOC_CONF)
    from sqlinfer.models.torchvision_import import import_torchvision

    for name in preload_modules():
        try:
            if name == "torchvision":
                import_torchvision()  # without torch's compiler (sqlinfer/models/torchvision_import.py)
            else:
                importlib.import_module(name)
        except Exception:  # any import failure surfaces in the worker instead, where users see it
            continue
    report_threads("a preloaded module")
    return time.perf_counter() - started


def report_threads(cause: str) -> None:
    """Say so on stderr when ``cause`` has left this process with a thread: forking it is no
    longer safe."""
    if _threads() > 1:
        print(f"sqlinfer.daemon: {cause} started a thread ({_threads()} threads) before the daemon "
              "forks its workers", file=sys.stderr)


EARLY_ENV = "SQLINFER_EARLY_DAEMON"
SUPPORTED = hasattr(socket, "send_fds") and hasattr(os, "pidfd_open")  # Linux, Python >= 3.9
# The networks the driver asks an early daemon to build, next to its socket (Prebuild.send).
NETWORKS_FILE = "networks.pickle"


class Prebuild:
    """The way from a command's models to its early daemon, which starts on the session's thread
    while the command's own thread resolves the models: the session says where its early daemon
    is (or that it has none), the command sends the models, whichever comes first."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._decided = threading.Event()

    def started(self, socket_path: str | None) -> None:
        """The session's word: its early daemon listens at ``socket_path`` (None: it has none).
        The first word counts."""
        if not self._decided.is_set():
            self._folder = Path(socket_path).parent if socket_path else None
            self._decided.set()

    def send(self, models: Iterable[ResolvedModel], timeout_s: float = 30) -> list[str]:
        """Hand the early daemon those of ``models`` it can build: weights read in place from a
        local file (what the workers would read), on the CPU (a GPU cannot be touched before a
        fork), no class in a file of the project (Spark ships that file to the workers, not to
        their daemon). Returns their function names; none without an early daemon."""
        from sqlinfer.models.flavors.base import Weights
        from sqlinfer.worker.device import surely_cpu

        if not self._decided.wait(timeout_s) or self._folder is None:
            return []
        # Only the file's stamp travels: the daemon reads the file and checks it is the one the
        # driver read (sqlinfer.models.udf.read_in_place), as a worker would.
        chosen = [(m.plan, Weights(m.weights.format, b"", m.weights.origin, m.weights.file)) for m in models
                  if m.weights.file is not None and not m.python_files and surely_cpu(m.plan.decl.device)]
        if chosen:
            import pickle

            partial = self._folder / f"{NETWORKS_FILE}.partial"
            try:
                partial.write_bytes(pickle.dumps(chosen))
                partial.replace(self._folder / NETWORKS_FILE)  # whole or not at all, for the daemon's look
            except OSError:  # the daemon has been taken over (its folder is gone): the workers build
                return []
        return [plan.udf_name for plan, _ in chosen]


def start_early() -> subprocess.Popen | None:
    """Start an early daemon and point the JVM about to start at it (``SQLINFER_EARLY_DAEMON``).
    The caller ends it at exit (:func:`end_early`); it also ends by itself when this process does."""
    if not SUPPORTED or os.environ.get("SQLINFER_DAEMON_PRELOAD", "1") == "0":
        return None
    path = Path(tempfile.mkdtemp(prefix="sqlinfer-daemon-")) / "daemon.sock"  # a private folder (0700)
    # As in the daemon Spark launches (Spark sets it to spark.task.cpus): OpenMP then starts no
    # thread pool during the imports, and forking stays safe.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "sqlinfer.runtime.daemon", "--early", str(os.getpid()), str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    os.environ[EARLY_ENV] = str(path)
    return proc


def end_early(proc: subprocess.Popen[bytes]) -> None:
    """After the JVM has ended (so a daemon it took on has ended too): make sure it is gone."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    _remove_socket(socket_path(proc))


def socket_path(proc: subprocess.Popen[bytes]) -> str:
    """Where the early daemon ``proc`` (from :func:`start_early`) listens."""
    return str(proc.args[-1])  # type: ignore[index]  # a list: the socket path comes last


def run_early(path: str, driver: int) -> None:
    """The early daemon: import, wait for the daemon Spark launches, become it; or end when its
    driver (process id ``driver``, given, for it may end before this process asks who its parent
    is) has ended without a session that needed Python."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)  # listening before the imports: a launched daemon waits for them, not redoes them
    preload()
    networks = NetworkBuilder(Path(path).parent / NETWORKS_FILE)
    listener.settimeout(0.1)
    while True:
        try:
            connection, _ = listener.accept()
            break
        except TimeoutError:
            if os.getppid() != driver:  # the driver ended without a session that needed Python
                _remove_socket(path)
                return
            networks.build_next()  # one at a time: the launched daemon waits for one build at most
    listener.close()
    # Removed by the daemon itself, not only by the driver at exit (end_early): a driver that
    # is killed never gets there, and each run left an empty private folder in the temp folder.
    _remove_socket(path)
    connection.settimeout(None)
    payload, fds, _flags, _address = socket.recv_fds(connection, 1 << 20, 3)
    while not payload.endswith(b"\n"):
        chunk = connection.recv(1 << 20)
        if not chunk:
            return
        payload += chunk
    handed = json.loads(payload)
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    os.environ.clear()
    os.environ.update(handed["env"])
    for entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(1, entry)
    sys.argv = handed["argv"]
    os.chdir(handed["cwd"])
    connection.sendall(f"{os.getpid()}\n".encode())
    connection.close()
    run_pyspark_daemon()


class NetworkBuilder:
    """The early daemon's builds of the networks the driver sent (:class:`Prebuild`), one per call."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.pending: list | None = None  # None: the driver's list not read yet

    def build_next(self) -> None:
        if self.pending is None:
            if not self.file.exists():
                return
            import pickle

            self.pending = pickle.loads(self.file.read_bytes())  # written by our own driver (Prebuild.send)
        if not self.pending:
            return
        from sqlinfer.models.udf import read_in_place
        from sqlinfer.worker import model_cache

        plan, weights = self.pending.pop(0)
        try:
            model_cache.prebuild(plan, read_in_place(weights, lambda _counters: None))
        except Exception:  # the workers build it themselves, and report what fails where users see it
            return
        report_threads(f"building {plan.udf_name}'s network")


def _remove_socket(path: str) -> None:
    """The early daemon's socket file and its private folder (start_early), with the networks
    the driver sent (Prebuild.send)."""
    folder = Path(path).parent
    for name in (Path(path).name, NETWORKS_FILE, f"{NETWORKS_FILE}.partial"):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def hand_over(path: str) -> bool:
    """In the daemon Spark launched: give this process's place to the early daemon and wait for
    it to end, passing SIGTERM on. False when there is no early daemon to take over."""
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(path)
    except OSError:
        return False
    payload = json.dumps({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}).encode() + b"\n"
    socket.send_fds(connection, [payload], [0, 1, 2])
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = connection.recv(64)
        if not chunk:
            return False  # it ended before taking over: do the work here
        reply += chunk
    pid = int(reply)
    # The early daemon reads stdin (the JVM's worker-kill requests) from now on: let go of it.
    devnull = os.open(os.devnull, os.O_RDWR)
    for number in (0, 1):
        os.dup2(devnull, number)
    pidfd = os.pidfd_open(pid)

    def pass_on(*_: object) -> None:  # Spark stops its daemon with SIGTERM
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except OSError:  # it has ended already
            pass

    signal.signal(signal.SIGTERM, pass_on)
    while True:
        try:
            if select.select([pidfd], [], [])[0]:
                return True
        except InterruptedError:
            continue


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--early":
        run_early(sys.argv[3], int(sys.argv[2]))
        return
    early = os.environ.pop(EARLY_ENV, None)
    if early and SUPPORTED and hand_over(early):
        return
    if os.environ.get("SQLINFER_DAEMON_PRELOAD", "1") != "0":
        preload()
    run_pyspark_daemon()


def run_pyspark_daemon() -> None:
    """PySpark's daemon loop, with every object imported so far frozen out of the garbage collector.

    A reused worker runs ``gc.collect()`` after each task (pyspark/daemon.py), and a full
    collection walks every tracked object: with torch and torchvision loaded that is about 150 ms
    a task, most of what a task costs beyond its rows (bench/floor.py). Frozen objects are never
    walked, and never written to by the collector, so their pages also stay shared with the
    daemon after the fork (what ``gc.freeze`` is for).
    """
    import gc

    from pyspark.daemon import manager

    gc.freeze()
    try:
        manager()
    except SystemExit as stop:
        end_at_once(stop.code)


def end_at_once(code: object) -> None:
    """End the daemon without Python's teardown, once PySpark's loop has stopped (SIGTERM from
    Spark's stop, or the JVM closing its stdin) and sent its workers SIGHUP.

    The teardown of a process with torch loaded took 0.05-0.25 s, and the JVM's exit waited for
    it: a JVM thread waits on the daemon's process and another reads its stderr, both in native
    code, and a JVM exiting with a thread in native code waits up to 300 ms for it (HotSpot's
    VM_Exit). Every command that had started Python workers ended 0.1-0.3 s later than one that
    had not. Nothing is left for the teardown to do: the workers are told, the loop has removed
    its socket, and what the daemon writes is written unbuffered or flushed here."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone with the JVM: nothing to keep
            pass
    os._exit(0 if code is None else code if isinstance(code, int) else 1)


if __name__ == "__main__":
    main()
