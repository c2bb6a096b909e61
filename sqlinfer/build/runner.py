"""Compiling and building a project's nodes on a session: checks first, then each node in order,
with a progress line per node and `target/run_results.json` at the end.

`compile` renders every node and has Spark's analyzer check it (unknown columns, functions,
tables) against the nodes before it, without reading data or running a model. `build` compiles
first, so a node with an error fails the build before any table is touched.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from sqlinfer.build.data_tests import DataTest, TestResult
from sqlinfer.build.manifest import Manifest, Node, NodeLoader, identifiers
from sqlinfer.build.materialize import Materializer, Outcome
from sqlinfer.build.progress import NodeProgress
from sqlinfer.build.state import modified, node_states, read_manifest, write_manifest
from sqlinfer.errors import BuildError, SqlinferError
from sqlinfer.models.plan import checked_name
from sqlinfer.runtime import timeline
from sqlinfer.runtime.executors import task_summary
from sqlinfer.runtime.spark_errors import first_line, sql_line, translate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Report = Callable[[str], None]
COMPILE_PREFIX = "__sqlinfer_compile_"


@dataclass
class NodeResult:
    """One node's line in the progress output and in run_results.json."""

    name: str
    path: str
    materialized: str
    status: str = "skipped"  # success | error | skipped
    action: str = ""
    rows: int | None = None
    rows_scored: int = 0  # rows that went through a model function (the most any one function scored)
    rows_bad: int = 0  # of those, rows a model could not read (NULL, or failed with on_error: fail)
    scored_by: dict[str, Scored] = field(default_factory=dict)  # per model function the node called
    tests: list[TestResult] = field(default_factory=list)  # the node's data tests, run after it
    seconds: float = 0.0
    message: str = ""
    models: dict[str, str] = field(default_factory=dict)  # function -> fingerprint
    tasks: int = 0  # Spark tasks that ran for the node
    tasks_retried: int = 0  # task attempts that failed (or were lost with an executor) and ran again
    executors: list[str] = field(default_factory=list)  # where the tasks ran ("driver" on a local master)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows / self.seconds if self.rows and self.seconds > 0 else None


@dataclass(frozen=True)
class Scored:
    """Rows one model function scored, and the bad ones among them."""

    rows: int = 0
    bad: int = 0

    def __sub__(self, before: Scored) -> Scored:
        return Scored(self.rows - before.rows, self.bad - before.bad)


@dataclass
class RunResult:
    """A build's results, written to ``target/run_results.json``."""

    nodes: list[NodeResult]
    seconds: float
    # Per model function, counters per Python worker process (pid): {"builds": {pid: n}, "weights_reads": ...}
    workers: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    tests: list[TestResult] = field(default_factory=list)  # singular tests (a node's own are in its result)

    @property
    def success(self) -> bool:
        return (all(n.status == "success" for n in self.nodes)
                and all(t.status not in ("fail", "error") for t in self.tests))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "success": self.success,
            "elapsed_seconds": round(self.seconds, 3),
            "nodes": [{**asdict(n), "rows_per_second": n.rows_per_second} for n in self.nodes],
            "model_workers": self.workers,
            "tests": [asdict(t) for t in self.tests],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(path)


def _located(exc: BaseException, node: Node, functions: Iterable[str]) -> SqlinferError:
    """A Spark error about a node's SQL, pointing at the node's file and line."""
    if isinstance(exc, SqlinferError):
        if exc.path is None:
            exc.path = str(node.path)
        return exc
    translated = translate(exc, functions)
    if translated is None:
        return BuildError(f"{type(exc).__name__}: {exc}", code="build.failed", path=node.path)
    translated.path = str(node.path)
    translated.line = sql_line(exc)
    return translated


SAMPLE_ROWS = 3  # failing rows a failed test shows


def _singular(tests: list[DataTest], chosen: set[str]) -> list[DataTest]:
    """The singular tests that concern the chosen nodes: those reading one of them, and those
    reading no node (sources only)."""
    return [t for t in tests if t.node is None and (not t.refs or t.refs & chosen)]


