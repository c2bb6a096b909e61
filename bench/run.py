"""sqlinfer's benchmark, in one command: ``.venv/bin/python bench/run.py``.

On the same JPEG images and the same network it times, one after the other in this run:

1. reference: plain PyTorch without Spark at its best setting (a sweep of processes x threads and
   batch sizes; :mod:`bench.reference`);
2. sqlinfer: the model declared in models.yml, called from SQL, first query of a fresh session
   (cold) and second (warm), plus a sweep of model batch size x rows per Arrow batch;
3. the naive blog recipe and 4. predict_batch_udf (:mod:`bench.recipes`), cold and warm;
5. end to end: ``sqlinfer build`` of a project vs a plain PyTorch script, both as fresh processes,
   and ``sqlinfer build`` in a kept session (``SQLINFER_KEEP_SESSION``, a copy of the project);
6. with ``--scale``: sqlinfer at 1x, 4x and 10x the rows.

It prints a summary (images/second, ratio to the reference, model builds, peak RSS of workers
and driver, the cold-start breakdown, the targets) and writes ``bench.json`` and ``bench.png``
to ``--out``. docs/performance.md explains every line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import images, protocol, reference, report
from bench.gpu import GpuSampler
from bench.memory import MB, PhasePeaks, RssSampler
from sqlinfer.runtime import jvm_cache, kept_session

SECTIONS = ("reference", "sqlinfer", "naive", "pbu", "e2e")
TUNED_LINE = "reference + BN folded + channels_last"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="images")
    parser.add_argument("--model", default="resnet18", help="torchvision architecture (random-init weights)")
    parser.add_argument("--size", type=int, default=224, help="network input size (crop)")
    parser.add_argument("--images", type=Path, help="use these JPEGs (the first N *.jpg) instead of generated ones")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="sqlinfer's precision on CUDA (the reference stays fp32)")
    parser.add_argument("--master", default=None, help="Spark master (default: sqlinfer's, local[*])")
    parser.add_argument("--sweep-n", type=int, default=256, help="images for the sweeps (the best is rerun on all N)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="batch sizes of the reference and predict_batch_udf sweeps")
    parser.add_argument("--model-batches", type=int, nargs="+", default=[8, 16, 32],
                        help="sqlinfer model batch sizes to sweep")
    parser.add_argument("--arrow-batches", type=int, nargs="+", default=[8, 16, 64, 256],
                        help="rows per Arrow batch to sweep (spark.sql.execution.arrow.maxRecordsPerBatch)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each warm and end-to-end measurement this many times and keep the fastest "
                             "(on a shared machine the least disturbed)")
    parser.add_argument("--scale", action="store_true", help="also run sqlinfer at 1x, 4x, 10x the rows")
    parser.add_argument("--scale-factors", type=int, nargs="+", default=[1, 4, 10])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run to check the bench works (16 small images, 64px, small sweeps)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.n, opts.size, opts.sweep_n = min(opts.n, 16), 64, 8
        opts.batches, opts.model_batches, opts.arrow_batches = [8], [16], [16]
        opts.scale_factors = [1, 2]
    opts.sections = [s.strip() for s in opts.only.split(",") if s.strip()]
    unknown = set(opts.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    return opts


# --- the workspace: images, weights, a sqlinfer project ----------------------------------------


class Workspace:
    """``<out>/work``: the project (models.yml, weights, images, SQL), sweep and scale folders, logs."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.root = (opts.out / "work").resolve()
        self.project = self.root / "project"
        self.sweep_project = self.root / "sweep_project"  # the sweep's models, one per model batch size
        # The project again, built in a kept session: its own metastore, which that session holds.
        self.kept_project = self.root / "kept_project"
        self.images = self.project / "images"
        self.sweep_images = self.root / "sweep_images"
        self.weights = self.project / "weights" / f"{opts.model}.safetensors"
        self.logs = self.root / "logs"
        self.function = f"{opts.model}_predict"
        for folder in (self.project / "weights", self.project / "sql", self.sweep_project / "weights", self.logs):
            folder.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> IO[str]:
        return open(self.logs / f"{name}.log", "w", encoding="utf-8")

    def fresh_target(self, name: str) -> Path:
        target = self.root / "targets" / name
        shutil.rmtree(target, ignore_errors=True)
        return target


