"""The driver JVM's class archive (sqlinfer/runtime/jvm_cache.py): who writes it and when it is used,
without a JVM (tests/functional/test_jvm_cache.py has a real one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqlinfer.runtime import jvm_cache


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jvm"
    monkeypatch.setenv(jvm_cache.ENV, str(folder))
    return folder


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def lock_of(archive: Path) -> Path:
    return archive.with_name(archive.name + ".lock")


def test_first_session_asks_its_jvm_to_write_the_archive(cache: Path) -> None:
    writer = jvm_cache.plan("-Dsome=option")
    assert writer.write is True
    assert writer.archive is not None and writer.archive.parent == cache
    assert writer.archive.name.startswith("spark-") and writer.archive.suffix == ".jsa"
    assert writer.options == f"-XX:ArchiveClassesAtExit={writer.archive}.{os.getpid()}.tmp {jvm_cache.QUIET}"
    assert lock_of(writer.archive).read_text() == str(os.getpid())


def test_while_a_live_process_writes_it_others_neither_write_nor_read(cache: Path) -> None:
    jvm_cache.plan("")
    other = jvm_cache.plan("")
    assert (other.write, other.archive, other.options) == (False, None, "")


def test_clean_exit_moves_the_archive_into_place_and_drops_the_lock(cache: Path) -> None:
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"archive")
    writer.finish(0)
    assert writer.archive.read_bytes() == b"archive"
    assert sorted(cache.iterdir()) == [writer.archive]


def test_the_next_session_maps_the_archive(cache: Path) -> None:
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"archive")
    writer.finish(0)
    reader = jvm_cache.plan("")
    assert (reader.write, reader.archive) == (False, writer.archive)
    assert reader.options == f"-XX:SharedArchiveFile={writer.archive} {jvm_cache.QUIET}"


def test_a_killed_jvm_leaves_no_archive(cache: Path) -> None:
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"half")
    writer.finish(137)  # killed while writing
    assert list(cache.iterdir()) == []


def test_a_dead_writers_lock_and_half_archive_are_removed(cache: Path) -> None:
    archive = jvm_cache.archive_path("")
    assert archive is not None
    cache.mkdir()
    pid = dead_pid()
    lock_of(archive).write_text(str(pid))
    stale = Path(f"{archive}.{pid}.tmp")
    stale.write_bytes(b"half")
    again = jvm_cache.plan("")
    assert again.write is True
    assert not stale.exists()
    assert lock_of(archive).read_text() == str(os.getpid())


def test_a_live_finishers_lock_keeps_the_archive_its_jvm_writes(cache: Path) -> None:
    """The command that started the writing JVM has exited (the temporary archive is named after
    it), its finisher holds the lock and waits for the JVM: nothing of theirs is removed."""
    archive = jvm_cache.archive_path("")
    assert archive is not None
    cache.mkdir()
    finisher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_of(archive).write_text(str(finisher.pid))
        writing = Path(f"{archive}.{dead_pid()}.tmp")
        writing.write_bytes(b"being written")
        other = jvm_cache.plan("")
        assert (other.write, other.options) == (False, "")
        assert writing.read_bytes() == b"being written" and lock_of(archive).read_text() == str(finisher.pid)
    finally:
        finisher.kill()
        finisher.wait()


def written(writer: jvm_cache.Plan) -> Path:
    """What a JVM that exits cleanly leaves: the archive ``writer`` asked it for, in place."""
    assert writer.write and writer.archive is not None
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(writer.archive.name.encode())
    writer.finish(0)
    return writer.archive


def test_a_light_session_writes_a_light_archive_that_only_light_sessions_use(cache: Path) -> None:
    light = written(jvm_cache.plan("", light=True))
    full = jvm_cache.archive_path("")
    assert full is not None and light == jvm_cache.light_path(full) and light.name.endswith(".light.jsa")
    assert jvm_cache.plan("", light=True).options == f"-XX:SharedArchiveFile={light} {jvm_cache.QUIET}"
    build = jvm_cache.plan("")  # a build loads 3,500 classes more: it writes the full one, mapping none
    assert (build.write, build.archive) == (True, full)
    assert build.options.startswith("-XX:ArchiveClassesAtExit=") and str(light) not in build.options


def test_the_full_archive_replaces_the_light_one_for_every_session(cache: Path) -> None:
    light = written(jvm_cache.plan("", light=True))
    full = written(jvm_cache.plan(""))
    assert sorted(cache.iterdir()) == [full]  # the light one is gone
    for is_light in (True, False):
        reader = jvm_cache.plan("", light=is_light)
        assert (reader.write, reader.archive) == (False, full)
    assert not light.exists()


def test_a_light_archive_finished_after_the_full_one_is_dropped(cache: Path) -> None:
    """A light command's JVM and a full one's write at once (the light one's finisher is slower):
    the full archive, once there, stays the only one."""
    light = jvm_cache.plan("", light=True)
    full = written(jvm_cache.plan(""))
    written(light)
    assert sorted(cache.iterdir()) == [full]


def test_a_light_session_writes_nothing_while_a_full_archive_exists(cache: Path) -> None:
    full = written(jvm_cache.plan(""))
    reader = jvm_cache.plan("", light=True)
    assert (reader.write, reader.archive) == (False, full)
    assert sorted(cache.iterdir()) == [full]


def test_jdk_that_cannot_write_one_is_not_asked_again(cache: Path) -> None:
    writer = jvm_cache.plan("")
    writer.finish(0)  # clean exit, no archive written
    again = jvm_cache.plan("")
    assert (again.write, again.options) == (False, "")
    assert jvm_cache.plan("", light=True).options == ""  # nor for a light archive


@pytest.mark.parametrize("options", ["-Xshare:off", "-XX:SharedArchiveFile=/mine.jsa",
                                     "-XX:ArchiveClassesAtExit=/mine.jsa"])
def test_user_managed_class_sharing_is_left_alone(cache: Path, options: str) -> None:
    assert jvm_cache.plan(options).options == ""
    assert not cache.exists()


def test_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jvm_cache.ENV, "0")
    assert jvm_cache.archive_path("") is None
    assert jvm_cache.plan("").options == ""


def test_class_path_is_part_of_the_key(cache: Path, tmp_path: Path) -> None:
    assert jvm_cache.archive_path("") != jvm_cache.archive_path("/extra/jars/*")
    # A jar rebuilt in place (sqlinfer's own after an upgrade): the JVM would not map the old archive.
    jar = tmp_path / "extension.jar"
    jar.write_bytes(b"one")
    before = jvm_cache.archive_path(f"/extra/jars/*:{jar}")
    assert jvm_cache.archive_path(f"/extra/jars/*:{jar}") == before
    jar.write_bytes(b"other")
    assert jvm_cache.archive_path(f"/extra/jars/*:{jar}") not in (before, None)


def test_pyspark_folder_and_install_time_are_part_of_the_key(cache: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The same PySpark version in another virtualenv, or reinstalled in the same folder, has other
    jars on the JVM's class path (a JVM checks their paths, sizes and times against the archive's).
    A second install stands in as a folder of its own: a real one would take minutes."""
    here = jvm_cache.archive_path("")
    installed = jvm_cache.metadata.distribution("pyspark")
    site = tmp_path / "venv" / "site-packages"
    (site / "pyspark" / "jars").mkdir(parents=True)

    class Elsewhere:
        version = installed.version

        @staticmethod
        def locate_file(name: str) -> Path:
            return site / name

    monkeypatch.setattr(jvm_cache.metadata, "distribution", lambda _name: Elsewhere())
    elsewhere = jvm_cache.archive_path("")
    assert elsewhere not in (here, None)
    assert jvm_cache.archive_path("") == elsewhere  # the same install: the same key
    os.utime(site / "pyspark" / "jars", ns=(0, 10**18))  # reinstalled: its jars folder is new
    assert jvm_cache.archive_path("") not in (elsewhere, here, None)


def test_writing_an_archive_removes_those_unused_for_a_month(cache: Path) -> None:
    """An upgrade of the JDK or PySpark keys a new archive (about 200 MB each): the old ones no
    session uses go when the next one is written; one used within the month stays."""
    cache.mkdir()
    now = time.time()
    old, recent = cache / "spark-0000000000000001.jsa", cache / "spark-0000000000000002.jsa"
    unrelated = cache / "notes.txt"
    for path, days in ((old, 31), (recent, 29), (unrelated, 400)):
        path.write_bytes(b"x")
        os.utime(path, (now - days * 86400, now - days * 86400))
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"archive")
    writer.finish(0)
    assert sorted(cache.iterdir()) == sorted([writer.archive, recent, unrelated])


