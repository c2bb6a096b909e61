"""The package's layout is what docs/architecture.md says, and its imports flow one way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sqlinfer"


def modules() -> list[str]:
    return sorted(path.relative_to(REPO).as_posix() for path in PACKAGE.rglob("*.py"))


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_architecture_doc_lists_every_module_and_no_other() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    tree = doc.split("```text", 1)[1].split("```", 1)[0]
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([part for _, part in stack] + [name.rstrip("/")])
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
            listed.add(f"{path}/__init__.py")  # a package's line describes its __init__.py
        elif name.endswith(".py"):
            listed.add(path)
    assert sorted(listed - {"sqlinfer/resources/__init__.py"}) == modules()


def test_worker_side_imports_no_spark_at_import_time() -> None:
    # Spark is imported inside functions only (task context), so the worker runs without pyspark.
    for path in sorted((PACKAGE / "worker").glob("*.py")) + [PACKAGE / "models" / "network.py"]:
        top = imports_of(path, top_level_only=True)
        assert not {m for m in top if m.startswith(("pyspark", "py4j"))}, path


def test_models_never_import_the_worker_except_the_udf_body() -> None:
    for path in sorted((PACKAGE / "models").rglob("*.py")):
        worker = {m for m in imports_of(path) if m.startswith("sqlinfer.worker")}
        expected = {"sqlinfer.worker.score"} if path.name == "udf.py" else set()
        assert worker == expected, path


def test_lower_stages_import_no_higher_one() -> None:
    lower = {
        "errors.py": set(),
        "yamlfile.py": {"sqlinfer.errors"},
        "paths.py": {"sqlinfer.errors"},
        "models/declaration.py": {"sqlinfer.errors", "sqlinfer.yamlfile", "sqlinfer.models"},
        "build/config.py": {"sqlinfer.errors", "sqlinfer.yamlfile"},
        "build/templating.py": {"sqlinfer.errors"},
        "build/dag.py": {"sqlinfer.errors"},
    }
    for relative, allowed in lower.items():
        ours = {m for m in imports_of(PACKAGE / relative) if m.startswith("sqlinfer")}
        assert ours <= allowed, (relative, ours - allowed)
