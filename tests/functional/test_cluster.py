"""The same project on a real Spark standalone cluster (issue 12).

The cluster is started from the pip-installed pyspark, as docs/cluster.md tells a user to: one
``spark-class ...deploy.master.Master`` and two ``spark-class ...deploy.worker.Worker`` processes
on loopback, one core each, their own work folders. Every command is the real CLI with
``--master spark://127.0.0.1:PORT`` in a subprocess (the functional tests' own ``local[2]``
session lives in this process, and a second SparkContext cannot live beside it); the executors
are real JVMs started by the workers, running real Python workers.

What is compared: each build's tables with the predictions of the local master on the same files
(the shared session), row for row; where the tasks ran (executor ids in run_results.json);
model builds and weights reads per Python worker; a worker SIGKILLed mid-build; executors whose
Python lacks sqlinfer. At the end no process of the cluster is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import private_spark_home, same_predictions, start_serve, wait_ready

from sqlinfer import Project, cli

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "projects" / "digits"
SQLINFER = str(Path(sys.executable).with_name("sqlinfer"))
APPLICATION = Path(cli.__file__).with_name("__main__.py")  # `python -m sqlinfer`, as spark-submit's application
WORKERS = 2
START_TIMEOUT_S = 180
# The daemons' JVMs do little: the C1 compiler and a small heap, as sqlinfer's local driver.
DAEMON_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
EXECUTOR_CONF = ("--conf", "spark.executor.memory=1g", "--conf", "spark.ui.enabled=false",
                 "--conf", f"spark.executor.extraJavaOptions={DAEMON_JAVA_OPTIONS}")
METASTORE_WARNING = ("warning: the project uses its embedded metastore (Derby, one process at a time, on this "
                     "machine) with master {master}: tables are written to {warehouse}, which every executor must "
                     "be able to reach. For a cluster, set spark.sql.warehouse.dir to shared storage and "
                     "spark.hadoop.hive.metastore.uris to a shared Hive metastore (docs/cluster.md)")


@dataclass
class Cluster:
    """A standalone master and its workers, each a process group of its own."""

    url: str
    master: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    logs: Path

    def worker_tree(self, index: int) -> list[psutil.Process]:
        """A worker and what it started (its executor JVM, their Python daemon and workers)."""
        worker = psutil.Process(self.workers[index].pid)
        return [worker, *worker.children(recursive=True)]


def wait_for_line(log: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float = START_TIMEOUT_S
                  ) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace")) if log.exists() else None
        if found:
            return found
        if process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"no {pattern!r} in {log}:\n{log.read_text(errors='replace')[-3000:] if log.exists() else ''}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    home = private_spark_home(root)
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "256m",
           "SPARK_DAEMON_JAVA_OPTS": DAEMON_JAVA_OPTIONS, "PYSPARK_PYTHON": sys.executable}
    spark_class = str(home / "bin" / "spark-class")
    started: list[subprocess.Popen[bytes]] = []

    def start(log: Path, *args: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen([spark_class, *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        started.append(process)
        return process

    try:
        master_log = root / "master.log"
        master = start(master_log, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", "0",
                       "--webui-port", "0")
        url = wait_for_line(master_log, r"Starting Spark master at (spark://127\.0\.0\.1:\d+)", master).group(1)
        workers = []
        for index in range(WORKERS):
            work = root / f"worker{index}"
            work.mkdir()
            workers.append(start(root / f"worker{index}.log", "org.apache.spark.deploy.worker.Worker",
                                 "--host", "127.0.0.1", "--port", "0", "--webui-port", "0", "--cores", "1",
                                 "--memory", "1500m", "--work-dir", str(work), url))
        for index, worker in enumerate(workers):
            wait_for_line(root / f"worker{index}.log", "Successfully registered with master", worker)
        yield Cluster(url, master, workers, root)
    finally:
        everything = []
        for process in started:
            try:
                everything += [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for process in started:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(everything, timeout=30)
        for process in alive:
            process.kill()
        assert not alive, f"cluster processes left after SIGTERM: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def local_predictions(spark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """What the local master predicts for the digits test images (the projects the cluster builds
    here have those only, to keep the suite short): relative path -> (label, index, score)."""
    copy = project_copy(tmp_path_factory.mktemp("local"), test_split_only=True)
    Project.load(copy).register(spark, views=False)
    prefix = f"file:{copy}/"
    rows = spark.sql("SELECT path, pred.label, pred.index, pred.score "
                     "FROM (SELECT path, digits_predict(content) AS pred FROM digits_images)").collect()
    assert len(rows) == 450
    return {r["path"].removeprefix(prefix): (r["label"], r["index"], r["score"]) for r in rows}


def project_copy(folder: Path, *, test_split_only: bool = False) -> Path:
    """projects/digits; with ``test_split_only``, its 450 test images only (for the slower builds)."""
    copy = folder / "digits"
    skip = ("target", "__pycache__", "train") if test_split_only else ("target", "__pycache__")
    shutil.copytree(DIGITS, copy, ignore=shutil.ignore_patterns(*skip))
    return copy


def sqlinfer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SQLINFER, *args], capture_output=True, text=True, timeout=timeout)


def built_predictions(spark, project: Path, table: str) -> dict[str, tuple]:
    """A table the build wrote (parquet under the project's warehouse), read back by path."""
    prefix = f"file:{project}/"
    frame = spark.read.parquet(str(project / "target" / "warehouse" / table))
    if "pred" in frame.columns:
        frame = frame.selectExpr("path", "pred.label AS predicted", "pred.index AS predicted_index",
                                 "pred.score AS score")
    rows = frame.select("path", "predicted", "predicted_index", "score").collect()
    assert len(rows) == len({r.path for r in rows})  # no row twice
    return {r.path.removeprefix(prefix): (r.predicted, r.predicted_index, r.score) for r in rows}


def run_results(project: Path) -> dict:
    return json.loads((project / "target" / "run_results.json").read_text())


def test_build_and_spark_submit_on_the_cluster_with_weights_as_files(
        cluster: Cluster, local_predictions: dict[str, tuple], spark, tmp_path: Path) -> None:
    """The large-model path, forced with a limit below the digits weights: the build gives the local
    master's predictions, its tasks run in the two executors, and each Python worker reads the
    weights file once and builds the network once."""
    project = project_copy(tmp_path, test_split_only=True)
    # More tasks than Python workers, so that "once per worker" differs from "once per task" (the
    # 450 small images would otherwise make one task per core: sqlinfer.build.sources.task_count).
    project_file = project / "sqlinfer_project.yml"
    project_file.write_text(project_file.read_text().replace("    recursive: true\n",
                                                             "    recursive: true\n    files_per_task: 50\n", 1))
    result = sqlinfer("build", str(project), "--master", cluster.url, *EXECUTOR_CONF,
                      "--conf", "spark.sqlinfer.weightsBroadcastLimitMB=0.01")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == METASTORE_WARNING.format(master=cluster.url,
                                                     warehouse=project / "target" / "warehouse") + "\n"
    for table in ("digit_predictions", "digit_predictions_incremental"):
        assert same_predictions(built_predictions(spark, project, table), local_predictions), table

    results = run_results(project)
    nodes = {n["name"]: n for n in results["nodes"]}
    for name in ("digit_predictions", "digit_predictions_incremental"):
        assert nodes[name]["status"] == "success"
        assert nodes[name]["rows_scored"] == 450
        assert nodes[name]["tasks"] >= 9  # ceil(450 / 50)
        assert set(nodes[name]["executors"]) <= {"0", "1"} and nodes[name]["executors"], nodes[name]
    assert {e for n in nodes.values() for e in n["executors"]} == {"0", "1"}  # both executors worked
    workers = results["model_workers"]["digits_predict"]
    builds, reads = workers["builds"], workers["weights_reads"]
    print(f"tasks: {sum(n['tasks'] for n in nodes.values())}; builds per worker: {builds}; weights reads: {reads}")
    assert builds and set(builds.values()) == {1}  # each Python worker built the model once
    assert reads == builds  # and read the weights file once, for that build
    assert len(reads) <= WORKERS * 2, reads  # one worker per executor core (a second if Spark replaced one)
    assert sum(reads.values()) < sum(n["tasks"] for n in nodes.values())  # not once per task
    shipped = list((project / "target" / "weights").iterdir())
    assert [p.suffix for p in shipped] == [".safetensors"]
    assert shipped[0].read_bytes() == (project / "weights" / "digits_cnn.safetensors").read_bytes()

    # docs/cluster.md's spark-submit line (client mode) runs `sqlinfer sql` on the cluster: the master
    # comes from spark-submit; the query reads the table the build wrote and calls the model again.
    home = cluster.logs / "spark_home"
    submitted = subprocess.run(
        [str(home / "bin" / "spark-submit"), "--master", cluster.url,
         "--conf", f"spark.pyspark.python={sys.executable}", *EXECUTOR_CONF,
         str(APPLICATION), "sql", str(project),
         "SELECT count(*) AS n, sum(CAST(digits_predict(content).index = p.predicted_index AS INT)) AS same "
         "FROM digits_images JOIN digit_predictions AS p USING (path) WHERE digits_images.split = 'test'"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "SPARK_HOME": str(home)})
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    lines = submitted.stdout.splitlines()  # spark-submit writes the application's stderr to stdout
    assert lines[0].startswith(f"warning: the project uses its embedded metastore (Derby, one process at a time, "
                               f"on this machine) with master {cluster.url}: "), lines[0]
    assert lines[-4:] == ["n   | same", "----+-----", "450 | 450", "1 rows"], lines[-4:]


SLOW_MODEL = '''

import os as _os
import time as _time


class SlowDigitsCNN(DigitsCNN):
    """The digits CNN, 0.4 s slower per batch in a task: the build lasts long enough for a
    worker to be killed while its executor runs tasks. Each scoring process leaves a file named
    by its pid in {marks}, so the test knows whose tasks are running (a build's warm-up also
    forks Python workers, but builds networks without calling them)."""

    def forward(self, x):
        from pyspark import TaskContext

        if TaskContext.get() is not None:
            open(_os.path.join({marks!r}, str(_os.getpid())), "a").close()
            _time.sleep(0.4)
        return super().forward(x)
'''


def scoring(tree: list[psutil.Process], marks: Path) -> bool:
    """Whether a process of this tree has called the slow model in a task."""
    pids = {process.pid for process in tree}
    return any(int(mark.name) in pids for mark in marks.iterdir())


def test_a_worker_killed_mid_build_costs_a_retry_not_the_build(
        cluster: Cluster, local_predictions: dict[str, tuple], spark, tmp_path: Path) -> None:
    project = project_copy(tmp_path, test_split_only=True)
    marks = tmp_path / "scoring"
    marks.mkdir()
    network = project / "digits_net.py"
    network.write_text(network.read_text() + SLOW_MODEL.format(marks=str(marks)))
    models = project / "models.yml"
    models.write_text(models.read_text().replace("digits_net:DigitsCNN", "digits_net:SlowDigitsCNN")
                      .replace("batch_size: 64", "batch_size: 8"))
    command = [SQLINFER, "build", str(project), "--select", "digit_predictions", "--master", cluster.url,
               *EXECUTOR_CONF]
    victim = 1
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as build:
        try:
            assert build.stdout is not None
            lines = []
            for line in build.stdout:
                lines.append(line)
                if "START table digit_predictions" in line:
                    break
            # Kill the victim once one of its Python workers is scoring (a mark from a pid in its tree).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not scoring(cluster.worker_tree(victim), marks):
                time.sleep(0.1)
            assert scoring(cluster.worker_tree(victim), marks), f"no task of the build ran on worker {victim}"
            tree = cluster.worker_tree(victim)
            os.kill(cluster.workers[victim].pid, signal.SIGKILL)
            stdout, stderr = build.communicate(timeout=600)
        finally:
            if build.poll() is None:
                build.kill()
    stdout = "".join(lines) + stdout
    assert build.returncode == 0, stdout + stderr
    _, alive = psutil.wait_procs(tree, timeout=60)  # its executor and Python workers end with it
    assert not alive, [p.cmdline() for p in alive]

    assert same_predictions(built_predictions(spark, project, "digit_predictions"), local_predictions)  # each once
    (node,) = run_results(project)["nodes"]
    print(f"after the kill: {node['tasks']} tasks, {node['tasks_retried']} retried, executors {node['executors']}")
    assert node["tasks_retried"] >= 1  # the victim's running tasks, run again on the other executor
    assert node["executors"] and set(node["executors"]) <= {"0", "1"}, node
    retried = f"{node['tasks_retried']} task{'s' * (node['tasks_retried'] != 1)} retried"
    assert f"OK    table digit_predictions created, 450 rows, 450 scored, {retried} in " in stdout, stdout


def test_executors_without_sqlinfer_get_the_documented_error(cluster: Cluster, tmp_path: Path) -> None:
    """The executors' Python cannot import sqlinfer (a meta-path finder refuses it, as if it were not
    installed): the command stops at session start with one line that says what to install."""
    hidden = tmp_path / "hide"
    hidden.mkdir()
    (hidden / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n\n\nclass NotInstalled(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'sqlinfer':\n"
        "            raise ModuleNotFoundError(name)\n        return None\n\n\n"
        "sys.meta_path.insert(0, NotInstalled())\n")
    python = tmp_path / "python_without_sqlinfer"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={hidden}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    project = project_copy(tmp_path)
    result = sqlinfer("build", str(project), "--master", cluster.url, *EXECUTOR_CONF,
                      "--conf", f"spark.pyspark.python={python}")
    assert result.returncode == 1
    warning, error = result.stderr.splitlines()
    assert warning.startswith("warning: the project uses its embedded metastore")
    version = ".".join(map(str, sys.version_info[:3]))
    assert error == (f"error: the executors' Python cannot import sqlinfer: {sys.executable} (Python {version}) on "
                     f"{os.uname().nodename}. Install sqlinfer and torch there (pip install sqlinfer, with the "
                     "driver's versions), or ship a packed virtualenv with spark.archives and point "
                     "spark.pyspark.python into it (docs/cluster.md) (Spark's log: "
                     f"{project}/target/logs/spark.log) [session.executor_env]"), error
    assert not (project / "target" / "warehouse" / "digit_predictions").exists()




def test_serve_on_the_cluster_answers_a_model_query(cluster: Cluster, tmp_path: Path) -> None:
    """`sqlinfer serve --master spark://...`: a JDBC client's model query runs in the executors."""
    from sqlinfer.client import connect

    project = project_copy(tmp_path, test_split_only=True)
    server = wait_ready(start_serve(project, tmp_path, "--master", cluster.url, *EXECUTOR_CONF))
    try:
        with connect("127.0.0.1", server.port, timeout_s=300) as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT count(*), count(DISTINCT digits_predict(content).label) FROM digits_images "
                           "WHERE split = 'test'")
            assert cursor.fetchall() == [(450, 10)]
        assert f"with master {cluster.url}: tables are written to" in server.stderr()
    finally:
        server.kill()
