"""Class-data sharing for the driver JVM: Spark's classes mapped from one archive file instead of
being loaded and verified one by one at every start.

A fresh Spark driver JVM loads and verifies some 20,000 classes before its first query, most of
the JVM's CPU in a short job. With an archive of them (the JDK's dynamic AppCDS archive,
``-XX:SharedArchiveFile``) a session starts seconds sooner and its JVM spends about half the CPU
before the first query (measured figures: docs/session.md and docs/performance.md).

The archive belongs to the machine, not to a project: it is keyed by the java binary, PySpark's
version and the driver's extra class path, and kept in ``$SQLINFER_JVM_CACHE`` (default
``$XDG_CACHE_HOME/sqlinfer/jvm``, i.e. ``~/.cache/sqlinfer/jvm``; ``SQLINFER_JVM_CACHE=0`` turns
this off). The first session without one asks its JVM to write it on exit
(``-XX:ArchiveClassesAtExit``) under a temporary name; sqlinfer ends the JVM when the Python
process exits and waits for it (see :func:`sqlinfer.runtime.jvm.end_jvm_at_exit`; writing the archive makes
that one command slower, once per machine), then moves the archive into place, so a half-written archive is
never used. An archive the JVM cannot use (another JDK, another class path) is
ignored by the JVM, and its log lines about archives are silenced.

The archive holds the classes its writer's JVM loaded, and a command that only answers (`compile`,
a `sql` query that calls no model: a *light* session) loads some 3,500 fewer than a build: no
parquet writer, no Arrow exchange with Python workers, no web UI. A build with an archive a light
session wrote loaded those from the jars at every start: 0.8 s more JVM CPU and wall time in the
bench's build (4 alternating pairs, docs/performance.md). So a light session writes a *light*
archive (``spark-<key>.light.jsa``) only where there is none, any other session uses only a full
one and writes it where it is missing, and the full one, once there, replaces the light one for
every session.

Every JDK or PySpark upgrade, and every other driver class path, makes a new archive of about
200 MB under a new key, and nothing would ever use the old one again: a session that uses an
archive marks it (its modification time, refreshed once a day), and writing a new archive
removes those no session has used for :data:`UNUSED_DAYS` days.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

ENV = "SQLINFER_JVM_CACHE"
# The JVM's notes about classes it cannot archive, or an archive it cannot use, are not the user's.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"
# Options that say the user manages class sharing; sqlinfer then adds none.
USER_CDS_OPTIONS = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare")
# An archive no session has used for this many days is removed when a new one is written.
UNUSED_DAYS = 30
DAY_S = 24 * 3600
# Part of the key: archives of sqlinfer versions that did not tell light ones apart may be light.
KEY_VERSION = "2"
LIGHT_SUFFIX = ".light.jsa"


def cache_folder() -> Path | None:
    setting = os.environ.get(ENV, "")
    if setting == "0":
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sqlinfer" / "jvm"


def java_path() -> Path | None:
    """The java that spark-submit runs: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def archive_path(extra_class_path: str) -> Path | None:
    """Where the (full) archive for this java, PySpark and class path lives (None: sharing is off)."""
    folder, java = cache_folder(), java_path()
    if folder is None or java is None:
        return None
    stat = java.stat()
    key = "|".join([KEY_VERSION, str(java), str(stat.st_mtime_ns), str(stat.st_size), metadata.version("pyspark"),
                    extra_class_path])
    return folder / f"spark-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


def light_path(archive: Path) -> Path:
    """The light archive next to the full ``archive`` (see the module docstring)."""
    return archive.with_name(archive.name.removesuffix(".jsa") + LIGHT_SUFFIX)


