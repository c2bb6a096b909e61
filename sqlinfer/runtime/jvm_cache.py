"""Class-data sharing for the driver JVM: Spark's classes mapped from one archive file instead of
being loaded and verified one by one at every start.

A fresh Spark driver JVM loads and verifies some 20,000 classes before its first query, most of
the JVM's CPU in a short job. With an archive of them (the JDK's dynamic AppCDS archive,
``-XX:SharedArchiveFile``) a session starts seconds sooner and its JVM spends about half the CPU
before the first query (measured figures: docs/session.md and docs/performance.md).

The archive belongs to the machine, not to a project: it is keyed by the java binary, PySpark's
version, folder and install time, and the driver's extra class path, and kept in ``$SQLINFER_JVM_CACHE`` (default
``$XDG_CACHE_HOME/sqlinfer/jvm``, i.e. ``~/.cache/sqlinfer/jvm``; ``SQLINFER_JVM_CACHE=0`` turns
this off). The first session without one asks its JVM to write it on exit
(``-XX:ArchiveClassesAtExit``) under a temporary name. Writing it takes the exiting JVM 10-25 s,
which the command does not wait for: it releases the embedded metastore (so the next command
can open it), asks the JVM to end, and leaves a detached *finisher* (``python -m
sqlinfer.runtime.jvm_cache``, :func:`finish_detached`) to wait for the JVM and move the archive
into place once a JVM has mapped it (``-Xshare:on``), so that a half-written archive (a machine
shut down meanwhile, a killed JVM) is never used. Where a process cannot wait for a JVM it did
not start (no ``os.pidfd_open``), the command waits itself and moves the archive from a clean
exit (:meth:`Plan.finish`). An archive the JVM cannot use (another JDK, another class path) is
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
import select
import shutil
import subprocess
import sys
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
# How long a finisher waits for the JVM to write the archive and exit before it gives up.
WRITE_TIMEOUT_S = 600


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
    pyspark = metadata.distribution("pyspark")
    # Where PySpark is and when its jars were installed, not only its version: the jars are the
    # JVM's class path, which a JVM checks (paths, sizes, times) against the archive's. Two
    # virtualenvs with one PySpark version, or one recreated in the same folder, would share a key,
    # and the second would never map the first one's archive, nor write its own.
    jars = Path(str(pyspark.locate_file("pyspark"))) / "jars"
    installed = str(jars.stat().st_mtime_ns) if jars.is_dir() else ""
    key = "|".join([KEY_VERSION, str(java), str(stat.st_mtime_ns), str(stat.st_size), pyspark.version,
                    str(jars), installed, *_stamped(extra_class_path)])
    return folder / f"spark-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


def _stamped(class_path: str) -> list[str]:
    """Each entry of ``class_path`` with its time and size where it is a file: the JVM checks those
    against the archive's as well, so a jar rebuilt in place (sqlinfer's own, after an upgrade)
    gets a new archive instead of an old one no JVM maps any more."""
    entries = []
    for entry in class_path.split(os.pathsep):
        stat = Path(entry).stat() if entry and Path(entry).is_file() else None
        entries.append(f"{entry}:{stat.st_mtime_ns}:{stat.st_size}" if stat else entry)
    return entries


def lock_path(archive: Path) -> Path:
    """The file whose holder (a pid) is the one process writing ``archive``."""
    return archive.with_name(archive.name + ".lock")


def light_path(archive: Path) -> Path:
    """The light archive next to the full ``archive`` (see the module docstring)."""
    return archive.with_name(archive.name.removesuffix(".jsa") + LIGHT_SUFFIX)


class Plan:
    """The java options for one session, and what to do when the process ends."""

    def __init__(self, archive: Path | None, write: bool) -> None:
        self.archive = archive
        self.write = write
        self.finished_later = False  # a finisher has taken over (finish_later)

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
        return lock_path(self.archive)

    def abandon(self) -> None:
        """No JVM was started with these options: let another process write the archive."""
        if self.write:
            self._lock.unlink(missing_ok=True)

    def finish(self, exit_code: int | None) -> None:
        """After the JVM has exited: move the archive it wrote into place (only from a clean
        exit, so a half-written archive is never used)."""
        if not self.write or self.finished_later:
            return
        assert self.archive is not None
        temporary = self._temporary
        try:
            if exit_code == 0 and temporary.is_file() and temporary.stat().st_size > 0:
                _put_in_place(temporary, self.archive)
            elif exit_code == 0:
                # No archive from a clean exit: this JDK cannot write one. Do not ask again.
                _unsupported_marker(self.archive).touch()
        except OSError:  # the archive is an optimization; never fail the exit on it
            pass
        finally:
            _release(self.archive)

    def finish_later(self, jvm_pid: int, class_path: str) -> bool:
        """Before the JVM (``jvm_pid``, alive) is asked to end: leave moving its archive into place
        to a detached finisher, which takes over the lock. False where that cannot be done (the
        caller then waits for the JVM and calls :meth:`finish`)."""
        java = java_path()
        if not self.write or self.archive is None or java is None or not hasattr(os, "pidfd_open"):
            return False
        command = [sys.executable, "-m", __name__, str(jvm_pid), str(self._temporary), str(self.archive),
                   str(java), class_path]
        try:
            # Its own session: a Ctrl-C or a hang-up of the terminal the command ran in does not reach it.
            finisher = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
            self._lock.write_text(str(finisher.pid), encoding="utf-8")
        except OSError:
            return False
        self.finished_later = True
        return True


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
        lock = lock_path(archive)
        with open(lock, "x", encoding="utf-8") as handle:  # one writer at a time on this machine
            handle.write(str(os.getpid()))
    except OSError:  # another process writes it, or the cache folder is not writable
        return Plan(None, write=False)
    return Plan(archive, write=True)


def _full_path(archive: Path) -> Path:
    """The full archive of ``archive``'s key (``archive`` itself when it is the full one)."""
    return archive.with_name(archive.name.replace(LIGHT_SUFFIX, ".jsa"))


