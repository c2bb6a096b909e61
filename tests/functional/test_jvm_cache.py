"""The driver JVM's class archive (sqlinfer/runtime/jvm_cache.py) with a real JVM: written on the
first session's exit, mapped by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from sqlinfer.runtime import jvm_cache
from sqlinfer.runtime.settings import CLASS_PATH, session_conf

pytestmark = pytest.mark.spark


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jvm"
    monkeypatch.setenv(jvm_cache.ENV, str(folder))
    return folder


SESSION = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sqlinfer.runtime.session import build_session

    spark = build_session(Path(sys.argv[1]), "local[1]", {"spark.sqlinfer.warmUpWorkers": "false",
                                                          "spark.ui.enabled": "false"})
    assert spark.range(5).count() == 5
    assert "default" in [row[0] for row in spark.sql("SHOW DATABASES").collect()]  # the metastore is open
    pid = spark.sparkContext._gateway.proc.pid
    print(pid, sys.argv[2] in Path(f"/proc/{pid}/maps").read_text())
""")


def lock_of(archive: Path) -> Path:
    return archive.with_name(archive.name + ".lock")


def wait_for(path: Path, timeout_s: float = 180) -> float:
    """Seconds until ``path`` exists (fails after ``timeout_s``)."""
    started = time.monotonic()
    while not path.exists():
        assert time.monotonic() - started < timeout_s, f"{path} did not appear"
        time.sleep(0.2)
    return time.monotonic() - started


def test_real_jvm_writes_the_archive_after_the_command_and_the_next_session_maps_it(cache: Path,
                                                                                     tmp_path: Path) -> None:
    """The command does not wait while its JVM writes the archive: it returns with the JVM still
    writing, the embedded metastore already free for the next command, and a detached finisher
    puts the archive in place once the JVM is done."""
    # This process's java and PySpark, and the class path sessions have (sqlinfer's jar): their key.
    archive = jvm_cache.archive_path(session_conf(tmp_path / "target", None, {})[CLASS_PATH])
    assert archive is not None

    def session() -> tuple[int, bool]:
        done = subprocess.run([sys.executable, "-c", SESSION, str(tmp_path / "target"), str(archive)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        pid, mapped = done.stdout.split()
        return int(pid), mapped == "True"

    jvm, mapped = session()
    assert not mapped  # the first JVM writes the archive, it maps none
    assert psutil.pid_exists(jvm) and not archive.exists()  # returned while its JVM writes the archive
    _, mapped = session()  # at once: the metastore is not held by the JVM still writing
    print(f"archive in place {wait_for(archive):.1f}s after the second session")
    assert not psutil.pid_exists(jvm) or psutil.Process(jvm).status() == psutil.STATUS_ZOMBIE
    assert sorted(cache.iterdir()) == [archive]  # in place; no lock, no temporary file left
    assert archive.stat().st_size > 10_000_000
    assert session()[1]  # the next JVM maps it


def test_the_finisher_waits_for_the_jvm_and_keeps_no_archive_a_jvm_cannot_map(cache: Path) -> None:
    """A temporary archive whose JVM was killed while writing it: a real java refuses to map it
    (``-Xshare:on``), so it is not put in place; the lock and the file go once the JVM is gone."""
    java = jvm_cache.java_path()
    assert java is not None
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    jvm = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])  # stands in for the exiting JVM
    temporary = Path(f"{writer.archive}.{os.getpid()}.tmp")
    temporary.write_bytes(b"\0" * 65536)  # what a JVM killed before writing the header leaves
    started = time.monotonic()
    assert jvm_cache.finish_detached(jvm.pid, temporary, writer.archive, java, "") is False
    assert time.monotonic() - started >= 0.8  # it waited for that process to end
    jvm.wait()
    assert list(cache.iterdir()) == []


def test_finishing_later_hands_the_lock_to_a_detached_finisher(cache: Path) -> None:
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    jvm = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"half")
    assert writer.finish_later(jvm.pid, "") is True
    holder = int(lock_of(writer.archive).read_text())
    assert holder != os.getpid() and psutil.Process(holder).cmdline()[1:3] == ["-m", "sqlinfer.runtime.jvm_cache"]
    writer.finish(None)  # the command's own end no longer touches the lock or the file
    assert lock_of(writer.archive).exists()
    assert jvm_cache.plan("").write is False  # nobody else writes meanwhile
    jvm.wait()
    psutil.Process(holder).wait(timeout=60)
    assert list(cache.iterdir()) == []  # "half" is no archive a JVM maps: removed with the lock
