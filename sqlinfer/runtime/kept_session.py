"""A kept session: one background process per project that holds the Spark session between
commands, so the commands after the first skip the JVM's start (docs/session.md).

A command's JVM spends most of its CPU becoming fast (class loading, the JIT compiler, Spark's
closures spun as classes) before it does the command's work; on a 2-core machine that is seconds
of every build (docs/performance.md). With ``SQLINFER_KEEP_SESSION=MINUTES`` set, `sqlinfer
build`, `sql`, `compile`, `test`, `seed` and `docs generate` hand their command line to the
project's kept session (started by the first of them) and print what it prints; it runs them one
at a time, each in a fresh SparkSession of the same SparkContext (no temporary view or function
carries over), and ends after MINUTES without a command.

A command whose session would differ (another master, --conf or project `spark:` setting, edited
model code, in the project or in the package a python-flavor model's class comes from, another
Python, sqlinfer, environment or installed library) stops the kept session and
starts a new one. Any other command that needs the project's embedded metastore (`sqlinfer
serve`, a command without the variable) stops it first; ``sqlinfer stop`` stops it by hand.

This module is the client side and what both sides share; :mod:`.kept_server` is the process.
The socket lives in a folder only its user can enter, and the server answers its user only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlinfer.errors import SessionError
from sqlinfer.runtime import timeline

ENV = "SQLINFER_KEEP_SESSION"
# The environment a session depends on (the JVM's, the workers' Python, sqlinfer's own switches).
_ENV_PREFIXES = ("SPARK_", "PYSPARK_", "JAVA_", "HADOOP_", "SQLINFER_", "CUDA_")
_ENV_NAMES = ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "LD_LIBRARY_PATH")
LOG = Path("logs") / "kept_session.log"  # under the project's target/
_START_TIMEOUT_S = 60.0
_END_TIMEOUT_S = 120.0
# A command not taken within this many seconds waits for another one: say so, once.
BUSY_NOTICE_S = 1.0
_SERVING: list[bool] = []  # set in the kept session's own process


def idle_minutes(environ: Mapping[str, str] = os.environ) -> float | None:
    """How long a kept session waits for the next command (``SQLINFER_KEEP_SESSION``, in minutes);
    None when commands are not to use one."""
    text = environ.get(ENV, "").strip()
    if not text or text.lower() in ("0", "false", "no", "off"):
        return None
    try:
        minutes = float(text)
    except ValueError:
        raise SessionError(f"{ENV}={text!r} is not a number of minutes (e.g. {ENV}=10)",
                           code="session.bad_keep") from None
    if minutes <= 0:
        return None
    if not hasattr(socket, "SO_PEERCRED"):  # how each end learns who the other is
        raise SessionError(f"{ENV} needs Linux; unset it on this system", code="session.bad_keep")
    return minutes


def serving() -> bool:
    """Whether this process is a kept session (its commands run here, not forwarded again)."""
    return bool(_SERVING)


def mark_serving() -> None:
    _SERVING[:] = [True]


def socket_path(target: Path) -> Path:
    """The project's socket: short (a Unix socket's path has 107 bytes at most), in a folder of
    this user's that no one else may enter."""
    folder = Path(tempfile.gettempdir()) / f"sqlinfer-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not folder.is_dir() or folder.is_symlink():
        raise SessionError(f"{folder} is not a private folder of this user's: remove it, and run the "
                           "command again", code="session.kept_failed", path=folder)
    digest = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:20]
    return folder / f"{digest}.sock"