def _test_line(result: TestResult) -> str:
    label = {"pass": "PASS", "fail": "FAIL", "warn": "WARN", "error": "ERROR", "skip": "SKIP"}[result.status]
    where = f"{result.path}:{result.line}" if result.line else result.path
    if result.status == "pass":
        return f"  {label}  {result.name}"
    if result.status == "skip":
        return f"  {label}  {result.name} ({result.message})"
    if result.status == "error":
        return f"  {label} {result.name} ({where}): {result.message}"
    allowed = f" (at most {result.allowed:,} allowed)" if result.allowed else ""
    sample = "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in result.sample)
    return f"  {label}  {result.name}: {result.failures:,} failing rows{allowed} ({where}), e.g. {sample}"


def _most_rows(scored_by: Mapping[str, Scored]) -> int:
    """The rows a node scored: the most any one of its model functions scored (two functions over
    the same 50 rows scored 50 rows, not 100)."""
    return max((s.rows for s in scored_by.values()), default=0)


def _check_bad_rows(node: Node, scored_by: Mapping[str, Scored]) -> None:
    """The node's ``max_bad_rows`` / ``max_bad_fraction`` against what each model function saw."""
    cfg = node.config
    for function, scored in scored_by.items():
        over = []
        if cfg.max_bad_rows is not None and scored.bad > cfg.max_bad_rows:
            over.append(f"max_bad_rows: {cfg.max_bad_rows}")
        if cfg.max_bad_fraction is not None and scored.rows and scored.bad / scored.rows > cfg.max_bad_fraction:
            over.append(f"max_bad_fraction: {cfg.max_bad_fraction:g}")
        if over:
            by = f" by {function}" if len(scored_by) > 1 else ""
            raise BuildError(f"{scored.bad:,} of {scored.rows:,} rows scored{by} were bad input ({', '.join(over)}); "
                             "the table is unchanged. The `<function>_checked` functions say why each row failed",
                             code="build.too_many_bad_rows", path=node.path)


