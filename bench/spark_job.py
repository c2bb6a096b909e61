"""One Spark contender in a fresh process and a fresh session: ``python -m bench.spark_job APPROACH``.

Every query writes its predictions to a new parquet table (``CREATE TABLE ... AS SELECT path,
f(content) ...``), so Spark reads the files, runs the UDF on every row and writes the result, as a
real job does. The first query of the session is the cold one; the second, on the same images, the
warm one. Phases are reported to the bench (``@@`` events) so it can attribute peak memory to each.

Approaches:
- ``naive`` and ``pbu`` (predict_batch_udf): the recipes of :mod:`bench.recipes`, on a plain
  SparkSession with Spark's defaults, as their users run them;
- ``sqlinfer``: the project's model called from SQL, on the session sqlinfer builds;
- ``scale``: sqlinfer at 1x, 4x and 10x the rows, in one warm session.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import protocol

STARTED = time.time()


def baseline_session(target: Path, master: str | None) -> Any:
    """A SparkSession as a recipe's user builds it: same master, catalog and interpreter as
    sqlinfer's, none of sqlinfer's tuning of the workers (Arrow batch size, worker daemon). Files
    are packed into tasks as sqlinfer packs them (:func:`images_view`)."""
    import os

    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers' interpreter (the conf alone is not read)
    target.mkdir(parents=True, exist_ok=True)
    builder = (SparkSession.builder.master(master or "local[*]").appName("bench-baseline")
               .config("spark.sql.warehouse.dir", str(target / "warehouse"))
               .config("spark.hadoop.javax.jdo.option.ConnectionURL",
                       f"jdbc:derby:;databaseName={target / 'metastore_db'};create=true")
               .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={target}")
               .config("spark.pyspark.python", sys.executable)
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.ui.showConsoleProgress", "false"))
    spark = builder.enableHiveSupport().getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def images_view(spark: Any, name: str, folder: Path) -> int:
    """The JPEGs of ``folder`` as a view, in tasks of equal numbers of files as sqlinfer makes them
    for a binaryFile source: a coalesce and a read in a session of its own, which any user can
    copy (every contender gets it)."""
    from sqlinfer.build.sources import binary_files

    frame, _ = binary_files(spark, str(folder), {"pathGlobFilter": "*.jpg"})
    frame.createOrReplaceTempView(name)
    return frame.rdd.getNumPartitions()


class Queries:
    """Runs and times ``CREATE TABLE t AS SELECT path, fn(content) ...`` queries."""

    count = 0  # shared: table names stay unique in the session
    prefix = ""  # "naive:" when several recipes share one session (--quick)

    def __init__(self, spark: Any) -> None:
        self.spark = spark

    def run(self, phase: str, function: str, view: str, arrow_batch: int | None = None) -> dict[str, Any]:
        if arrow_batch is not None:
            self.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch))
        Queries.count += 1
        table = f"bench_{phase}_{Queries.count}".replace("-", "_")
        protocol.emit("phase", name=self.prefix + phase)
        started = time.time()
        self.spark.sql(f"CREATE TABLE {table} USING parquet AS SELECT path, {function}(content) AS pred FROM {view}")
        ended = time.time()
        rows = self.spark.table(table).count()
        protocol.emit("phase", name="idle")
        return {"phase": self.prefix + phase, "started": started, "seconds": ended - started, "rows": rows,
                "images_per_second": rows / (ended - started), "table": table}


def best_warm(queries: Queries, repeat: int, function: str, view: str, pause: bool = False) -> dict[str, Any]:
    """The warm query ``repeat`` times (phases warm, warm-2, ...); the fastest, with the others'
    figures under ``runs``. On a shared machine the best of a few is the least disturbed. With
    ``pause``, the job waits for a line on stdin before each (the bench runs the limit meanwhile)."""
    runs = []
    for i in range(repeat):
        if pause:
            protocol.emit("paused")
            sys.stdin.readline()
        runs.append(queries.run("warm" if i == 0 else f"warm-{i + 1}", function, view))
    best = dict(max(runs, key=lambda r: r["images_per_second"]))
    best["runs"] = [{"phase": r["phase"], "images_per_second": r["images_per_second"]} for r in runs]
    return best


def run_naive(opts: argparse.Namespace) -> dict[str, Any]:
    from bench import plain, recipes

    spark = baseline_session(opts.target, opts.master)
    session_at = time.time()
    images_view(spark, "images", opts.images)
    udf, builds = recipes.naive(spark, opts.architecture, plain.load_state(opts.weights), opts.size)
    spark.udf.register("naive_predict", udf)
    queries = Queries(spark)
    out: dict[str, Any] = {"session_at": session_at, "registered_at": time.time()}
    out["cold"] = queries.run("cold", "naive_predict", "images")
    out["cold"]["builds"] = builds.value
    out["warm"] = best_warm(queries, opts.repeat, "naive_predict", "images")
    out["warm"]["builds"] = (builds.value - out["cold"]["builds"]) / opts.repeat
    return out


def run_pbu(opts: argparse.Namespace) -> dict[str, Any]:
    from bench import plain, recipes

    spark = baseline_session(opts.target, opts.master)
    session_at = time.time()
    images_view(spark, "images", opts.images)
    images_view(spark, "sweep", opts.sweep_images)
    state = plain.load_state(opts.weights)
    counters = {}
    for batch in sorted(set(opts.batches + [opts.batch])):
        udf, counters[batch] = recipes.predict_batch(spark, opts.architecture, state, opts.size, batch)
        spark.udf.register(f"pbu_{batch}", udf)
    queries = Queries(spark)
    out: dict[str, Any] = {"session_at": session_at, "registered_at": time.time(), "sweep": []}
    out["cold"] = queries.run("cold", f"pbu_{opts.batch}", "images")
    out["cold"]["builds"] = counters[opts.batch].value
    best = opts.batches[0]
    if len(opts.batches) > 1:
        for batch in opts.batches:
            queries.run("idle", f"pbu_{batch}", "sweep")  # its own warm-up: the predict fn is cached
            result = queries.run(f"sweep-b{batch}", f"pbu_{batch}", "sweep")
            out["sweep"].append({"batch": batch, **result})
        best = max(out["sweep"], key=lambda r: r["images_per_second"])["batch"]
    elif best != opts.batch:
        queries.run("idle", f"pbu_{best}", "sweep")
    before = counters[best].value
    out["warm"] = best_warm(queries, opts.repeat, f"pbu_{best}", "images")
    out["warm"]["batch"] = best
    out["warm"]["builds"] = (counters[best].value - before) / opts.repeat
    out["builds_per_udf"] = {b: c.value for b, c in counters.items()}
    return out


def _stats_snapshot(stats: Any) -> dict[str, Any]:
    return {"totals": stats.totals(), "builds": stats.per_process("builds"),
            "built_at": stats.per_process("built_at"), "build_seconds": stats.per_process("build_seconds"),
            "batches": stats.per_process("batches")}


def _diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if not k.endswith("_at")}


def run_sqlinfer(opts: argparse.Namespace) -> dict[str, Any]:
    from sqlinfer import Project

    imported_at = time.time()
    project = Project.load(opts.project)
    spark = project.session(opts.master, dict(opts.conf))
    session_at = time.time()
    stats = project.register(spark)[opts.function]
    registered_at = time.time()
    queries = Queries(spark)
    out: dict[str, Any] = {"imported_at": imported_at, "session_at": session_at, "registered_at": registered_at,
                           "function": opts.function, "sweep": []}
    out["cold"] = queries.run("cold", opts.function, "images")
    out["cold"]["stats"] = _stats_snapshot(stats)
    before = stats.totals()
    out["warm"] = best_warm(queries, opts.repeat, opts.function, "images", opts.pause_before_warm)
    out["warm"]["stats"] = _stats_snapshot(stats)
    out["warm"]["counters"] = _diff(stats.totals(), before)
    if opts.export:  # the warm predictions, for the bench's comparison with plain PyTorch
        spark.table(out["warm"]["table"]).coalesce(1).write.mode("overwrite").parquet(str(opts.export))
    if opts.sweep_project:
        out["sweep"] = sweep_sqlinfer(spark, project, opts)
    out["builds_per_process"] = {name: s.per_process("builds") for name, s in project.stats.items()}
    # The defaults the bench reports next to the sweep: the session's rows per Arrow batch and the
    # model's batch size on the device its declaration picks.
    out["default_arrow_batch"] = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
    (model,) = (m for m in project.resolve_models() if m.plan.udf_name == opts.function)
    out["default_model_batch"] = model.plan.batch_size("cpu" if model.plan.decl.device == "cpu" else "cuda")
    out["partitions"] = spark.table("images").rdd.getNumPartitions()
    return out


def sweep_sqlinfer(spark: Any, project: Any, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Model batch size x rows per Arrow batch, on the sweep images (warm: models built first).
    The sweep's models are a project of their own, registered on the same session."""
    from sqlinfer import Project

    images_view(spark, "sweep", opts.sweep_images)
    default_arrow_batch = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    sweep = Project.load(opts.sweep_project)
    sweep_stats = sweep.register(spark, views=False)
    project.stats.update(sweep_stats)
    results = []
    for item in sweep.models:
        stats = sweep_stats[item.decl.udf_name]
        batch = item.decl.batch_size
        # Warm-up: build the model in every worker before timing (a tiny query per worker).
        queries = Queries(spark)
        queries.run("idle", item.decl.udf_name, "sweep", arrow_batch=opts.arrow_batches[0])
        for arrow in opts.arrow_batches:
            before = stats.totals()
            result = queries.run(f"sweep-m{batch}-a{arrow}", item.decl.udf_name, "sweep", arrow_batch=arrow)
            result.update({"model_batch": batch, "arrow_batch": arrow, "counters": _diff(stats.totals(), before)})
            results.append(result)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", default_arrow_batch)
    return results


