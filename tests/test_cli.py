"""The command line: instant help, `models` and `sql` on the digits example, errors with locations."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SQLINFER = [sys.executable, "-m", "sqlinfer"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SQLINFER_SPARK_LOG_LEVEL": "ERROR"}
    return subprocess.run([*SQLINFER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    started = time.perf_counter()
    result = run("--help")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0
    assert "sql" in result.stdout and "models" in result.stdout
    assert elapsed < 1.0, f"sqlinfer --help took {elapsed:.2f}s"
    probe = subprocess.run([sys.executable, "-c", "import sys, sqlinfer.cli; "
                            "print(sorted(m for m in ('torch', 'pyspark', 'pandas', 'pyarrow') if m in sys.modules))"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"


def test_models_lists_functions_and_types(digits_copy: Path) -> None:
    result = run("models", str(digits_copy))
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("digits_predict"))
    assert "image (binary)" in line
    assert "struct<label:string,index:int,score:float>" in line


def test_models_reports_bad_declaration_with_location(digits_copy: Path) -> None:
    models = digits_copy / "models.yml"
    models.write_text(models.read_text().replace("    batch_size: 64", "    batch_size: 64\n    batchsize: 3"))
    result = run("models", str(digits_copy))
    assert result.returncode == 1
    assert f"{models}:17: model 'digits': unknown key 'batchsize'" in result.stderr or \
        f"{models}:17: unknown key 'batchsize'" in result.stderr, result.stderr


@pytest.mark.spark
def test_sql_prints_predictions_and_writes_csv(digits_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    query = ("SELECT path, label, digits_predict(content) AS pred FROM digits_images "
             "WHERE split = 'test' ORDER BY path")
    result = run("sql", str(digits_copy), query, "--output", str(out), "--conf", "spark.ui.enabled=false",
                 "--master", "local[2]")
    assert result.returncode == 0, result.stderr
    assert "wrote 450 rows" in result.stdout
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 450
    assert '"label":' in rows[0]["pred"]  # a struct column is written as JSON text in CSV
    correct = sum(1 for r in rows if f'"index":{r["label"]},' in r["pred"])
    assert correct / len(rows) >= 0.95


@pytest.mark.spark
def test_sql_unknown_function_is_a_clear_error(digits_copy: Path) -> None:
    result = run("sql", str(digits_copy), "SELECT nosuch_predict(content) FROM digits_images",
                 "--conf", "spark.ui.enabled=false", "--master", "local[1]")
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "nosuch_predict" in result.stderr
    assert "[sql.analysis]" in result.stderr
    assert "Traceback" not in result.stderr


def own_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in command:
                found.append(command)
    return found


@pytest.mark.spark
def test_commands_run_back_to_back_and_leave_nothing_running(digits_copy: Path) -> None:
    """A command ends its JVM (and the worker daemon) before it returns: the next command on the
    project finds the embedded metastore free at once, and no process of it is left."""
    daemons_before = set(Path("/tmp").glob("sqlinfer-daemon-*"))
    for _ in range(2):
        result = run("sql", str(digits_copy), "SHOW TABLES", "--conf", "spark.ui.enabled=false")
        assert result.returncode == 0, result.stderr
        assert "digits_images" in result.stdout
        assert own_processes(str(digits_copy)) == []  # no JVM (its command line names target/)
    assert set(Path("/tmp").glob("sqlinfer-daemon-*")) == daemons_before  # early daemon's folder removed
