"""The project's embedded metastore: where its Derby database is, and which process holds it.

Embedded Derby lets one JVM at a time open a database. A second one fails deep inside the Hive
metastore client, after about 20 s of retries and pages of stack traces; looking first turns that
into an immediate error that names the folder and the process holding it. Nothing here starts Spark.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from sqlinfer.errors import SessionError
from sqlinfer.runtime import kept_session
from sqlinfer.runtime.settings import HIVE_SCRATCH

# What Derby says, deep in a Spark error, when another JVM has the database open.
DERBY_LOCKED = "Another instance of Derby may have already booted the database"


def derby_folder(connection_url: str) -> Path | None:
    """The folder of an embedded Derby metastore from its JDBC URL; None for any other metastore."""
    if not connection_url.startswith("jdbc:derby:") or connection_url.startswith("jdbc:derby:memory:"):
        return None
    for part in connection_url.removeprefix("jdbc:derby:").split(";"):
        name = part.removeprefix("databaseName=")
        if name and "=" not in name:
            return Path(name)
    return None


def metastore_holder(folder: Path) -> str | None:
    """Who holds the embedded Derby metastore in ``folder``: a description, or None when it is free.

    Derby keeps an exclusive POSIX lock on ``dbex.lck`` while a JVM has the database booted; a second
    JVM fails deep in the metastore client after ~20 s of retries, so look before starting one.
    """
    lock_file = folder / "dbex.lck"
    try:
        import fcntl

        with lock_file.open("rb+") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return _lock_owner(lock_file) or "another process"
            fcntl.lockf(handle, fcntl.LOCK_UN)
    except (FileNotFoundError, ImportError, PermissionError):
        return None
    return None


def _lock_owner(lock_file: Path) -> str | None:
    """``pid N: command line`` of the process holding ``lock_file`` (Linux /proc), else None."""
    try:
        stat = lock_file.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == wanted:
            pid = int(fields[4])
            # The lock belongs to pyspark's JVM; its parent is the sqlinfer command users recognise.
            parent = _parent_pid(pid)
            useful = parent is not None and parent > 1 and "java" not in _cmdline(parent)
            return _describe(parent if parent is not None and useful else pid)
    return None


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _describe(pid: int) -> str:
    command = _cmdline(pid)
    command = command if len(command) <= 160 else command[:157] + "..."
    return f"pid {pid}: {command}" if command else f"pid {pid}"


def metastore_busy_error(folder: Path, holder: str, command: str = "") -> SessionError:
    """The error for ``sqlinfer COMMAND`` (or any command) finding the metastore held by ``holder``."""
    again = f"run `sqlinfer {command}` again" if command else "try again"
    return SessionError(
        f"the project's metastore {folder} is in use by another process ({holder}). The embedded Derby "
        "metastore allows one process at a time: stop that process (a `sqlinfer serve`, `sql` or `build` "
        f"on this project; `sqlinfer stop` for a kept session) and {again}. While `sqlinfer serve` runs, "
        "query through it (beeline, sqlinfer.client.connect) instead of running other sqlinfer commands on "
        "the project.",
        code="metastore.locked")


def ensure_metastore_free(settings: Mapping[str, str], command: str = "") -> None:
    """Refuse at once when another process holds the embedded Derby metastore of ``settings``."""
    folder = derby_folder(settings.get("spark.hadoop.javax.jdo.option.ConnectionURL", ""))
    holder = metastore_holder(folder) if folder else None
    if folder and holder and not kept_session.serving() and kept_session.stop(folder.parent) is not None:
        # The project's kept session held it (sqlinfer/runtime/kept_session.py): it has ended now.
        holder = metastore_holder(folder)
    if folder and holder:
        raise metastore_busy_error(folder, holder, command)


def clear_hive_scratch(settings: Mapping[str, str], target: Path) -> None:
    """Remove the Hive session folders that ended processes left under ``target``
    (:data:`sqlinfer.runtime.settings.HIVE_SCRATCH`): Hive deletes a session's folder only when the
    session is closed, and the metastore client's session never is. Only for the embedded Derby
    metastore, once :func:`ensure_metastore_free` has found it free: no other process can have a
    Hive session on this project then. With another metastore, several processes may share the
    project's folder at once, and its folders are left alone."""
    embedded = derby_folder(settings.get("spark.hadoop.javax.jdo.option.ConnectionURL", "")) is not None
    if embedded and not settings.get("spark.hadoop.hive.metastore.uris"):
        shutil.rmtree(target / HIVE_SCRATCH, ignore_errors=True)
