"""A table rebuild killed mid-write (SIGKILL of the driver) loses nothing: the old table still
answers with all its rows, and the next build succeeds without manual cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.spark

SLOW_MODEL = """\
models:
  - name: slow
    flavor: torchvision
    architecture: resnet18
    weights: random
    preprocess: {resize: [224, 224], crop: null}
    output: label
    batch_size: 8
"""

NODE = """\
{{ config(materialized='table') }}
SELECT path, slow_predict(content).index AS predicted
FROM {{ source('digits_images') }}
WHERE CAST(regexp_extract(path, '([0-9]+)[.]png$', 1) AS INT) < {{ var('n') }}
"""


def sqlinfer(*args: str) -> list[str]:
    return [sys.executable, "-m", "sqlinfer", *args, "--master", "local[2]", "--conf", "spark.ui.enabled=false"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sqlinfer(*args), capture_output=True, text=True, timeout=300)


def count_rows(project: Path) -> int:
    result = run("sql", str(project), "SELECT count(*) AS n FROM slow_table")
    assert result.returncode == 0, result.stderr
    return int(result.stdout.splitlines()[2].strip())


def test_killed_rebuild_keeps_old_table_and_next_build_succeeds(digits_copy: Path) -> None:
    (digits_copy / "models.yml").write_text(SLOW_MODEL)
    for old in (digits_copy / "sql").glob("*.sql"):
        old.unlink()
    (digits_copy / "sql" / "slow_table.sql").write_text(NODE)

    first = run("build", str(digits_copy), "--vars", "{n: 30}")
    assert first.returncode == 0, first.stdout + first.stderr
    assert count_rows(digits_copy) == 30

    staging = digits_copy / "target" / "warehouse" / "slow_table__sqlinfer_new"
    build = subprocess.Popen(sqlinfer("build", str(digits_copy), "--vars", "{n: 1797}"), stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    driver = psutil.Process(build.pid)
    try:
        assert build.stdout is not None
        for line in build.stdout:
            if "START table slow_table" in line:
                break
        # Well inside the CREATE TABLE AS SELECT: 1,797 images through resnet18 at 224x224 take
        # minutes on two cores.
        time.sleep(10)
        children = driver.children(recursive=True)
        assert build.poll() is None, "the build finished before it could be killed"
        os.kill(build.pid, signal.SIGKILL)
        build.wait(timeout=30)
        # The JVM notices its driver is gone and exits; wait for it so the metastore is free.
        _, alive = psutil.wait_procs(children, timeout=60)
        for process in alive:
            process.kill()
    finally:
        if build.poll() is None:
            build.kill()

    assert count_rows(digits_copy) == 30  # the old table answers with all its rows

    # Whatever the kill left of the staging table, the next build must clean it up by itself;
    # make sure there is something to clean: a half-written file where the staging table goes.
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "part-00000-killed.snappy.parquet").write_bytes(b"PAR1 half written")

    again = run("build", str(digits_copy), "--vars", "{n: 40}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "OK    table slow_table rebuilt, 40 rows" in again.stdout
    assert count_rows(digits_copy) == 40
    assert not staging.exists()
