"""The digits example switched to a real MLflow registry (a sqlite store in the project) with the
one line its README documents, built with real Spark: each table holds the predictions of the
version its model resolved to, moving the alias rebuilds exactly the table that follows it, and
a version's exported graph (flavor mlflow without a class) runs on the workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import log_digits_to_mlflow, own_database, own_nodes
from PIL import Image

from sqlinfer import Project

pytestmark = pytest.mark.spark
mlflow = pytest.importorskip("mlflow")  # the `mlflow` extra; the test extra installs it, so CI runs these

PINNED = """\
  - name: pinned
    flavor: python
    class: digits_net:DigitsCNN
    weights: models:/digits/1
    preprocess: {color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}
  - name: graph
    flavor: mlflow
    uri: models:/digits/1
    preprocess: {color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}
"""


def _labels(network: Any, project: Path, paths: list[str]) -> list[int]:
    """What plain PyTorch predicts for these PNG files (read as the declaration reads them)."""
    import torch

    pixels = np.stack([np.asarray(Image.open(project / p).convert("L"))[None] for p in paths])
    with torch.no_grad():
        return network(torch.from_numpy((pixels / 255.0 - 0.5) / 0.5).float()).argmax(1).tolist()


def test_moving_the_alias_rebuilds_exactly_the_table_that_follows_it(spark, digits_copy: Path) -> None:
    database = own_database(digits_copy)
    uri = f"sqlite:///{digits_copy / 'registry' / 'mlflow.db'}"  # what the project file's `mlflow:` names
    (digits_copy / "registry").mkdir()
    _, trained = log_digits_to_mlflow(digits_copy, uri, alias="champion")
    _, retrained = log_digits_to_mlflow(digits_copy, uri, seed=5)

    # The README's switch (in both declarations of the network), and a model pinned to version 1.
    switch = "    weights: models:/digits@champion"
    assert f"```yaml\n{switch}\n```" in (digits_copy / "README.md").read_text()
    models = (digits_copy / "models.yml").read_text()
    (digits_copy / "models.yml").write_text(models.replace("    weights: weights/digits_cnn.safetensors", switch)
                                            + PINNED)
    own_nodes(digits_copy)
    for name, function in (("by_champion", "digits_predict"), ("by_pinned", "pinned_predict")):
        (digits_copy / "sql" / f"{name}.sql").write_text(
            "{{ config(materialized='incremental', unique_key='path') }}\n"
            f"SELECT path, {function}(content).index AS pred FROM {{{{ source('digits_images') }}}}\n"
            "WHERE split = 'test'\n")

    def predictions(table: str) -> dict[str, int]:
        prefix = f"file:{digits_copy}/"
        return {r.path.removeprefix(prefix): r.pred for r in spark.table(f"{database}.{table}").collect()}

    first = {n.name: n for n in Project.load(digits_copy).build(spark).nodes}
    assert all(n.status == "success" for n in first.values()), [n.message for n in first.values()]
    champion, pinned = predictions("by_champion"), predictions("by_pinned")
    paths = sorted(champion)
    assert len(paths) == 450 and champion == pinned
    assert [champion[p] for p in paths] == _labels(trained, digits_copy, paths)

    mlflow.MlflowClient(uri).set_registered_model_alias("digits", "champion", "2")
    second = {n.name: n for n in Project.load(digits_copy).build(spark).nodes}
    assert second["by_champion"].action == "full refresh"
    assert "model function digits_predict changed" in second["by_champion"].message
    assert (second["by_champion"].rows, second["by_champion"].rows_scored) == (450, 450)
    assert second["by_pinned"].action == "appended"
    assert (second["by_pinned"].rows, second["by_pinned"].rows_scored) == (0, 0)
    retrained_labels = _labels(retrained, digits_copy, paths)
    assert [predictions("by_champion")[p] for p in paths] == retrained_labels
    assert predictions("by_pinned") == pinned
    assert retrained_labels != [pinned[p] for p in paths]  # the two versions do predict differently

    # Version 1's exported graph itself (flavor mlflow, no class) on the Spark workers.
    Project.load(digits_copy).register(spark)
    rows = spark.sql("SELECT path, graph_predict(content).index AS pred FROM digits_images WHERE split = 'test'")
    assert {r.path.removeprefix(f"file:{digits_copy}/"): r.pred for r in rows.collect()} == pinned