def session_key(root: Path, spark: Mapping[str, Any], master: str | None, conf: Mapping[str, Any],
                code_files: Iterable[Path], environ: Mapping[str, str] = os.environ) -> str:
    """What decides a command's session, as one string: a kept session serves only commands of
    the same key. ``code_files`` are the models' own code (a python-flavor class's package, in the
    project or installed): the workers import it once per session."""
    import sqlinfer

    package = Path(sqlinfer.__file__).parent
    env = {k: v for k, v in environ.items() if (k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES) and k != ENV}
    parts = {
        "python": sys.executable, "sqlinfer": sqlinfer.__version__, "root": str(root.resolve()),
        "sqlinfer_code": _stamps(package.rglob("*.py")), "project_code": _stamps(code_files),
        "spark": {str(k): str(v) for k, v in spark.items()}, "master": master,
        "conf": {str(k): str(v) for k, v in conf.items()}, "env": env, "installed": installed_packages(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def installed_packages() -> list[tuple[str, int, int]]:
    """Every installed distribution's metadata folder on ``sys.path``, stamped: pip writes a new
    one at each install, upgrade or reinstall, so a session whose processes imported the old
    torch (or any other library) is not reused after ``pip install``. 1-2 ms: one listing per
    folder, no import."""
    folders: list[Path] = []
    for folder in filter(None, sys.path):
        try:
            with os.scandir(folder) as entries:
                folders += [Path(e.path) for e in entries if e.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue
    return _stamps(folders)


def _stamps(files: Iterable[Path]) -> list[tuple[str, int, int]]:
    out = []
    for path in files:
        try:
            info = path.stat()
        except OSError:
            continue
        out.append((str(path), info.st_mtime_ns, info.st_size))
    return sorted(out)


# The wire: one JSON object per line each way. The client sends the request; the server answers
# {"accepted": true} when it starts the command, then {"out": text} / {"err": text} frames, then
# {"exit": code}; or {"restart": reason} alone. A connection closed before "accepted" means the
# session ended without running the command (idle, stopped, or after the command before it).
def send(conn: socket.socket, message: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The messages ``conn`` sends, until it closes."""
    buffer = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def peer(conn: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    return pid, uid


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:  # no file, or a file no process listens on
        conn.close()
        return None
    if peer(conn)[1] != os.getuid():
        conn.close()
        raise SessionError(f"{path} is served by another user's process", code="session.kept_failed", path=path)
    return conn


@contextmanager
def _spawn_lock(path: Path) -> Iterator[None]:
    """One client at a time checks for the project's kept session and starts it."""
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start(path: Path, target: Path, minutes: float) -> socket.socket:
    """Start the project's kept session and connect to it."""
    path.unlink(missing_ok=True)  # a socket file left by an ended process
    log = target / LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sqlinfer.runtime.kept_server", str(path), str(minutes * 60)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _connect(path)
        if conn is not None:
            return conn
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SessionError(f"the kept session did not start (exit code {proc.poll()}); see {log}",
                       code="session.kept_failed", path=log)


def forward(target: Path, key: str, argv: list[str], minutes: float) -> int:
    """Run the command line ``argv`` in the project's kept session (started when there is none,
    or restarted when its key differs), print its output, and return its exit code."""
    path = socket_path(target)
    for _attempt in range(3):
        with _spawn_lock(path):
            conn = _connect(path) or _start(path, target, minutes)
        with conn:
            send(conn, {"argv": argv, "cwd": os.getcwd(), "key": key, "started": timeline.process_start()})
            answer = _relay(conn)
        if "exit" in answer:
            return int(answer["exit"])
        # It ends because this command needs another session, or it has ended without running
        # this command (it was queued behind one that ended the session, or the idle end came first).
        _wait_ended(answer["pid"])
    raise SessionError("the kept session ended three times before running the command", code="session.kept_failed")


def _relay(conn: socket.socket) -> dict[str, Any]:
    """Print the server's output frames until its last message: ``{"exit": code}`` when the command
    ran, else the server's reason not to run it (with its pid).

    The server runs one command at a time; a command queued behind another says so after
    :data:`BUSY_NOTICE_S`, instead of looking hung. Until the server takes it, Ctrl-C just leaves
    (the server skips a request whose client has gone). Once it runs, Ctrl-C interrupts the command
    over there, as it would here (the server is in its own process group); the output that follows
    (the interrupted command's last lines) is still printed. A second Ctrl-C leaves at once."""
    server_pid = peer(conn)[0]
    if not select.select([conn], [], [], BUSY_NOTICE_S)[0]:
        sys.stderr.write(f"Waiting for the project's kept session (pid {server_pid}): it is running another "
                         "command.\n")
        sys.stderr.flush()
    frames = messages(conn)
    try:
        first = next(frames, None)
    except OSError:  # reset: the server closed its socket with this command still queued
        first = None
    if first is None:
        return {"ended": True, "pid": server_pid}
    if not first.get("accepted"):
        return {**first, "pid": server_pid}

    def interrupt(*_: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            send(conn, {"interrupt": True})
        except OSError:
            pass

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        for message in frames:
            if "out" in message or "err" in message:
                stream = sys.stdout if "out" in message else sys.stderr
                stream.write(message.get("out", message.get("err", "")))
                stream.flush()
            else:
                return {**message, "pid": server_pid}
        return {"exit": 1}  # the server died under the command
    finally:
        signal.signal(signal.SIGINT, previous)


def _connect_to(target: Path) -> socket.socket | None:
    """A connection to the project's kept session; None when it has none."""
    try:
        path = socket_path(target)
    except SessionError:  # no private folder: no kept session either
        return None
    return _connect(path)


def server_pid(target: Path) -> int | None:
    """The pid of the project's kept session, if one runs."""
    conn = _connect_to(target)
    if conn is None:
        return None
    with conn:
        return peer(conn)[0]


def stop(target: Path) -> int | None:
    """Stop the project's kept session, if it has one, and wait until it has ended (its JVM and
    metastore with it); returns the pid it had."""
    conn = _connect_to(target)
    if conn is None:
        return None
    with conn:
        pid = peer(conn)[0]
        send(conn, {"stop": True})
        for _ in messages(conn):
            pass
    _wait_ended(pid)
    return pid


def _wait_ended(pid: int) -> None:
    deadline = time.monotonic() + _END_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # this process started it: reaped now
                return
        except ChildProcessError:  # another process's child
            if not _running(pid):
                return
        time.sleep(0.05)
    raise SessionError(f"the kept session (pid {pid}) did not end within {_END_TIMEOUT_S:.0f} s",
                       code="session.kept_failed")


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs: a process that has exited but whose parent (the command that
    started it, still running) has not yet collected it is a zombie, and has ended."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