def _unsupported_marker(archive: Path) -> Path:
    """The file that says this JDK writes no archive (one for the full and the light archive)."""
    return archive.with_name(_full_path(archive).name + ".unsupported")


def _remove_stale(archive: Path) -> None:
    """The lock and temporary archives of a writer that is gone (killed before it finished). A
    temporary archive is named after the command that started its JVM, and that command may be
    gone while its finisher, which holds the lock now, waits for the JVM: the lock's holder decides."""
    lock = lock_path(archive)
    try:
        holder = int(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        holder = None
    except (OSError, ValueError):
        return  # being written by its new holder this instant: theirs to clean
    if holder is None or not _alive(holder):
        _release(archive)


def _put_in_place(temporary: Path, archive: Path) -> None:
    """Move a written archive into place; the full one makes the light one useless, whichever of
    the two writers finishes last."""
    if archive.name.endswith(LIGHT_SUFFIX) and _full_path(archive).exists():
        return
    os.replace(temporary, archive)
    if not archive.name.endswith(LIGHT_SUFFIX):
        light_path(archive).unlink(missing_ok=True)
    _remove_unused(archive)


def finish_detached(jvm_pid: int, temporary: Path, archive: Path, java: Path, class_path: str) -> bool:
    """The finisher (:meth:`Plan.finish_later`): wait for the JVM to exit, then move the archive it
    wrote into place if a JVM can map it; in any case remove the temporary file and the lock.
    True when the archive was put in place."""
    try:
        try:
            pidfd = os.pidfd_open(jvm_pid)
        except ProcessLookupError:  # it has exited already
            pass
        else:
            _lower_priority(jvm_pid)
            with os.fdopen(pidfd) as handle:
                ready, _, _ = select.select([handle], [], [], WRITE_TIMEOUT_S)
            if not ready:
                return False  # still writing after 10 minutes: never mind, a later command writes it
        if not (temporary.is_file() and temporary.stat().st_size > 0 and _maps(java, temporary, class_path)):
            return False
        _put_in_place(temporary, archive)
        return True
    except OSError:  # the archive is an optimization; a later command writes it
        return False
    finally:
        _release(archive)


def _release(archive: Path) -> None:
    """The writer of ``archive`` is done: its lock goes, and every temporary archive with it (only
    the lock's holder writes one, so any other is a killed writer's)."""
    for leftover in [*archive.parent.glob(archive.name + ".*.tmp"), lock_path(archive)]:
        leftover.unlink(missing_ok=True)


def _lower_priority(pid: int) -> None:
    """Lower the priority of every thread of ``pid`` (on Linux a priority is a thread's): what is
    left of that JVM's work is the archive, and the user's next command comes first."""
    try:
        threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return
    for thread in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, thread, 10)
        except OSError:  # gone, or not ours to change
            continue


def _maps(java: Path, archive: Path, class_path: str) -> bool:
    """Whether a JVM with the sessions' class path maps ``archive``: without an exit code to go by,
    this tells a whole archive from one whose JVM was killed while writing it (the JVM writes the
    archive's header last; with ``-Xshare:on`` an archive it cannot map is an error)."""
    command = [str(java), "-Xshare:on", f"-XX:SharedArchiveFile={archive}", "-Xlog:disable",
               "-XX:-CreateCoredumpOnCrash", "-XX:ErrorFile=/dev/null", "-cp", class_path, "-version"]
    try:
        checked = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, cwd=archive.parent, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return checked.returncode == 0


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


def wait_for_writers(timeout_s: float = 300) -> None:
    """Wait while a process writes an archive in the cache folder (a machine's first command leaves
    its JVM writing one after the command has returned): for measurements that must not share the
    cores with it (bench/)."""
    folder = cache_folder()
    deadline = time.monotonic() + timeout_s
    while folder is not None and time.monotonic() < deadline:
        holders = []
        for lock in folder.glob("*.lock"):
            try:
                holders.append(int(lock.read_text(encoding="utf-8")))
            except (OSError, ValueError):  # gone, or being written this instant
                continue
        if not any(_alive(pid) for pid in holders):
            return
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":  # the finisher: JVM_PID TEMPORARY ARCHIVE JAVA CLASS_PATH (Plan.finish_later)
    pid, temporary_file, archive_file, java_file, classes = sys.argv[1:6]
    finish_detached(int(pid), Path(temporary_file), Path(archive_file), Path(java_file), classes)