def run_scale(opts: argparse.Namespace) -> dict[str, Any]:
    from sqlinfer import Project

    project = Project.load(opts.project)
    spark = project.session(opts.master, dict(opts.conf))
    stats = project.register(spark)[opts.function]
    queries = Queries(spark)
    images_view(spark, "sweep", opts.sweep_images)
    queries.run("warmup", opts.function, "sweep")
    out: dict[str, Any] = {"sizes": []}
    for factor, folder in zip(opts.factors, opts.scale_images, strict=True):
        partitions = images_view(spark, f"scale_{factor}", folder)
        before = stats.totals()
        result = queries.run(f"scale-{factor}x", opts.function, f"scale_{factor}")
        result.update({"factor": factor, "partitions": partitions, "counters": _diff(stats.totals(), before),
                       "seconds_per_row": result["seconds"] / result["rows"]})
        out["sizes"].append(result)
    out["builds_per_process"] = stats.per_process("builds")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spark_job")
    parser.add_argument("approach", help="naive, pbu, sqlinfer or scale; `naive,pbu` runs both recipes in one "
                        "session (their phases prefixed with `naive:` and `pbu:`)")
    parser.add_argument("--project", type=Path)
    parser.add_argument("--function", default="resnet18_predict")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--sweep-images", type=Path)
    parser.add_argument("--scale-images", type=Path, nargs="*", default=[])
    parser.add_argument("--factors", type=int, nargs="*", default=[])
    parser.add_argument("--target", type=Path)
    parser.add_argument("--master")
    parser.add_argument("--conf", type=lambda s: tuple(s.split("=", 1)), action="append", default=[])
    parser.add_argument("--architecture", default="resnet18")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="*", default=[16])
    parser.add_argument("--sweep-project", type=Path)
    parser.add_argument("--export", type=Path)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pause-before-warm", action="store_true",
                        help="before each warm query, report `paused` and wait for a line on stdin")
    parser.add_argument("--arrow-batches", type=int, nargs="*", default=[16])
    opts = parser.parse_args(argv)
    protocol.emit("started", at=STARTED)
    runners = {"naive": run_naive, "pbu": run_pbu, "sqlinfer": run_sqlinfer, "scale": run_scale}
    approaches = opts.approach.split(",")
    results = {}
    for approach in approaches:
        Queries.prefix = f"{approach}:" if len(approaches) > 1 else ""
        results[approach] = runners[approach](opts)
        results[approach]["started_at"] = STARTED
    result = results[approaches[0]] if len(approaches) == 1 else results
    protocol.emit("result", result=json.loads(json.dumps(result, default=str)))


if __name__ == "__main__":
    main()
