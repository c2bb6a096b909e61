"""The project's SQL nodes: find the files, render them, check their references, order them.

A first pass renders every node to learn its `config()` (a `ref()` to a view node names a
temporary view, to a table node a metastore table); later renders write the SQL. One
:class:`NodeLoader` keeps the files it found, the first pass and the manifest, so a command
renders each node once per purpose (the manifest, the compile check, an incremental run).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlinfer.build.dag import CycleError, Graph
from sqlinfer.build.templating import NodeConfig, RenderContext, Rendered, Renderer, called_functions
from sqlinfer.errors import TemplateError, closest
from sqlinfer.models.plan import checked_name
from sqlinfer.yamlfile import IDENTIFIER


@dataclass
class Node:
    """One SQL file, rendered."""

    name: str
    path: Path  # the .sql file
    relative: str  # its path under the SQL folder (the Jinja template name)
    rendered: Rendered
    udfs: set[str] = field(default_factory=set)  # model functions the SQL calls

    @property
    def config(self) -> NodeConfig:
        return self.rendered.config

    @property
    def sql(self) -> str:
        return self.rendered.sql


@dataclass
class Manifest:
    """Every node of the project, and their graph."""

    nodes: dict[str, Node]
    graph: Graph
    ref: Callable[[str], str]  # what ref(node) renders to in these nodes' SQL

    def order(self, select: Iterable[str] = (), exclude: Iterable[str] = (),
              modified: set[str] | None = None) -> list[Node]:
        return [self.nodes[name] for name in self.graph.select(select, exclude, modified)]


def identifiers(sql: str) -> set[str]:
    """The words of a SQL text that could name a relation: a source or view may be named in SQL
    without source() or ref(), since each is a temporary view under its own name."""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", sql))


def relation_name(database: str, node: str, config: NodeConfig) -> str:
    """How SQL names a node's relation: views are session views, the rest live in the metastore."""
    return f"`{node}`" if config.materialized == "view" else f"`{database}`.`{node}`"


