"""How the bench talks to its subprocesses: one JSON event per stdout line, prefixed with ``@@``.

Every contender runs in a fresh subprocess (a fresh Spark session, or fresh PyTorch processes), so
nothing one leaves behind (Python workers, JVM heap, page cache aside) helps or hurts the next.
Other output lines are kept in a log file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PREFIX = "@@"
REPO = Path(__file__).resolve().parent.parent


def emit(event: str, **data: Any) -> None:
    """Child side: report ``event`` to the bench."""
    sys.stdout.write(PREFIX + json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def start(module: str, args: list[str], log: IO[str], env: dict[str, str] | None = None,
          stdin: bool = False) -> subprocess.Popen:
    """``python -m bench.<module> args`` in the repository root."""
    return subprocess.Popen([sys.executable, "-m", f"bench.{module}", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.PIPE if stdin else None,
                            env=child_env(env), bufsize=1)


def events(proc: subprocess.Popen, log: IO[str], on_event: Callable[[dict], None] | None = None) -> list[dict]:
    """Read ``proc``'s stdout to the end: events go to ``on_event`` (and are returned), the rest to ``log``."""
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(PREFIX):
            event = json.loads(line[len(PREFIX):])
            seen.append(event)
            if on_event is not None:
                on_event(event)
        else:
            log.write(line)
    return seen


def read_event(proc: subprocess.Popen, log: IO[str], name: str) -> dict:
    """Block until ``proc`` reports ``name``; fail if it exits first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(PREFIX):
            event = json.loads(line[len(PREFIX):])
            if event["event"] == name:
                return event
        else:
            log.write(line)
    raise RuntimeError(f"bench subprocess {proc.args} exited with {proc.wait()} before reporting {name!r}; "
                       f"see the log {getattr(log, 'name', '')}")


def last_event(seen: list[dict], name: str, proc: subprocess.Popen, log: IO[str]) -> dict:
    for event in reversed(seen):
        if event["event"] == name:
            return event
    raise RuntimeError(f"bench subprocess {proc.args} exited with {proc.returncode} without reporting "
                       f"{name!r}; see the log {getattr(log, 'name', '')}")
