"""The Python API: a project on disk, its models and sources, registered on a SparkSession.

    project = sqlinfer.Project.load("projects/digits")
    spark = project.session()            # or any SparkSession of your own:
    project.register(spark)              # UDFs + sources as temp views
    spark.sql("SELECT digits_predict(content) FROM digits_images").show()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.config import ProjectConfig, inside, load_project_file
from sqlinfer.errors import SqlinferError
from sqlinfer.spec import Located, check_unique_names, load_models_file
from sqlinfer.yamlfile import LineDict

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sqlinfer.nodes import Manifest, NodeLoader
    from sqlinfer.registry import ResolvedModel
    from sqlinfer.runner import RunResult
    from sqlinfer.udf import UdfStats


@dataclass
class Project:
    root: Path
    config: ProjectConfig
    raw: LineDict = field(repr=False)
    models: tuple[Located, ...]
    stats: dict[str, UdfStats] = field(default_factory=dict, repr=False)
    vars_override: dict[str, Any] = field(default_factory=dict)  # --vars: wins over the project file
    warnings: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def load(cls, path: str | Path, variables: dict[str, Any] | None = None) -> Project:
        """Read and validate the project file and its models files (no Spark, no torch).
        ``variables`` override the project file's `vars:`."""
        root = Path(path).resolve()
        config, raw = load_project_file(root)
        project_file = root / "sqlinfer_project.yml"
        models: list[Located] = []
        for relative in config.models:
            models_path = inside(root, relative, what="models file", path=project_file,
                                 line=raw.line_of("models"))
            models.extend(load_models_file(models_path))
        check_unique_names(tuple(models))
        return cls(root, config, raw, tuple(models), vars_override=dict(variables or {}))

    @property
    def project_file(self) -> Path:
        return self.root / "sqlinfer_project.yml"

    @property
    def target(self) -> Path:
        return inside(self.root, self.config.target, what="target", path=self.project_file,
                      line=self.raw.line_of("target"))

    @cached_property
    def resolved(self) -> tuple[ResolvedModel, ...]:
        """Weights read, defaults applied, networks checked: all declaration errors surface here.
        Models unchanged since an earlier check come from ``target/resolved_models.json``."""
        from sqlinfer.registry import resolve_all

        return resolve_all(self.models, self.root, self.target / "resolved_models.json")

    def session(self, master: str | None = None, conf: dict[str, Any] | None = None) -> SparkSession:
        """The project's SparkSession (the project file's `spark:` section, then ``conf``)."""
        from sqlinfer.session import build_session

        return build_session(self.target, master, {**self.config.spark, **(conf or {})})

    def start(self, master: str | None = None, conf: dict[str, Any] | None = None) -> SparkSession:
        """Resolve the models and start the project's session at once: what the commands do first.

        Both take seconds, on different cores: the JVM starts (its own process) on a background
        thread while this thread imports torch, reads the weights and checks each network. A
        declaration error is raised as soon as it is found, without waiting for the JVM; the
        half-started JVM ends with this process.
        """
        started: dict[str, Any] = {}

        def start_session() -> None:
            try:
                started["spark"] = self.session(master, conf)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                started["error"] = exc

        # A daemon thread: the process may exit on a declaration error while the JVM still starts.
        thread = threading.Thread(target=start_session, name="sqlinfer-start-session", daemon=True)
        thread.start()
        self.resolved  # noqa: B018
        thread.join()
        if "error" in started:
            raise started["error"]
        return started["spark"]

    def register(self, spark: SparkSession, *, views: bool = True) -> dict[str, UdfStats]:
        """Register every model's UDF, every source (a temporary view) and, with ``views``, the
        project's view nodes on ``spark``."""
        from sqlinfer.udf import register

        for model in self.resolved:
            self.stats[model.plan.udf_name] = register(spark, model)
        self.register_sources(spark)
        if views:
            self.create_views(spark)
        return self.stats

    def node_loader(self) -> NodeLoader:
        from sqlinfer.nodes import NodeLoader

        folder = inside(self.root, self.config.sql, what="sql folder", path=self.project_file,
                        line=self.raw.line_of("sql"))
        macros = inside(self.root, self.config.macros, what="macros folder", path=self.project_file,
                        line=self.raw.line_of("macros"))
        return NodeLoader(folder, macros, self.config.database, self.config.sources,
                          {**self.config.vars, **self.vars_override},
                          {m.decl.name: m.decl.udf_name for m in self.models})

    def create_views(self, spark: SparkSession) -> None:
        """View nodes are temporary views: every session of the project creates them again.

        A node that cannot be rendered, or a view over a table not built yet, must not block queries
        that do not use it: those views are left out and ``warnings`` says why.
        """
        from sqlinfer.materialize import Materializer
        from sqlinfer.spark_errors import first_line

        try:
            manifest = self.node_loader().load()
        except SqlinferError as exc:
            self.warnings.append(f"view nodes not created: {exc}")
            return
        materializer = Materializer(spark, self.config.database)
        for node in manifest.order():
            if node.config.materialized == "view":
                try:
                    materializer.view(node)
                except Exception as exc:  # noqa: BLE001 - typically a table not built yet
                    self.warnings.append(f"view {node.name!r} not created ({node.path.name}): "
                                         f"{first_line(str(exc))}")

    def build(self, spark: SparkSession, select: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
              full_refresh: bool = False, report: Callable[[str], None] = lambda _line: None) -> RunResult:
        """Compile, then materialize the selected nodes in dependency order (see sqlinfer.runner)."""
        from sqlinfer.runner import Runner

        if not self.stats:
            self.register(spark, views=False)
        return Runner(self, spark, report).build(select, exclude, full_refresh)

    def compile(self, spark: SparkSession) -> Manifest:
        from sqlinfer.runner import Runner

        if not self.stats:
            self.register(spark, views=False)
        return Runner(self, spark).compile()

    def register_sources(self, spark: SparkSession) -> None:
        from pyspark.errors import AnalysisException, ParseException
        from pyspark.sql import functions as F

        for name, source in self.config.sources.items():
            line = self.raw["sources"].line_of(name)
            try:
                if source.table is not None:
                    frame = spark.table(source.table)
                else:
                    frame = self._reader(spark, source).load(self._source_path(source.path, line))
                for column, expression in source.columns.items():
                    frame = frame.withColumn(column, F.expr(expression))
            except (AnalysisException, ParseException) as exc:
                raise SqlinferError(f"source {name!r} cannot be read: {str(exc).splitlines()[0]}",
                                    code="source.unreadable", path=self.project_file, line=line) from None
            frame.createOrReplaceTempView(name)

    @staticmethod
    def _reader(spark: SparkSession, source: Any) -> Any:
        reader = spark.read.format(source.format)
        if source.glob:
            reader = reader.option("pathGlobFilter", source.glob)
        if source.recursive:
            reader = reader.option("recursiveFileLookup", "true")
        for key, value in source.options.items():
            reader = reader.option(key, str(value).lower() if isinstance(value, bool) else str(value))
        return reader

    def _source_path(self, path: str | None, line: int | None) -> str:
        """Relative paths are relative to the project; URIs (s3a://, hdfs://) and absolute paths pass."""
        assert path is not None
        if "://" in path or Path(path).is_absolute():
            return path
        return str(inside(self.root, path, what="source path", path=self.project_file, line=line))
