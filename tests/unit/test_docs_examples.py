"""Every code example in README.md and docs/*.md is run by a test, or listed here with the reason
it cannot be (issue 9).

The examples are read from the Markdown itself (its fenced code blocks), so a doc change that
breaks one fails a test. A shell block counts one example per command (lines joined at a trailing
``\\``, split at ``&&``, comments dropped); any other block is one example. Each example must match
exactly one entry of :data:`RUN` (the test that runs or checks it) or :data:`NOT_RUN` (why it is
not run here), keyed by file and a distinctive piece of its text (``"= text"``: the whole text,
for a command that is the start of others); an example that matches none,
or an entry that matches no example, fails :func:`test_every_example_is_run_or_listed`.

This file also runs the examples that need no Java (YAML files loaded, an error message compared
with the command's). The ones that need Spark, Java or a server are in
tests/functional/test_docs_examples.py, which reads its examples through :func:`example` below.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "projects" / "digits"
SQLINFER = str(Path(sys.executable).with_name("sqlinfer"))
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
UNIT = "tests/unit/test_docs_examples.py"
FUNCTIONAL = "tests/functional/test_docs_examples.py"
GPU_ASSIGNMENT = "tests/functional/test_gpu_assignment.py"
CLUSTER = "tests/functional/test_cluster.py"

# (file, a distinctive piece of the example) -> "test file::test function" that runs or checks it.
RUN: dict[tuple[str, str], str] = {
    # README.md
    ("README.md", "SELECT path, digits_predict(content).label AS prediction FROM digits_images"):
        f"{FUNCTIONAL}::test_serve_and_its_clients",
    ("README.md", ".venv/bin/sqlinfer build projects/digits"): f"{FUNCTIONAL}::test_readme_build_and_queries",
    ("README.md", "sqlinfer build projects/photos_efficientnet"):
        "tests/functional/test_examples.py::test_photos_efficientnet_labels_real_photos_rightly",
    ("README.md", 'sqlinfer sql projects/photos_efficientnet "SELECT * FROM top1"'):
        "tests/functional/test_examples.py::test_photos_efficientnet_labels_real_photos_rightly",
    ("README.md", 'sqlinfer sql projects/digits "SELECT * FROM accuracy"'):
        f"{FUNCTIONAL}::test_readme_build_and_queries",
    ("README.md", "digits_predict(content).label AS pred FROM digits_images"):
        f"{FUNCTIONAL}::test_readme_build_and_queries",
    # docs/architecture.md
    ("docs/architecture.md", "__init__.py            the public API"):
        "tests/unit/test_layout.py::test_architecture_doc_lists_every_module_and_no_other",
    # docs/cluster.md
    ("docs/cluster.md", "export SPARK_HOME="): f"{CLUSTER}::cluster",
    ("docs/cluster.md", "deploy.master.Master --host 127.0.0.1"): f"{CLUSTER}::cluster",
    ("docs/cluster.md", "--work-dir /tmp/spark-worker-0"): f"{CLUSTER}::cluster",
    ("docs/cluster.md", "--work-dir /tmp/spark-worker-1"): f"{CLUSTER}::cluster",
    ("docs/cluster.md", "sqlinfer build projects/digits --master spark://127.0.0.1:7077"):
        f"{CLUSTER}::test_build_and_spark_submit_on_the_cluster_with_weights_as_files",
    ("docs/cluster.md", "spark-submit --master spark://127.0.0.1:7077"):
        f"{CLUSTER}::test_build_and_spark_submit_on_the_cluster_with_weights_as_files",
    ("docs/cluster.md", "error: the executors' Python cannot import sqlinfer"):
        f"{CLUSTER}::test_executors_without_sqlinfer_get_the_documented_error",
    ("docs/cluster.md", "| weights           | fingerprint"):
        "tests/unit/test_cli.py::test_models_lists_functions_and_types",
    ("docs/cluster.md", "1 task retried in"): f"{CLUSTER}::test_a_worker_killed_mid_build_costs_a_retry_not_the_build",
    ("docs/cluster.md", "warning: the project uses its embedded metastore"):
        f"{CLUSTER}::test_build_and_spark_submit_on_the_cluster_with_weights_as_files",
    # docs/errors.md
    ("docs/errors.md", "path/to/file:LINE: what is wrong [code]"): f"{UNIT}::test_error_format",
    # docs/gpu.md
    ("docs/gpu.md", "spark.task.resource.gpu.amount: 0.25"):
        f"{GPU_ASSIGNMENT}::test_each_task_uses_the_gpu_spark_assigned_it",
    ("docs/gpu.md", "SPARK_WORKER_OPTS="):
        f"{GPU_ASSIGNMENT}::test_each_task_uses_the_gpu_spark_assigned_it",
    ("docs/gpu.md", "nvidia-smi --query-gpu=index"):
        f"{GPU_ASSIGNMENT}::test_each_task_uses_the_gpu_spark_assigned_it",
    # docs/models.md
    ("docs/models.md", "name: resnet50"): f"{FUNCTIONAL}::test_models_example_compiles",
    ("docs/models.md", "resnet50_predict(content) AS pred FROM images"): f"{FUNCTIONAL}::test_models_example_compiles",
    ("docs/models.md", "output: [label, probabilities]"):
        "tests/unit/test_declarations.py::test_a_list_of_outputs_returns_a_struct_with_a_field_per_kind",
    ("docs/models.md", "allow_outside_project: true"):
        "tests/unit/test_security_weights.py::test_the_models_doc_example_allows_weights_outside_the_project",
    ("docs/models.md", "checked.error.kind, checked.error.message"): f"{FUNCTIONAL}::test_models_example_compiles",
    ("docs/models.md", "name: minilm"):
        "tests/unit/test_text.py::test_embeddings_are_those_of_sentence_transformers_in_input_order",
    ("README.md", "sqlinfer build projects/text_search"):
        "tests/functional/test_examples.py::test_text_search_finds_passages_by_meaning",
    ("README.md", "sqlinfer sql projects/text_search"):
        "tests/functional/test_examples.py::test_text_search_finds_passages_by_meaning",
    ("docs/models.md", "name: digits_scripted"):
        "tests/unit/test_flavor_examples.py::test_the_python_and_torchscript_examples_predict_alike",
    ("docs/models.md", "class: digits_net:DigitsCNN         # digits_net.py"):
        "tests/unit/test_flavor_examples.py::test_the_python_and_torchscript_examples_predict_alike",
    ("docs/models.md", "name: digits_champion"):
        "tests/unit/test_mlflow.py::test_models_shows_the_uri_the_version_it_resolved_to_and_the_fingerprint",
    ("docs/models.md", "name: digits_onnx"):
        "tests/unit/test_onnx.py::test_the_onnx_graph_gives_the_outputs_of_the_pytorch_declaration",
    # docs/projects.md
    ("docs/projects.md", "my_project/"): f"{UNIT}::test_project_layout",
    ("docs/projects.md", "JOIN {{ ref('digit_names') }} AS n"):
        "tests/functional/test_seeds.py::test_seeds_load_as_tables_that_nodes_ref",
    ("docs/projects.md", "name: digits"): f"{UNIT}::test_project_file_example_loads",
    # docs/python-api.md
    ("docs/python-api.md", "sqlinfer.Project.load"): f"{FUNCTIONAL}::test_python_api",
    # docs/serve.md
    ("docs/serve.md", "sqlinfer build projects/digits"): f"{FUNCTIONAL}::test_readme_build_and_queries",
    ("docs/serve.md", "= sqlinfer serve projects/digits"): f"{FUNCTIONAL}::test_serve_and_its_clients",
    ("docs/serve.md", "sqlinfer serve: digits on 127.0.0.1:10000"): f"{FUNCTIONAL}::test_serve_and_its_clients",
    ("docs/serve.md", "beeline -u 'jdbc:hive2://127.0.0.1:10000/default' -e"):
        f"{FUNCTIONAL}::test_serve_and_its_clients",
    ("docs/serve.md", "cursor.execute("): f"{FUNCTIONAL}::test_serve_and_its_clients",
    ("docs/serve.md", "hive.server2.thrift.port: 10015"): f"{UNIT}::test_serve_sections_load",
    ("docs/serve.md", "error: refusing to listen on 0.0.0.0"): f"{UNIT}::test_unsafe_bind_message",
    ("docs/serve.md", "public class TeamPasswords"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "PYSPARK=$(python -c"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "javac -cp"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "jar cf team-auth.jar"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "sqlinfer serve projects/digits --host 0.0.0.0 --conf"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "hive.server2.use.SSL: true"): f"{UNIT}::test_serve_sections_load",
    ("docs/serve.md", "keytool -genkeypair"): f"{FUNCTIONAL}::test_tls_keystore",
    ("docs/serve.md", "keytool -exportcert"): f"{FUNCTIONAL}::test_tls_keystore",
    ("docs/serve.md", "keytool -importcert"): f"{FUNCTIONAL}::test_tls_keystore",
    ("docs/serve.md", "--port 10001 --conf hive.server2.transport.mode=http"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "from sqlinfer.serve.server import serve"): f"{FUNCTIONAL}::test_serve_variants",
    ("docs/serve.md", "sqlinfer SQL guard: ADD JAR is refused"):
        "tests/functional/test_serve_guard.py::test_the_docs_examples_are_what_the_guard_does",
    ("docs/serve.md", "allow: [reflect, add_jar]"):
        "tests/functional/test_serve_guard.py::test_the_docs_examples_are_what_the_guard_does",
    ("docs/session.md", "export SQLINFER_KEEP_SESSION=10"):
        "tests/functional/test_kept_session.py::test_commands_share_one_kept_session",
    ("docs/performance.md", "bench/worker_bench.py --quick --device cpu"):
        "tests/unit/test_worker_bench.py::test_every_line_has_a_throughput",
}

# (file, a distinctive piece of the example) -> why it is not run by the tests.
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/cluster.md", "venv-pack -o sqlinfer_env.tar.gz"): "venv-pack is not installed here, and YARN is not",
    ("docs/cluster.md", "--master yarn --conf spark.archives"): "needs a YARN cluster",
    ("docs/cluster.md", "spark.hadoop.hive.metastore.uris: thrift://"): "needs a shared Hive metastore and S3",
    ("docs/cluster.md", "--master yarn --conf spark.executor.instances"): "needs a YARN cluster",
    ("docs/cluster.md", "--master k8s://"): "needs a Kubernetes cluster",
    ("README.md", "python3 -m venv .venv"): "creates the virtualenv the tests already run in",
    ("README.md", ".venv/bin/pip install -c constraints.txt -e ."): "pip install: needs the package index and minutes",
    ("README.md", '.venv/bin/pip install -c constraints.txt -e ".[test]"'): "pip install: needs the package index",
    ("README.md", '.venv/bin/pip install -c constraints.txt -e ".[pretrained]"'):
        "pip install: needs the package index (the test extra installs the same packages)",
    ("README.md", '.venv/bin/pip install -c constraints.txt -e ".[text]"'):
        "pip install: needs the package index (the test extra installs the same packages)",
    ("README.md", ".venv/bin/python -m pytest -q"): "the test suite itself",
    ("README.md", '.venv/bin/pip install -c constraints.txt -e ".[bench]"'): "pip install: needs the package index",
    ("docs/performance.md", 'pip install -c constraints.txt -e ".[bench,text]"'):
        "pip install: needs the package index",
    ("docs/performance.md", ".venv/bin/python bench/text_bench.py"):
        "about 4 minutes on 2 cores; its parts are tests/unit/test_text.py's and test_examples.py's",
    ("README.md", ".venv/bin/python bench/run.py"):
        "the full benchmark takes about 12 minutes; tests/functional/test_bench.py runs `bench/run.py --quick`",
    ("docs/install.md", "pip install -c constraints.txt -e ."): "pip install: needs the package index and minutes",
    ("docs/install.md", 'pip install -c constraints.txt -e ".[test]"'): "pip install: needs the package index",
    ("docs/install.md", "pip install 'sqlinfer[client]'"): "pip install: needs the package index",
    ("docs/performance.md", "python3 -m venv .venv"): "creates the virtualenv the tests already run in",
    ("docs/performance.md", '.venv/bin/pip install -c constraints.txt -e ".[bench]"'):
        "pip install: needs the package index",
    ("docs/performance.md", "= .venv/bin/python bench/run.py"):
        "the full benchmark takes about 12 minutes; tests/functional/test_bench.py runs `bench/run.py --quick`",
    ("docs/performance.md", "bench/run.py --scale --repeat 2"):
        "the measured run: about an hour on the reference machine",
    ("docs/performance.md", "sqlinfer bench: resnet18 at 224px, 1000 JPEG images"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", ".venv/bin/python bench/floor.py"):
        "about 3 minutes on 2 cores; tests/functional/test_bench.py runs it on 300 rows",
    ("docs/performance.md", "floor: 100,000 rows (parquet)"):
        "the output of that run on the reference machine: other machines print other figures",
    ("docs/performance.md", "bench/latency.py --project projects/digits"):
        "16 fresh commands, about a minute; tests/functional/test_bench.py runs it with one run each",
    ("docs/performance.md", "sql SELECT 1: median"):
        "the output of that run on the reference machine: other machines print other figures",
    ("docs/performance.md", "bench/run.py --repeat 3 --only reference,sqlinfer,pbu,e2e"):
        "the measured run: 13 minutes on the reference machine",
    ("docs/performance.md", "reference + BN folded + channels_last | 53.4"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "bench/run.py --repeat 3 --scale"):
        "the measured run: 22 minutes on the reference machine",
    ("docs/performance.md", "reference + BN folded + channels_last | 53.9"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 54.9"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 55.2"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 51.3"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 52.8"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 53.0"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 52.4"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 51.4"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 51.5"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 53.7"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 52.7"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 68.7"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "reference + BN folded + channels_last | 71.0"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "end to end: sqlinfer build PROJECT, kept session | 72.1"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "end to end: sqlinfer build PROJECT, kept session | 69.1"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "end to end: sqlinfer build PROJECT, kept session | 62.4"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", ".venv/bin/python bench/kept_memory.py"):
        "16 kept-session commands, about a minute; tests/functional/test_bench.py runs it with 4",
    ("docs/performance.md", "growth over commands 9-16: +231.0"):
        "the output of those runs on the reference machine: other machines print other figures",
    ("docs/performance.md", "end to end: sqlinfer build PROJECT, kept session | 70.9"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "end to end: sqlinfer build PROJECT, kept session | 57.8"):
        "the summary that run printed on the reference machine: other machines print other figures",
    ("docs/performance.md", "bench/run.py --device cuda"): "needs a CUDA GPU",
    ("docs/performance.md", "bench/worker_bench.py --device cuda"): "needs a CUDA GPU",
    ("docs/performance.md", "bash bench/gpu_box.sh"): "needs a CUDA GPU and nvidia-smi",
}


# --- reading the examples ------------------------------------------------------------------------

@dataclass(frozen=True)
class Example:
    file: str       # relative to the repository: README.md, docs/serve.md
    line: int       # of the block's opening fence
    language: str   # the fence's info string, lower case; "" for none
    text: str       # the block's text, or one command of a shell block

    def __str__(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"{self.file}:{self.line} ({self.language or 'no language'}): {first[:90]}"


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path) -> list[tuple[int, str, str]]:
    """The fenced code blocks of a Markdown file: (line of the opening fence, language, text).
    Blocks indented under a list item are found too, with that indentation removed."""
    found: list[tuple[int, str, str]] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^( *)(`{3,}|~{3,})\s*([^`\s]*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not re.match(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]):
            body.append(lines[end][len(indent):] if lines[end].startswith(indent) else lines[end].lstrip())
            end += 1
        assert end < len(lines), f"{path}:{index + 1}: code block never closed"
        found.append((index + 1, language.lower(), "\n".join(body) + "\n"))
        index = end + 1
    return found


def _outside_quotes(text: str) -> list[tuple[int, str]]:
    """(index, character) of each character of ``text`` outside '...' and "..." quotes."""
    out, quote = [], ""
    for position, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        else:
            out.append((position, char))
    return out


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments dropped, split at ``&&``."""
    commands: list[str] = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        free = _outside_quotes(line)
        comment = next((i for i, c in free if c == "#" and (i == 0 or line[i - 1].isspace())), len(line))
        line = line[:comment]
        cuts = [i for i, c in free if c == "&" and i + 1 < len(line) and line[i + 1] == "&" and i < comment]
        start = 0
        for cut in cuts:
            commands.append(line[start:cut])
            start = cut + 2
        commands.append(line[start:])
    return [" ".join(command.split()) for command in commands if command.strip()]


