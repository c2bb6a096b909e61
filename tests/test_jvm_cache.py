"""The driver JVM's class archive (sqlinfer/jvm_cache.py): who writes it, when it is used, and a
real JVM that writes it on exit and maps it on the next start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sqlinfer import jvm_cache


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jvm"
    monkeypatch.setenv(jvm_cache.ENV, str(folder))
    return folder


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_first_session_writes_the_archive_and_others_wait_their_turn(cache: Path) -> None:
    writer = jvm_cache.plan("-Dsome=option")
    assert writer.write and writer.archive is not None
    assert writer.archive.parent == cache and writer.archive.name.startswith("spark-")
    assert f"-XX:ArchiveClassesAtExit={writer.archive}.{os.getpid()}.tmp" in writer.options
    assert "-Xlog:cds=off" in writer.options
    lock = writer.archive.with_name(writer.archive.name + ".lock")
    assert lock.read_text() == str(os.getpid())

    # While this (live) process writes it, another session neither writes nor reads one.
    other = jvm_cache.plan("")
    assert (other.write, other.options) == (False, "")

    # The JVM exited cleanly with the archive written: it moves into place, the lock goes.
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"archive")
    writer.finish(0)
    assert writer.archive.read_bytes() == b"archive" and not lock.exists()
    reader = jvm_cache.plan("")
    assert not reader.write and reader.options.startswith(f"-XX:SharedArchiveFile={writer.archive} ")


def test_failed_jvm_leaves_no_archive_and_a_dead_writer_does_not_block(cache: Path) -> None:
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    temporary = Path(f"{writer.archive}.{os.getpid()}.tmp")
    temporary.write_bytes(b"half")
    writer.finish(137)  # killed while writing
    assert not writer.archive.exists() and not temporary.exists()

    # A writer killed before it could clean up: its lock and half-written file are removed.
    pid = dead_pid()
    writer.archive.with_name(writer.archive.name + ".lock").write_text(str(pid))
    stale = Path(f"{writer.archive}.{pid}.tmp")
    stale.write_bytes(b"half")
    again = jvm_cache.plan("")
    assert again.write and not stale.exists()


def test_jdk_that_cannot_write_one_is_not_asked_again(cache: Path) -> None:
    writer = jvm_cache.plan("")
    writer.finish(0)  # clean exit, no archive written
    assert jvm_cache.plan("").options == ""


@pytest.mark.parametrize("options", ["-Xshare:off", "-XX:SharedArchiveFile=/mine.jsa"])
def test_user_managed_class_sharing_is_left_alone(cache: Path, options: str) -> None:
    assert jvm_cache.plan(options).options == ""
    assert not cache.exists()


def test_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jvm_cache.ENV, "0")
    assert jvm_cache.plan("").options == ""


def test_class_path_is_part_of_the_key(cache: Path) -> None:
    assert jvm_cache.archive_path("") != jvm_cache.archive_path("/extra/jars/*")


SESSION = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sqlinfer.session import build_session

    spark = build_session(Path(sys.argv[1]), "local[1]", {"spark.sqlinfer.warmUpWorkers": "false",
                                                          "spark.ui.enabled": "false"})
    assert spark.range(5).count() == 5
    pid = spark.sparkContext._gateway.proc.pid
    print(sys.argv[2] in Path(f"/proc/{pid}/maps").read_text())
""")


@pytest.mark.spark
def test_real_jvm_writes_the_archive_on_exit_and_maps_it_next_time(cache: Path, tmp_path: Path) -> None:
    archive = jvm_cache.archive_path("")  # this process's java and PySpark: the key the sessions use
    assert archive is not None

    def session() -> str:
        done = subprocess.run([sys.executable, "-c", SESSION, str(tmp_path / "target"), str(archive)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert session() == "False"  # the first JVM writes the archive, it maps none
    assert sorted(cache.iterdir()) == [archive]  # in place; no lock, no temporary file left
    assert archive.stat().st_size > 10_000_000
    assert session() == "True"  # the next JVM maps it
