"""Hostile YAML (issue 11, item 7): a Python tag in models.yml or sqlinfer_project.yml is an error
at its file and line and constructs nothing; a "billion laughs" alias bomb is refused in
milliseconds and a few megabytes, where before it loaded (as shared values) and then took
exponential time and memory in whatever walked it (rendering a `var()`, a model's fingerprint).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import write_project

from sqlinfer import Project, SqlinferError
from sqlinfer.yamlfile import MAX_ALIAS_VALUES, LineDict, load_yaml

pytestmark = pytest.mark.reliability

MODELS = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: squeezenet1_1
    weights: random
    preprocess: {resize: 40, crop: 32}
"""

# Each would run `touch MARKER` (or import and call something) if a non-safe loader built it.
TAGS = [
    '!!python/object/apply:os.system ["touch MARKER"]',
    '!!python/object/new:os.system ["touch MARKER"]',
    '!!python/object/apply:subprocess.check_call [["touch", "MARKER"]]',
    "!!python/name:os.system",
    "!!python/module:os",
]


def marker_text(tag: str, marker: Path) -> str:
    return tag.replace("MARKER", str(marker))


@pytest.mark.parametrize("tag", TAGS)
def test_a_python_tag_in_models_yml_is_refused_at_its_line_and_runs_nothing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "ran"
    root = write_project(tmp_path / "p", MODELS.replace("weights: random", f"weights: {marker_text(tag, marker)}"))
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert not marker.exists()
    error = info.value
    assert (error.code, error.path, error.line) == ("config.yaml_syntax", str(root / "models.yml"), 5)
    short = tag.split(" ")[0]
    assert error.message == (f"invalid YAML: the tag {short} is not allowed (only plain YAML values are read, "
                             "never Python objects)")


@pytest.mark.parametrize("tag", TAGS[:1])
def test_a_python_tag_in_the_project_file_is_refused_at_its_line_and_runs_nothing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "ran"
    project_yml = f"name: p\nvars:\n  day: monday\n  where: {marker_text(tag, marker)}\n"
    root = write_project(tmp_path / "p", MODELS, project_yml)
    with pytest.raises(SqlinferError) as info:
        Project.load(root)
    assert not marker.exists()
    assert (info.value.code, info.value.path, info.value.line) == ("config.yaml_syntax",
                                                                   str(root / "sqlinfer_project.yml"), 4)

    # The same text, loaded the unsafe way, does run the command: the refusal is what stopped it.
    yaml.load((root / "sqlinfer_project.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert marker.exists()


def laughs(levels: int, indent: str = "") -> str:
    """The "billion laughs": each level a list of 9 aliases to the level before (9**levels values)."""
    names = "abcdefghijklmnop"
    lines = [f'{indent}{names[0]}: &{names[0]} ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"{indent}{names[level]}: &{names[level]} [" + ", ".join([f"*{names[level - 1]}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# Loads a project in a fresh Python and reports the error, the seconds it took and how much the
# process's peak memory grew. The address space is capped, so a regression fails this test with a
# MemoryError rather than taking the machine's memory.
MEASURE = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from sqlinfer import Project, SqlinferError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    project = Project.load(sys.argv[1])
    outcome = {"code": None}
    if sys.argv[2] == "render":  # what took the time and memory before: walking the values
        project.nodes().load()
except SqlinferError as exc:
    outcome = {"code": exc.code, "path": exc.path, "line": exc.line, "message": exc.message}
outcome["seconds"] = time.perf_counter() - start
outcome["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(outcome))
"""


def measure(root: Path, then: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root), then], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("where", ["models.yml", "sqlinfer_project.yml"])
def test_a_billion_laughs_is_refused_fast_and_small(tmp_path: Path, where: str) -> None:
    bomb = laughs(9, indent="  ")
    if where == "models.yml":
        # Under `kwargs:`, which is handed to the network's constructor and into its fingerprint.
        root = write_project(tmp_path / "p", MODELS + "    kwargs:\n" + textwrap.indent(bomb, "    "))
        first = 8
    else:
        root = write_project(tmp_path / "p", MODELS, "name: p\nvars:\n" + bomb)
        first = 3
        (root / "sql").mkdir()
        (root / "sql" / "a.sql").write_text("SELECT {{ var('i') }}\n")
    result = measure(root, "render")
    assert result["code"] == "config.yaml_too_large", result
    assert result["path"] == str(root / where)
    # Refused at the first level whose aliases pass the limit: 9 * (9**5 + ...) values at level f.
    assert result["line"] == first + 5
    assert result["message"] == (f"aliases (*name) repeat more than {MAX_ALIAS_VALUES} values: refused as a "
                                 "YAML bomb")
    assert result["seconds"] < 5
    assert result["grew_mb"] < 200


def test_aliases_within_the_limit_still_load(tmp_path: Path) -> None:
    # A shared preprocess block, a merge key with an override, and 5 levels of laughs (74,718
    # values: under the limit).
    path = tmp_path / "models.yml"
    path.write_text("pp: &pp {resize: 40, crop: 32}\nmodels:\n  - preprocess: *pp\n  - <<: *pp\n    crop: 64\n"
                    + laughs(5))
    data = load_yaml(path)
    assert isinstance(data, LineDict)
    assert data["models"] == [{"preprocess": {"resize": 40, "crop": 32}}, {"resize": 40, "crop": 64}]
    assert data["models"][1].key_lines["crop"] == 5
    assert len(data["e"]) == 9 and data["e"][0] is data["d"]  # shared, as PyYAML builds aliases


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "models.yml"
    path.write_text("models:\n  - " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SqlinferError) as info:
        load_yaml(path)
    assert (info.value.code, info.value.message) == ("config.yaml_too_large", "invalid YAML: nested too deeply")
    assert info.value.line == 2


@pytest.mark.parametrize(("content", "line", "message"), [
    (b"models:\n  - name: a\x00b\n", 2, "invalid YAML: character U+0000: special characters are not allowed"),
    (b"models:\n  - name: \xff\n", 2, "invalid YAML: not UTF-8 text (invalid start byte at byte 18)"),
    (b"a: &a [*a]\n", 1, "invalid YAML: found unconstructable recursive node"),
])
def test_unreadable_text_is_an_error_at_its_line(tmp_path: Path, content: bytes, line: int, message: str) -> None:
    path = tmp_path / "models.yml"
    path.write_bytes(content)
    with pytest.raises(SqlinferError) as info:
        load_yaml(path)
    assert (info.value.code, info.value.line, info.value.message) == ("config.yaml_syntax", line, message)
