"""Faults during `sqlinfer build` lose nothing (issue 11, items 1-3).

Every build here is a real subprocess (`sqlinfer build --master ...`, or a driver script that is
`sqlinfer build` with one kill point armed): a second SparkContext cannot live in the pytest
process next to the session fixture, and the embedded Derby metastore takes one process at a time,
so each subprocess ends (or is killed, and its JVM gone) before the next starts. A killed
driver's JVM notices (its stdin closes), ends by itself within seconds and releases the metastore;
the tests check that it and the Python daemon do end, without help, before the next command
(started sooner, a command is refused at once with ``metastore.locked``, naming that JVM).

The project: 64 digit images, the digits CNN declared with the ``python`` flavor through a module
whose ``forward`` misbehaves on request, the way a user's own code would: a control file
(``fault.json``) tells it to ``os._exit`` once (item 1), to sleep so that the test can SIGKILL the
worker from outside (item 2), or to SIGKILL the driver on its Nth batch (item 3, mid-write). With
no control file it is the digits CNN, so every table is compared with an undisturbed reference.

How each driver kill point is reached (``KILL_SCRIPT``, monkeypatching, no hook in the product):
- table, before the write: ``DataFrameWriter.save`` wrapped; the driver kills itself instead of
  writing the files of ``kill_table``'s rebuild into its staging folder (a rebuild with the same
  columns swaps folders, not tables: Materializer._swap_folders).
- table, mid-write: the model's ``forward`` SIGKILLs the driver and its JVM on the model's second
  batch, while the staging write job runs.
- table, between the renames: ``Materializer._move`` wrapped; the driver kills itself before the
  second rename (the table's folder already renamed to ``kill_table__sqlinfer_old``).
- incremental, before the staging write: ``DataFrameWriter.save`` wrapped; the driver kills itself
  instead of writing the new rows into ``kill_inc__sqlinfer_new`` (an append to the partitioned
  table stages files, one folder per partition, registers the partitions, then moves the files
  into them: Materializer._append_files).
- incremental, after staging and before the append: ``Materializer._move`` wrapped; the driver and
  its JVM are SIGKILLed instead of moving the first staged file into the table (the partitions of
  the new rows are registered by then).
- incremental, mid-append: the staged rows are written by two tasks (``spark.sql`` wrapped to
  repartition the staged SELECT), so in several files, and ``_move`` SIGKILLs the driver and its
  JVM after the first file has moved into the table.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import same_predictions

pytestmark = [pytest.mark.spark, pytest.mark.reliability]

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "projects" / "digits"
SQLINFER = str(Path(sys.executable).with_name("sqlinfer"))
IMAGES = 64

Row = tuple[str, int, float]  # image file name, predicted class, score


def matches(rows: list[Row] | None, expected: list[Row]) -> bool:
    """The same rows (none lost, none twice) with the undisturbed predictions, scores to float noise."""
    return rows is not None and len(rows) == len(expected) and \
        same_predictions({r[0]: r[1:] for r in rows}, {r[0]: r[1:] for r in expected})

FAULT_CODE = '''

# -- test_faults: misbehave on request (sqlinfer ships this module to the Python workers) -----------
import json as _json
import os as _os
import signal as _signal
import time as _time
from pathlib import Path as _Path

CONTROL = _Path({control!r})


def _fault() -> None:
    from pyspark import TaskContext

    task = TaskContext.get()
    if task is None or not CONTROL.exists():  # the driver's own check of the network, or no fault
        return
    spec = _json.loads(CONTROL.read_text())
    if spec["mode"] == "exit_once" and task.attemptNumber() == 0:
        try:  # exactly one task attempt of the build dies
            fd = _os.open(spec["marker"], _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
        except FileExistsError:
            return
        _os.write(fd, f"stage {{task.stageId()}} partition {{task.partitionId()}}".encode())
        _os.close(fd)
        _os._exit(1)
    if spec["mode"] == "slow":
        _Path(spec["busy"]).write_text(str(_os.getpid()))
        _time.sleep(spec["sleep"])
    if spec["mode"] == "kill_driver":
        fd = _os.open(spec["counter"], _os.O_CREAT | _os.O_APPEND | _os.O_WRONLY)
        _os.write(fd, b"x")
        batches = _os.fstat(fd).st_size
        _os.close(fd)
        if batches >= spec["batch"]:
            for pid in spec["pids"]:
                try:
                    _os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _time.sleep(120)  # ended with its daemon when the JVM goes


class FaultyCNN(DigitsCNN):
    def forward(self, x):
        _fault()
        return super().forward(x)
'''

MODELS = """\
models:
  - name: digits
    flavor: python
    class: faulty_digits:FaultyCNN
    kwargs: {num_classes: 10}
    weights: weights/digits_cnn.safetensors
    input: image
    preprocess: {color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}
    labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    batch_size: 8