class Plan:
    """The java options for one session, and what to do when the process ends."""

    def __init__(self, archive: Path | None, write: bool) -> None:
        self.archive = archive
        self.write = write

    @property
    def options(self) -> str:
        if self.archive is None:
            return ""
        if self.write:
            return f"-XX:ArchiveClassesAtExit={self._temporary} {QUIET}"
        return f"-XX:SharedArchiveFile={self.archive} {QUIET}"

    @property
    def _temporary(self) -> Path:
        assert self.archive is not None
        return self.archive.with_name(f"{self.archive.name}.{os.getpid()}.tmp")

    @property
    def _lock(self) -> Path:
        assert self.archive is not None
        return self.archive.with_name(self.archive.name + ".lock")

    def abandon(self) -> None:
        """No JVM was started with these options: let another process write the archive."""
        if self.write:
            self._lock.unlink(missing_ok=True)

    def finish(self, exit_code: int | None) -> None:
        """After the JVM has exited: move the archive it wrote into place (only from a clean
        exit, so a half-written archive is never used)."""
        if not self.write:
            return
        assert self.archive is not None
        temporary = self._temporary
        try:
            if exit_code == 0 and temporary.is_file() and temporary.stat().st_size > 0:
                os.replace(temporary, self.archive)
                if not self.archive.name.endswith(LIGHT_SUFFIX):  # the full one makes the light one useless
                    light_path(self.archive).unlink(missing_ok=True)
                _remove_unused(self.archive)
            elif exit_code == 0:
                # No archive from a clean exit: this JDK cannot write one. Do not ask again.
                _unsupported_marker(self.archive).touch()
        except OSError:  # the archive is an optimization; never fail the exit on it
            pass
        finally:
            temporary.unlink(missing_ok=True)
            self._lock.unlink(missing_ok=True)


def plan(user_java_options: str, extra_class_path: str = "", *, light: bool = False) -> Plan:
    """Use the archive when there is one; otherwise let this session write it, unless another
    process is already doing that, this JDK cannot, or the user manages class sharing. A
    ``light`` session (one that only answers) may use a light archive, and writes one."""
    if any(option in user_java_options for option in USER_CDS_OPTIONS):
        return Plan(None, write=False)
    full = archive_path(extra_class_path)
    if full is None:
        return Plan(None, write=False)
    usable = [full, light_path(full)] if light else [full]
    for archive in usable:
        if archive.is_file():
            _mark_used(archive)
            return Plan(archive, write=False)
    if _unsupported_marker(full).exists():
        return Plan(None, write=False)
    archive = usable[-1]
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(archive)
        lock = archive.with_name(archive.name + ".lock")
        with open(lock, "x", encoding="utf-8") as handle:  # one writer at a time on this machine
            handle.write(str(os.getpid()))
    except OSError:  # another process writes it, or the cache folder is not writable
        return Plan(None, write=False)
    return Plan(archive, write=True)


def _unsupported_marker(archive: Path) -> Path:
    """The file that says this JDK writes no archive (one for the full and the light archive)."""
    return archive.with_name(archive.name.replace(LIGHT_SUFFIX, ".jsa") + ".unsupported")


def _remove_stale(archive: Path) -> None:
    """Temporary archives and locks of processes that are gone (killed before they finished)."""
    for leftover in [*archive.parent.glob(archive.name + ".*.tmp"), archive.with_name(archive.name + ".lock")]:
        try:
            pid = int(leftover.read_text(encoding="utf-8") if leftover.suffix == ".lock"
                      else leftover.name.rsplit(".", 2)[-2])
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            leftover.unlink(missing_ok=True)


def _mark_used(archive: Path) -> None:
    """Note that a session uses ``archive`` (its modification time; at most one write a day)."""
    try:
        if time.time() - archive.stat().st_mtime > DAY_S:
            os.utime(archive)
    except OSError:  # a read-only cache: the archive then only ages, and is still used
        pass


def _remove_unused(kept: Path) -> None:
    """The other archives in ``kept``'s folder that no session has used for UNUSED_DAYS days."""
    cutoff = time.time() - UNUSED_DAYS * DAY_S
    for archive in kept.parent.glob("spark-*.jsa"):
        try:
            if archive != kept and archive.stat().st_mtime < cutoff:
                archive.unlink()
        except OSError:  # in use or removed by another process: leave it
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
