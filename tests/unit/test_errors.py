"""The error codes: every code the package raises is in ``errors.CODES``, raised by the class CODES
names, and listed (with that class) in docs/errors.md; the ``path:line: message [code]`` form."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from sqlinfer import errors
from sqlinfer.errors import CODES, ConfigError, SqlinferError, TemplateError, closest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "sqlinfer"
CODE_SHAPE = re.compile(r"^[a-z]+\.[a-z_]+$")
PREFIXES = {code.split(".")[0] for code in CODES}
# Exceptions that carry a code but are not SqlinferErrors: what the package turns them into.
# (templating.py raises _RenderError(message, code) inside a render and re-raises it as
# TemplateError(code=exc.code).)
CARRIERS: dict[str, type[SqlinferError]] = {"_RenderError": TemplateError}


@dataclass(frozen=True)
class Raised:
    where: str  # file:line
    code: str
    cls: type[SqlinferError] | None  # None: a code literal whose raising class the scan cannot tell


def package_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "errors.py")


def error_classes(trees: dict[Path, ast.Module]) -> dict[str, type[SqlinferError]]:
    """Class name -> the errors.py class it is (or derives from), for errors.py's and the package's."""
    classes = {name: value for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, SqlinferError)}
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in classes:
                    base = next((classes[b.id] for b in node.bases if isinstance(b, ast.Name) and b.id in classes),
                                None)
                    if base is not None:
                        classes[node.name] = base
                        changed = True
    return classes


# File names that look like codes (a model folder's config.json), never raised as one.
FILE_NAMES = {"config.json"}


def is_code(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(CODE_SHAPE.match(node.value))
            and node.value.split(".")[0] in PREFIXES and node.value not in FILE_NAMES)


def scan() -> list[Raised]:
    """Every code literal in the package, with the class that raises it where the call says."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in package_files()}
    classes = error_classes(trees)
    found: list[Raised] = []
    for path, tree in trees.items():
        relative = path.relative_to(REPO)
        enclosing: dict[ast.AST, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for child in ast.walk(node):
                    enclosing.setdefault(child, node.name)
        claimed: set[int] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            literal = next((k.value for k in node.keywords if k.arg == "code" and is_code(k.value)), None)
            func = node.func
            cls: type[SqlinferError] | None = None
            if isinstance(func, ast.Name) and func.id in CARRIERS:
                literal = next((a for a in node.args if is_code(a)), literal)
                cls = CARRIERS[func.id]
            elif isinstance(func, ast.Name):
                cls = classes.get(func.id)
            elif isinstance(func, ast.Attribute) and func.attr == "error":
                cls = ConfigError  # Located.error (test_only_located_has_an_error_method)
            elif (isinstance(func, ast.Attribute) and func.attr == "__init__" and isinstance(func.value, ast.Call)
                  and isinstance(func.value.func, ast.Name) and func.value.func.id == "super"):
                cls = classes.get(enclosing.get(node, ""))
            if isinstance(literal, ast.Constant):
                claimed.add(id(literal))
                found.append(Raised(f"{relative}:{literal.lineno}", literal.value, cls))
        for node in ast.walk(tree):
            if is_code(node) and id(node) not in claimed:
                found.append(Raised(f"{relative}:{node.lineno}", node.value, None))  # type: ignore[attr-defined]
    return found


RAISED = scan()


def test_the_scan_finds_the_package_codes() -> None:
    # The scan itself: a handful of codes raised in well-known places, with their classes.
    found = {(r.where.split(":")[0], r.code, r.cls) for r in RAISED}
    assert ("sqlinfer/build/dag.py", "dag.cycle", TemplateError) in found
    assert ("sqlinfer/build/templating.py", "sql.missing_var", TemplateError) in found
    assert all(r.where.split(":")[1].isdigit() for r in RAISED)  # each with its line
    assert {r.cls for r in RAISED if r.code == "metastore.locked"} == {errors.SessionError}
    assert len({r.code for r in RAISED}) >= 40


def test_every_code_the_package_uses_is_in_codes() -> None:
    unknown = sorted(f"{r.where}: {r.code}" for r in RAISED if r.code not in CODES)
    assert unknown == []


def test_every_code_is_raised_by_the_class_codes_names() -> None:
    wrong = sorted(f"{r.where}: {r.code} raised as {r.cls.__name__}, CODES says {CODES[r.code][0].__name__}"
                   for r in RAISED if r.cls is not None and r.code in CODES and not issubclass(r.cls, CODES[r.code][0]))
    assert wrong == []


def test_only_located_has_an_error_method() -> None:
    # The scan takes every `x.error(..., code=...)` for Located.error, which makes a ConfigError.
    from sqlinfer.models.declaration import Located

    defined = sorted(f"{path.relative_to(REPO)}:{node.lineno}" for path in package_files()
                     for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)
                     and node.name == "error")
    assert defined == [f"sqlinfer/models/declaration.py:{Located.error.__code__.co_firstlineno}"]
    assert Located.error.__annotations__["return"] == "ConfigError"


def test_every_code_in_codes_is_used_by_the_package() -> None:
    assert sorted(set(CODES) - {r.code for r in RAISED}) == []


def test_every_code_has_what_to_do() -> None:
    assert [code for code, (_cls, todo) in CODES.items() if len(todo) < 20 or not todo.endswith((".", ")"))] == []


DOC = REPO / "docs" / "errors.md"


def doc_rows() -> dict[str, str]:
    """code -> class name, from docs/errors.md's table rows ``| `code` | `Class` | what to do |``."""
    rows = re.findall(r"^\| `([a-z]+\.[a-z_]+)` \| `(\w+)` \|", DOC.read_text(), re.M)
    return dict(rows)


def test_docs_errors_lists_every_code_with_its_class() -> None:
    assert DOC.is_file(), "docs/errors.md is missing"
    documented = doc_rows()
    assert {code: cls.__name__ for code, (cls, _todo) in CODES.items()} == documented


@pytest.mark.parametrize(("error", "text"), [
    (ConfigError("bad value", code="config.invalid_value", path="/p/models.yml", line=7),
     "/p/models.yml:7: bad value [config.invalid_value]"),
    (ConfigError("no such file", code="config.missing_file", path="/p/labels.txt"),
     "/p/labels.txt: no such file [config.missing_file]"),
    (errors.CommandError("bad --output", code="cli.bad_output"), "bad --output [cli.bad_output]"),
])
def test_str_is_path_line_message_code(error: SqlinferError, text: str) -> None:
    assert str(error) == text


@pytest.mark.parametrize(("word", "choices", "hint"), [
    ("archtecture", ["name", "architecture", "weights"], " (did you mean 'architecture'?)"),
    ("digits_predcit", ["digits_predict", "other_predict"], " (did you mean 'digits_predict'?)"),
    ("zzz", ["name", "architecture"], ""),
    ("name", [], ""),
])
def test_closest_suggests_only_a_close_word(word: str, choices: list[str], hint: str) -> None:
    assert closest(word, choices) == hint
