"""How a binaryFile source's files become tasks (sqlinfer.build.sources.task_count) and the
`files_per_task` setting's checks. The partitions Spark really makes: tests/functional/test_file_tasks.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqlinfer.build.config import load_project_file
from sqlinfer.build.sources import MAX_FILES_PER_TASK, SMALL_TASK_BYTES, TASKS_PER_CORE, piece_files, task_count
from sqlinfer.errors import SqlinferError

MB = 1024 * 1024


@pytest.mark.parametrize(("files", "total_bytes", "cores", "expected"), [
    (1000, 46 * MB, 2, 2 * TASKS_PER_CORE),  # the bench's JPEGs: 4 tasks per core
    (1000, 10 * MB, 2, 4),  # thumbnails: tasks of at least SMALL_TASK_BYTES (4 MB), so 2 per core
    (1797, 1 * MB, 2, 2),  # digits: a small source, one task per core
    (100_000, 500 * MB, 2, 98),  # many small files: at most 1,024 a task
    (1000, 20_000 * MB, 2, 157),  # big files: at most maxPartitionBytes (128 MB) a task
    (3, 1000, 16, 3),  # never more tasks than files
    (40_000, 4000 * MB, 64, 64 * TASKS_PER_CORE),  # a cluster's cores
    (40_000, 40 * MB, 64, 64),  # small files on many cores: one task per core
])
def test_task_count(files: int, total_bytes: int, cores: int, expected: int) -> None:
    assert (MAX_FILES_PER_TASK, SMALL_TASK_BYTES) == (1024, 4 * MB)
    assert task_count(files, total_bytes, cores, 128 * MB) == expected


@pytest.mark.parametrize(("files", "tasks", "expected"), [
    (1000, 8, 3),  # the bench's JPEGs: 8 tasks of about 42 pieces of 3 files
    (1797, 2, 28),  # digits: 2 tasks of about 32 pieces
    (100, 8, 1),  # few files: a piece each
    (1_000_000, 977, 31),  # a million files at 1,024 a task: Spark's own pieces of about 32
])
def test_pieces_are_small_next_to_tasks(files: int, tasks: int, expected: int) -> None:
    assert piece_files(files, tasks) == expected


def _project(tmp_path: Path, source: str) -> Path:
    (tmp_path / "sqlinfer_project.yml").write_text(f"name: p\nsources:\n  images:\n{source}")
    return tmp_path


def test_files_per_task_is_read(tmp_path: Path) -> None:
    config, _ = load_project_file(_project(tmp_path, "    format: binaryFile\n    path: images\n"
                                                     "    files_per_task: 256\n"))
    assert config.sources["images"].files_per_task == 256


@pytest.mark.parametrize(("source", "line", "message"), [
    ("    format: parquet\n    path: scored\n    files_per_task: 256\n", 3,
     "`files_per_task` is for binaryFile sources (one row per file)"),
    ("    format: binaryFile\n    path: images\n    files_per_task: 0\n", 6, "greater than 0"),
])
def test_bad_files_per_task_names_the_line(tmp_path: Path, source: str, line: int, message: str) -> None:
    root = _project(tmp_path, source)
    with pytest.raises(SqlinferError) as info:
        load_project_file(root)
    assert str(info.value.path) == str(root / "sqlinfer_project.yml")
    assert info.value.line == line
    assert message in info.value.message