"""

PROJECT = """\
name: faults
sources:
  images:
    format: binaryFile
    path: images
    glob: "*.png"
"""


def node(config: str, var: str, default: int) -> str:
    return textwrap.dedent(f"""\
        {{{{ config({config}) }}}}
        SELECT path, p.index AS predicted, p.score AS score, image % 2 AS parity
        FROM (SELECT path, digits_predict(content) AS p,
                     CAST(regexp_extract(path, '_([0-9]+)[.]png$', 1) AS INT) AS image
              FROM {{{{ source('images') }}}})
        WHERE image < {{{{ var('{var}', {default}) }}}}
        """)


NODES = {
    "scored": node("materialized='table'", "n_scored", IMAGES),
    "kill_table": node("materialized='table'", "n_table", 16),
    # Partitioned: an append registers the partitions it adds, then moves each staged file into its partition.
    "kill_inc": node("materialized='incremental', unique_key='path', partition_by='parity'", "n_inc", 16),
}

# `sqlinfer build` with one kill point armed (see the module docstring): argv is
# POINT CONTROL DUMP -- <the sqlinfer command line>. Before building, it writes what the catalog
# holds (the two nodes' tables, staging and backup tables, and their rows) to DUMP.
KILL_SCRIPT = '''
import json
import os
import signal
import sys
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import SparkSession
from pyspark.sql.readwriter import DataFrameWriter

from sqlinfer.build.materialize import Materializer
from sqlinfer.build.runner import Runner

POINT, CONTROL, DUMP = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ARGS = sys.argv[sys.argv.index("--") + 1:]
NAMES = ["kill_table", "kill_table__sqlinfer_new", "kill_table__sqlinfer_old", "kill_inc",
         "kill_inc__sqlinfer_new"]
STAGING_FOLDERS = {"table.before_write": "/kill_table__sqlinfer_new", "inc.before_staging": "/kill_inc__sqlinfer_new"}


def jvm_pid() -> int:
    return SparkContext._gateway.proc.pid


def die(with_jvm: bool = False) -> None:
    if with_jvm:
        os.kill(jvm_pid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


original_sql = SparkSession.sql
renames = []
appended_files = []


def sql(self, query, *args, **kwargs):
    frame = original_sql(self, query, *args, **kwargs)
    if POINT == "inc.mid_append" and query == "SELECT * FROM __sqlinfer_staged":
        return frame.repartition(2)  # the append then has two files to move
    return frame


original_save = DataFrameWriter.save


def save(self, path=None, *args, **kwargs):
    if POINT in STAGING_FOLDERS and str(path).endswith(STAGING_FOLDERS[POINT]):
        die()
    return original_save(self, path, *args, **kwargs)


original_move = Materializer._move


def move(fs, source, destination, *args):
    if POINT == "table.between_renames" and "/kill_table" in str(source):
        renames.append((str(source), str(destination)))
        if len(renames) == 2:
            die()
    if "/kill_inc__sqlinfer_new/" in str(source):
        appended_files.append(str(source))
        if POINT == "inc.after_staging" or (POINT == "inc.mid_append" and len(appended_files) == 2):
            die(with_jvm=True)
    return original_move(fs, source, destination, *args)


original_table = Materializer.table


def table(self, node, *args, **kwargs):
    if POINT == "table.mid_write":
        counter = CONTROL.with_name("batches")
        CONTROL.write_text(json.dumps({"mode": "kill_driver", "batch": 2, "counter": str(counter),
                                       "pids": [jvm_pid(), os.getpid()]}))
    return original_table(self, node, *args, **kwargs)


original_build = Runner.build


def build(self, *args, **kwargs):
    state = {}
    for name in NAMES:
        if self.spark.catalog.tableExists(f"default.{name}"):
            rows = self.spark.table(f"default.{name}").collect()
            state[name] = sorted([r.path.rsplit("/", 1)[1], r.predicted, r.score] for r in rows)
    DUMP.write_text(json.dumps(state))
    return original_build(self, *args, **kwargs)


SparkSession.sql = sql
Materializer.table = table
Materializer._move = staticmethod(move)
DataFrameWriter.save = save
Runner.build = build

from sqlinfer.cli import main

sys.argv = ["sqlinfer", *ARGS]
main()
'''


@dataclass
class Faults:
    """The test project, its control file, and the undisturbed predictions of every image."""

    root: Path
    reference: dict[str, Row]

    @property
    def control(self) -> Path:
        return self.root / "fault.json"

    @property
    def warehouse(self) -> Path:
        return self.root / "target" / "warehouse"

    def arm(self, **spec: object) -> None:
        self.control.write_text(json.dumps(spec))

    def disarm(self) -> None:
        self.control.unlink(missing_ok=True)

    def expected(self, count: int) -> list[Row]:
        return sorted(row for name, row in self.reference.items() if int(name[4:7]) < count)

    def rows(self, table: str) -> list[Row] | None:
        """The rows a reader of ``table`` sees: its folder's data files, as Spark lists them (names
        starting with ``_`` or ``.``, such as a write job's ``_temporary``, are not data); None
        when the folder does not exist."""
        import pyarrow.dataset as ds

        folder = self.warehouse / table
        if not folder.is_dir():
            return None
        data = ds.dataset(str(folder), format="parquet").to_table(columns=["path", "predicted", "score"])
        return sorted((p.rsplit("/", 1)[1], i, s) for p, i, s in zip(*(c.to_pylist() for c in data.columns),
                                                                       strict=True))


def sqlinfer(*args: str, master: str = "local[2]") -> list[str]:
    return [SQLINFER, *args, "--master", master, "--conf", "spark.ui.enabled=false"]


def variables(**values: int) -> str:
    return json.dumps(values)


def build(faults: Faults, master: str = "local[2]", select: str = "scored",
          **values: int) -> subprocess.CompletedProcess[str]:
    """``sqlinfer build PROJECT --select ... --vars ...``, as a user runs it."""
    return subprocess.run(sqlinfer("build", str(faults.root), "--select", select, "--vars", variables(**values),
                                   master=master), capture_output=True, text=True, timeout=900)


def wait_gone(processes: list[psutil.Process], timeout: float = 120) -> float:
    """Seconds until every process of ``processes`` has ended by itself (fails if one does not)."""
    started = time.monotonic()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        process.kill()
    assert not alive, f"left running after the driver was killed: {[p.pid for p in alive]}"
    return time.monotonic() - started


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    """The project, built once undisturbed: `scored` with every image (the reference predictions),
    `kill_table` and `kill_inc` with the first 16."""
    root = tmp_path_factory.mktemp("faults") / "project"
    (root / "sql").mkdir(parents=True)
    (root / "images").mkdir()
    for index, image in enumerate(sorted(DIGITS.glob("data/images/*/*/*.png"))[:IMAGES]):
        shutil.copyfile(image, root / "images" / f"img_{index:03d}.png")
    shutil.copytree(DIGITS / "weights", root / "weights")
    (root / "faulty_digits.py").write_text((DIGITS / "digits_net.py").read_text()
                                           + FAULT_CODE.format(control=str(root / "fault.json")))
    (root / "models.yml").write_text(MODELS)
    (root / "sqlinfer_project.yml").write_text(PROJECT)
    for name, text in NODES.items():
        (root / "sql" / f"{name}.sql").write_text(text)
    faults = Faults(root, {})
    first = build(faults, select="scored kill_table kill_inc", n_scored=IMAGES, n_table=16, n_inc=16)
    assert first.returncode == 0, first.stdout + first.stderr
    scored = faults.rows("scored")
    assert scored is not None and len(scored) == IMAGES == len({name for name, _, _ in scored})
    faults.reference.update((row[0], row) for row in scored)
    assert matches(faults.rows("kill_table"), faults.expected(16)) and matches(faults.rows("kill_inc"),
                                                                              faults.expected(16))
    yield faults


# -- 1. a Python worker dies in the model's own code ---------------------------------------------------

def test_worker_crash_without_retries_fails_clearly_and_keeps_the_table(faults: Faults) -> None:
    faults.arm(mode="exit_once", marker=str(faults.root / "exited"))
    try:
        result = build(faults, n_scored=40)
    finally:
        faults.disarm()
    assert (faults.root / "exited").exists()  # the fault fired
    (faults.root / "exited").unlink()
    assert result.returncode == 1
    error = result.stderr.strip()
    assert "\n" not in error, error
    assert error.startswith(f"error: {faults.root / 'sql' / 'scored.sql'}: a Python worker died while running "
                            "the query (task "), error
    assert ("it was killed (out of memory, or by another process) or crashed. Spark tried the task once and gave "
            "up: allow retries with `--master local[N,2]` on a local master (N cores, each task tried up to 2 "
            "times) or `--conf spark.task.maxFailures=4` on a cluster") in error
    assert error.endswith("[udf.worker_died]"), error
    assert matches(faults.rows("scored"), faults.expected(IMAGES))  # unchanged: all 64 rows, not 40
    assert not (faults.warehouse / "scored__sqlinfer_new").exists()  # the failed write cleaned up


def test_worker_crash_is_retried_with_task_retries(faults: Faults) -> None:
    before = {p.name for p in (faults.warehouse / "scored").glob("part-*")}
    faults.arm(mode="exit_once", marker=str(faults.root / "exited"))
    try:
        result = build(faults, master="local[2,2]", n_scored=48)
    finally:
        faults.disarm()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (faults.root / "exited").read_text().startswith("stage ")  # a worker did die, once
    (faults.root / "exited").unlink()
    assert "OK    table scored rebuilt, 48 rows, 48 scored" in result.stdout
    rows = faults.rows("scored")
    assert matches(rows, faults.expected(48))  # exactly these rows: none lost, none twice, same predictions
    assert rows is not None and len({name for name, _, _ in rows}) == 48
    assert before.isdisjoint(p.name for p in (faults.warehouse / "scored").glob("part-*"))  # rebuilt


# -- 2. a Python worker SIGKILLed from outside ---------------------------------------------------------

def test_worker_killed_from_outside_then_rerun_completes(faults: Faults) -> None:
    busy = faults.root / "busy"
    faults.arm(mode="slow", busy=str(busy), sleep=2)
    command = sqlinfer("build", str(faults.root), "--select", "scored", "--vars", variables(n_scored=40))
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as running:
        try:
            deadline = time.monotonic() + 600
            while not busy.exists() and running.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert busy.exists(), "no worker started scoring"
            time.sleep(0.2)  # the pid is whole
            worker = psutil.Process(int(busy.read_text()))
            # A Python worker: forked by the pyspark daemon (sqlinfer's), under this build.
            assert "sqlinfer.runtime.daemon" in " ".join(worker.parent().cmdline())
            assert running.pid in {p.pid for p in worker.parents()}
            worker.send_signal(signal.SIGKILL)
            stdout, stderr = running.communicate(timeout=600)
        finally:
            faults.disarm()
            if running.poll() is None:
                running.kill()
    assert running.returncode == 1, stdout + stderr
    assert "a Python worker died while running the query" in stderr and "[udf.worker_died]" in stderr, stderr
    assert matches(faults.rows("scored"), faults.expected(48))  # as the previous test left it
    assert not (faults.warehouse / "scored__sqlinfer_new").exists()  # the failed write cleaned up

    again = build(faults, n_scored=40)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "OK    table scored rebuilt, 40 rows, 40 scored" in again.stdout
    assert matches(faults.rows("scored"), faults.expected(40))


# -- 3. the driver SIGKILLed during a table rebuild and an incremental append --------------------------

def killed_build(faults: Faults, point: str, select: str, dump: Path, **values: int) -> list[psutil.Process]:
    """Run the build with ``point`` armed until the driver is killed; returns its processes that
    were alive just before the kill (its JVM, the Python daemon and workers), maybe still ending."""
    script = dump.parent / "kill_build.py"
    script.write_text(KILL_SCRIPT)
    log = (dump.parent / f"{point}.log").open("w")
    command = [sys.executable, str(script), point, str(faults.control), str(dump), "--",
               *sqlinfer("build", str(faults.root), "--select", select, "--vars", variables(**values))[1:]]
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    tree: dict[int, psutil.Process] = {}
    try:
        while driver.poll() is None:
            try:
                tree.update((p.pid, p) for p in psutil.Process(driver.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        driver.wait(timeout=900)
    finally:
        log.close()
        faults.disarm()
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL, (dump.parent / f"{point}.log").read_text()
    return [p for p in tree.values() if p.is_running()]


@dataclass(frozen=True)
class KillPair:
    """One table kill point and one incremental kill point, then a re-run of both nodes."""

    table: str
    incremental: str


PAIRS = [
    KillPair("table.before_write", "inc.before_staging"),
    KillPair("table.mid_write", "inc.after_staging"),
    KillPair("table.between_renames", "inc.mid_append"),
]


@pytest.mark.parametrize("pair", PAIRS, ids=["before-the-write", "mid-write-or-after-staging",
                                             "between-the-renames-or-mid-append"])
def test_driver_killed_keeps_tables_and_the_rerun_recovers(faults: Faults, pair: KillPair, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table_before, inc_before = faults.rows("kill_table"), faults.rows("kill_inc")
    assert table_before is not None and inc_before is not None
    n_table, n_inc = len(table_before) + 8, len(inc_before) + 8

    # The table: killed at its point; a reader sees the previous rows, whole.
    left = killed_build(faults, pair.table, "kill_table", tmp_path / "dump_table.json", n_table=n_table)
    jvm_seconds = wait_gone(left)
    print(f"{pair.table}: the killed driver's JVM and Python daemon ended by themselves {jvm_seconds:.1f}s later")
    if pair.table == "table.between_renames":
        # The table has no folder until the next build: the previous rows are whole in the backup folder.
        assert faults.rows("kill_table") is None
        assert faults.rows("kill_table__sqlinfer_old") == table_before
    else:
        assert faults.rows("kill_table") == table_before
    if pair.table == "table.mid_write":  # the model had scored a batch when it killed the driver
        assert (faults.root / "batches").read_text().startswith("xx")
        (faults.root / "batches").unlink()

    # The incremental table: the next process first says what the catalog holds (through Spark).
    left = killed_build(faults, pair.incremental, "kill_inc", tmp_path / "dump_inc.json", n_inc=n_inc)
    catalog = json.loads((tmp_path / "dump_inc.json").read_text())
    if pair.table == "table.between_renames":
        # The entry stayed (folders were swapped, not tables) and reads as empty; no backup table.
        assert catalog["kill_table"] == [] and "kill_table__sqlinfer_old" not in catalog
    else:
        assert [tuple(r) for r in catalog["kill_table"]] == table_before
    assert [tuple(r) for r in catalog["kill_inc"]] == inc_before
    wait_gone(left)
    appended = 8
    staged = sorted((faults.warehouse / "kill_inc__sqlinfer_new").glob("parity=*/part-*.parquet"))
    staged_rows = sum(pq.read_table(file).num_rows for file in staged)
    partitions = sorted(p.name for p in (faults.warehouse / "kill_inc").iterdir() if p.name.startswith("parity="))
    assert partitions == ["parity=0", "parity=1"]
    if pair.incremental != "inc.mid_append":
        assert faults.rows("kill_inc") == inc_before  # no row of the interrupted append is visible
        assert staged_rows == (0 if pair.incremental == "inc.before_staging" else appended)
    else:
        # Killed between the moves of the append's files: the first one's rows are in the table,
        # whole; the other files are still staged. The re-run must append only the rest.
        partial = faults.rows("kill_inc")
        reference = {row[0]: row for row in faults.expected(n_inc)}
        assert partial is not None and {r[0] for r in inc_before} < {r[0] for r in partial} <= set(reference)
        assert matches(partial, [reference[row[0]] for row in partial])
        assert len(staged) >= 1 and staged_rows + len(partial) - len(inc_before) == appended
        appended -= len(partial) - len(inc_before)

    # The re-run, as a user runs it: no manual cleanup.
    again = build(faults, select="kill_table kill_inc", n_table=n_table, n_inc=n_inc)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"OK    table kill_table rebuilt, {n_table} rows, {n_table} scored" in again.stdout
    assert f"OK    incremental kill_inc appended, {appended} rows, {appended} scored" in again.stdout
    # What the re-run found and did is on each node's progress line: staging data a killed build
    # left is removed; a folder swap cut off between its renames is undone.
    table_line = next(line for line in again.stdout.splitlines() if "OK    table kill_table" in line)
    inc_line = next(line for line in again.stdout.splitlines() if "OK    incremental kill_inc" in line)
    restored = "restored the previous table after an interrupted build"
    assert (restored in table_line) is (pair.table == "table.between_renames"), table_line
    left_staged = "removed the staged rows of an unfinished build"
    assert (left_staged in table_line) is (pair.table != "table.before_write"), table_line
    assert (left_staged in inc_line) is (pair.incremental != "inc.before_staging"), inc_line
    assert matches(faults.rows("kill_table"), faults.expected(n_table))
    inc = faults.rows("kill_inc")
    assert matches(inc, faults.expected(n_inc))  # every key once, every prediction the undisturbed one
    leftovers = [p.name for p in faults.warehouse.iterdir() if "__sqlinfer_" in p.name]
    leftovers += [p.name for p in (faults.warehouse / "kill_inc").iterdir() if p.name.startswith("_temporary")]
    assert leftovers == []
