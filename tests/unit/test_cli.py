"""The command line without Spark: help that imports nothing heavy, `models` on the digits example,
and a bad declaration reported with its location."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

SQLINFER = [sys.executable, "-m", "sqlinfer"]
HEAVY = ("torch", "torchvision", "pyspark", "py4j", "pandas", "pyarrow", "numpy", "PIL", "jinja2", "pydantic",
         "yaml", "safetensors")
HELP_PROBE = """
import sys
from sqlinfer.cli import main
try:
    main(sys.argv[1:], prog_name="sqlinfer")
except SystemExit as done:
    assert done.code == 0, done.code
print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SQLINFER_SPARK_LOG_LEVEL": "ERROR"}
    return subprocess.run([*SQLINFER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def invoke(*args: str) -> Result:
    """The command in this process (torch is imported once per test run, not once per command)."""
    from sqlinfer.cli import main

    return CliRunner().invoke(main, list(args), prog_name="sqlinfer")


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    commands = [line.split()[0] for line in result.stdout.split("Commands:", 1)[1].splitlines() if line.strip()]
    assert commands == ["build", "clean", "compile", "debug", "docs", "init", "ls", "models", "seed", "serve",
                        "sql", "stop", "test"]


@pytest.mark.parametrize("args", [["--help"], ["sql", "--help"], ["build", "--help"], ["serve", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    probe = subprocess.run([sys.executable, "-c", HELP_PROBE.format(heavy=HEAVY), *args], capture_output=True,
                           text=True, check=True)
    assert "Usage: sqlinfer" in probe.stdout
    assert probe.stderr.strip() == "[]"


def test_models_lists_functions_and_types(digits_models: Path) -> None:
    result = invoke("models", str(digits_models))
    assert result.exit_code == 0, result.output
    header, _rule, label, probabilities = result.stdout.splitlines()
    assert [c.strip() for c in header.split("|")] == ["function", "flavor", "from", "input", "returns", "weights",
                                                      "fingerprint"]
    size = (digits_models / "weights" / "digits_cnn.safetensors").stat().st_size
    label_cells, probability_cells = ([c.strip() for c in line.split("|")] for line in (label, probabilities))
    assert label_cells[:6] == ["digits_predict", "python", "digits_net:DigitsCNN, weights/digits_cnn.safetensors",
                               "image (binary)", "struct<label:string,index:int,score:float>",
                               f"local file, {size / 1e6:,.1f} MB"]
    assert probability_cells[:5] == ["digits_scores", "python", label_cells[2], "image (binary)",
                                     "struct<label:struct<label:string,index:int,score:float>,probabilities:array<float>>"]
    # Same network and weights, another output: another fingerprint.
    assert len(label_cells[6]) == len(probability_cells[6]) == 12 and label_cells[6] != probability_cells[6]


def test_models_says_which_weights_go_as_files(digits_models: Path) -> None:
    """With a cluster master the weights are broadcast, and shipped as a file above
    spark.sqlinfer.weightsBroadcastLimitMB (the project's `spark:` section; docs/cluster.md)."""
    project_file = digits_models / "sqlinfer_project.yml"
    original = project_file.read_text()

    def transport(spark_section: str) -> str:
        project_file.write_text(original + spark_section)
        result = invoke("models", str(digits_models))
        assert result.exit_code == 0, result.output
        return [c.strip() for c in result.stdout.splitlines()[2].split("|")][5].split(",")[0]

    cluster = "spark:\n  spark.master: spark://127.0.0.1:7077\n"
    assert transport(cluster) == "broadcast"
    assert transport(cluster + "  spark.sqlinfer.weightsBroadcastLimitMB: 0.01\n") == "file"
    assert transport("spark:\n  spark.sqlinfer.weightsBroadcastLimitMB: 0.01\n") == "local file"


def test_models_reports_bad_declaration_with_location(digits_models: Path) -> None:
    models = digits_models / "models.yml"
    models.write_text(models.read_text().replace("    batch_size: 64", "    batch_size: 64\n    batchsize: 3"))
    result = invoke("models", str(digits_models))
    assert result.exit_code == 1
    line = models.read_text().splitlines().index("    batchsize: 3") + 1
    assert result.stderr == (f"error: {models}:{line}: unknown key 'batchsize' in models['digits'] "
                             "(did you mean 'batch_size'?) [config.unknown_key]\n")
    assert result.stdout == ""


def test_clean_removes_generated_files_and_keeps_the_tables(digits_models: Path) -> None:
    target = digits_models / "target"
    for folder in ("compiled/sub", "logs", "weights", "metastore_db", "warehouse/digit_predictions"):
        (target / folder).mkdir(parents=True)
    for file in ("compiled/sub/a.sql", "logs/spark.log", "weights/x.safetensors", "run_results.json",
                 "resolved_models.json", "metastore_db/service.properties", "warehouse/digit_predictions/part-0"):
        (target / file).write_text("x")
    result = invoke("clean", str(digits_models))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in target.iterdir()) == ["metastore_db", "warehouse"]
    assert (target / "warehouse" / "digit_predictions" / "part-0").read_text() == "x"
    assert (target / "metastore_db" / "service.properties").read_text() == "x"
    removed, kept = result.stdout.splitlines()
    assert removed == (f"Removed {target}/compiled, {target}/logs, {target}/weights, {target}/run_results.json, "
                       f"{target}/resolved_models.json.")
    assert kept == f"Kept {target}/metastore_db and {target}/warehouse: the project's tables."
    assert invoke("clean", str(digits_models)).stdout.splitlines()[0] == "Nothing to remove."
