"""A binaryFile source's tasks, as Spark makes them (issue 15, item 2): equal numbers of files per
task, several tasks per core (one for a small source), `files_per_task` per source."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_project

from sqlinfer import Project
from sqlinfer.build.sources import TASKS_PER_CORE

pytestmark = pytest.mark.spark

DIGITS_FILES = 1797


def rows_per_task(spark, view: str) -> list[int]:
    from pyspark.sql import functions as F

    counts = spark.table(view).groupBy(F.spark_partition_id().alias("task")).count().collect()
    return sorted(row["count"] for row in counts)


def test_a_small_source_makes_one_task_per_core(spark, digits_copy: Path) -> None:
    Project.load(digits_copy).register_sources(spark, ["digits_images"])
    counts = rows_per_task(spark, "digits_images")
    assert len(counts) == spark.sparkContext.defaultParallelism == 2  # 0.3 MB of PNGs
    assert sum(counts) == DIGITS_FILES
    # Spark's pieces are at most 32 small files; the tasks differ by at most one piece.
    assert max(counts) - min(counts) <= 32, counts


def test_larger_files_make_equal_tasks_several_per_core(spark, tmp_path: Path) -> None:
    """512 files of 64 KB (32 MB): 4 tasks per core, as for the bench's 1,000 JPEGs (46 MB)."""
    root = write_project(tmp_path / "blobs", "models: []\n",
                         "name: blobs\nsources:\n  blobs: {format: binaryFile, path: data}\n")
    (root / "data").mkdir()
    for index in range(512):
        (root / "data" / f"{index:03d}.bin").write_bytes(bytes([index % 251]) * 65536)
    Project.load(root).register_sources(spark, ["blobs"])
    counts = rows_per_task(spark, "blobs")
    assert len(counts) == spark.sparkContext.defaultParallelism * TASKS_PER_CORE == 8
    assert sum(counts) == 512
    assert max(counts) - min(counts) <= 32, counts


def test_files_per_task_is_the_sources_own(spark, digits_copy: Path) -> None:
    project_file = digits_copy / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text().replace("    recursive: true\n",
                                                             "    recursive: true\n    files_per_task: 300\n", 1))
    project = Project.load(digits_copy)
    assert project.config.sources["digits_images"].files_per_task == 300
    project.register_sources(spark, ["digits_images"])
    counts = rows_per_task(spark, "digits_images")
    assert len(counts) == 6  # ceil(1797 / 300)
    assert sum(counts) == DIGITS_FILES
    assert all(256 <= c <= 352 for c in counts), counts  # 300 within a piece of 32