def models_yml(opts: argparse.Namespace, name: str, batch: int | None) -> str:
    """The bench's declaration: the plain PyTorch preprocessing spelled out (so both sides do the
    same work whatever the architecture's defaults), logits out, batch size left to sqlinfer
    unless ``batch`` is given."""
    lines = [f"  - name: {name}", "    flavor: torchvision", f"    architecture: {opts.model}",
             f"    weights: weights/{opts.model}.safetensors",
             f"    preprocess: {{resize: {opts.size * 256 // 224}, crop: {opts.size}, interpolation: bilinear, "
             "mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}",
             "    output: logits", f"    device: {'auto' if opts.device == 'cuda' else 'cpu'}"]
    if opts.precision != "fp32":
        lines.append(f"    precision: {opts.precision}")
    if batch is not None:
        lines.append(f"    batch_size: {batch}")
    return "\n".join(lines) + "\n"


def prepare(opts: argparse.Namespace, ws: Workspace) -> list[Path]:
    if opts.images is not None:
        supplied = sorted(opts.images.glob("*.jpg"))[:opts.n]
        if len(supplied) < opts.n:
            sys.exit(f"--images {opts.images}: {len(supplied)} *.jpg files, fewer than --n {opts.n}")
        shutil.rmtree(ws.images, ignore_errors=True)
        paths = images.link_copies(supplied, ws.images, 1)
    elif opts.quick:
        paths = images.write(ws.images, opts.n, min_width=96, max_width=160)
    else:
        paths = images.write(ws.images, opts.n)
    images.link_copies(paths[:opts.sweep_n], ws.sweep_images, 1)
    shutil.rmtree(ws.root / "sqlinfer_predictions.parquet", ignore_errors=True)  # outputs of an earlier run
    (ws.root / "reference_predictions.parquet").unlink(missing_ok=True)
    if not ws.weights.exists():
        subprocess.run([sys.executable, "-m", "bench.reference", "weights", "--architecture", opts.model,
                        "--weights", str(ws.weights)], cwd=protocol.REPO, env=protocol.child_env(), check=True)
    (ws.project / "sqlinfer_project.yml").write_text(
        "name: bench\nsources:\n  images: {format: binaryFile, path: images, glob: \"*.jpg\"}\n")
    (ws.project / "models.yml").write_text("models:\n" + models_yml(opts, opts.model, None))
    (ws.sweep_project / "sqlinfer_project.yml").write_text("name: bench_sweep\n")
    (ws.sweep_project / "models.yml").write_text(
        "models:\n" + "".join(models_yml(opts, f"{opts.model}_m{b}", b) for b in opts.model_batches))
    sweep_weights = ws.sweep_project / "weights" / ws.weights.name
    sweep_weights.unlink(missing_ok=True)
    os.link(ws.weights, sweep_weights)  # a hard link: paths in a project must stay inside it
    (ws.project / "sql" / "predictions.sql").write_text(
        "{{ config(materialized='table') }}\n"
        f"SELECT path, {ws.function}(content) AS pred FROM {{{{ source('images') }}}}\n")
    kept_session.stop(ws.kept_project / "target")  # an earlier run's, holding the copy replaced here
    copy_project(ws.project, ws.kept_project)
    return paths