class Runner:
    """Compiles and builds one project's nodes on a session.

    ``fingerprints`` maps each model function to its model's fingerprint (recorded with the
    tables that call it); ``model_rows`` returns, per model function, how many rows it has scored
    so far and how many of those were bad input; ``model_workers`` the per-process counters of each
    model function (builds and weights reads per Python worker); ``sources`` registers the named
    sources; ``build_models`` starts building the networks of the named model functions in the
    Python workers ahead of the first query.
    """

    def __init__(self, spark: SparkSession, loader: NodeLoader, *, root: Path, target: Path, database: str,
                 fingerprints: Mapping[str, str], model_rows: Callable[[], dict[str, Scored]],
                 model_workers: Callable[[], dict[str, dict[str, dict[str, int]]]] = dict,
                 sources: Callable[[set[str]], None] = lambda _names: None,
                 build_models: Callable[[set[str]], object] = lambda _functions: None,
                 tests: Callable[[], list[DataTest]] = list,
                 report: Report = lambda _line: None) -> None:
        self.spark = spark
        self.loader = loader
        self.root = root
        self.target = target
        self.database = database
        self.fingerprints = fingerprints
        self.model_rows = model_rows
        self.model_workers = model_workers
        self.register_sources = sources
        self.build_models = build_models
        self.data_tests = tests
        self.report = report
        self.materializer = Materializer(spark, database)

    # -- compile ------------------------------------------------------------------------------------
    def compile(self, only: set[str] | None = None) -> Manifest:
        """Render every node, write target/compiled/, and check each (or each node in ``only``)
        with Spark's analyzer, after registering the sources the checked nodes read."""
        manifest = self.loader.load()
        compiled_dir = self.target / "compiled"
        for node in manifest.nodes.values():
            if node.config.materialized == "seed":
                continue  # a CSV file: nothing compiled
            out = compiled_dir / node.relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(node.sql)
        checked = set(manifest.nodes) if only is None else only
        # Sources no checked node reads are not registered: a missing path there blocks nothing. A
        # source is a temporary view under its own name, which SQL may name without source().
        self.register_sources({s for name in checked
                               for s in {*manifest.nodes[name].rendered.sources, *identifiers(manifest.nodes[name].sql)}
                               if s in self.loader.sources})
        checking = self.loader.load_with({name: f"`{COMPILE_PREFIX}{name}`" for name in manifest.nodes})
        try:
            for node in checking.order():
                if node.name not in checked:
                    continue
                try:
                    frame = (self.materializer.seed_frame(node) if node.config.materialized == "seed"
                             else self.spark.sql(node.sql))
                except Exception as exc:  # every Spark error becomes a located error
                    raise _located(exc, node, self.fingerprints) from None
                frame.createOrReplaceTempView(f"{COMPILE_PREFIX}{node.name}")
        finally:
            for name in manifest.nodes:
                self.spark.catalog.dropTempView(f"{COMPILE_PREFIX}{name}")
        return manifest

    # -- build --------------------------------------------------------------------------------------
    def build(self, select: Iterable[str] = (), exclude: Iterable[str] = (), full_refresh: bool = False,
              prune: bool = False, state: Path | None = None) -> RunResult:
        """Materialize the selected nodes; ``state``: an earlier build's target folder (or its
        manifest.json), for ``state:modified`` selectors. Writes run_results.json and manifest.json."""
        started = time.perf_counter()
        manifest = self.loader.load()
        states = node_states(manifest, self.fingerprints)
        changed = modified(states, read_manifest(state)) if state is not None else None
        selected = manifest.order(select, exclude, changed)
        chosen = {n.name for n in selected}
        needed = {a for n in selected for a in manifest.graph.ancestors(n.name)} - chosen
        # The workers build the networks the nodes call while the driver compiles them.
        self.build_models({f for name in chosen | needed for f in manifest.nodes[name].udfs})
        self.compile(chosen | needed)
        timeline.mark("nodes compiled and analyzed")
        tests = self.data_tests()
        self.spark.sql(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
        # Views are session objects: unselected view ancestors of selected nodes are made too (a
        # node that needs a failed one fails with the real error).
        self.materializer.views([n for n in manifest.order() if n.name in needed])
        results: dict[str, NodeResult] = {}
        for index, node in enumerate(selected, start=1):
            result = NodeResult(node.name, str(node.path.relative_to(self.root)), node.config.materialized,
                                models={f: self.fingerprints[f] for f in sorted(node.udfs)})
            results[node.name] = result
            failed_parent = next((p for p in manifest.graph.ancestors(node.name)
                                  if p in results and results[p].status != "success"), None)
            prefix = f"[{index}/{len(selected)}]"
            if failed_parent is not None:
                result.message = f"skipped: upstream node {failed_parent!r} did not build"
                self.report(f"{prefix} SKIP  {node.config.materialized} {node.name} ({result.message})")
                continue
            self.report(f"{prefix} START {node.config.materialized} {node.name}")
            timeline.mark(f"node {node.name} started")
            self._run_node(node, result, manifest, full_refresh)
            timeline.mark(f"node {node.name} done")
            self.report(f"{prefix} {self._summary(result)}")
            if result.status == "success":
                self._test_node(node.name, result, tests, manifest)
        self.materializer.drop_replaced()
        timeline.mark("replaced tables dropped")
        self._orphans(set(manifest.nodes), prune)
        # A singular test runs once every node it reads was built in this run (or was not selected).
        ready = {name for name, r in results.items() if r.status == "success"} | (set(manifest.nodes) - chosen)
        singular = [t for t in _singular(tests, chosen) if t.refs <= ready]
        run = RunResult(list(results.values()), time.perf_counter() - started, self.model_workers(),
                        self.run_tests(singular, manifest))
        run.write(self.target / "run_results.json")
        write_manifest(self.target, states)
        timeline.mark("run results written")
        ok = sum(1 for r in run.nodes if r.status == "success")
        errors = sum(1 for r in run.nodes if r.status == "error")
        skipped = sum(1 for r in run.nodes if r.status == "skipped")
        self.report(f"Done in {run.seconds:.1f}s: {ok} ok, {errors} error, {skipped} skipped.")
        return run

    # -- data tests ---------------------------------------------------------------------------------
    def test(self, select: Iterable[str] = (), exclude: Iterable[str] = ()) -> RunResult:
        """Run the data tests of the selected nodes (and the singular tests that read them) against
        the tables as they are; writes run_results.json."""
        started = time.perf_counter()
        manifest = self.loader.load()
        chosen = {n.name for n in manifest.order(select, exclude)}
        needed = chosen | {a for name in chosen for a in manifest.graph.ancestors(name)}
        self.compile(needed)
        self.materializer.views([n for n in manifest.order() if n.name in needed])
        tests = self.data_tests()
        tests = [t for t in tests if t.node in chosen] + _singular(tests, chosen)
        run = RunResult([], 0.0, tests=self.run_tests(tests, manifest))
        run.seconds = time.perf_counter() - started
        run.write(self.target / "run_results.json")
        counts = {status: sum(1 for t in run.tests if t.status == status) for status in ("pass", "warn", "skip")}
        failed = len(run.tests) - sum(counts.values())
        self.report(f"Done in {run.seconds:.1f}s: {counts['pass']} passed, {failed} failed, {counts['warn']} warned, "
                    f"{counts['skip']} skipped.")
        return run

    def run_tests(self, tests: list[DataTest], manifest: Manifest) -> list[TestResult]:
        """Run each test, reporting a line per test (and a few failing rows of a failed one). A test
        that reads another node without a table yet (not built, not selected) is skipped."""
        results = []
        for test in tests:
            result = TestResult(test.name, test.node, test.severity, "pass", path=str(test.path), line=test.line)
            missing = sorted(name for name in test.refs if not self._has_relation(manifest.nodes[name]))
            if missing:
                result.status, result.message = "skip", f"{', '.join(missing)} not built"
                results.append(result)
                self.report(_test_line(result))
                continue
            try:
                result.failures = int(self.spark.sql(f"SELECT count(*) FROM ({test.failing_sql})").first()[0])
                if test.allowed_sql is not None:
                    result.allowed = int(self.spark.sql(test.allowed_sql).first()[0] or 0)
                if result.failures > result.allowed:
                    result.status = "fail" if test.severity == "error" else "warn"
                    result.sample = [{k: str(v) for k, v in row.asDict().items()}
                                     for row in self.spark.sql(test.failing_sql).limit(SAMPLE_ROWS).collect()]
            except Exception as exc:  # a test that cannot run is a failed test, located at its declaration
                result.status = "error"
                result.message = first_line(str(exc))
            results.append(result)
            self.report(_test_line(result))
        return results

    def _has_relation(self, node: Node) -> bool:
        if node.config.materialized == "view":
            return bool(self.spark.catalog.tableExists(node.name))  # a temporary view of this session
        return self.materializer.exists(node.name)

    def _test_node(self, name: str, result: NodeResult, tests: list[DataTest], manifest: Manifest) -> None:
        """Run a node's tests right after it; an error-severity failure fails the node, so its
        descendants are skipped (its table stays as built)."""
        result.tests = self.run_tests([t for t in tests if t.node == name], manifest)
        failed = [t for t in result.tests if t.status in ("fail", "error")]
        if failed:
            result.status = "error"
            result.message = (f"{len(failed)} data test{'s' * (len(failed) != 1)} failed: "
                              + ", ".join(f"{t.name} ({t.failures:,} rows)" if t.status == "fail" else
                                          f"{t.name} (could not run)" for t in failed))

    def _orphans(self, nodes: set[str], prune: bool) -> None:
        """Tables built for nodes that no longer exist: a warning each, or dropped with ``prune``."""
        for name in self.materializer.orphans(nodes):
            table = self.materializer.qualified(name)
            if prune:
                self.materializer.drop(name)
                self.report(f"PRUNE {table}: dropped (no node {name!r} any more)")
            else:
                self.report(f"WARNING {table} was built for a node {name!r} that the project no longer has: "
                            "`sqlinfer build --prune` drops it (or DROP TABLE it yourself)")

    def _summary(self, r: NodeResult) -> str:
        if r.status == "error":
            return f"ERROR {r.materialized} {r.name}: {r.message}"
        rows = "" if r.rows is None else f" {r.action}, {r.rows:,} rows"
        speed = f" ({r.rows_per_second:,.0f} rows/s)" if r.rows_per_second else ""
        scored = ""
        if len(r.scored_by) > 1 and r.rows_scored:
            # Each function's own count: two functions over 50 rows scored 50 rows, not 100.
            scored = ", scored: " + ", ".join(f"{function} {s.rows:,}" + (f" ({s.bad:,} bad)" if s.bad else "")
                                              for function, s in r.scored_by.items())
        elif r.rows_scored:
            scored = f", {r.rows_scored:,} scored" + (f", {r.rows_bad:,} bad" if r.rows_bad else "")
        scored += f", {r.tasks_retried} task{'s' * (r.tasks_retried != 1)} retried" if r.tasks_retried else ""
        note = f" [{r.message}]" if r.message else ""
        return f"OK    {r.materialized} {r.name}{rows}{scored} in {r.seconds:.1f}s{speed}{note}"

    def _run_node(self, node: Node, result: NodeResult, manifest: Manifest, full_refresh: bool) -> None:
        started = time.perf_counter()
        before = self.model_rows()

        def scored_since() -> dict[str, Scored]:
            now = self.model_rows()  # per model function; its `_checked` twin counts into it
            return {f: now[f] - before.get(f, Scored()) for f in sorted(now)
                    if f in node.udfs or checked_name(f) in node.udfs}

        def check_bad_rows() -> None:
            _check_bad_rows(node, scored_since())

        group = f"sqlinfer-build-{node.name}-{time.time_ns()}"
        self.spark.sparkContext.setJobGroup(group, f"sqlinfer build: {node.config.materialized} {node.name}")
        try:
            with NodeProgress(self.spark, group, node.name, self.report, lambda: _most_rows(scored_since())):
                outcome = self._materialize(node, result.models, manifest, full_refresh, check_bad_rows)
            result.status, result.rows = "success", outcome.rows
            result.action, result.message = outcome.action, outcome.note
        except Exception as exc:  # a failed node is reported, its descendants skipped
            error = _located(exc, node, self.fingerprints)
            result.status, result.message = "error", str(error)
        finally:
            for key in ("spark.jobGroup.id", "spark.job.description"):
                self.spark.sparkContext.setLocalProperty(key, None)
        result.seconds = time.perf_counter() - started
        tasks = task_summary(self.spark, group)
        result.tasks, result.tasks_retried, result.executors = tasks.tasks, tasks.failed, tasks.executors
        result.scored_by = scored_since()
        result.rows_scored = _most_rows(result.scored_by)
        result.rows_bad = max((s.bad for s in result.scored_by.values()), default=0)

    def _materialize(self, node: Node, models: dict[str, str], manifest: Manifest, full_refresh: bool,
                     check_bad_rows: Callable[[], None]) -> Outcome:
        kind = node.config.materialized
        if kind == "view":
            return self.materializer.view(node)
        if kind == "seed":
            return self.materializer.seed(node)
        if kind == "table":
            return self.materializer.table(node, models, check_bad_rows)
        refresh, reason = self._refresh_reason(node, models, full_refresh)
        return self.materializer.incremental(node, self._incremental_sql(node, manifest), models, refresh, reason,
                                             check_bad_rows)

    def _incremental_sql(self, node: Node, manifest: Manifest) -> str:
        """The node's SQL for an incremental run: every input that has the unique key column reads
        only rows whose key is not in the table yet, so old rows never reach a model function.
        (Spark does not push an anti join on the result below a Python UDF by itself.)"""
        key = node.config.unique_key
        this = self.materializer.qualified(node.name)

        def new_rows_of(relation: str) -> str:
            if not self.materializer.exists(node.name) or key not in self.spark.table(relation).columns:
                return relation
            return (f"(SELECT * FROM {relation} AS __sqlinfer_in WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {this} AS __sqlinfer_t WHERE __sqlinfer_t.`{key}` = __sqlinfer_in.`{key}`))")

        return self.loader.render(node.name, lambda name: new_rows_of(manifest.ref(name)), incremental=True,
                                  source=lambda name: new_rows_of(self.loader.source_name(name))).sql

    def _refresh_reason(self, node: Node, models: dict[str, str], full_refresh: bool) -> tuple[bool, str]:
        if full_refresh:
            return True, "--full-refresh"
        recorded = self.materializer.models_recorded(node.name)
        if recorded is None:
            return False, ""
        changed = sorted(f for f, fingerprint in models.items() if recorded.get(f) != fingerprint)
        changed += sorted(f for f in recorded if f not in models)
        if changed:
            return True, f"model function {', '.join(changed)} changed since the table was built: full rebuild"
        return False, ""
