"""The driver JVM's class archive (sqlinfer/runtime/jvm_cache.py) with a real JVM: written on the
first session's exit, mapped by the next one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sqlinfer.runtime import jvm_cache

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
    pid = spark.sparkContext._gateway.proc.pid
    print(sys.argv[2] in Path(f"/proc/{pid}/maps").read_text())
""")


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