def copy_project(source: Path, dest: Path) -> None:
    """``source``'s files in ``dest``, hard-linked (its target/ left out): the same project, built apart."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, copy_function=os.link, ignore=shutil.ignore_patterns("target"))


# --- running the contenders --------------------------------------------------------------------


def fastest(runs: Any) -> dict[str, Any]:
    """The run with the most images per second (of repeated runs: the least disturbed)."""
    return max(runs, key=lambda r: r["images_per_second"])


def spark_job(approach: str, args: list[str], log: IO[str], device: str = "cpu",
              when_paused: Callable[[IO[str]], None] | None = None
              ) -> tuple[dict[str, Any], dict[str, PhasePeaks], float]:
    """Run ``bench.spark_job APPROACH`` to its end, sampling its memory (and GPU) phase by phase.
    Where the job pauses (``--pause-before-warm``), ``when_paused`` runs, then the job goes on."""
    launched = time.time()
    proc = protocol.start("spark_job", [approach, *args], log, stdin=when_paused is not None)
    with GpuSampler(device) as gpu, RssSampler({proc.pid: "driver"}) as sampler:
        def on_event(event: dict) -> None:
            if event["event"] == "phase":
                sampler.phase(event["name"])
            elif event["event"] == "paused" and when_paused is not None:
                when_paused(log)
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()

        seen = protocol.events(proc, log, on_event)
        proc.wait()
    jvm_cache.wait_for_writers()  # a machine's first session leaves its JVM writing the class archive
    for peaks in sampler.phases.values():
        peaks.gpu_utilization = gpu.mean([(start, end) for start, end in peaks.windows])
    result = protocol.last_event(seen, "result", proc, log)["result"]
    return result, sampler.phases, launched


def line(name: str, query: dict[str, Any], peaks: PhasePeaks, builds: float | None) -> dict[str, Any]:
    return {"name": name, "images_per_second": query["images_per_second"], "seconds": query["seconds"],
            "rows": query["rows"], "builds": builds, "processes": len(peaks.pids("worker")),
            **peaks.summary(), "cpu_ms_per_image": peaks.tree_cpu / query["rows"] * 1000,
            "jvm_cpu_by_thread": {kind: round(cpu, 2) for kind, cpu in peaks.jvm_cpu.items()},
            "worker_rss_mb": peaks.peak("worker") / MB, "driver_rss_mb": peaks.peak("driver") / MB}


def run_reference(opts: argparse.Namespace, ws: Workspace, paths: list[Path], results: dict[str, Any]) -> None:
    common = {"workdir": ws.root, "architecture": opts.model, "weights": ws.weights, "size": opts.size,
              "device": opts.device}
    cores = os.cpu_count() or 1
    with ws.log("reference") as log:
        settings = reference.settings(cores, opts.device, opts.batches)
        if opts.quick:
            settings = settings[-1:]  # one setting is enough to check the machinery
        sweep = [reference.measure(s, paths[:opts.sweep_n], common, log) for s in settings]
        for s in sweep:
            print(f"  reference sweep: {s['label']}: {s['images_per_second']:.1f} images/s", flush=True)
        swept = fastest(sweep)
        setting = reference.Setting(**swept["setting"])
        if opts.sweep_n >= len(paths) and opts.repeat == 1:
            best = swept
        else:
            best = fastest(reference.measure(setting, paths, common, log) for _ in range(opts.repeat))
        results["reference"] = {"sweep": sweep, "sweep_n": len(paths[:opts.sweep_n]), "best": best}
        results["lines"].append({"name": f"reference ({setting.label})", "processes": setting.processes,
                                 "worker_rss_mb": best["peak_rss_mb"], **best})
        if opts.device == "cpu":
            # The best setting again with the tricks sqlinfer applies and a user can copy (batch
            # norms folded, channels-last): the faster of the two is the limit (report.limit).
            # With sqlinfer in the run, its runs alternate with sqlinfer's warm queries instead
            # (run_sqlinfer): the machine's speed drifts by 10% over minutes, and the warm ratio
            # should compare runs of the same minutes, as the end-to-end pairs do.
            variant = reference.Setting(setting.processes, setting.threads, setting.batch, tuned=True)
            results["lines"].append({"name": TUNED_LINE, "processes": setting.processes})
            if "sqlinfer" in opts.sections:
                results["reference"]["tuned_pending"] = (variant, common, paths)
            else:
                add_tuned(results, [reference.measure(variant, paths, common, log) for _ in range(opts.repeat)])


def add_tuned(results: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The tuned reference's fastest run: the limit's candidate and its line in the table."""
    tuned = fastest(runs)
    tuned["runs"] = [round(run["images_per_second"], 1) for run in runs]
    results["reference"]["tuned"] = tuned
    (row,) = (row for row in results["lines"] if row["name"] == TUNED_LINE)
    row.update(worker_rss_mb=tuned["peak_rss_mb"], **tuned)


