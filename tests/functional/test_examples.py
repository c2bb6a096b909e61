"""The imagenet_resnet50 example builds end to end (with a random-init weights file: no network)."""

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
EXAMPLE = Path(__file__).resolve().parents[2] / "projects" / "imagenet_resnet50"


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
