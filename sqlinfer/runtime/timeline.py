"""Where a command's seconds go: named moments of one process, printed by ``--timings``.

A short command (``sqlinfer sql``, ``compile``) is mostly start-up: Python imports, the JVM, the
metastore, reading the models, the query, Spark's stop. Code marks each moment as it passes it
(:func:`mark`, a list append, so marks cost nothing when nobody asks); ``sqlinfer --timings ...``
prints them to stderr as the process exits, measured from the moment the process started.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any

_MARKS: list[tuple[float, str]] = []
# A kept session's command (sqlinfer/runtime/kept_server.py) ends before its process does: "origin"
# is its client's start, "report" whether it asked for --timings (printed at the command's end).
# "forwarded": this process handed its command to a kept session, which prints the timeline.
_COMMAND: dict[str, Any] = {}


def process_start() -> float:
    """When this process started, in epoch seconds (Linux: from /proc, to 10 ms; elsewhere: the
    first import of this module)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as uptime:
            up = float(uptime.read().split()[0])
        return time.time() - (up - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def mark(moment: str) -> None:
    """Note that ``moment`` (e.g. "JVM ready") has just passed. Safe from any thread."""
    _MARKS.append((time.time(), moment))


def lines(start: float | None = None) -> list[str]:
    """The timeline: seconds since ``start`` (default: the process's start) and since the moment
    before, in the order the moments passed."""
    origin = process_start() if start is None else start
    out, before = [], origin
    for at, moment in sorted(_MARKS):
        out.append(f"{at - origin:7.2f} s  (+{at - before:5.2f})  {moment}")
        before = at
    return out


def begin_command(origin: float) -> None:
    """A kept session begins a command whose client started at ``origin`` (epoch seconds)."""
    _MARKS.clear()
    _COMMAND.clear()
    _COMMAND["origin"] = origin
    mark("command received by the kept session")


def end_command() -> None:
    """The kept session's command has ended: print its timeline if it asked for it."""
    if _COMMAND.pop("report", False):
        _report(_COMMAND["origin"])


def forwarded() -> None:
    """This command runs in a kept session, which prints its timeline: this process prints none."""
    _COMMAND["forwarded"] = True


def print_at_exit() -> None:
    """Print the timeline to stderr when the process exits (after Spark has stopped: handlers
    registered later, such as the one that ends the JVM, run first), or when a kept session's
    command ends."""
    if "origin" in _COMMAND:
        _COMMAND["report"] = True
        return
    start = process_start()
    atexit.register(lambda: None if _COMMAND.get("forwarded") else _report(start))


def _report(start: float) -> None:
    mark("exit")
    print("timings (seconds since the process started):", file=sys.stderr)
    for line in lines(start):
        print(f"  {line}", file=sys.stderr)
