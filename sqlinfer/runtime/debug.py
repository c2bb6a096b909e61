"""`sqlinfer debug`: what the commands need, checked one by one without starting Spark (dbt's
`debug`): Java, PySpark, torch and torchvision (they must import together), CUDA devices, the
optional extras, the project (its files, models and SQL), and whether another process holds the
project's embedded metastore (a running `serve` or `build` keeps it locked).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sqlinfer.errors import SqlinferError

MIN_JAVA = 17  # Spark 4 runs on Java 17 and 21
EXTRAS = {"onnxruntime": "onnx", "transformers": "text", "mlflow": "mlflow", "pyhive": "client"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def java() -> Check:
    from sqlinfer.runtime.jvm_cache import java_path

    found = java_path()
    if found is None:
        return Check("java", False, "not found: install Java 17 or 21, or set JAVA_HOME")
    try:
        probe = subprocess.run([str(found), "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("java", False, f"{found} does not run: {exc}")
    first = (probe.stderr or probe.stdout).strip().splitlines()[0] if (probe.stderr or probe.stdout).strip() else ""
    number = re.search(r'version "(\d+)', first)
    if probe.returncode != 0 or number is None:
        return Check("java", False, f"{found} -version failed: {first or probe.returncode}")
    ok = int(number.group(1)) >= MIN_JAVA
    return Check("java", ok, f"{first} ({found})" + ("" if ok else f": Spark needs Java {MIN_JAVA} or later"))


def libraries() -> Iterator[Check]:
    yield Check("pyspark", _version("pyspark") is not None, _version("pyspark") or "not installed")
    try:
        import torch
        import torchvision

        yield Check("torch", True, f"{torch.__version__}, torchvision {torchvision.__version__}")
    except Exception as exc:  # e.g. a torchvision built for another torch: operator torchvision::nms does not exist
        yield Check("torch", False, f"torch and torchvision do not import together: {str(exc).splitlines()[0]}")
        return
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        yield Check("cuda", True, f"{torch.cuda.device_count()} device(s): {names}")
    else:
        yield Check("cuda", True, "no CUDA device: models run on the CPU")
    shown = [f"{name} {_version(name)} [{extra}]" if _version(name) else f"{name} - (pip install 'sqlinfer[{extra}]')"
             for name, extra in EXTRAS.items()]
    yield Check("extras", True, ", ".join(shown))


def metastore(target: Path) -> Check:
    """Whether another process has the project's embedded metastore open now."""
    from sqlinfer.runtime.metastore import metastore_holder

    folder = target / "metastore_db"
    if not folder.is_dir():
        return Check("metastore", True, f"{folder} not created yet (the first command creates it)")
    holder = metastore_holder(folder)
    if holder is not None:
        return Check("metastore", False, f"{folder} is in use by {holder}: commands on this project wait for "
                                         "it to end (Derby lets one process open it)")
    return Check("metastore", True, f"{folder}: free")


def project(path: Path) -> tuple[Check, Path | None]:
    """The project loads, its models resolve and its SQL renders; returns its target folder too."""
    from sqlinfer.project import Project

    try:
        loaded = Project.load(path)
        models = loaded.resolve_models()
        nodes = loaded.nodes().load().nodes
    except SqlinferError as exc:
        return Check("project", False, str(exc)), None
    return Check("project", True, f"{loaded.root}: {len(models)} model(s), {len(nodes)} node(s), "
                                  f"{len(loaded.config.sources)} source(s)"), loaded.target


def run(path: Path) -> list[Check]:
    checks = [Check("python", True, f"{sys.version.split()[0]} ({sys.executable}), sqlinfer {_version('sqlinfer')}"),
              java(), *libraries()]
    found, target = project(path)
    checks.append(found)
    if target is not None:
        checks.append(metastore(target))
    return checks