def examples() -> list[Example]:
    found: list[Example] = []
    for path in doc_files():
        name = path.relative_to(REPO).as_posix()
        for line, language, text in blocks(path):
            if language in SHELL_LANGUAGES:
                found.extend(Example(name, line, language, command) for command in shell_commands(text))
            else:
                found.append(Example(name, line, language, text))
    return found


def _normal(text: str) -> str:
    return " ".join(text.split())


def matches(entry: tuple[str, str], candidate: Example) -> bool:
    file, key = entry
    if file != candidate.file:
        return False
    if key.startswith("= "):
        return _normal(key[2:]) == _normal(candidate.text)
    return _normal(key) in _normal(candidate.text)


def example(file: str, key: str) -> Example:
    """The one example of ``file`` that contains ``key``, which must be listed in :data:`RUN`."""
    assert (file, key) in RUN, f"{file}: {key!r} is not in RUN"
    found = [candidate for candidate in examples() if matches((file, key), candidate)]
    assert len(found) == 1, f"{file}: {key!r} matches {len(found)} examples: {[str(f) for f in found]}"
    return found[0]


def expected_output(text: str, actual: str) -> bool:
    """Whether ``actual`` matches an output shown in a doc, where ``...`` stands for any text and
    runs of white space for any white space."""
    pattern = r"\s+".join(".*?".join(map(re.escape, word.split("..."))) for word in text.split())
    return re.fullmatch(pattern, actual.strip(), re.DOTALL) is not None


