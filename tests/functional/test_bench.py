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
    for prefix in ("reference (", "sqlinfer cold", "sqlinfer warm", "naive recipe cold", "naive recipe warm",
                   "predict_batch_udf cold", "predict_batch_udf warm", "end to end: plain PyTorch script",
                   "end to end: sqlinfer"):
        assert any(name.startswith(prefix) for name in names), (prefix, names)
    for line in data["lines"]:
        assert line["images_per_second"] > 0, line
        assert line["rows"] == data["meta"]["n"], line
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
    assert "warm throughput vs plain PyTorch" in verdicts
