"""The kept session's process (:mod:`.kept_session`): ``python -m sqlinfer.runtime.kept_server
SOCKET IDLE_SECONDS``, started by the first command that wants it.

It listens on the project's socket and runs one command line at a time through the same click
commands a terminal runs, its output sent back frame by frame. The first command starts the Spark
session as any command would; each later one finds it running (``build_session`` reuses a
process's session), in a fresh SparkSession of the same SparkContext; between two commands it
gives back what the last one no longer needs (weights broadcasts, its heap's free pages), so that
weights changed between commands do not pile up. It ends, and its JVM with it
(the class archive written as at any command's end), after IDLE_SECONDS without a command, when
asked to stop, when a command needs a session of another key, after an interrupted command or
one that failed in sqlinfer itself, and when its JVM has gone.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import socket
import sys
import threading
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from sqlinfer.runtime import kept_session, timeline


class _Frames(io.TextIOBase):
    """A text stream whose writes go to the client as ``{name: text}`` frames; once the client
    has gone, writes are dropped (the command is being interrupted)."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, conn: socket.socket, name: str, lock: threading.Lock) -> None:
        self._conn, self._name, self._lock = conn, name, lock

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # click probes streams with b"": this one is text only
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            with self._lock:
                try:
                    kept_session.send(self._conn, {self._name: text})
                except OSError:
                    pass
        return len(text)


class _Command:
    """One command line run for a client; a reader thread turns the client's Ctrl-C (or its
    disappearance) into a KeyboardInterrupt in this process's main thread, where PySpark's SIGINT
    handler cancels the running Spark jobs."""

    def __init__(self, conn: socket.socket, request: dict[str, Any]) -> None:
        self.conn, self.request = conn, request
        self.interrupted = False
        self.finished = threading.Event()

    def _watch(self, rest: Any) -> None:
        try:
            for message in rest:
                if message.get("interrupt"):
                    break
        except (OSError, ValueError):
            pass
        if not self.finished.is_set():
            self.interrupted = True
            # A real signal, to the main thread: it also breaks the socket read py4j waits in.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def run(self, rest: Any) -> int:
        from sqlinfer.cli import main

        lock = threading.Lock()
        threading.Thread(target=self._watch, args=(rest,), name="sqlinfer-kept-client", daemon=True).start()
        os.chdir(self.request["cwd"])
        timeline.begin_command(float(self.request["started"]))
        code: Any = 0
        with redirect_stdout(_Frames(self.conn, "out", lock)), redirect_stderr(_Frames(self.conn, "err", lock)):
            try:
                main.main(args=list(self.request["argv"]), prog_name="sqlinfer", standalone_mode=True)
            except SystemExit as exc:
                code = exc.code
            except KeyboardInterrupt:
                code = 130
            except BaseException:  # sqlinfer's own bug: its traceback, as a terminal would show it
                traceback.print_exc()
                code, self.interrupted = 1, True
            finally:
                self.finished.set()
            timeline.end_command()
        if code is None:
            return 0
        return code if isinstance(code, int) else 1


def _give_back_memory() -> None:
    """What the last command no longer needs, given back before the session waits: the weights
    broadcast for earlier commands and not used by the last one (the SparkContext would otherwise
    hold every version of them), then the command's objects and the free pages of this process's
    heap (the weights it read and the networks it checked: about 90 MB for a ResNet-18)."""
    from pyspark.sql import SparkSession

    from sqlinfer.models.udf import release_unused_broadcasts
    from sqlinfer.worker.score import release_free_memory

    current = SparkSession._instantiatedSession
    if current is not None and current._sc._jsc is not None:
        released = release_unused_broadcasts(current._sc)
        if released:
            print(f"released {released} weights broadcast(s) no longer used", flush=True)
    gc.collect()
    release_free_memory()


def _fresh_session() -> None:
    """The next command's SparkSession: a new one of the same SparkContext, so that temporary views,
    functions and SQL settings of one command never reach the next (tables and cached data are
    shared, as between two commands)."""
    from pyspark.sql import SparkSession

    current = SparkSession._instantiatedSession
    if current is None or current._sc._jsc is None:
        return
    fresh = current.newSession()
    SparkSession._instantiatedSession = SparkSession._activeSession = fresh
    java_class = SparkSession._get_j_spark_session_class(fresh._jvm)
    java_class.setDefaultSession(fresh._jsparkSession)
    java_class.setActiveSession(fresh._jsparkSession)


def _jvm_alive() -> bool:
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None) if gateway is not None else None
    return proc is None or proc.poll() is None


def serve(path: Path, idle_s: float) -> None:
    """Answer commands on ``path`` until one of the ends the module docstring lists."""
    kept_session.mark_serving()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    inode = path.stat().st_ino
    listener.listen(16)
    listener.settimeout(idle_s)
    key: str | None = None
    print(f"kept session {os.getpid()} listening on {path}", flush=True)
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                print(f"no command for {idle_s:.0f} s: ending", flush=True)
                return
            with conn:
                conn.settimeout(None)
                if kept_session.peer(conn)[1] != os.getuid():
                    continue  # the folder is private; this is a second lock on the door
                rest = kept_session.messages(conn)
                request = next(rest, None)
                if request is None:
                    continue
                if request.get("stop"):
                    kept_session.send(conn, {"stopped": True})
                    print("asked to stop: ending", flush=True)
                    return
                if key is not None and request.get("key") != key:
                    kept_session.send(conn, {"restart": "the command needs another session"})
                    print("a command needs another session (settings, code, environment or installed "
                          "libraries changed): ending", flush=True)
                    return
                try:
                    kept_session.send(conn, {"accepted": True})
                except OSError:
                    continue  # the client left while the command waited for the one before it
                key = request.get("key")
                command = _Command(conn, request)
                code = command.run(rest)
                print(f"ran {' '.join(request['argv'])}: exit code {code}", flush=True)
                try:
                    kept_session.send(conn, {"exit": code})
                    conn.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
                except OSError:
                    pass
            if command.interrupted or not _jvm_alive():
                print("the command was interrupted, or the JVM has gone: ending", flush=True)
                return
            _give_back_memory()
            _fresh_session()
    finally:
        listener.close()
        try:
            if path.stat().st_ino == inode:  # not a successor's socket
                path.unlink()
        except FileNotFoundError:
            pass


def main() -> None:
    path, idle_s = Path(sys.argv[1]), float(sys.argv[2])
    # SIGTERM ends it as the idle timeout does: atexit then ends the JVM and the early daemon.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # A client's Ctrl-C arrives as SIGINT (_Command._watch), which a process started from a
    # background job would otherwise inherit as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serve(path, idle_s)


if __name__ == "__main__":
    main()