# --- the catalogue ---------------------------------------------------------------------------------

def test_every_example_is_run_or_listed() -> None:
    everything = examples()
    assert len(everything) > 40  # the parser found the blocks
    entries = [*RUN, *NOT_RUN]
    problems = []
    for candidate in everything:
        claimed = [entry for entry in entries if matches(entry, candidate)]
        if len(claimed) != 1:
            problems.append(f"{candidate}: {'claimed by ' + str(claimed) if claimed else 'neither run nor listed'}")
    for entry in entries:
        if not any(matches(entry, candidate) for candidate in everything):
            problems.append(f"{entry}: matches no example (the doc changed: update RUN / NOT_RUN)")
    assert not set(RUN) & set(NOT_RUN)
    for entry, where in RUN.items():
        test_file, test_name = where.split("::")
        if f"def {test_name}(" not in (REPO / test_file).read_text():
            problems.append(f"{entry}: {where} does not exist")
    assert not problems, "\n".join(["code examples in the docs that no test accounts for:", *problems])


def test_parser_finds_indented_blocks_and_splits_commands(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(textwrap.dedent("""\
        text
        - item:

          ```
          indented output
          ```

        ```bash
        a --flag "x && y" && b  # comment
        c \\
          --more  # a # in a comment
        ```
        """))
    assert blocks(doc) == [(4, "", "indented output\n"),
                           (8, "bash", 'a --flag "x && y" && b  # comment\nc \\\n  --more  # a # in a comment\n')]
    assert shell_commands(blocks(doc)[1][2]) == ['a --flag "x && y"', "b", "c --more"]
    assert expected_output("a ... c\n  d", "a bb c d")
    assert not expected_output("a ... c", "a bb d")


# --- examples that need no Java --------------------------------------------------------------------

def test_error_format() -> None:
    from sqlinfer.errors import ConfigError

    shown = example("docs/errors.md", "path/to/file:LINE: what is wrong [code]").text.strip()
    error = ConfigError("what is wrong", code="config.invalid_value", path="path/to/file", line=7)
    assert shown == "path/to/file:LINE: what is wrong [code]"
    assert str(error) == shown.replace("LINE", "7").replace("[code]", "[config.invalid_value]")


def test_project_layout() -> None:
    """The folder tree in docs/projects.md names the project file and the defaults of its keys."""
    from sqlinfer.build.config import PROJECT_FILE, ProjectConfig

    tree = example("docs/projects.md", "my_project/").text
    names = {line.split("#")[0].strip() for line in tree.splitlines()[1:] if line.startswith("  ") and
             not line.startswith("    ")}
    defaults = ProjectConfig(name="my_project")
    assert names == {PROJECT_FILE, defaults.models[0], f"{defaults.sql}/", f"{defaults.macros}/",
                     f"{defaults.target}/"}


def test_project_file_example_loads(tmp_path: Path) -> None:
    """docs/projects.md's sqlinfer_project.yml, over the digits project's models and SQL."""
    from sqlinfer import Project

    root = tmp_path / "digits"
    root.mkdir()
    for name in ("models.yml", "digits_net.py"):
        shutil.copy(DIGITS / name, root / name)
    shutil.copytree(DIGITS / "sql", root / "sql")
    (root / "sqlinfer_project.yml").write_text(example("docs/projects.md", "name: digits").text)
    project = Project.load(root)
    config = project.config
    assert (config.name, config.models, config.sql, config.target, config.database) == \
        ("digits", ("models.yml",), "sql", "target", "default")
    assert set(config.sources) == {"digits_images", "customers"}
    assert config.sources["customers"].table == "crm.customers"
    assert config.sources["digits_images"].glob == "*.png" and config.sources["digits_images"].recursive
    assert config.vars == {"eval_split": "test"} and config.spark == {"spark.sql.shuffle.partitions": 8}
    manifest = project.nodes().load()  # the digits SQL renders against this project file
    assert {node.name for node in manifest.order()} == {path.stem for path in (DIGITS / "sql").glob("*.sql")}


def test_models_example_loads(tmp_path: Path) -> None:
    """docs/models.md's declaration validates as written (resolving it needs its weights:
    tests/functional/test_docs_examples.py::test_models_example_compiles, with `weights: random`)."""
    from sqlinfer import Project

    root = tmp_path / "p"
    root.mkdir()
    (root / "models.yml").write_text(example("docs/models.md", "name: resnet50").text)
    (root / "sqlinfer_project.yml").write_text("name: p\n")
    (model,) = Project.load(root).models
    decl = model.decl
    assert (decl.udf_name, decl.output, decl.k, decl.batch_size, decl.on_error) == \
        ("resnet50_predict", "topk", 5, 16, "null")
    assert (decl.preprocess.resize, decl.preprocess.crop) == (256, 224)


def test_serve_sections_load(tmp_path: Path) -> None:
    """docs/serve.md's `serve:` sections are valid project files; TLS without its keystore file is
    refused before Spark starts (tests/functional/... makes a real one with the keytool commands)."""
    from sqlinfer import Project
    from sqlinfer.errors import ServeError
    from sqlinfer.serve.server import server_settings

    root = tmp_path / "p"
    root.mkdir()
    (root / "models.yml").write_text("models: []\n")
    custom = example("docs/serve.md", "hive.server2.thrift.port: 10015").text
    (root / "sqlinfer_project.yml").write_text("name: p\n" + custom)
    settings = server_settings(Project.load(root), {}, None, None)
    assert settings["hive.server2.thrift.port"] == "10015"
    assert settings["hive.server2.authentication"] == "CUSTOM"
    assert settings["hive.server2.custom.authentication.class"] == "com.example.TeamPasswords"

    tls = example("docs/serve.md", "hive.server2.use.SSL: true").text
    (root / "sqlinfer_project.yml").write_text("name: p\n" + tls)
    project = Project.load(root)
    assert project.config.serve["hive.server2.keystore.path"] == "/etc/sqlinfer/server.p12"
    with pytest.raises(ServeError) as info:
        server_settings(project, {}, None, None)
    assert info.value.code == "serve.bad_setting" and "/etc/sqlinfer/server.p12 does not exist" in str(info.value)


def test_unsafe_bind_message(tmp_path: Path) -> None:
    """The refusal shown in docs/serve.md is what `sqlinfer serve --host 0.0.0.0` prints (before Java)."""
    shutil.copytree(DIGITS, tmp_path / "projects" / "digits",
                    ignore=shutil.ignore_patterns("target", "__pycache__", "data"))
    result = subprocess.run([SQLINFER, "serve", "projects/digits", "--host", "0.0.0.0"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 1, result.stdout + result.stderr
    shown = example("docs/serve.md", "error: refusing to listen on 0.0.0.0").text
    assert expected_output(shown, result.stderr), result.stderr