def find_sql_files(sql_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(sql_dir.rglob("*.sql")):
        name = path.stem
        if not IDENTIFIER.match(name):
            raise TemplateError(f"node file name {path.name!r} must be an identifier (letters, digits, _)",
                                code="sql.bad_name", path=path)
        if name in files:
            raise TemplateError(f"two nodes named {name!r}: {files[name]} and {path}", code="sql.duplicate_node",
                                path=path)
        files[name] = path
    return files


def find_seed_files(seeds_dir: Path) -> dict[str, Path]:
    """The CSV files of the seeds folder, by name (dbt's seeds: small tables kept with the project)."""
    files: dict[str, Path] = {}
    for path in sorted(seeds_dir.rglob("*.csv")) if seeds_dir.is_dir() else []:
        if not IDENTIFIER.match(path.stem):
            raise TemplateError(f"seed file name {path.name!r} must be an identifier (letters, digits, _)",
                                code="sql.bad_name", path=path)
        if path.stem in files:
            raise TemplateError(f"two seeds named {path.stem!r}: {files[path.stem]} and {path}",
                                code="sql.duplicate_node", path=path)
        files[path.stem] = path
    return files


def seed_node(name: str, path: Path, seeds_dir: Path) -> Node:
    """A seed as a node: no SQL of its own (the build loads its CSV file), and nothing upstream."""
    relative = path.relative_to(seeds_dir).as_posix()
    return Node(name, path, relative, Rendered(f"-- seed {relative}", NodeConfig(materialized="seed")))


class NodeLoader:
    """Renders a project's SQL folder (and lists its seeds) into a :class:`Manifest`."""

    def __init__(self, sql_dir: Path, macros_dir: Path, database: str, sources: Iterable[str],
                 variables: Mapping[str, Any], udfs: Mapping[str, str], seeds_dir: Path) -> None:
        self.sql_dir = sql_dir
        self.seeds_dir = seeds_dir
        self.renderer = Renderer(sql_dir, macros_dir)
        self.macros_dir = macros_dir
        self.database = database
        self.sources = set(sources)
        self.vars = variables
        self.udfs = udfs
        # Each model's function and its `_checked` companion: a node calling either is scored.
        self._functions = {name for udf in udfs.values() for name in (udf, checked_name(udf))}
        self.files = find_sql_files(sql_dir) if sql_dir.is_dir() else {}
        self.seeds = find_seed_files(seeds_dir)
        self._configs: dict[str, NodeConfig] | None = None
        self._manifest: Manifest | None = None
        for name in self.files:
            if name in self.sources:
                raise TemplateError(f"node {name!r} has the name of a source; rename one of them",
                                    code="sql.name_clash", path=self.files[name])
        for name, path in self.seeds.items():
            if name in self.files or name in self.sources:
                other = self.files.get(name) or "a source of sqlinfer_project.yml"
                raise TemplateError(f"seed {name!r} has the name of {other}; rename one of them",
                                    code="sql.name_clash", path=path)

    def render(self, name: str, ref: Callable[[str], str], *, incremental: bool = False,
               source: Callable[[str], str] | None = None) -> Rendered:
        path = self.files[name]
        context = RenderContext(
            vars=self.vars, udfs=self.udfs, ref=ref, source=source or self.source_name,
            this=f"`{self.database}`.`{name}`", incremental=incremental)
        return self.renderer.render(path, path.relative_to(self.sql_dir).as_posix(), context)

    def render_test(self, path: Path, tests_dir: Path) -> Rendered:
        """A singular test (a SQL file of the tests folder) rendered like a node, its ref() and
        source() checked against the project's nodes, seeds and sources."""
        manifest = self.load()
        # An unknown ref() renders a stand-in here; the check below reports it at its line.
        context = RenderContext(vars=self.vars, udfs=self.udfs, source=self.source_name,
                                ref=lambda name: manifest.ref(name) if name in manifest.nodes else f"`{name}`")
        rendered = Renderer(tests_dir, self.macros_dir).render(path, path.relative_to(tests_dir).as_posix(), context)
        for ref, line in rendered.refs.items():
            if ref not in manifest.nodes:
                raise TemplateError(f"ref({ref!r}): no such node{closest(ref, manifest.nodes)}",
                                    code="sql.unknown_ref", path=path, line=line or None)
        for source, line in rendered.sources.items():
            if source not in self.sources:
                raise TemplateError(f"source({source!r}): no such source{closest(source, self.sources)}",
                                    code="sql.unknown_source", path=path, line=line or None)
        return rendered

    @staticmethod
    def source_name(name: str) -> str:
        return f"`{name}`"  # sources are registered as temporary views under their own names

    def configs(self) -> dict[str, NodeConfig]:
        """Every node's config(), from a first render that also checks every ref() and source()."""
        if self._configs is None:
            first = {name: self.render(name, lambda n: f"__ref_{n}") for name in self.files}
            for name, rendered in first.items():
                self._check_references(name, rendered)
            self._configs = {**{name: NodeConfig(materialized="seed") for name in self.seeds},
                             **{name: rendered.config for name, rendered in first.items()}}
        return self._configs

    def load(self) -> Manifest:
        """Every node rendered as it is built (rendered once, then kept)."""
        if self._manifest is None:
            configs = self.configs()
            self._manifest = self._render_all(lambda node: relation_name(self.database, node, configs[node]))
        return self._manifest

    def load_with(self, ref_names: Mapping[str, str]) -> Manifest:
        """Every node rendered with ``ref(node)`` as ``ref_names[node]`` (the compile check's stand-ins)."""
        self.configs()
        return self._render_all(lambda node: ref_names[node])

    def _render_all(self, ref: Callable[[str], str]) -> Manifest:
        nodes = {name: seed_node(name, path, self.seeds_dir) for name, path in self.seeds.items()}
        for name in self.files:
            rendered = self.render(name, ref)
            nodes[name] = Node(name, self.files[name], self.files[name].relative_to(self.sql_dir).as_posix(),
                               rendered, called_functions(rendered.sql, self._functions))
        graph = Graph({name: node.rendered.refs for name, node in nodes.items()})
        try:
            graph.order()
        except CycleError as exc:
            # Point at the ref() that closes the cycle.
            last, first_node = exc.cycle[-2], exc.cycle[-1]
            raise TemplateError(exc.message, code=exc.code, path=self.files[last],
                                line=nodes[last].rendered.refs.get(first_node)) from None
        return Manifest(nodes, graph, ref)

    def _check_references(self, name: str, rendered: Rendered) -> None:
        for ref, line in rendered.refs.items():
            if ref not in self.files and ref not in self.seeds:
                names = [*self.files, *self.seeds]
                known = ", ".join(sorted(names)) or "none"
                raise TemplateError(f"ref({ref!r}): no such node{closest(ref, names)} (nodes: {known})",
                                    code="sql.unknown_ref",
                                    path=self.files[name], line=line or None)
        for source, line in rendered.sources.items():
            if source not in self.sources:
                known = ", ".join(sorted(self.sources)) or "none"
                raise TemplateError(f"source({source!r}): no such source in sqlinfer_project.yml"
                                    f"{closest(source, self.sources)} (sources: {known})",
                                    code="sql.unknown_source", path=self.files[name], line=line or None)
        cfg = rendered.config
        if cfg.materialized == "incremental" and not cfg.unique_key:
            raise TemplateError("an incremental node needs config(unique_key=...)", code="sql.bad_config",
                                path=self.files[name], line=1)
