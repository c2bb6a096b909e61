"""Hostile SQL templates (issue 11, item 8): every known way out of Jinja's sandbox is a
`sql.sandbox` TemplateError at the file and line of the expression, with real Jinja rendering of
real files; `var()` values with quotes, backslashes, `; DROP TABLE` or Spark's `${...}` render as
one SQL string literal that reads back as exactly the value (checked against Spark's own rules
for reading a literal, which are reproduced here: no Spark in unit tests).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from sqlinfer.build.manifest import NodeLoader
from sqlinfer.errors import TemplateError

pytestmark = pytest.mark.reliability


def loader(tmp_path: Path, files: dict[str, str], variables: dict | None = None,
           macros: dict[str, str] | None = None) -> NodeLoader:
    sql = tmp_path / "sql"
    for name, text in files.items():
        (sql / name).parent.mkdir(parents=True, exist_ok=True)
        (sql / name).write_text(textwrap.dedent(text))
    for name, text in (macros or {}).items():
        (tmp_path / "macros").mkdir(exist_ok=True)
        (tmp_path / "macros" / name).write_text(textwrap.dedent(text))
    return NodeLoader(sql, tmp_path / "macros", "db", ["images"], variables or {}, {"digits": "digits_predict"},
                      tmp_path / "seeds")


def render_error(tmp_path: Path, text: str, variables: dict | None = None) -> TemplateError:
    with pytest.raises(TemplateError) as info:
        loader(tmp_path, {"a.sql": text}, variables).load()
    return info.value


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__dict__ }}",
    "{{ ref.__globals__ }}",
    "{{ var.__self__.context.vars }}",
    "{{ is_incremental.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ cycler|attr('__init__') }}",
    # str.format reads attributes itself: the sandbox checks those too.
    "{{ '{0.__class__}'.format(this) }}",
    "{{ '{0.__init__.__globals__}'.format(cycler) }}",
    "{{ '{x.__class__}'.format_map({'x': this}) }}",
    "{{ '{0.raw.__class__}'.format(var('word')) }}",
    "{% set f = '{0.__class__}'.format %}{{ f(this) }}",  # a stored format method (CVE-2024-56326)
    "{{ '{0.__class__}'|attr('format')(this) }}",  # format through |attr (CVE-2025-27516)
    "{{ '%s'|format(''.__class__) }}",
    "{{ '%s' % ''.__class__ }}",
    # The immutable sandbox: a node cannot change values the nodes after it see.
    "{{ var('words').raw.append('x') }}",
    "{{ udfs.update({'digits': 'other'}) }}",
    "{{ udfs.pop('digits') }}",
]


@pytest.mark.parametrize("expression", ESCAPES)
def test_a_sandbox_escape_is_an_error_at_its_file_and_line(tmp_path: Path, expression: str) -> None:
    error = render_error(tmp_path, f"-- a node\nSELECT\n  {expression} AS x\nFROM t\n",
                         {"word": "w", "words": ["a", "b"]})
    assert (error.code, error.path, error.line) == ("sql.sandbox", str(tmp_path / "sql" / "a.sql"), 3)
    assert re.fullmatch(r"not allowed in templates: access to attribute '\w+' of '\w+' object is unsafe\.",
                        error.message), error.message
    assert str(error).startswith(f"{tmp_path / 'sql' / 'a.sql'}:3: not allowed in templates: ")


def test_an_escape_inside_a_macro_is_reported_in_the_macro_file(tmp_path: Path) -> None:
    nodes = loader(tmp_path, {"a.sql": "SELECT\n  {{ leak() }}\n"},
                   macros={"m.sql": "{% macro leak() %}\n  {{ ''.__class__.__mro__ }}\n{% endmacro %}\n"})
    with pytest.raises(TemplateError) as info:
        nodes.load()
    assert (info.value.code, info.value.path, info.value.line) == ("sql.sandbox", str(tmp_path / "macros" / "m.sql"), 2)


def test_the_jinja_helpers_left_work_and_lipsum_is_gone(tmp_path: Path) -> None:
    nodes = loader(tmp_path, {"a.sql": """\
        {%- set ns = namespace(total=0) -%}
        {%- for i in range(3) %}{% set ns.total = ns.total + i %}{% endfor -%}
        {%- set comma = joiner(', ') -%}
        SELECT {% for c in ['a', 'b'] %}{{ comma() }}{{ c }}{% endfor %}, {{ ns.total }}, {{ cycler('x').next() }}
        """}).load()
    assert nodes.nodes["a"].sql.strip() == "SELECT a, b, 3, x"
    error = render_error(tmp_path / "other", "SELECT\n{{ lipsum(1) }}\n")
    assert (error.code, error.line) == ("sql.undefined", 2)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "nope.sql"])
def test_an_include_outside_the_project_folders_is_an_error(tmp_path: Path, name: str) -> None:
    error = render_error(tmp_path, f"SELECT 1\n{{% include '{name}' %}}\n")
    assert (error.code, error.path, error.line) == ("sql.unknown_template", str(tmp_path / "sql" / "a.sql"), 2)
    assert error.message == f"no template {name!r} in the SQL or macros folder"


# --- var() values as literals ----------------------------------------------------------------------

# A Spark SQL string literal as Spark's lexer reads one: a quote, then characters other than a quote
# or a backslash, or a backslash and any character; then a quote.
SPARK_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'", re.S)
# Spark replaces these in the SQL text before parsing it (ConfigReader's pattern).
SPARK_VARIABLE = re.compile(r"\$\{(?:(\w+?):)?(\S+?)\}")


def spark_reads(literal: str) -> str:
    """The string Spark makes of one literal token (SparkParserUtils.unescapeSQLString: the escapes
    a backslash starts; `\\%` and `\\_` keep their backslash; any other character stands for itself)."""
    assert SPARK_LITERAL.fullmatch(literal), literal
    named = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}
    body, out, index = literal[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char != "\\" or index + 1 == len(body):
            out.append(char)
            index += 1
            continue
        following = body[index + 1]
        if following == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[index + 2:index + 6]):
            out.append(chr(int(body[index + 2:index + 6], 16)))
            index += 6
        elif re.fullmatch(r"[01][0-7][0-7]", body[index + 1:index + 4]):
            out.append(chr(int(body[index + 1:index + 4], 8)))
            index += 4
        else:
            out.append(named.get(following, following))
            index += 2
    return "".join(out)


HOSTILE_VALUES = [
    "it's",
    "x' OR '1'='1",
    "'; DROP TABLE x; --",
    "\\'; DROP TABLE x; --",  # a backslash to eat the escaping backslash
    "ends with a backslash \\",
    "\\\\'",
    "\\u0027); DROP TABLE x; --",  # Spark decodes \u escapes: it must stay text
    "\\047",  # and octal ones
    "50\\% off, a\\_b",
    "${spark.sql.warehouse.dir} ${env:HOME} ${system:user.name}",  # Spark's variable substitution
    "$${a}}",
    "-- not a comment /* nor this */",
    "line\nbreak\ttab",
    "é ✓ \u2028",
    "",
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_a_var_value_is_one_literal_that_reads_back_exactly(tmp_path: Path, value: str) -> None:
    manifest = loader(tmp_path, {"a.sql": "SELECT {{ var('v') }} AS v FROM t WHERE x = {{ var('v') }}\n"},
                      {"v": value}).load()
    sql = manifest.nodes["a"].sql
    found = re.fullmatch(r"SELECT (.*) AS v FROM t WHERE x = (.*)\n", sql, re.S)
    assert found, sql
    for literal in found.groups():
        assert SPARK_LITERAL.fullmatch(literal), literal  # one token: the value cannot close it early
        assert not SPARK_VARIABLE.search(literal)  # nothing for Spark to substitute
        assert spark_reads(literal) == value
    # Everything outside the two literals is the template's own text.
    assert SPARK_LITERAL.sub("L", sql) == "SELECT L AS v FROM t WHERE x = L\n"


@pytest.mark.parametrize(("value", "text"), [
    (float("nan"), "CAST('NaN' AS DOUBLE)"),
    (float("inf"), "CAST('Infinity' AS DOUBLE)"),
    (float("-inf"), "CAST('-Infinity' AS DOUBLE)"),
    (["a'b", 2, None, True], "'a\\'b', 2, NULL, TRUE"),
])
def test_values_that_are_not_strings_render_as_what_they_are(tmp_path: Path, value: object, text: str) -> None:
    manifest = loader(tmp_path, {"a.sql": "SELECT {{ var('v') }}\n"}, {"v": value}).load()
    assert manifest.nodes["a"].sql == f"SELECT {text}\n"
