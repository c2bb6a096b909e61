"""The benchmark runs end to end on a tiny input, so CI catches a broken bench. Nothing is timed:
the figures of such a small run mean nothing, only their presence is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "bench/run.py", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "bench.json").read_text()), proc.stdout, out


def test_every_contender_has_a_throughput(quick_run: tuple[dict, str, Path]) -> None:
    data, stdout, out = quick_run
    names = [line["name"] for line in data["lines"]]
    for prefix in ("reference (", "reference + BN folded + channels_last", "sqlinfer cold", "sqlinfer warm",
                   "naive recipe cold", "naive recipe warm",
                   "predict_batch_udf cold", "predict_batch_udf warm", "end to end: plain PyTorch script",
                   "end to end: sqlinfer"):
        assert any(name.startswith(prefix) for name in names), (prefix, names)
    for line in data["lines"]:
        assert line["images_per_second"] > 0, line
        assert line["rows"] == data["meta"]["n"], line
    # The limit ran once before each of sqlinfer's warm queries (one each in a --quick run), and its
    # line keeps its place, after the reference's.
    assert data["reference"]["tuned"]["runs"] == [round(data["reference"]["tuned"]["images_per_second"], 1)]
    assert names.index("reference + BN folded + channels_last") == 1
    try:
        import matplotlib  # noqa: F401 - the `bench` extra; without it the bench skips the chart
    except ImportError:
        pass
    else:
        assert (out / "bench.png").stat().st_size > 0
    assert "targets:" in stdout


def test_builds_memory_and_breakdown_are_reported(quick_run: tuple[dict, str, Path]) -> None:
    data, _, _ = quick_run
    lines = {line["name"]: line for line in data["lines"]}
    # sqlinfer builds the model once per worker, in the cold query, and never again.
    assert lines["sqlinfer cold"]["builds"] >= 1
    assert lines["sqlinfer warm"]["builds"] == 0
    assert lines["naive recipe warm"]["builds"] >= 1  # the recipe rebuilds on every call
    assert lines["sqlinfer warm"]["worker_rss_mb"] > 0 and lines["sqlinfer warm"]["driver_rss_mb"] > 0
    per_process = data["builds_per_process"]
    assert per_process and all(count == 1 for model in per_process.values() for count in model.values())
    assert data["reference"]["sweep"] and data["sqlinfer"]["sweep"]
    assert "first query (all of it)" in data["sqlinfer"]["cold_breakdown"]
    assert data["check"]["max_abs_diff"] < 1e-3  # sqlinfer and plain PyTorch predict the same
    verdicts = {target["name"]: target["met"] for target in data["targets"]}
    assert {"warm throughput vs best plain PyTorch", "cold throughput vs best plain PyTorch"} <= set(verdicts)
    # The limit is the faster of the reference and the reference with sqlinfer's tricks applied.
    tuned = data["reference"]["tuned"]
    assert tuned["setting"]["tuned"] is True and tuned["images_per_second"] > 0


def test_the_jvms_cpu_is_split_by_thread(quick_run: tuple[dict, str, Path]) -> None:
    """The JVM's CPU of the warm query and of the build, by kind of thread: Spark's task threads
    ran the query, py4j's driver threads planned it (and in the build, opened the metastore)."""
    data, stdout, _ = quick_run
    warm = next(line for line in data["lines"] if line["name"] == "sqlinfer warm")
    build = data["e2e"]["sqlinfer"]
    for kinds in (warm["jvm_cpu_by_thread"], build["jvm_cpu_by_thread"]):
        assert set(kinds) <= {"tasks", "driver", "compiler", "gc", "other"}, kinds
        assert kinds["tasks"] > 0 and kinds["driver"] > 0, kinds
    # Sampled per thread, the build's JVM CPU adds up to (almost) what the process sampler saw.
    assert sum(build["jvm_cpu_by_thread"].values()) <= build["cpu_seconds_by_role"]["jvm"] + 0.1
    assert sum(build["jvm_cpu_by_thread"].values()) >= 0.7 * build["cpu_seconds_by_role"]["jvm"]
    assert "the JVM's CPU seconds by thread" in stdout and "sqlinfer build, end to end:" in stdout


def test_the_floor_bench_reports_every_figure(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/floor.py", "--rows", "300", "--file-rows", "100", "--tasks", "6",
                           "--repeat", "1", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"floor bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    data = json.loads((tmp_path / "floor.json").read_text())
    for name in ("plain_memory", "plain_files", "parquet_png", "parquet_tensor", "files_png"):
        assert data[name] > 0, name
    assert set(data["task_ms"]) == {"jvm", "python_udf", "sqlinfer"} and min(data["task_ms"].values()) > 0
    assert [t["name"].split(" (")[0] for t in data["targets"]] == [
        "per-task overhead at 1 row per task", "digits-size rows from parquet, warm",
        "digits-size rows from binaryFile files, warm"]
    assert "targets:" in proc.stdout


def test_the_latency_bench_times_each_command_with_its_timeline(tmp_path: Path, digits_copy: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/latency.py", "--runs", "1", "--project", str(digits_copy),
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"latency bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    data = json.loads((tmp_path / "latency.json").read_text())
    assert set(data) == {"sql SELECT 1", "compile", "sql typo"}
    for name, result in data.items():
        assert 0 < result["median_s"] < 120, name
        assert result["timeline"][-1].endswith("exit") and any("JVM started" in line for line in result["timeline"])


def test_the_kept_memory_bench_reports_each_commands_memory(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/kept_memory.py", "--commands", "4", "--work", str(tmp_path),
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"kept memory bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    data = json.loads((tmp_path / "kept_memory.json").read_text())
    assert len(data["commands"]) == 4
    for command in data["commands"]:
        assert command["driver"] > 100 and command["jvm"] > 100 and command["workers"] > 100, command
    assert isinstance(data["growth_mb_per_command"], float)
    assert "growth over commands 3-4:" in proc.stdout
    from sqlinfer.runtime import kept_session

    assert kept_session.server_pid(tmp_path / "project" / "target") is None  # stopped at the end
