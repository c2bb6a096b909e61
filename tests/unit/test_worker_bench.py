"""The Spark-free GPU bench (bench/worker_bench.py) runs where only the worker's libraries are:
``--quick --device cpu`` in Pythons (the bench's and every one it starts) whose imports of YAML,
pyspark, py4j, jinja2 and click fail, as on issue 10's GPU machines. Nothing is timed here: the
figures of such a small run mean nothing, only their presence, the prediction check and the
targets' list are checked."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import env_without_modules

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("yaml", "pyspark", "py4j", "jinja2", "click")


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return env_without_modules(tmp_path_factory.mktemp("site"), BLOCKED)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, blocked_env: dict[str, str]) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("worker_bench") / "tmp"
    proc = subprocess.run([sys.executable, "bench/worker_bench.py", "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, env=blocked_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads((out / "bench.json").read_text()), proc.stdout


def test_the_blocked_modules_cannot_be_imported(blocked_env: dict[str, str]) -> None:
    for name in BLOCKED:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=blocked_env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, (name, proc.stderr)


def test_every_line_has_a_throughput(quick_run: tuple[dict[str, Any], str]) -> None:
    data, stdout = quick_run
    settings: dict[str, set[str]] = {}
    for line in data["lines"]:
        assert line["images_per_second"] > 0, line
        assert line["gpu_busy"] is None, line  # on a CPU: not measured
        settings.setdefault(line["section"], set()).add(line["setting"] if "setting" in line else line["name"])
    assert settings["a"] == {"fp32", "bf16"}
    assert settings["b"] == {"fp32", "channels_last", "channels_last_bf16"}
    assert "c" not in settings  # the GPU-decode script needs CUDA
    assert settings["d"] == {"fp32, decoder: auto", "bf16, decoder: auto", "fp32, decoder: cpu"}
    decode = {"1 thread", "threads", "processes"}
    if importlib.util.find_spec("sqlinfer.worker.decode_pool") is not None:
        decode.add("pool")
    else:
        assert "sqlinfer decode pool: not available" in stdout
    assert settings["e"] == decode
    assert all(line["bad_rows"] == 0 for line in data["lines"] if line["section"] in "de")
    assert all(line["builds"] == 0 for line in data["lines"] if line["section"] == "d")  # built in the warm-up
    meta = data["meta"]
    assert meta["n"] == 32 and meta["model"] == "resnet18" and meta["device"] == "cpu"
    assert meta["torch"] and meta["torchvision"] and meta["cores"] >= 1 and meta["machine"]


def test_sqlinfer_predicts_what_plain_pytorch_predicts(quick_run: tuple[dict[str, Any], str]) -> None:
    data, stdout = quick_run
    check = data["check"]
    assert check["rows"] == 32
    assert check["argmax_agreement"] == 1.0
    assert check["max_abs_diff"] < 1e-3
    assert "argmax agreement 1.000" in stdout


def test_the_issue_targets_are_listed(quick_run: tuple[dict[str, Any], str]) -> None:
    data, stdout = quick_run
    targets = {target["key"]: target for target in data["targets"]}
    assert {key: target["needed"] for key, target in targets.items()} == {
        "bf16_vs_best_plain": 2.5, "bf16_gpu_busy": 60.0, "fp32_vs_plain_fp32": 1.5,
        "decoder_cpu_vs_best_plain": 0.9, "pool_vs_processes": 0.9}
    assert targets["bf16_gpu_busy"]["measured"] is None and targets["bf16_gpu_busy"]["met"] is None
    for key in ("bf16_vs_best_plain", "fp32_vs_plain_fp32", "decoder_cpu_vs_best_plain"):
        assert targets[key]["measured"] > 0 and targets[key]["met"] in (True, False)
    assert "targets (issue 10):" in stdout
    for target in data["targets"]:
        assert target["name"] in stdout
