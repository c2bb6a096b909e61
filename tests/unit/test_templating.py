"""Rendering SQL nodes (no Spark): dependencies with lines, quoting of vars, errors with locations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sqlinfer.build.manifest import NodeLoader
from sqlinfer.build.templating import SqlLiteral, literal
from sqlinfer.errors import SqlinferError


def loader(tmp_path: Path, files: dict[str, str], variables: dict | None = None) -> NodeLoader:
    sql = tmp_path / "sql"
    for name, text in files.items():
        path = sql / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return NodeLoader(sql, tmp_path / "macros", "db", ["images"], variables or {}, {"digits": "digits_predict"},
                      tmp_path / "seeds")


def test_refs_sources_config_and_order(tmp_path: Path) -> None:
    manifest = loader(tmp_path, {
        "a.sql": "{{ config(materialized='table') }}\n"
                 "SELECT path, {{ digits }}(content) AS p FROM {{ source('images') }}\n",
        "sub/b.sql": "{{ config(materialized='incremental', unique_key='path', partition_by='day') }}\n"
                     "SELECT * FROM {{ ref('a') }}\n",
        "c.sql": "SELECT count(*) FROM {{ ref('b') }} JOIN {{ ref('a') }}\n",
    }).load()
    assert [n.name for n in manifest.order()] == ["a", "b", "c"]
    a, b, c = (manifest.nodes[n] for n in "abc")
    assert a.sql == "\nSELECT path, digits_predict(content) AS p FROM `images`\n"
    assert a.udfs == {"digits_predict"} and b.udfs == set()
    assert b.config.materialized == "incremental" and b.config.unique_key == "path"
    assert b.config.partition_by == ("day",)
    assert b.sql.strip() == "SELECT * FROM `db`.`a`"
    assert c.config.materialized == "view"
    assert c.rendered.refs == {"b": 1, "a": 1}
    assert a.rendered.sources == {"images": 2}


@pytest.mark.parametrize(("value", "expected"), [
    ("x' OR '1'='1", "'x\\' OR \\'1\\'=\\'1'"),
    ("ends with \\", "'ends with \\\\'"),
    ("\\'", "'\\\\\\''"),  # a backslash then a quote: both escaped, the quote cannot close the literal
    ("", "''"),
    ("line\nbreak", "'line\nbreak'"),
    (3, "3"), (-7, "-7"), (2.5, "2.5"), (True, "TRUE"), (False, "FALSE"), (None, "NULL"),
    (["a", 1], "'a', 1"), (("it's", None), "'it\\'s', NULL"), ([], ""),
])
def test_literals_are_quoted(value: object, expected: str) -> None:
    assert literal(value) == expected


def test_sql_literal_renders_quoted_and_keeps_the_raw_value() -> None:
    value = SqlLiteral("it's")
    assert (str(value), value.__html__(), value.raw) == ("'it\\'s'", "'it\\'s'", "it's")


def test_var_default_and_raw(tmp_path: Path) -> None:
    manifest = loader(tmp_path, {"v.sql": "SELECT {{ var('a') }}, {{ var('b', 'd') }}, {{ var('t').raw }}\n"},
                      {"a": "it's", "t": "tbl"}).load()
    assert manifest.nodes["v"].sql.strip() == "SELECT 'it\\'s', 'd', tbl"


@pytest.mark.parametrize(("files", "code", "file", "line"), [
    ({"a.sql": "SELECT 1\n\n{{ ref('nope') }}\n"}, "sql.unknown_ref", "a.sql", 3),
    ({"a.sql": "SELECT *\nFROM {{ source('nope') }}\n"}, "sql.unknown_source", "a.sql", 2),
    ({"a.sql": "SELECT 1\n{% if %}\n"}, "sql.jinja_syntax", "a.sql", 2),
    ({"a.sql": "SELECT\n  {{ var('missing') }}\n"}, "sql.missing_var", "a.sql", 2),
    ({"a.sql": "SELECT\n\n  {{ nothing_here }}\n"}, "sql.undefined", "a.sql", 3),
    ({"a.sql": "{{ config(materialized='tabel') }}\n"}, "sql.bad_config", "a.sql", 1),
    ({"a.sql": "SELECT\n{{ ''.__class__.__mro__ }}\n"}, "sql.sandbox", "a.sql", 2),
    ({"a.sql": "SELECT * FROM {{ ref('b') }}\n", "b.sql": "SELECT *\nFROM {{ ref('c') }}\n",
      "c.sql": "-- c\n\nSELECT * FROM {{ ref('a') }}\n"}, "dag.cycle", "c.sql", 3),
])
def test_errors_name_file_and_line(tmp_path: Path, files: dict[str, str], code: str, file: str, line: int) -> None:
    with pytest.raises(SqlinferError) as info:
        loader(tmp_path, files).load()
    assert info.value.code == code
    assert info.value.path == str(tmp_path / "sql" / file)
    assert info.value.line == line


def test_cycle_message_names_the_cycle(tmp_path: Path) -> None:
    with pytest.raises(SqlinferError) as info:
        loader(tmp_path, {"a.sql": "SELECT * FROM {{ ref('b') }}", "b.sql": "SELECT * FROM {{ ref('a') }}"}).load()
    assert info.value.message == "dependency cycle: a -> b -> a"


def test_macros_are_shared(tmp_path: Path) -> None:
    (tmp_path / "macros").mkdir()
    (tmp_path / "macros" / "m.sql").write_text("{% macro top(col) %}{{ col }}[0].label{% endmacro %}")
    manifest = loader(tmp_path, {"a.sql": "SELECT {{ top('p') }} FROM {{ source('images') }}"}).load()
    assert manifest.nodes["a"].sql == "SELECT p[0].label FROM `images`"
