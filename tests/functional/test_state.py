"""State selection for CI (dbt's `--select state:modified+ --state PATH`), with real Spark: after
changing one SQL file, exactly that node and its descendants are built; after changing one model's
weights, exactly the nodes that call it and their descendants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import digits_declaration, own_database

from sqlinfer import Project, SqlinferError

pytestmark = pytest.mark.spark

SECOND_MODEL = digits_declaration("digits_b", weights="weights/digits_b.safetensors")


def _keep_state(root: Path, folder: Path) -> Path:
    """The manifest.json the last build wrote, kept where CI would keep the production one."""
    folder.mkdir(parents=True)
    shutil.copy(root / "target" / "manifest.json", folder / "manifest.json")
    return folder


def _built(spark, root: Path, state: Path) -> list[str]:
    result = Project.load(root).build(spark, select=("state:modified+",), state=state)
    assert result.success, [n.message for n in result.nodes]
    return [n.name for n in result.nodes]


def test_state_modified_builds_what_changed_and_everything_downstream(spark, digits_copy: Path,
                                                                      tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    own_database(digits_copy)
    shutil.copy(digits_copy / "weights" / "digits_cnn.safetensors", digits_copy / "weights" / "digits_b.safetensors")
    (digits_copy / "models.yml").write_text((digits_copy / "models.yml").read_text() + SECOND_MODEL)
    (digits_copy / "sql" / "by_b.sql").write_text(
        "{{ config(materialized='table') }}\nSELECT path, digits_b_predict(content).index AS pred\n"
        "FROM {{ source('digits_images') }} WHERE split = 'test'\n")
    assert Project.load(digits_copy).build(spark).success
    manifest = json.loads((digits_copy / "target" / "manifest.json").read_text())
    assert sorted(manifest["nodes"]) == ["accuracy", "by_b", "confusion_matrix", "digit_predictions",
                                         "digit_predictions_incremental"]
    assert list(manifest["nodes"]["by_b"]["models"]) == ["digits_b_predict"]
    first = _keep_state(digits_copy, tmp_path / "first")

    assert _built(spark, digits_copy, first) == []  # nothing changed: nothing to build

    accuracy = digits_copy / "sql" / "accuracy.sql"
    accuracy.write_text(accuracy.read_text() + "-- reviewed\n")
    assert _built(spark, digits_copy, first) == ["accuracy"]
    second = _keep_state(digits_copy, tmp_path / "second")

    predictions = digits_copy / "sql" / "digit_predictions.sql"
    predictions.write_text(predictions.read_text() + "WHERE path IS NOT NULL\n")  # same columns, other SQL
    assert _built(spark, digits_copy, second) == ["digit_predictions", "accuracy", "confusion_matrix"]
    third = _keep_state(digits_copy, tmp_path / "third")

    weights = digits_copy / "weights" / "digits_b.safetensors"
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in load_file(str(weights)).items()}, str(weights))
    assert _built(spark, digits_copy, third) == ["by_b"]


def test_state_modified_without_state_is_a_clear_error(spark, digits_copy: Path) -> None:
    with pytest.raises(SqlinferError) as info:
        Project.load(digits_copy).build(spark, select=("state:modified+",))
    assert info.value.code == "dag.no_state"
    assert str(info.value.message).startswith("--select state:modified+ needs --state PATH")
