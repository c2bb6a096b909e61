"""The unit tests' guard: no Java. Every unit test runs with ``JAVA_HOME`` and ``PATH`` pointing at a
``java`` that only records that it was started; a test that starts a JVM (in this process or a
subprocess, through pyspark or directly) fails, whatever the machine has installed."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKE_JAVA = """#!/bin/sh
echo "$0 $*" >> "{marker}"
echo "unit tests must not start Java" >&2
exit 1
"""


@pytest.fixture(scope="session")
def fake_java_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("no_java")
    (home / "bin").mkdir()
    marker = home / "started"
    for tool in ("java", "javac", "jar", "keytool"):
        script = home / "bin" / tool
        script.write_text(FAKE_JAVA.format(marker=marker))
        script.chmod(0o755)
    return home


def _gateway() -> object:
    context = sys.modules.get("pyspark.core.context") or sys.modules.get("pyspark.context")
    return getattr(getattr(context, "SparkContext", None), "_gateway", None)


@pytest.fixture(autouse=True)
def no_java(fake_java_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    marker = fake_java_home / "started"
    monkeypatch.setenv("JAVA_HOME", str(fake_java_home))
    monkeypatch.setenv("PATH", f"{fake_java_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    gateway_before = _gateway()
    yield
    started = marker.read_text() if marker.exists() else ""
    marker.unlink(missing_ok=True)
    assert started == "", f"a unit test started Java: {started}"
    assert _gateway() is gateway_before, "a unit test started pyspark's JVM gateway"


@pytest.fixture()
def digits_models(tmp_path: Path) -> Path:
    """A copy of the digits example without its images: what commands that stop before reading data
    (`models`, the checks of `serve`) need, copied in a moment."""
    import shutil

    digits = Path(__file__).resolve().parents[2] / "projects" / "digits"
    dest = tmp_path / "digits"
    shutil.copytree(digits, dest, ignore=shutil.ignore_patterns("target", "__pycache__", "data", "scripts"))
    return dest