def run_sqlinfer(opts: argparse.Namespace, ws: Workspace, results: dict[str, Any]) -> None:
    shutil.rmtree(ws.project / "target", ignore_errors=True)
    args = ["--project", str(ws.project), "--function", ws.function, "--sweep-images", str(ws.sweep_images),
            "--sweep-project", str(ws.sweep_project), "--arrow-batches", *map(str, opts.arrow_batches),
            "--export", str(ws.root / "sqlinfer_predictions.parquet"), "--repeat", str(opts.repeat)]
    if opts.master:
        args += ["--master", opts.master]
    pending = results.get("reference", {}).pop("tuned_pending", None)
    tuned_runs: list[dict[str, Any]] = []

    def before_warm(log: IO[str]) -> None:  # the job waits meanwhile, its session idle
        assert pending is not None
        variant, common, paths = pending
        tuned_runs.append(reference.measure(variant, paths, common, log))

    with ws.log("sqlinfer") as log:
        out, phases, launched = spark_job("sqlinfer", args + (["--pause-before-warm"] if pending else []), log,
                                          opts.device, before_warm if pending else None)
    if pending:
        add_tuned(results, tuned_runs)
    snapshot = out["cold"]["stats"]
    results["lines"].append(line("sqlinfer cold", out["cold"], phases["cold"], snapshot["totals"].get("builds")))
    results["lines"].append(line("sqlinfer warm", out["warm"], phases[out["warm"]["phase"]],
                                 out["warm"]["counters"].get("builds", 0)))
    for cell in out["sweep"]:
        cell.update(phases[cell["phase"]].summary())
        cell["worker_rss_mb"] = phases[cell["phase"]].peak("worker") / MB
    results["sqlinfer"] = {
        "sweep": out["sweep"], "sweep_n": opts.sweep_n, "partitions": out["partitions"],
        "default_model_batch": out["default_model_batch"],
        "default_arrow_batch": out["default_arrow_batch"], "cold_breakdown": cold_breakdown(out, phases, launched),
        "counters_warm": out["warm"]["counters"]}
    results["builds_per_process"] = out["builds_per_process"]


def cold_breakdown(out: dict[str, Any], phases: dict[str, PhasePeaks], launched: float) -> dict[str, float]:
    """Where the seconds before and during the first query go, from the job's timestamps, the
    sampled start times of the daemon and workers, and the workers' model-build timestamps.
    Keys say what; values are seconds. Steps may overlap (the workers start in the background)."""
    started: dict[int, float] = {}
    roles: dict[int, str] = {}
    for peaks in phases.values():
        for pid, created in peaks.started.items():
            started.setdefault(pid, created)
            roles[pid] = peaks.roles[pid]
    daemons = sorted(started[p] for p, r in roles.items() if r == "daemon")
    workers = sorted(started[p] for p, r in roles.items() if r == "worker")
    snapshot = out["cold"]["stats"]
    built = sorted(float(at) for at in snapshot["built_at"].values())
    build_seconds = list(snapshot["build_seconds"].values())
    cold = out["cold"]
    query_end = cold["started"] + cold["seconds"]
    steps: dict[str, float] = {
        "python start and imports": out["imported_at"] - launched,
        "Spark session (JVM, SparkSession)": out["session_at"] - out["imported_at"],
        "register models + sources (driver: torch import, weights, network check, broadcast)":
            out["registered_at"] - out["session_at"],
    }
    if daemons:
        steps["  Python daemon started, at"] = daemons[0] - launched
    if daemons and workers:
        steps["  daemon start + preload (torch) until the first worker forks"] = workers[0] - daemons[0]
    steps["first query started, at"] = cold["started"] - launched
    if built and build_seconds:
        first_build_start = built[0] - build_seconds[0]
        steps["  first query: until a worker starts building the model"] = first_build_start - cold["started"]
        mean_build = sum(build_seconds) / len(build_seconds)
        steps["  model build (mean per worker; overlaps the first batch's decode)"] = mean_build
        steps["  scoring, from the first built model to the end of the query"] = query_end - built[0]
    steps["first query (all of it)"] = cold["seconds"]
    steps["total: process start to end of the first query"] = query_end - launched
    return steps


def run_recipes(approaches: list[str], opts: argparse.Namespace, ws: Workspace, results: dict[str, Any]) -> None:
    """The naive recipe and predict_batch_udf, each in a fresh session; with --quick both in one
    session (their "cold" is then only the first query of that recipe)."""
    groups = [approaches] if opts.quick else [[a] for a in approaches]
    for group in groups:
        name = ",".join(group)
        args = ["--images", str(ws.images), "--sweep-images", str(ws.sweep_images), "--target",
                str(ws.fresh_target(name.replace(",", "_"))), "--architecture", opts.model, "--weights",
                str(ws.weights), "--size", str(opts.size), "--batch", str(16), "--batches",
                *map(str, opts.batches), "--repeat", str(opts.repeat)]
        if opts.master:
            args += ["--master", opts.master]
        with ws.log(name.replace(",", "_")) as log:
            out, phases, _ = spark_job(name, args, log, opts.device)
        for approach in group:
            add_recipe(approach, out if len(group) == 1 else out[approach], phases,
                       "" if len(group) == 1 else f"{approach}:", results)


