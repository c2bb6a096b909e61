"""The Python API, which the commands call too: a project on disk, its models, sources and SQL
nodes, registered on a SparkSession and built.

    project = sqlinfer.Project.load("projects/digits")
    spark = project.session()            # or any SparkSession of your own:
    project.register(spark)              # UDFs + sources as temp views
    spark.sql("SELECT digits_predict(content) FROM digits_images").show()

This module wires the flows together; each step lives in its own package: ``models/`` (a
declaration becoming a SQL function), ``build/`` (a SQL file becoming a table), ``runtime/``
(the Spark session).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.build.config import PROJECT_FILE, ProjectConfig, load_project_file
from sqlinfer.errors import SqlinferError
from sqlinfer.models.declaration import Located, check_unique_names, load_models_file
from sqlinfer.paths import inside
from sqlinfer.runtime import timeline
from sqlinfer.yamlfile import LineDict

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sqlinfer.build.data_tests import DataTest
    from sqlinfer.build.manifest import Manifest, NodeLoader
    from sqlinfer.build.runner import Runner, RunResult, Scored
    from sqlinfer.models.resolve import ResolvedModel
    from sqlinfer.models.udf import UdfStats
    from sqlinfer.runtime.daemon import Prebuild


@dataclass
class Project:
    """A loaded project. ``stats`` fills in as :meth:`register` registers model functions;
    ``warnings`` collects what a command should print but need not fail for."""

    root: Path
    config: ProjectConfig
    raw: LineDict = field(repr=False)
    models: tuple[Located, ...]
    stats: dict[str, UdfStats] = field(default_factory=dict, repr=False)
    vars_override: dict[str, Any] = field(default_factory=dict)  # --vars: wins over the project file
    warnings: list[str] = field(default_factory=list, repr=False)
    _resolved: tuple[ResolvedModel, ...] | None = field(default=None, repr=False)
    _nodes: NodeLoader | None = field(default=None, repr=False)
    _prebuilt: set[str] = field(default_factory=set, repr=False)  # functions whose networks the early daemon builds

    @classmethod
    def load(cls, path: str | Path, variables: dict[str, Any] | None = None) -> Project:
        """Read and validate the project file and its models files (no Spark, no torch).
        ``variables`` override the project file's `vars:`."""
        root = Path(path).resolve()
        config, raw = load_project_file(root)
        models: list[Located] = []
        for relative in config.models:
            models_path = inside(root, relative, what="models file", path=root / PROJECT_FILE,
                                 line=raw.line_of("models"))
            models.extend(load_models_file(models_path))
        check_unique_names(tuple(models))
        return cls(root, config, raw, tuple(models), vars_override=dict(variables or {}))

    @property
    def project_file(self) -> Path:
        return self.root / PROJECT_FILE

    @property
    def target(self) -> Path:
        return self._inside(self.config.target, "target")

    def _inside(self, relative: str, key: str) -> Path:
        return inside(self.root, relative, what=key, path=self.project_file, line=self.raw.line_of(key))

    def resolve_models(self) -> tuple[ResolvedModel, ...]:
        """Weights read, defaults applied, networks checked: every declaration error surfaces here
        (once; later calls return the same models). Imports torch unless every model comes from
        the project's cache of earlier checks (``target/resolved_models.json``)."""
        if self._resolved is None:
            from sqlinfer.models.mlflow_registry import Settings, absolute_uri, using
            from sqlinfer.models.resolve import resolve_all

            given = self.config.mlflow
            registry = Settings(*(absolute_uri(uri, self.root) if uri else None
                                  for uri in (given.tracking_uri, given.registry_uri)))
            with using(registry):
                self._resolved = resolve_all(self.models, self.root, self.target / "resolved_models.json")
        return self._resolved

    def nodes(self) -> NodeLoader:
        """The project's SQL nodes (found once; each node rendered once per purpose). Template
        errors surface at its ``load()``, without Spark."""
        if self._nodes is None:
            from sqlinfer.build.manifest import NodeLoader

            self._nodes = NodeLoader(
                self._inside(self.config.sql, "sql"), self._inside(self.config.macros, "macros"),
                self.config.database, self.config.sources, {**self.config.vars, **self.vars_override},
                {m.decl.name: m.decl.udf_name for m in self.models}, self._inside(self.config.seeds, "seeds"))
        return self._nodes

    def spark_conf(self, conf: dict[str, Any] | None = None, short: bool = False) -> dict[str, Any]:
        """The settings a command asks of Spark: a short command's (:data:`SHORT_COMMAND`), then
        the project file's `spark:` section, then ``conf`` (--conf): the later win."""
        from sqlinfer.runtime.settings import SHORT_COMMAND

        return {**(SHORT_COMMAND if short else {}), **self.config.spark, **(conf or {})}

    def session(self, master: str | None = None, conf: dict[str, Any] | None = None, *,
                short: bool = False, prebuild: Prebuild | None = None) -> SparkSession:
        """The project's SparkSession, with :meth:`spark_conf`'s settings (``short``: a command
        that answers and exits without running a model); ``prebuild`` learns where its early
        worker daemon is (sqlinfer/runtime/daemon.py)."""
        from sqlinfer.models import flavors
        from sqlinfer.runtime import daemon, kept_session
        from sqlinfer.runtime.session import build_session

        # Before the JVM starts: its Python worker daemon, and an early one, inherit the variable.
        os.environ[daemon.EXTRA_ENV] = ",".join(flavors.worker_modules(m.decl.flavor for m in self.models))
        # A kept session's first command may be a short one; the session serves builds after it.
        short = short and not kept_session.serving()
        return build_session(self.target, master, self.spark_conf(conf, short), prebuild, light=short)

    def start(self, master: str | None = None, conf: dict[str, Any] | None = None, *,
              short: bool = False) -> SparkSession:
        """Resolve the models and start the project's session at once: what the commands do first.

        Both take seconds, on different cores: the JVM starts (its own process) on a background
        thread while this thread imports torch, reads the weights and checks each network. A
        declaration error is raised as soon as it is found, without waiting for the JVM; the
        half-started JVM ends with this process.

        The early worker daemon the session starts (a local master) gets the resolved models to
        build before it forks the workers (sqlinfer/runtime/daemon.py); a build then does not
        build them again in the workers (:meth:`_build_models`).
        """
        from sqlinfer.runtime.daemon import Prebuild

        started: dict[str, Any] = {}
        prebuild = Prebuild()

        def start_session() -> None:
            try:
                started["spark"] = self.session(master, conf, short=short, prebuild=prebuild)
            except BaseException as exc:  # re-raised in the calling thread
                started["error"] = exc
            finally:
                prebuild.started(None)  # a session that failed early has no early daemon to wait for

        # A daemon thread: the process may exit on a declaration error while the JVM still starts.
        thread = threading.Thread(target=start_session, name="sqlinfer-start-session", daemon=True)
        thread.start()
        models = self.resolve_models()
        timeline.mark("models resolved")
        self._prebuilt = set(prebuild.send(models))
        thread.join()
        if "error" in started:
            raise started["error"]
        spark: SparkSession = started["spark"]
        return spark

    def register(self, spark: SparkSession, *, views: bool = True,
                 sources: Iterable[str] | None = None) -> dict[str, UdfStats]:
        """Register every model's UDF, the sources (temporary views; all of them, or those named in
        ``sources``) and, with ``views``, the project's view nodes on ``spark``."""
        from sqlinfer.models.udf import register

        for model in self.resolve_models():
            self.stats[model.plan.udf_name] = register(spark, model, self.target / "weights")
        timeline.mark("model functions registered")
        self.register_sources(spark, self.config.sources if sources is None else sources)
        if views:
            self.create_views(spark)
        return self.stats

    def register_for_query(self, spark: SparkSession, query: str) -> dict[str, UdfStats]:
        """What one query needs (`sqlinfer sql`): every model function, and only the sources and view
        nodes the query names, with the views and sources those views read (a SHOW or DESCRIBE
        statement gets all of them). Listing a source's
        files takes a second or more, so a query that names none starts sooner; and a source that
        cannot be read blocks only the queries that read it."""
        from sqlinfer.build.manifest import identifiers
        from sqlinfer.build.materialize import Materializer

        if query.split(None, 1)[:1] and query.split(None, 1)[0].upper() in ("SHOW", "DESCRIBE", "DESC"):
            return self.register(spark)  # listing what the project offers: all of it
        named = identifiers(query)
        try:
            manifest = self.nodes().load()
        except SqlinferError as exc:
            self.warnings.append(f"view nodes not created: {exc}")
            return self.register(spark, views=False, sources=named & set(self.config.sources))
        views = _views_read(manifest, named)
        for name in views:
            named |= {*manifest.nodes[name].rendered.sources, *identifiers(manifest.nodes[name].sql)}
        stats = self.register(spark, views=False, sources=named & set(self.config.sources))
        self.warnings.extend(Materializer(spark, self.config.database).views(
            [node for node in manifest.order() if node.name in views]))
        return stats

    def calls_models(self, query: str) -> bool:
        """Whether ``query`` may call a model function: by name, or through a view node it reads
        (when the project's nodes cannot be rendered, assume so)."""
        from sqlinfer.build.manifest import identifiers
        from sqlinfer.build.templating import called_functions
        from sqlinfer.models.plan import checked_name

        functions = {name for m in self.models for name in (m.decl.udf_name, checked_name(m.decl.udf_name))}
        if called_functions(query, functions):  # the same check as a node's model functions
            return True
        try:
            manifest = self.nodes().load()
        except SqlinferError:
            return True
        return any(manifest.nodes[name].udfs for name in _views_read(manifest, identifiers(query)))

    def register_sources(self, spark: SparkSession, names: Iterable[str]) -> None:
        """The named sources as temporary views; a glob that matches no file is a warning (an
        error for a source declared `required: true`)."""
        from sqlinfer.build.sources import register_sources

        chosen = {name: source for name, source in self.config.sources.items() if name in set(names)}
        self.warnings.extend(register_sources(spark, chosen, self.root, self.project_file, self.raw))
        if chosen:
            timeline.mark(f"sources registered ({', '.join(chosen)})")

    def create_views(self, spark: SparkSession) -> None:
        """The view nodes as temporary views. A node that cannot be rendered, or a view over a
        table not built yet, must not block queries that do not use it: those views are left out
        and ``warnings`` says why."""
        from sqlinfer.build.materialize import Materializer

        try:
            manifest = self.nodes().load()
        except SqlinferError as exc:
            self.warnings.append(f"view nodes not created: {exc}")
            return
        self.warnings.extend(Materializer(spark, self.config.database).views(manifest.order()))

    def build(self, spark: SparkSession, select: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
              full_refresh: bool = False, report: Callable[[str], None] = lambda _line: None,
              prune: bool = False, state: Path | None = None) -> RunResult:
        """Compile, then materialize the selected nodes in dependency order (see sqlinfer.build.runner);
        tables left by deleted nodes are reported, or dropped with ``prune``; ``state`` (an earlier
        build's target folder) gives ``--select state:modified`` its meaning."""
        return self._runner(spark, report).build(select, exclude, full_refresh, prune, state)

    def data_tests(self) -> list[DataTest]:
        """The project's data tests: generic ones from the SQL folder's YAML files, singular ones
        from the tests folder (sqlinfer.build.data_tests)."""
        from sqlinfer.build.data_tests import Context, load_declared, load_singular

        manifest = self.nodes().load()
        model_of = {function: m.decl.name for m in self.models
                    for function in (m.decl.udf_name, f"{m.decl.udf_name}_checked")}
        context = Context(
            relation=manifest.ref, nodes=frozenset(manifest.nodes),
            node_models={name: tuple(sorted({model_of[f] for f in node.udfs if f in model_of}))
                         for name, node in manifest.nodes.items()},
            labels={m.plan.decl.name: m.plan.labels for m in self.resolve_models()})
        sql_dir = self._inside(self.config.sql, "sql")
        tests_dir = self._inside(self.config.tests, "tests")
        yaml_files = sorted([*sql_dir.rglob("*.yml"), *sql_dir.rglob("*.yaml")]) if sql_dir.is_dir() else []
        return [*load_declared(yaml_files, context),
                *load_singular(tests_dir, lambda path: self.nodes().render_test(path, tests_dir))]

    def test(self, spark: SparkSession, select: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
             report: Callable[[str], None] = lambda _line: None) -> RunResult:
        """Run the data tests of the selected nodes against their tables (dbt's ``test``)."""
        return self._runner(spark, report).test(select, exclude)

    def docs(self, spark: SparkSession) -> Path:
        """Write the project's docs page, ``target/docs/index.html`` (sqlinfer.build.docs)."""
        from sqlinfer.build.docs import catalog, write_site

        if not self.stats:
            self.register(spark, views=False, sources=())
        return write_site(catalog(self, spark), self.target / "docs")

    def seed(self, spark: SparkSession, report: Callable[[str], None] = lambda _line: None) -> RunResult:
        """Load every seed (a CSV file of the seeds folder) into its table (dbt's ``seed``)."""
        return self._runner(spark, report).build(tuple(self.nodes().seeds))

    def compile(self, spark: SparkSession) -> Manifest:
        """Render every node to target/compiled/ and check it with Spark's analyzer (no model runs)."""
        return self._runner(spark).compile()

    def _runner(self, spark: SparkSession, report: Callable[[str], None] = lambda _line: None) -> Runner:
        from sqlinfer.build.runner import Runner

        if not self.stats:
            # Sources are registered by the runner, for the nodes it builds or checks only.
            self.register(spark, views=False, sources=())
        def register_sources(names: set[str]) -> None:
            before = len(self.warnings)
            self.register_sources(spark, names)
            for warning in self.warnings[before:]:
                report(f"WARNING {warning}")

        return Runner(spark, self.nodes(), root=self.root, target=self.target, database=self.config.database,
                      sources=register_sources, build_models=lambda functions: self._build_models(spark, functions),
                      tests=self.data_tests,
                      fingerprints={name: m.plan.fingerprint for m in self.resolve_models()
                                    for name in (m.plan.udf_name, m.plan.checked_udf_name)},
                      model_rows=self._model_rows, model_workers=self._model_workers, report=report)

    def _build_models(self, spark: SparkSession, functions: set[str]) -> threading.Thread | None:
        """Build the networks behind ``functions`` (model function names, ``_checked`` ones too)
        in the Python workers, on a background thread (sqlinfer.runtime.warm_up), returned."""
        from sqlinfer.runtime.settings import WARM_UP_WORKERS
        from sqlinfer.runtime.warm_up import build_models_in_workers

        builders = [self.stats[m.plan.udf_name].builder for m in self.resolve_models()
                    if {m.plan.udf_name, m.plan.checked_udf_name} & functions and m.plan.udf_name not in self._prebuilt]
        if not builders or spark.conf.get(WARM_UP_WORKERS, "true") != "true":
            return None
        return build_models_in_workers(spark, builders)

    def _model_rows(self) -> dict[str, Scored]:
        """Per model function: rows scored so far in this session, and the bad ones among them."""
        from sqlinfer.build.runner import Scored

        return {function: Scored(int(totals.get("rows", 0)), int(totals.get("bad_rows", 0)))
                for function, totals in ((f, s.totals()) for f, s in self.stats.items())}

    def _model_workers(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per model function: network builds and weights reads per Python worker process (pid)."""
        return {function: {counter: {str(pid): int(n) for pid, n in sorted(stats.per_process(counter).items())}
                           for counter in ("builds", "weights_reads", "inherited")}
                for function, stats in self.stats.items()}


def _views_read(manifest: Manifest, named: set[str]) -> set[str]:
    """The view nodes among ``named``, with the view nodes they read (a view's SQL runs in the
    query that reads it)."""
    def is_view(name: str) -> bool:
        return manifest.nodes[name].config.materialized == "view"

    views = {name for name in named & set(manifest.nodes) if is_view(name)}
    return views | {a for name in views for a in manifest.graph.ancestors(name) if is_view(a)}
