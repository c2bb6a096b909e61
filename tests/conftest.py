"""Shared fixtures: one real `local[2]` SparkSession for the whole run, real images, real weights."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "projects" / "digits"


@pytest.fixture(scope="session")
def spark_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spark_target")


@pytest.fixture(scope="session")
def spark(spark_target: Path) -> Iterator:
    """The functional tests' SparkSession: local[2], Hive metastore and warehouse in a temp folder."""
    from sqlinfer.runtime.session import build_session

    session = build_session(spark_target, "local[2]", {
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4",
    })
    yield session
    session.stop()


@pytest.fixture()
def digits_copy(tmp_path: Path) -> Path:
    """A private copy of the digits example (its target/ left behind)."""
    dest = tmp_path / "digits"
    shutil.copytree(DIGITS, dest, ignore=shutil.ignore_patterns("target", "__pycache__"))
    return dest