def add_recipe(approach: str, out: dict[str, Any], phases: dict[str, PhasePeaks], prefix: str,
               results: dict[str, Any]) -> None:
    label = "naive recipe" if approach == "naive" else "predict_batch_udf"
    results["lines"].append(line(f"{label} cold", out["cold"], phases[prefix + "cold"], out["cold"].get("builds")))
    warm = line(f"{label} warm", out["warm"], phases[out["warm"]["phase"]], out["warm"].get("builds"))
    if approach == "pbu":
        warm["batch"] = out["warm"]["batch"]
    results["lines"].append(warm)
    results[approach] = {"sweep": out.get("sweep", []), "builds_per_udf": out.get("builds_per_udf")}


def sqlinfer_e2e(opts: argparse.Namespace, project: Path, log: IO[str], kept: bool = False) -> dict[str, Any]:
    """`sqlinfer build` of the bench project as a fresh process, timed from launch to exit.

    The project is an existing one, as on every build but the first: built once here, untimed,
    when it has no metastore yet. A project's very first build also creates the Derby metastore
    and its table, and a machine's first build writes the JVM's class archive
    (sqlinfer/runtime/jvm_cache.py), seconds more, once.

    ``kept``: the build runs in the project's kept session (``SQLINFER_KEEP_SESSION``), which that
    first, untimed build started; the session's processes (its JVM, daemon, workers) are measured
    with the command's, from the command's start."""
    sqlinfer = str(Path(sys.executable).with_name("sqlinfer"))
    master = ["--master", opts.master] if opts.master else []
    env = {**protocol.child_env(), **({kept_session.ENV: "30"} if kept else {})}
    if not (project / "target" / "metastore_db").exists():
        subprocess.run([sqlinfer, "build", str(project), *master], stdout=log, stderr=log, check=True, env=env)
    jvm_cache.wait_for_writers()  # that build may have left its JVM writing the class archive
    # --timings: the build's own timeline (JVM start, session, sources, node, swap) goes to the e2e log.
    command = [sqlinfer, "--timings", "build", str(project), *master]
    server = kept_session.server_pid(project / "target") if kept else None
    sampler = RssSampler({server: "driver"} if server else {})
    sampler.exclude_past()
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=project, stdout=log, stderr=log, env=env)
    sampler.roots[proc.pid] = "driver"
    with sampler:
        code = proc.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see the e2e log")
    if kept and kept_session.server_pid(project / "target") != server:
        raise RuntimeError(f"the kept session {server} did not run {' '.join(command)}; see the e2e log")
    peaks = sampler.phases["start"]
    return {"label": "sqlinfer build PROJECT" + (", kept session" if kept else ""), "rows": opts.n,
            "seconds": seconds,
            "images_per_second": opts.n / seconds, "worker_rss_mb": peaks.peak("worker") / MB,
            "cpu_ms_per_image": peaks.tree_cpu / opts.n * 1000,
            "driver_rss_mb": peaks.peak("driver") / MB, "processes": len(peaks.pids("worker")),
            "foreign_cpu": peaks.foreign_cpu, "command": command,
            "cpu_seconds_by_role": {role: round(cpu, 2) for role, cpu in peaks.role_cpu.items()},
            "jvm_cpu_by_thread": {kind: round(cpu, 2) for kind, cpu in peaks.jvm_cpu.items()}}


def run_e2e(opts: argparse.Namespace, ws: Workspace, results: dict[str, Any]) -> None:
    best = results.get("reference", {}).get("best", {}).get("setting")
    cores = os.cpu_count() or 1
    setting = reference.Setting(**best) if best else reference.Setting(cores, 1, 16)
    if opts.device == "cpu":
        # The user's script gets the same tricks as sqlinfer's build (batch norms folded, channels-last).
        setting = reference.Setting(setting.processes, setting.threads, setting.batch, setting.loader_workers,
                                    tuned=True)
    common = {"workdir": ws.root, "architecture": opts.model, "weights": ws.weights, "size": opts.size,
              "device": opts.device}
    with ws.log("e2e") as log:
        # Alternating, so that a slower stretch of minutes on a shared machine falls on all sides.
        plains, builds, kept_builds = [], [], []
        try:
            for _ in range(opts.repeat):
                plains.append(reference.end_to_end(setting, ws.images, common, log))
                builds.append(sqlinfer_e2e(opts, ws.project, log))
                kept_builds.append(sqlinfer_e2e(opts, ws.kept_project, log, kept=True))
        finally:
            kept_session.stop(ws.kept_project / "target")
            jvm_cache.wait_for_writers()
    plain, built, kept = fastest(plains), fastest(builds), fastest(kept_builds)
    results["e2e"] = {"reference": plain, "sqlinfer": built, "kept": kept, "command": built["command"],
                      "seconds_of_each_run": {"plain": [round(r["seconds"], 2) for r in plains],
                                              "build": [round(r["seconds"], 2) for r in builds],
                                              "kept": [round(r["seconds"], 2) for r in kept_builds]}}
    results["lines"].append({"name": "end to end: plain PyTorch script", "processes": setting.processes,
                             "worker_rss_mb": plain["peak_rss_mb"], **plain})
    results["lines"].append({"name": f"end to end: {built['label']}", **built})
    results["lines"].append({"name": f"end to end: {kept['label']}", **kept})


