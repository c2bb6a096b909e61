"""The code examples of README.md and docs/*.md that need Spark, Java or a server, run as written
(issue 9). The examples are read from the Markdown through the catalogue in
tests/unit/test_docs_examples.py, which also checks that every example is run somewhere or listed
there with the reason it is not.

Commands run with ``bash`` in a temporary folder that looks like a clone: ``projects/digits`` (a
copy) and ``.venv`` (a link to this interpreter's environment, first on ``PATH``), so
``.venv/bin/sqlinfer``, ``sqlinfer``, ``python`` and ``beeline`` are the installed ones. The only
changes to an example: servers listen on a free port (``--port 0``) instead of 10000/10001, and
the clients' examples get that port.

Order matters and is the file's order: the README build makes the tables that the first server
lists, and the embedded metastore allows one process at a time per project.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import docs_catalogue, docs_example, own_database, write_images

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "projects" / "digits"
VENV = Path(sys.prefix)
START_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 600


docs = docs_catalogue()
example = docs_example


# --- helpers ---------------------------------------------------------------------------------------

def clone_like(root: Path, *, all_images: bool = True) -> Path:
    """A folder laid out like a clone of the repository: projects/digits and .venv. Without
    ``all_images``, the project has only the 450 images of its test split (the accuracy view's):
    every scan of the 1,347 training images would cost the build and the queries half a minute."""
    ignore = ["target", "__pycache__"] + ([] if all_images else ["train"])
    shutil.copytree(DIGITS, root / "projects" / "digits", ignore=shutil.ignore_patterns(*ignore))
    (root / ".venv").symlink_to(VENV)
    return root


def environment() -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}


def sh(command: str, cwd: Path, timeout: float = COMMAND_TIMEOUT_S, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env={**environment(), **env}, capture_output=True,
                          text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    """The cells of the text table `sqlinfer sql` prints (header first)."""
    return [[cell.strip() for cell in line.split("|")] for line in output.splitlines() if " | " in line]


class Server:
    """A serve example started with bash in ``cwd``; its output is read as it comes."""

    def __init__(self, script: str, cwd: Path, **env: str) -> None:
        self.stderr_path = cwd / "server.stderr"
        self.lines: list[str] = []
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(["bash", "-c", script], cwd=cwd, env={**environment(), **env}, text=True,
                                            stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} from the server (exit {self.process.poll()}):\n{self.output}\n"
                             f"{self.stderr_path.read_text()[-4000:]}")

    def port(self) -> int:
        return int(self.wait_for(r"^sqlinfer serve: \w+ on \S+:(\d+) \(").group(1))

    def stop(self, sig: int) -> str:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=120)
        self.reader.join(timeout=10)
        assert code == 0, f"exit {code}:\n{self.output}\n{self.stderr_path.read_text()[-4000:]}"
        return self.output

    def kill(self) -> None:
        """End whatever is left of the server's process group (its own: ``start_new_session``)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def query(port: int, sql: str, **connect_args: object) -> tuple[list[str], list[tuple]]:
    from sqlinfer.client import connect

    with connect("127.0.0.1", port, **connect_args) as conn:  # type: ignore[arg-type]
        cursor = conn.cursor()
        cursor.execute(sql)
        return [column[0] for column in cursor.description], cursor.fetchall()


def digit_in_path(path: str) -> str:
    match = re.search(r"/([0-9])/[^/]+$", path)
    assert match, path
    return match.group(1)


# --- README: build the example, query it ------------------------------------------------------------

@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clone the README's commands and the first server run in (test split only)."""
    return clone_like(tmp_path_factory.mktemp("docs_clone"), all_images=False)


@pytest.fixture(scope="module")
def readme_build(clone: Path) -> subprocess.CompletedProcess[str]:
    """README's `.venv/bin/sqlinfer build projects/digits`, once (docs/serve.md's build is the same)."""
    command = example("README.md", ".venv/bin/sqlinfer build projects/digits")
    assert command == ".venv/bin/sqlinfer build projects/digits"
    assert example("docs/serve.md", "sqlinfer build projects/digits") == command.removeprefix(".venv/bin/")
    return sh(command, clone)


def test_readme_build_and_queries(clone: Path, readme_build: subprocess.CompletedProcess[str]) -> None:
    output = ok(readme_build)
    # "the ... digits scored ... into a table, an incremental table keyed by file path, an accuracy
    # view and a confusion matrix" (450 digits here: the test split; test_python_api counts all 1,797)
    assert re.search(r"OK +table digit_predictions created, 450 rows, 450 scored", output), output
    assert re.search(r"OK +incremental digit_predictions_incremental created, 450 rows, 450 scored", output)
    assert re.search(r"OK +view accuracy", output) and re.search(r"OK +view confusion_matrix", output)
    assert re.search(r"Done in [0-9.]+s: 4 ok, 0 error, 0 skipped\.", output), output

    accuracy = table_rows(ok(sh(example("README.md", 'sqlinfer sql projects/digits "SELECT * FROM accuracy"'),
                                clone)))
    assert accuracy[0] == ["split", "images", "correct", "accuracy"], accuracy
    (split, images, correct, value), = accuracy[1:]
    assert (split, images) == ("test", "450") and float(value) >= 0.97 and int(correct) == round(450 * float(value))

    predictions = table_rows(ok(sh(example("README.md", "digits_predict(content).label AS pred FROM digits_images"),
                                   clone)))
    assert predictions[0] == ["label", "pred"]
    assert len(predictions[1:]) == 20  # --limit's default
    assert sum(label == pred for label, pred in predictions[1:]) >= 18


# --- docs/serve.md: the server, beeline and Python against it -------------------------------------------

def test_serve_and_its_clients(clone: Path, readme_build: subprocess.CompletedProcess[str]) -> None:
    ok(readme_build)
    command = example("docs/serve.md", "= sqlinfer serve projects/digits")
    server = Server(f"exec {command} --port 0", clone)
    try:
        port = server.port()
        server.wait_for(r"^Stop with Ctrl-C or SIGTERM\.$")
        banner = example("docs/serve.md", "sqlinfer serve: digits on 127.0.0.1:10000").replace("10000", str(port))
        assert docs.expected_output(banner, server.output), server.output

        beeline = example("docs/serve.md", "beeline -u 'jdbc:hive2://127.0.0.1:10000/default' -e")
        result = sh(beeline.replace("10000", str(port)), clone, timeout=300)
        shown = ok(result) + result.stderr  # beeline prints the row count on stderr
        assert "digits_predict(content).label" in shown and "5 rows selected" in shown, shown

        client = example("docs/serve.md", "cursor.execute(")
        namespace: dict[str, object] = {}
        exec(compile(client.replace("10000", str(port)), "docs/serve.md", "exec"), namespace)
        rows = namespace["rows"]
        assert isinstance(rows, list) and len(rows) == 5
        assert all(label in "0123456789" and digit_in_path(path) for path, label in rows)

        # README's first example, the model called from SQL, through the same server.
        columns, rows = query(port, example(
            "README.md", "SELECT path, digits_predict(content).label AS prediction FROM digits_images").strip())
        assert columns == ["path", "prediction"] and len(rows) == 450
        assert sum(label == digit_in_path(path) for path, label in rows) / len(rows) > 0.97

        output = server.stop(signal.SIGTERM)
        assert f"sqlinfer serve: stopped; port {port} released" in output
    finally:
        server.kill()


# --- docs/python-api.md ---------------------------------------------------------------------------------

def test_python_api(tmp_path: Path) -> None:
    """Over every image of the project: the example prints their number."""
    code = example("docs/python-api.md", "sqlinfer.Project.load")
    clone = clone_like(tmp_path)
    (clone / "python_api_example.py").write_text(code)
    lines = ok(sh("python python_api_example.py", clone)).splitlines()

    # What the example's comments say it prints.
    assert lines[:2] == ["digits_predict struct<label:string,index:int,score:float>",
                         "digits_scores struct<label:struct<label:string,index:int,score:float>,"
                         "probabilities:array<float>>"]
    assert f"\n# {lines[0]}\n# {lines[1]}\n" in code
    assert lines[2] == "1797" and re.search(r"print\(len\(rows\)\) +# 1797\n", code)
    totals = ast.literal_eval(lines[3])
    shown = ast.literal_eval(re.search(r"\n# (\{'builds'.*), \.\.\.\}\n", code).group(1) + "}")  # type: ignore[union-attr]
    assert set(shown) <= set(totals), totals
    assert (totals["rows"], totals["bad_rows"]) == (shown["rows"], shown["bad_rows"]) == (1797, 0)
    assert 1 <= totals["builds"] <= (os.cpu_count() or 1) and totals["batches"] >= 1797 // 64


# --- docs/models.md -------------------------------------------------------------------------------------

def test_models_example_compiles(spark, tmp_path: Path) -> None:
    """The declaration (with `weights: random`: the ImageNet weights need the network) resolves, and
    the SQL example compiles against it with Spark's analyzer, as a node of a project."""
    from sqlinfer import Project

    declaration = example("docs/models.md", "name: resnet50")
    assert "weights: IMAGENET1K_V2" in declaration
    sql = example("docs/models.md", "resnet50_predict(content) AS pred FROM images")
    root = tmp_path / "models_example"
    (root / "sql").mkdir(parents=True)
    (root / "models.yml").write_text(declaration.replace("weights: IMAGENET1K_V2", "weights: random"))
    (root / "sqlinfer_project.yml").write_text(
        "name: models_example\nsources:\n  images: {format: binaryFile, path: data, glob: '*.jpg'}\n")
    (root / "sql" / "top_class.sql").write_text(sql)
    checked = example("docs/models.md", "checked.error.kind, checked.error.message")
    (root / "sql" / "why_null.sql").write_text(checked)
    write_images(root / "data", 2)
    (root / "data" / "broken.jpg").write_bytes(b"not a jpeg")
    own_database(root)

    project = Project.load(root)
    (model,) = project.resolve_models()
    assert model.plan.decl.return_type == "array<struct<label:string,index:int,score:float>>"  # `topk`
    manifest = project.compile(spark)
    assert [node.name for node in manifest.order()] == ["top_class", "why_null"]
    assert spark.sql(sql).columns == ["path", "label", "score"]
    (row,) = spark.sql(checked).collect()
    assert row["path"].endswith("/broken.jpg") and row["kind"] == "undecodable"
    assert row["message"].startswith("UnidentifiedImageError: cannot identify image file")


# --- docs/serve.md: TLS keystore, and the other ways to serve ---------------------------------------

def test_tls_keystore(tmp_path: Path) -> None:
    """The keytool commands make the files the TLS settings and clients name."""
    from sqlinfer import Project
    from sqlinfer.serve.server import server_settings

    keytool = "\n".join(example("docs/serve.md", f"keytool -{step}") for step in ("genkeypair", "exportcert",
                                                                                  "importcert"))
    ok(sh(f"set -e\n{keytool}", tmp_path, KS_PASS="test-pass"))
    assert (tmp_path / "server.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "trust.p12").stat().st_size > 0

    tls = example("docs/serve.md", "hive.server2.use.SSL: true")
    tls = tls.replace("/etc/sqlinfer/server.p12", str(tmp_path / "server.p12"))
    tls = re.sub(r"(keystore\.password:) \.\.\.", r"\1 test-pass", tls)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "models.yml").write_text("models: []\n")
    (tmp_path / "p" / "sqlinfer_project.yml").write_text("name: p\n" + tls)
    settings = server_settings(Project.load(tmp_path / "p"), {}, None, None)
    assert settings["hive.server2.keystore.path"] == str(tmp_path / "server.p12")


CHECK = ('  private static boolean check(String user, String password) {\n'
         '    return "analyst".equals(user) && "open-sesame".equals(password);\n  }\n')


@pytest.fixture()
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def test_serve_variants(tmp_path: Path, servers: list[Server]) -> None:
    """From Python (NOSASL), with a CUSTOM password provider on all interfaces, and over http: three
    servers over three copies of the project, started together."""
    from sqlinfer.errors import ClientError

    python_dir, custom_dir, http_dir = (clone_like(tmp_path / name, all_images=False)
                                        for name in ("python", "custom", "http"))

    python_example = example("docs/serve.md", "from sqlinfer.serve.server import serve")
    (python_dir / "serve_example.py").write_text(python_example)
    servers.append(Server("exec python serve_example.py", python_dir))

    java = example("docs/serve.md", "public class TeamPasswords").rstrip()
    assert java.endswith("}") and "check(user, password)" in java
    (custom_dir / "TeamPasswords.java").write_text(java[:-1] + CHECK + "}\n")
    serve_custom = example("docs/serve.md", "sqlinfer serve projects/digits --host 0.0.0.0 --conf")
    script = "\n".join(["set -e", example("docs/serve.md", "PYSPARK=$(python -c"),
                        example("docs/serve.md", "javac -cp"), example("docs/serve.md", "jar cf team-auth.jar"),
                        f"exec {serve_custom} --port 0"])
    # Not the example's business, but the machine's: the JVM class archive is keyed by the class path,
    # and this temporary jar would leave a new 200 MB archive in ~/.cache/sqlinfer/jvm at every run
    # (and a JVM that spends up to the 30 s `serve` gives it to stop writing it).
    servers.append(Server(script, custom_dir, SQLINFER_JVM_CACHE="0"))

    serve_http = example("docs/serve.md", "--port 10001 --conf hive.server2.transport.mode=http")
    assert "--port 10001" in serve_http
    servers.append(Server(f"exec {serve_http.replace('--port 10001', '--port 0')}", http_dir))
    python_server, custom_server, http_server = servers

    # From Python: `ready` prints the JDBC URL once clients can connect; SIGINT stops it.
    url = python_server.wait_for(r"^jdbc:hive2://127\.0\.0\.1:(\d+)/default;auth=noSasl$")
    port = int(url.group(1))
    assert query(port, "SELECT 1 + 1", auth="NOSASL") == (["(1 + 1)"], [(2,)])
    assert f"sqlinfer serve: stopped; port {port} released" in python_server.stop(signal.SIGINT)

    # CUSTOM: the provider's passwords are checked; a wrong one is ClientError client.connect_failed.
    port = custom_server.port()
    assert "on 0.0.0.0:" in custom_server.output and "authentication CUSTOM" in custom_server.output
    columns, rows = query(port, "SELECT digits_predict(content).label AS digit FROM digits_images LIMIT 3",
                          auth="CUSTOM", username="analyst", password="open-sesame")
    assert columns == ["digit"] and len(rows) == 3
    with pytest.raises(ClientError) as info:
        query(port, "SELECT 1", auth="CUSTOM", username="analyst", password="wrong")
    assert info.value.code == "client.connect_failed"
    custom_server.stop(signal.SIGTERM)

    # http transport
    port = http_server.port()
    assert "(http, authentication NONE)" in http_server.output
    assert query(port, "SELECT count(*) FROM digits_images", transport="http") == (["count(1)"], [(450,)])
    http_server.stop(signal.SIGTERM)
