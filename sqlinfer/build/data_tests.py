"""Data tests (dbt's): generic tests declared for a node and its columns in the SQL folder's YAML
files (``sql/schema.yml``: ``nodes`` (or dbt's ``models``) -> ``columns`` -> ``tests``), and
singular tests, SQL files in the project's ``tests/`` folder that select failing rows.

Every test becomes one query for its failing rows and, for the tests that allow some, one for how
many are allowed; running them is the runner's job. A test fails when it finds more failing rows
than allowed; with ``severity: warn`` (``config: {severity: warn}`` as in dbt) that is reported
and nothing else.

The generic tests: ``not_null``, ``unique``, ``accepted_values`` (``values``), ``relationships``
(``to: ref('node')``, ``field``), ``expression`` (a SQL boolean every row must satisfy), and the
model-aware ones: ``probabilities_sum_to_one`` (an ``array<float>`` column, ``tolerance``),
``label_in_vocabulary`` (the labels of ``model``, default: the one model the node calls),
``max_null_fraction`` (``max``: bad rows give NULL) and ``accuracy_at_least`` (``min`` against
the ``label`` column).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlinfer.build.templating import SEVERITIES, Rendered, literal
from sqlinfer.errors import ConfigError, closest
from sqlinfer.yamlfile import IDENTIFIER, LineDict, LineList, load_yaml

# Each generic test's arguments: required, then optional.
ARGUMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "not_null": ((), ()),
    "unique": ((), ()),
    "accepted_values": (("values",), ()),
    "relationships": (("to", "field"), ()),
    "expression": (("expression",), ()),
    "probabilities_sum_to_one": ((), ("tolerance",)),
    "label_in_vocabulary": ((), ("model",)),
    "max_null_fraction": (("max",), ()),
    "accuracy_at_least": (("label", "min"), ()),
}
NODE_LEVEL = {"expression"}  # tests that may be declared for a whole node, not only a column
_REF = re.compile(r"""^\s*ref\(\s*['"]([A-Za-z_][A-Za-z0-9_]*)['"]\s*\)\s*$""")


@dataclass(frozen=True)
class DataTest:
    """One test, ready to run: ``failing_sql`` selects the rows that fail, ``allowed_sql`` (when
    some may) selects how many may."""

    name: str  # e.g. not_null(digit_predictions.path)
    node: str | None  # the node it tests; None for a singular test
    severity: str
    failing_sql: str
    path: Path  # where it is declared
    line: int | None
    allowed_sql: str | None = None
    refs: frozenset[str] = field(default_factory=frozenset)  # other nodes it reads (relationships, singular)


@dataclass
class TestResult:
    """What a test found; ``status``: pass, fail (error severity), warn, error (it could not run), or
    skip (another node it reads has no table yet)."""

    name: str
    node: str | None
    severity: str
    status: str
    failures: int = 0
    allowed: int = 0
    sample: list[dict[str, str]] = field(default_factory=list)  # a few failing rows, as text
    message: str = ""
    path: str = ""
    line: int | None = None


def _column(name: str) -> str:
    """A column as SQL: a plain name is quoted; anything else (``pred.label``) is an expression."""
    return f"`{name}`" if IDENTIFIER.match(name) else name


@dataclass(frozen=True)
class Context:
    """What building a generic test's SQL needs from the project."""

    relation: Callable[[str], str]  # a node's relation, as ref() renders it
    nodes: frozenset[str]
    node_models: Mapping[str, tuple[str, ...]]  # node -> names of the models it calls
    labels: Mapping[str, tuple[str, ...] | None]  # model name -> its class names


def _target(args: Mapping[str, Any]) -> str:
    """The node a ``relationships`` test's ``to:`` names (``ref('node')``, as dbt writes it, or ``node``)."""
    found = _REF.match(str(args["to"]))
    return found.group(1) if found else str(args["to"])


Complaint = Callable[[str], ConfigError]  # a message -> the error at the test's declaration


def _generic_sql(kind: str, args: Mapping[str, Any], node: str, column: str | None, ctx: Context,
                 where: Complaint) -> tuple[str, str | None]:
    """(failing rows, allowed count or None) for one generic test."""
    table = ctx.relation(node)
    col = _column(column) if column is not None else None
    if kind == "not_null":
        return f"SELECT * FROM {table} WHERE {col} IS NULL", None
    if kind == "unique":
        return (f"SELECT {col} AS value, count(*) AS n FROM {table} WHERE {col} IS NOT NULL GROUP BY {col} "
                "HAVING count(*) > 1"), None
    if kind == "accepted_values":
        values = args["values"]
        if not isinstance(values, list) or not values:
            raise where("accepted_values needs `values`: a list")
        listed = ", ".join(map(literal, values))
        return f"SELECT * FROM {table} WHERE {col} IS NOT NULL AND {col} NOT IN ({listed})", None
    if kind == "relationships":
        other = _target(args)
        if other not in ctx.nodes:
            raise where(f"relationships: to {args['to']!r} names no node or seed{closest(other, ctx.nodes)}")
        return (f"SELECT t.* FROM {table} AS t LEFT ANTI JOIN {ctx.relation(other)} AS o "
                f"ON t.{col} = o.{_column(str(args['field']))} WHERE t.{col} IS NOT NULL"), None
    if kind == "expression":
        return f"SELECT * FROM {table} WHERE NOT coalesce(({args['expression']}), false)", None
    if kind == "probabilities_sum_to_one":
        tolerance = float(args.get("tolerance", 1e-4))
        return (f"SELECT * FROM {table} WHERE {col} IS NOT NULL AND "
                f"abs(aggregate({col}, CAST(0 AS DOUBLE), (acc, x) -> acc + x) - 1) > {tolerance!r}"), None
    if kind == "label_in_vocabulary":
        called = ctx.node_models.get(node, ())
        # Without `model:` the vocabulary is that of the one called model that declares labels.
        labelled = [name for name in called if ctx.labels.get(name)]
        model = args.get("model") or (labelled[0] if len(labelled) == 1 else None)
        if model is None or model not in ctx.labels:
            raise where(f"label_in_vocabulary: give `model:` (the node calls {', '.join(called) or 'no model'})")
        labels = ctx.labels[model]
        if not labels:
            raise where(f"label_in_vocabulary: model {model!r} has no labels")
        return (f"SELECT * FROM {table} WHERE {col} IS NOT NULL AND "
                f"{col} NOT IN ({', '.join(map(literal, labels))})"), None
    if kind == "max_null_fraction":
        return (f"SELECT * FROM {table} WHERE {col} IS NULL",
                f"SELECT CAST(floor({float(args['max'])!r} * count(*)) AS BIGINT) FROM {table}")
    assert kind == "accuracy_at_least"
    label = _column(str(args["label"]))
    return (f"SELECT * FROM {table} WHERE NOT ({col} <=> {label})",
            f"SELECT CAST(floor({1 - float(args['min'])!r} * count(*)) AS BIGINT) FROM {table}")


def _entries(holder: LineDict, path: Path) -> list[tuple[str, dict[str, Any], int | None]]:
    """The ``tests:`` list of a node or column entry as (name, arguments, line)."""
    value = holder.get("tests") or holder.get("data_tests") or LineList()

    def bad(message: str) -> ConfigError:
        return ConfigError(message, code="test.bad_declaration", path=path, line=holder.line_of("tests"))

    if not isinstance(value, LineList):
        raise bad("`tests` must be a list")
    out: list[tuple[str, dict[str, Any], int | None]] = []
    for item, line in zip(value, getattr(value, "item_lines", []), strict=True):
        if isinstance(item, str):
            out.append((item, {}, line))
        elif isinstance(item, LineDict) and len(item) == 1:
            ((name, args),) = item.items()
            if args is not None and not isinstance(args, dict):
                raise bad(f"test {name!r}: its arguments must be a mapping")
            out.append((str(name), dict(args or {}), line))
        else:
            raise bad("a test is a name (`- not_null`) or a name with its arguments "
                      "(`- accepted_values: {values: [...]}`)")
    return out


def _test(kind: str, args: dict[str, Any], node: str, column: str | None, ctx: Context, path: Path,
          line: int | None) -> DataTest:
    def where(message: str) -> ConfigError:
        return ConfigError(message, code="test.bad_declaration", path=path, line=line)

    if kind not in ARGUMENTS:
        raise where(f"unknown test {kind!r}{closest(kind, ARGUMENTS)} (tests: {', '.join(ARGUMENTS)})")
    config = args.pop("config", None) or {}
    severity = str(args.pop("severity", config.get("severity", "error"))).lower()
    if severity not in SEVERITIES:
        raise where(f"severity must be error or warn, not {severity!r}")
    required, optional = ARGUMENTS[kind]
    missing = [a for a in required if a not in args]
    unknown = [a for a in args if a not in required + optional]
    if missing:
        raise where(f"test {kind} needs {', '.join(missing)}")
    if unknown:
        raise where(f"test {kind} takes no {', '.join(unknown)} (it takes {', '.join(required + optional) or 'none'})")
    if column is None and kind not in NODE_LEVEL:
        raise where(f"test {kind} applies to a column: declare it under `columns:`")
    try:
        failing, allowed = _generic_sql(kind, args, node, column, ctx, where)
    except (TypeError, ValueError) as exc:  # e.g. `min: high`
        raise where(f"test {kind}: a bad argument ({exc})") from None
    name = f"{kind}({node}{'.' + column if column else ''})"
    refs = frozenset({_target(args)}) if kind == "relationships" else frozenset()
    return DataTest(name, node, severity, failing, path, line, allowed, refs)


def load_declared(yaml_files: list[Path], ctx: Context) -> list[DataTest]:
    """The generic tests of the SQL folder's YAML files (``nodes:`` or dbt's ``models:``)."""
    tests: list[DataTest] = []
    for path in yaml_files:
        data = load_yaml(path)
        if data is None:
            continue
        key = "nodes" if isinstance(data, LineDict) and "nodes" in data else "models"
        entries = data.get(key) if isinstance(data, LineDict) else None
        if not isinstance(entries, LineList):
            continue  # not a properties file (dbt's `version:`-only files and others are left alone)
        for entry, line in zip(entries, entries.item_lines, strict=True):
            if not isinstance(entry, LineDict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"each entry of `{key}` needs `name:` (a node)", code="test.bad_declaration",
                                  path=path, line=line)
            node = entry["name"]
            if node not in ctx.nodes:
                raise ConfigError(f"`{node}` is no node or seed of the project{closest(node, ctx.nodes)}",
                                  code="test.bad_declaration", path=path, line=entry.line_of("name"))
            for kind, args, at in _entries(entry, path):
                tests.append(_test(kind, args, node, None, ctx, path, at))
            for column in entry.get("columns") or []:
                if not isinstance(column, LineDict) or not isinstance(column.get("name"), str):
                    raise ConfigError("each column needs `name:`", code="test.bad_declaration", path=path,
                                      line=getattr(column, "line", line))
                for kind, args, at in _entries(column, path):
                    tests.append(_test(kind, args, node, column["name"], ctx, path, at))
    return tests


def load_singular(tests_dir: Path, render: Callable[[Path], Rendered]) -> list[DataTest]:
    """The SQL files of the tests folder: each selects failing rows (``render`` renders one with
    the project's Jinja: ref, source, var; ``config(severity='warn')`` makes it a warning)."""
    tests = []
    for path in sorted(tests_dir.rglob("*.sql")) if tests_dir.is_dir() else []:
        rendered = render(path)
        tests.append(DataTest(path.stem, None, rendered.config.severity, rendered.sql.strip().rstrip(";"), path,
                              None, refs=frozenset(rendered.refs)))
    return tests