def run_scale(opts: argparse.Namespace, ws: Workspace, paths: list[Path], results: dict[str, Any]) -> None:
    folders = []
    for factor in opts.scale_factors:
        folder = ws.root / f"scale_{factor}x"
        images.link_copies(paths, folder, factor)
        folders.append(folder)
    shutil.rmtree(ws.project / "target", ignore_errors=True)
    args = ["--project", str(ws.project), "--function", ws.function, "--sweep-images", str(ws.sweep_images),
            "--factors", *map(str, opts.scale_factors), "--scale-images", *map(str, folders)]
    if opts.master:
        args += ["--master", opts.master]
    with ws.log("scale") as log:
        out, phases, _ = spark_job("scale", args, log)
    for size in out["sizes"]:
        size["worker_rss_mb"] = phases[size["phase"]].peak("worker") / MB
        size["workers"] = len(phases[size["phase"]].pids("worker"))
    results["scale"] = out
    per_model = results.setdefault("builds_per_process", {})
    per_model[f"{ws.function} (scale session)"] = out["builds_per_process"]


def check_predictions(ws: Workspace, results: dict[str, Any]) -> None:
    """sqlinfer's warm table against the plain PyTorch script's output, row by row (by file name)."""
    import numpy as np
    import pyarrow.parquet as pq

    ours_file = ws.root / "sqlinfer_predictions.parquet"
    plain_file = ws.root / "reference_predictions.parquet"
    if not ours_file.exists() or not plain_file.exists():
        return
    ours = pq.read_table(ours_file).to_pydict()
    theirs = pq.read_table(plain_file).to_pydict()
    expected = {Path(p).name: v for p, v in zip(theirs["path"], theirs["pred"], strict=True)}
    diffs = [float(np.max(np.abs(np.asarray(v, np.float32) - np.asarray(expected[Path(p).name], np.float32))))
             for p, v in zip(ours["path"], ours["pred"], strict=True) if Path(p).name in expected]
    results["check"] = {"rows": len(diffs), "max_abs_diff": max(diffs) if diffs else float("nan")}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    ws = Workspace(opts)
    paths = prepare(opts, ws)
    sizes = sorted({images.size_of(p) for p in paths[:200]})
    results: dict[str, Any] = {"lines": [], "meta": {
        "model": opts.model, "size": opts.size, "n": opts.n, "device": opts.device, "precision": opts.precision,
        "cores": os.cpu_count(), "master": opts.master or "local[*]", "command": " ".join(sys.argv),
        "image_sizes": f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}",
        "load_before": [round(x, 2) for x in os.getloadavg()], "started": time.strftime("%Y-%m-%d %H:%M:%S")}}
    steps = [("reference", lambda: run_reference(opts, ws, paths, results)),
             ("sqlinfer", lambda: run_sqlinfer(opts, ws, results)),
             ("recipes", lambda: run_recipes([a for a in ("naive", "pbu") if a in opts.sections], opts, ws,
                                             results)),
             ("e2e", lambda: run_e2e(opts, ws, results))]
    if opts.scale:
        steps.append(("scale", lambda: run_scale(opts, ws, paths, results)))
    for name, step in steps:
        wanted = name in opts.sections or name == "scale" or (
            name == "recipes" and {"naive", "pbu"} & set(opts.sections))
        if wanted:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            started = time.perf_counter()
            step()
            print(f"[{time.strftime('%H:%M:%S')}] {name} done in {time.perf_counter() - started:.0f} s", flush=True)
    check_predictions(ws, results)
    results["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(report.summary(results))
    report.write_json(results, opts.out / "bench.json")
    written = [opts.out / "bench.json"]
    if report.chart(results, opts.out / "bench.png"):
        written.append(opts.out / "bench.png")
    else:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    print(f"\nwrote {' and '.join(map(str, written))}; logs in {ws.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
