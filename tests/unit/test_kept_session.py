"""The kept session without Spark: its switch, its key, its private socket, and the real server
process answering command lines that need no JVM (`sqlinfer ls`, `docs serve`) over the wire:
output relayed, exit codes, a restart for another key, Ctrl-C, stop, and the idle end.
tests/functional/test_kept_session.py runs builds and queries through it on a real JVM."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sqlinfer.errors import SessionError
from sqlinfer.runtime import kept_session

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_switch_is_minutes_and_off_by_default() -> None:
    assert kept_session.idle_minutes({}) is None
    assert kept_session.idle_minutes({kept_session.ENV: "0"}) is None
    assert kept_session.idle_minutes({kept_session.ENV: "off"}) is None
    assert kept_session.idle_minutes({kept_session.ENV: " 10 "}) == 10.0
    assert kept_session.idle_minutes({kept_session.ENV: "0.5"}) == 0.5
    with pytest.raises(SessionError) as caught:
        kept_session.idle_minutes({kept_session.ENV: "ten"})
    assert caught.value.code == "session.bad_keep"
    assert "SQLINFER_KEEP_SESSION='ten' is not a number of minutes" in caught.value.message


def test_the_key_changes_with_what_decides_the_session(tmp_path: Path) -> None:
    module = tmp_path / "net.py"
    module.write_text("X = 1\n")
    env = {"PATH": "/usr/bin", "TERM": "xterm", "SPARK_HOME": "/opt/spark"}

    def key(spark: dict | None = None, master: str | None = None, conf: dict | None = None,
            environ: dict | None = None) -> str:
        return kept_session.session_key(tmp_path, spark or {}, master, conf or {}, [module],
                                        environ if environ is not None else env)

    base = key()
    assert key() == base
    assert key(environ={**env, "TERM": "screen", kept_session.ENV: "5"}) == base  # irrelevant to a session
    changed = [key(spark={"spark.executor.memory": "2g"}), key(master="local[1]"),
               key(conf={"spark.sql.shuffle.partitions": "3"}), key(environ={**env, "SPARK_HOME": "/opt/other"})]
    assert len({base, *changed}) == 5
    stat = module.stat()
    module.write_text("X = 22\n")  # the project's model code edited: the workers would keep the old file
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert key() != base


def test_the_key_changes_when_a_library_is_installed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip writes a distribution's metadata folder anew at each install: an upgrade (another
    folder name) or a reinstall of the same version (a later time) gives another session."""
    site = tmp_path / "site-packages"
    (site / "torch").mkdir(parents=True)
    (site / "torch-2.5.0.dist-info").mkdir()
    (site / "README.txt").write_text("not a distribution")
    monkeypatch.setattr(sys, "path", ["", str(tmp_path / "missing"), str(site)])

    def key() -> str:
        return kept_session.session_key(tmp_path, {}, None, {}, [], {})

    assert [stamp[:2] for stamp in kept_session.installed_packages()] == [
        (str(site / "torch-2.5.0.dist-info"), (site / "torch-2.5.0.dist-info").stat().st_mtime_ns)]
    base = key()
    assert key() == base
    (site / "torch-2.5.0.dist-info").rename(site / "torch-2.6.0.dist-info")
    upgraded = key()
    assert upgraded != base
    later = (site / "torch-2.6.0.dist-info").stat().st_mtime_ns + 10**9
    os.utime(site / "torch-2.6.0.dist-info", ns=(later, later))
    assert len({base, upgraded, key()}) == 3


def test_the_socket_lives_in_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    path = kept_session.socket_path(tmp_path / "project" / "target")
    assert path.parent == tmp_path / f"sqlinfer-{os.getuid()}"
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(str(path.name)) == len("0123456789abcdef0123.sock")
    assert kept_session.socket_path(tmp_path / "other" / "target") != path
    path.parent.chmod(0o755)  # another user could reach the socket
    with pytest.raises(SessionError) as caught:
        kept_session.socket_path(tmp_path / "project" / "target")
    assert caught.value.code == "session.kept_failed"
    assert "is not a private folder of this user's" in caught.value.message


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the digits example; sockets under this test's own temp folder."""
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the server process's socket_path, too
    dest = tmp_path / "digits"
    shutil.copytree(REPO / "projects" / "digits", dest, ignore=shutil.ignore_patterns("target", "__pycache__"))
    return dest


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def first_column(table: str) -> list[str]:
    """The first column of a table `sqlinfer ls` prints (its header, then each row)."""
    lines = table.splitlines()
    return [line.split("|")[0].strip() for line in lines[:1] + lines[2:]]


def test_commands_run_in_the_server_and_a_new_key_restarts_it(project: Path, capfd: pytest.CaptureFixture) -> None:
    target = project / "target"
    path = kept_session.socket_path(target)
    assert kept_session.forward(target, "key-a", ["ls", str(project)], minutes=5) == 0
    out, err = capfd.readouterr()
    assert first_column(out) == ["node", "digit_predictions", "accuracy", "confusion_matrix",
                                 "digit_predictions_incremental"]
    first = kept_session.server_pid(target)
    log = (target / "logs" / "kept_session.log").read_text()
    assert f"kept session {first} listening on {path}" in log
    assert f"ran ls {project}: exit code 0" in log

    # A failing command: its error line on stderr and its exit code, and the server goes on.
    assert kept_session.forward(target, "key-a", ["ls", str(project), "--select", "nope"], minutes=5) == 1
    out, err = capfd.readouterr()
    assert out == ""
    assert err.startswith("error: ") and "nope" in err and err.rstrip().endswith("]"), err
    assert kept_session.server_pid(target) == first

    # Another key: that server ends, a new one runs the command.
    assert kept_session.forward(target, "key-b", ["ls", str(project)], minutes=5) == 0
    assert first_column(capfd.readouterr().out)[1] == "digit_predictions"
    second = kept_session.server_pid(target)
    assert second != first and not alive(first)
    assert "a command needs another session" in (target / "logs" / "kept_session.log").read_text()

    stopped = subprocess.run([sys.executable, "-m", "sqlinfer", "stop", str(project)], capture_output=True,
                             text=True, env={**os.environ}, timeout=60)
    assert stopped.stdout == f"Stopped the kept session (pid {second}).\n", stopped.stderr
    assert not alive(second) and not path.exists()
    assert kept_session.stop(target) is None


