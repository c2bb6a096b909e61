"""A binaryFile source's tasks, as Spark makes them (issue 15, item 2): equal numbers of files per
task, several tasks per core (one for a small source), `files_per_task` per source."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_project

from sqlinfer import Project
from sqlinfer.build.sources import TASKS_PER_CORE, piece_files

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
    # The scan's pieces are of piece_files small files; the tasks differ by at most one piece.
    assert max(counts) - min(counts) <= piece_files(DIGITS_FILES, 2) == 28, counts


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
    assert max(counts) - min(counts) <= piece_files(512, 8) == 2, counts


def test_files_that_do_not_fill_spark_pieces_still_make_equal_tasks(spark, tmp_path: Path) -> None:
    """1,000 files, as the bench's JPEGs: Spark's own pieces of 32 small files made tasks of 256,
    256, 256 and 232 rows here (7 x 128 and 104 for the bench, where one of 2 cores worked alone
    on the last 24 rows). The source's scan makes pieces of piece_files files instead, in a
    session of its own: the session the project's queries run in keeps its open cost."""
    root = write_project(tmp_path / "thousand", "models: []\n",
                         "name: thousand\nsources:\n  blobs: {format: binaryFile, path: data}\n")
    (root / "data").mkdir()
    for index in range(1000):
        (root / "data" / f"{index:04d}.bin").write_bytes(bytes([index % 251]) * 16384)
    before = spark.conf.get("spark.sql.files.openCostInBytes")
    Project.load(root).register_sources(spark, ["blobs"])
    counts = rows_per_task(spark, "blobs")
    assert len(counts) == 4 and sum(counts) == 1000  # 16 MB of files: 2 tasks per core
    assert max(counts) - min(counts) <= piece_files(1000, 4) == 7, counts
    assert spark.conf.get("spark.sql.files.openCostInBytes") == before


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
    assert all(300 - 9 <= c <= 300 + 9 for c in counts), counts  # 300 within a piece of 9 files
    assert piece_files(DIGITS_FILES, 6) == 9
