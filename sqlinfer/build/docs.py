"""`sqlinfer docs generate`: one self-contained HTML page about a project, ``target/docs/index.html``
(no server and no network needed; `sqlinfer docs serve` serves it on loopback).

The page shows every source, seed, node and model function: descriptions from the YAML files
(``description:`` in the project file's sources, in models.yml and in the SQL folder's properties
files), columns and types (from the built tables, or from Spark's analysis of a view), the compiled
SQL, the model's declaration, fingerprint and weights digest, the last build's results, the data
tests, and a lineage graph (sources and model functions -> nodes) whose boxes open their details.

The catalog is gathered here (it needs the session: schemas come from Spark); the page's own
script (``sqlinfer/resources/docs.html``) draws it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlinfer.yamlfile import LineDict, LineList, load_yaml

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from sqlinfer.project import Project

PLACEHOLDER = "/*SQLINFER_CATALOG*/null"


def _descriptions(yaml_files: list[Path]) -> dict[str, dict[str, Any]]:
    """Node and column descriptions of the SQL folder's properties files."""
    found: dict[str, dict[str, Any]] = {}
    for path in yaml_files:
        data = load_yaml(path)
        entries = (data.get("nodes") or data.get("models")) if isinstance(data, LineDict) else None
        for entry in entries if isinstance(entries, LineList) else []:
            if isinstance(entry, LineDict) and isinstance(entry.get("name"), str):
                columns = [c for c in entry.get("columns") or [] if isinstance(c, LineDict)]
                found[entry["name"]] = {"description": str(entry.get("description") or ""),
                                        "columns": {str(c.get("name")): str(c.get("description") or "")
                                                    for c in columns}}
    return found


def _schema(spark: SparkSession, query: str) -> list[dict[str, str]]:
    """[{name, type}] of a query's result (Spark analyses it; nothing runs), or [] when Spark cannot
    say (a table not built yet)."""
    try:
        return [{"name": f.name, "type": f.dataType.simpleString()} for f in spark.sql(query).schema.fields]
    except Exception:  # not built, or a view over something missing: the page says so
        return []


def catalog(project: Project, spark: SparkSession) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data."""
    from sqlinfer.models import flavors

    manifest = project.compile(spark)  # renders every node, registers the sources, checks with Spark
    project.register_sources(spark, project.config.sources)
    sql_dir = project.root / project.config.sql
    described = _descriptions(sorted([*sql_dir.rglob("*.yml"), *sql_dir.rglob("*.yaml")]) if sql_dir.is_dir() else [])
    results_file = project.target / "run_results.json"
    last = json.loads(results_file.read_text()) if results_file.is_file() else {}
    last_nodes = {n["name"]: n for n in last.get("nodes", [])}
    tests = project.data_tests()
    function_model = {}
    models = {}
    for item, model in zip(project.models, project.resolve_models(), strict=True):
        decl = model.plan.decl
        for function in (decl.udf_name, model.plan.checked_udf_name):
            function_model[function] = decl.name
        models[decl.name] = {
            "function": decl.udf_name, "flavor": decl.flavor, "description": decl.description or "",
            "from": flavors.get(decl.flavor).describe(item, model.weights),
            "input": f"{decl.input} ({decl.input_type})", "returns": decl.return_type,
            "fingerprint": model.plan.fingerprint, "weights_sha256": hashlib.sha256(model.weights.data).hexdigest(),
            "labels": len(model.plan.labels) if model.plan.labels else None,
            "declaration": decl.model_dump(mode="json", by_alias=True, exclude_none=True),
            "file": f"{item.path.relative_to(project.root)}:{item.raw.line}"}
    nodes = {}
    for name, node in manifest.nodes.items():
        kind = node.config.materialized
        relation = manifest.ref(name)
        info = described.get(name, {"description": "", "columns": {}})
        columns = _schema(spark, node.sql if kind == "view" else f"SELECT * FROM {relation}")
        nodes[name] = {
            "kind": kind, "file": str(node.path.relative_to(project.root)), "relation": relation,
            "description": info["description"],
            "columns": [{**c, "description": info["columns"].get(c["name"], "")} for c in columns],
            "sql": node.path.read_text(encoding="utf-8") if kind == "seed" else node.sql,
            "config": asdict(node.config), "refs": sorted(node.rendered.refs), "sources": sorted(node.rendered.sources),
            "models": sorted({function_model[f] for f in node.udfs if f in function_model}),
            "last_run": {**{k: last_nodes[name].get(k) for k in ("status", "action", "rows", "rows_scored", "message")},
                         "seconds": round(last_nodes[name].get("seconds") or 0, 1)} if name in last_nodes else None,
            "tests": [{"name": t.name, "severity": t.severity} for t in tests if t.node == name]}
    sources = {name: {"description": source.description or "", "format": source.format, "path": source.path,
                      "table": source.table, "glob": source.glob,
                      "columns": _schema(spark, f"SELECT * FROM `{name}`")}
               for name, source in project.config.sources.items()}
    return {"project": project.config.name, "database": project.config.database, "nodes": nodes,
            "sources": sources, "models": models, "generated_at": last.get("generated_at"),
            "last_build": {"success": last.get("success"), "generated_at": last.get("generated_at")} if last else None,
            "singular_tests": [t.name for t in tests if t.node is None]}


def write_site(data: dict[str, Any], folder: Path) -> Path:
    """The page with the catalog inlined: one file, opened straight from disk or served."""
    page = resources.files("sqlinfer").joinpath("resources/docs.html").read_text(encoding="utf-8")
    # `</` inside a <script> would end it: JSON allows the escaped form.
    inlined = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.html"
    path.write_text(page.replace(PLACEHOLDER, inlined), encoding="utf-8")
    return path