def serving_docs(project: Path) -> tuple[socket.socket, Iterator[dict[str, Any]]]:
    """A kept session, started as any client starts it, running `docs serve` (until Ctrl-C) for the
    connection returned with its remaining frames (its first output frame read)."""
    target = project / "target"
    (target / "docs").mkdir(parents=True)
    (target / "docs" / "index.html").write_text("<html></html>")
    path = kept_session.socket_path(target)
    with kept_session._spawn_lock(path):
        conn = kept_session._start(path, target, minutes=5)
    conn.settimeout(60)  # a server deaf to the interrupt fails the test instead of hanging it
    kept_session.send(conn, {"argv": ["docs", "serve", str(project), "--port", "0"], "cwd": str(project),
                             "key": "k", "started": time.time()})
    frames = kept_session.messages(conn)
    assert next(frames) == {"accepted": True}
    first = next(frames)
    assert first["out"].startswith("Serving ") and "(Ctrl-C stops)" in first["out"], first
    return conn, frames


def test_ctrl_c_reaches_the_command_and_ends_the_server(project: Path) -> None:
    target = project / "target"
    conn, frames = serving_docs(project)
    with conn:
        pid = kept_session.peer(conn)[0]
        kept_session.send(conn, {"interrupt": True})
        rest = list(frames)
    assert rest[-1] == {"exit": 0}, rest  # `docs serve` ends on Ctrl-C as it does in a terminal
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert "the command was interrupted" in (target / "logs" / "kept_session.log").read_text()


def test_the_server_ends_when_idle(project: Path, capfd: pytest.CaptureFixture) -> None:
    target = project / "target"
    path = kept_session.socket_path(target)
    assert kept_session.forward(target, "k", ["ls", str(project)], minutes=0.02) == 0  # 1.2 s
    log = (target / kept_session.LOG).read_text()
    pid = int(log.split("kept session ", 1)[1].split()[0])  # it may have ended by now: not asked
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid) and not path.exists()
    assert "no command for 1 s: ending" in (target / "logs" / "kept_session.log").read_text()


def test_a_python_models_code_is_its_whole_package_found_without_importing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlinfer.models.flavors.python import package_files

    site = tmp_path / "site"
    package = site / "mynets"
    (package / "blocks").mkdir(parents=True)
    for relative in ("__init__.py", "nets.py", "blocks/__init__.py", "blocks/conv.py"):
        (package / relative).write_text("raise RuntimeError('imported')\n")
    (package / "notes.txt").write_text("not code")
    (site / "single.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(site))
    root = tmp_path / "project"
    root.mkdir()

    installed = package_files("mynets.nets", root)
    assert [str(path.relative_to(package)) for path in installed] == [
        "__init__.py", "blocks/__init__.py", "blocks/conv.py", "nets.py"]
    assert "mynets" not in sys.modules  # found, not imported (its __init__ would raise)
    assert package_files("single", root) == (site / "single.py",)
    assert package_files("no_such_module_here", root) == ()

    # The project's own module is the one its models import (the project folder comes first).
    (root / "mynets").mkdir()
    (root / "mynets" / "nets.py").write_text("X = 2\n")
    assert package_files("mynets.nets", root) == (root / "mynets" / "nets.py",)

    # An edit to a helper of the installed package changes a kept session's key.
    def key() -> str:
        return kept_session.session_key(root, {}, None, {}, package_files("mynets.nets", tmp_path / "elsewhere"),
                                        {"PATH": "/usr/bin"})

    before = key()
    conv = package / "blocks" / "conv.py"
    stat = conv.stat()
    conv.write_text("raise RuntimeError('imported, edited')\n")
    os.utime(conv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert key() != before


def test_a_queued_command_says_it_waits_and_runs_after_the_session_before_it_ended(
        project: Path, capfd: pytest.CaptureFixture) -> None:
    target = project / "target"
    busy, frames = serving_docs(project)
    first_pid = kept_session.peer(busy)[0]

    def interrupt_later() -> None:  # Ctrl-C for `docs serve`, which ends that kept session
        time.sleep(3)
        kept_session.send(busy, {"interrupt": True})
        list(frames)

    stopper = threading.Thread(target=interrupt_later)
    stopper.start()
    started = time.monotonic()
    code = kept_session.forward(target, "k", ["ls", str(project)], minutes=5)  # queued behind `docs serve`
    waited = time.monotonic() - started
    stopper.join(timeout=60)
    busy.close()
    out, err = capfd.readouterr()
    assert code == 0, err
    assert err.count("Waiting for the project's kept session") == 1
    assert f"Waiting for the project's kept session (pid {first_pid}): it is running another command." in err
    assert first_column(out)[1] == "digit_predictions"
    assert waited > 3  # it ran only after the first session had ended
    second_pid = kept_session.server_pid(target)
    assert second_pid not in (None, first_pid) and not alive(first_pid)
    log = (target / kept_session.LOG).read_text()
    assert log.count(" listening on ") == 2
    assert f"ran ls {project}: exit code 0" in log
    kept_session.stop(target)
