"""The digits example end to end: held-out accuracy through SQL, SQL logits equal to the same
network run in plain PyTorch on the same PNG files, and the labels file equal to the labels the
project's source derives from the paths."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import digits_network, export_digits_onnx
from PIL import Image

from sqlinfer import Project

pytestmark = pytest.mark.spark


def test_digits_accuracy_on_the_test_split(spark, digits_copy: Path) -> None:
    Project.load(digits_copy).register(spark)
    accuracy = spark.sql("""
        SELECT avg(CAST(digits_predict(content).index = label AS DOUBLE)) AS accuracy, count(*) AS n
        FROM digits_images WHERE split = 'test'""").first()
    assert accuracy.n == 450
    assert accuracy.accuracy >= 0.95


def test_sql_logits_match_pytorch(spark, digits_copy: Path) -> None:
    # Logits through SQL: a second declaration of the same network with output: logits.
    models = yaml.safe_load((digits_copy / "models.yml").read_text())
    logits_decl = {**models["models"][0], "name": "digits_logits", "output": "logits"}
    models["models"].append(logits_decl)
    (digits_copy / "models.yml").write_text(yaml.safe_dump(models))
    Project.load(digits_copy).register(spark)
    rows = spark.sql("SELECT path, digits_logits_predict(content) AS logits FROM digits_images "
                     "WHERE split = 'test' ORDER BY path").collect()
    assert len(rows) == 450

    network = digits_network(digits_copy)
    files = [Path(r.path.removeprefix("file:")) for r in rows]
    pixels = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    with torch.inference_mode():
        expected = network((torch.from_numpy(pixels).float().div(255).unsqueeze(1) - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(np.array([r.logits for r in rows]), expected, atol=1e-4, rtol=0)


def test_onnx_export_predicts_what_the_pytorch_declaration_predicts(spark, digits_copy: Path) -> None:
    """The digits CNN exported to ONNX (flavor onnx) and as declared (flavor python), through SQL."""
    pytest.importorskip("onnxruntime")  # the `onnx` extra; the test extra installs it
    export_digits_onnx(digits_copy, digits_copy / "weights" / "digits_cnn.onnx")
    models = yaml.safe_load((digits_copy / "models.yml").read_text())
    python = {**models["models"][0], "name": "digits_logits", "output": "logits"}
    onnx = {**{k: v for k, v in python.items() if k not in ("class", "kwargs")}, "name": "digits_onnx",
            "flavor": "onnx", "weights": "weights/digits_cnn.onnx"}
    models["models"] += [python, onnx]
    (digits_copy / "models.yml").write_text(yaml.safe_dump(models))
    Project.load(digits_copy).register(spark)
    rows = spark.sql("SELECT digits_logits_predict(content) AS torch, digits_onnx_predict(content) AS onnx "
                     "FROM digits_images WHERE split = 'test'").collect()
    assert len(rows) == 450
    expected, got = np.array([r.torch for r in rows]), np.array([r.onnx for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_labels_file_agrees_with_the_labels_from_the_paths(spark, digits_copy: Path) -> None:
    Project.load(digits_copy).register(spark)
    with open(digits_copy / "data" / "labels.csv") as handle:
        from_file = {r["path"]: (int(r["label"]), r["split"]) for r in csv.DictReader(handle)}
    prefix = f"file:{digits_copy}/"
    from_paths = {r.path.removeprefix(prefix): (r.label, r.split)
                  for r in spark.sql("SELECT path, label, split FROM digits_images").collect()}
    assert len(from_file) == 1797
    assert from_paths == from_file