def test_a_session_that_uses_an_archive_marks_it_at_most_daily(cache: Path) -> None:
    writer = jvm_cache.plan("")
    assert writer.archive is not None
    Path(f"{writer.archive}.{os.getpid()}.tmp").write_bytes(b"archive")
    writer.finish(0)
    month_ago, hour_ago = time.time() - 30 * 86400, time.time() - 3600
    os.utime(writer.archive, (month_ago, month_ago))
    assert jvm_cache.plan("").archive == writer.archive
    assert writer.archive.stat().st_mtime > hour_ago  # marked used now
    os.utime(writer.archive, (hour_ago, hour_ago))
    jvm_cache.plan("")
    assert writer.archive.stat().st_mtime == pytest.approx(hour_ago)  # used within the day: not rewritten


def test_measurements_wait_while_a_live_process_writes_an_archive(cache: Path) -> None:
    cache.mkdir()
    (cache / "spark-0000000000000001.jsa.lock").write_text(str(dead_pid()))
    started = time.monotonic()
    jvm_cache.wait_for_writers()
    assert time.monotonic() - started < 0.5  # a dead writer's lock is no reason to wait
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (cache / "spark-0000000000000002.jsa.lock").write_text(str(writer.pid))
    started = time.monotonic()
    jvm_cache.wait_for_writers(timeout_s=1)
    assert 1 <= time.monotonic() - started < 5  # waited while the writer lived, up to its timeout
    writer.kill()
    writer.wait()
    started = time.monotonic()
    jvm_cache.wait_for_writers()
    assert time.monotonic() - started < 0.5
