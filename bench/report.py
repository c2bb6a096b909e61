"""The bench's figures: the summary table, the cold-start breakdown, the targets, JSON and a chart.

Every ratio is against plain PyTorch measured in the same run, so a busy machine moves all
contenders alike: "vs ref" against the reference (its best setting of processes, threads and batch),
"vs limit" against the limit, the faster of the reference and the reference with the tricks sqlinfer
applies and a user can copy (batch norms folded, channels-last). The targets are against the limit.
Absolute images/second are printed for context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlinfer.text_table import format_table


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT MET", None: "not measured"}[self.met]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    return format_table(header, [[_fmt(v) for v in row] for row in rows])


def limit(results: dict[str, Any]) -> dict[str, Any] | None:
    """The best plain PyTorch of the run: the reference or its tuned variant, whichever is faster."""
    measured = [results.get("reference", {}).get(key) for key in ("best", "tuned")]
    return max((m for m in measured if m), key=lambda m: m["images_per_second"], default=None)


def contender_rows(results: dict[str, Any]) -> list[list[Any]]:
    reference = results["reference"]["best"]["images_per_second"] if "reference" in results else None
    best = limit(results)
    rows = []
    for line in results["lines"]:
        ratio = line["images_per_second"] / reference if reference else None
        to_limit = line["images_per_second"] / best["images_per_second"] if best else None
        foreign = line.get("foreign_cpu")
        row = [line["name"], line["images_per_second"], f"{ratio:.2f}x" if ratio else "-",
               f"{to_limit:.2f}x" if to_limit else "-",
               line.get("builds"), line.get("processes"), line.get("worker_rss_mb"),
               line.get("driver_rss_mb"), line.get("seconds"), line.get("cpu_ms_per_image"),
               f"{foreign * 100:.0f}%" if foreign is not None else "-"]
        if results["meta"]["device"] != "cpu":
            util = line.get("gpu_utilization")
            row.append(f"{util:.0f}%" if util is not None else "-")
        rows.append(row)
    return rows


def summary(results: dict[str, Any]) -> str:
    out = []
    meta = results["meta"]
    out.append(f"sqlinfer bench: {meta['model']} at {meta['size']}px, {meta['n']} JPEG images "
               f"({meta['image_sizes']}), device {meta['device']}, {meta['cores']} cores, master {meta['master']}")
    out.append(f"load average before: {meta['load_before']}, after: {meta.get('load_after')}")
    out.append("")
    header = ["contender", "images/s", "vs ref", "vs limit", "builds", "workers", "worker MB", "driver MB", "seconds",
              "CPU ms/img", "other load"] + (["GPU busy"] if meta["device"] != "cpu" else [])
    out.append(table(header, contender_rows(results)))
    if "reference" in results:
        out.append("")
        out.append(f"reference sweep on {results['reference']['sweep_n']} images (images/s, peak MB per process):")
        sweep = results["reference"]["sweep"]
        out.append(table(["setting", "images/s", "process MB"],
                         [[s["label"], s["images_per_second"], s["peak_rss_mb"]] for s in sweep]))
    sweeps = results.get("sqlinfer", {}).get("sweep") or []
    if sweeps:
        out.append("")
        out.append(f"sqlinfer settings on {results['sqlinfer']['sweep_n']} images (warm):")
        out.append(table(["model batch", "arrow batch", "images/s", "worker MB", "builds"],
                         [[s["model_batch"], s["arrow_batch"], s["images_per_second"], s["worker_rss_mb"],
                           s["counters"].get("builds", 0)] for s in sweeps]))
    pbu = results.get("pbu", {}).get("sweep") or []
    if pbu:
        out.append("")
        out.append("predict_batch_udf batch sizes (warm): " + ", ".join(
            f"{s['batch']}: {s['images_per_second']:.1f}/s" for s in pbu))
    cold = results.get("sqlinfer", {}).get("cold_breakdown")
    if cold:
        out.append("")
        out.append("sqlinfer cold start (fresh process and session; seconds):")
        out.append(table(["step", "seconds"], [[k, v] for k, v in cold.items()]))
    scale = results.get("scale")
    if scale:
        out.append("")
        out.append("sqlinfer at scale (warm session):")
        out.append(table(["rows", "partitions", "images/s", "ms per row", "worker MB", "builds"],
                         [[s["rows"], s["partitions"], s["images_per_second"], s["seconds_per_row"] * 1000,
                           s["worker_rss_mb"], s["counters"].get("builds", 0)] for s in scale["sizes"]]))
    e2e = results.get("e2e")
    if e2e:
        out.append("")
        out.append("end to end, CPU seconds by process (all cores):")
        for side in ("reference", "sqlinfer", "kept"):
            if side not in e2e:
                continue
            roles = e2e[side].get("cpu_seconds_by_role") or {}
            by_role = ", ".join(f"{role} {cpu:.1f}" for role, cpu in sorted(roles.items()))
            out.append(f"  {e2e[side]['label']}: {by_role}")
    jvm_lines = [(name, line) for name, line in (("sqlinfer warm query", _line(results, "sqlinfer warm")),
                                                 ("sqlinfer build, end to end", (e2e or {}).get("sqlinfer")),
                                                 ("sqlinfer build, kept session", (e2e or {}).get("kept")))
                 if line and line.get("jvm_cpu_by_thread")]
    if jvm_lines:
        out.append("")
        out.append("the JVM's CPU seconds by thread (tasks: file reads, Arrow both ways, parquet writes; driver: "
                   "planning, metastore, registration):")
        for name, line in jvm_lines:
            kinds = line["jvm_cpu_by_thread"]
            per_row = sum(kinds.values()) / line["rows"] * 1000
            out.append(f"  {name}: " + ", ".join(f"{kind} {cpu:.1f}" for kind, cpu in sorted(kinds.items()))
                       + f" ({per_row:.1f} ms per row)")
    check = results.get("check")
    if check:
        out.append("")
        out.append(f"same predictions: sqlinfer vs plain PyTorch, max |logit difference| over "
                   f"{check['rows']} rows: {check['max_abs_diff']:.2e}")
    out.append("")
    out.append("targets:")
    out.append(table(["target", "wanted", "measured", "verdict"],
                     [[t.name, t.wanted, t.measured, t.verdict] for t in targets(results)]))
    return "\n".join(out)


def _line(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((line for line in results["lines"] if line["name"] == name), None)


def targets(results: dict[str, Any]) -> list[Target]:
    out: list[Target] = []
    ref = results.get("reference", {}).get("best")
    best = limit(results)
    warm = _line(results, "sqlinfer warm")

    def ratio_target(name: str, line: dict | None, other: dict | None, wanted: float, label: str) -> None:
        if line is None or other is None:
            out.append(Target(name, f">= {wanted}x", "-", None))
            return
        ratio = line["images_per_second"] / other["images_per_second"]
        out.append(Target(name, f">= {wanted}x {label}", f"{ratio:.2f}x", ratio >= wanted))

    ratio_target("warm throughput vs best plain PyTorch", warm, best, 0.95, "limit")
    ratio_target("cold throughput vs best plain PyTorch", _line(results, "sqlinfer cold"), best, 0.85, "limit")
    ratio_target("warm vs naive recipe", warm, _line(results, "naive recipe warm"), 1.5, "naive warm")
    ratio_target("warm vs predict_batch_udf", warm, _line(results, "predict_batch_udf warm"), 1.1,
                 "pbu at best batch")

    e2e = results.get("e2e")
    ratio_target("end to end (sqlinfer build) vs plain script", e2e and e2e["sqlinfer"], e2e and e2e["reference"],
                 0.85, "script, BN folded + channels_last")
    ratio_target("end to end (sqlinfer build, kept session) vs plain script", e2e and e2e.get("kept"),
                 e2e and e2e["reference"], 0.85, "script, BN folded + channels_last")

    builds = results.get("builds_per_process")
    if builds is not None:
        worst = max((count for per_model in builds.values() for count in per_model.values()), default=0)
        out.append(Target("model builds per worker process per model", "<= 1", f"max {worst:g}", worst <= 1))

    sq = results.get("sqlinfer", {})
    if warm is not None and ref is not None and warm.get("worker_rss_mb"):
        ratio = warm["worker_rss_mb"] / ref["peak_rss_mb"]
        out.append(Target("worker peak RSS vs plain PyTorch process", "<= 1.3x",
                          f"{ratio:.2f}x ({warm['worker_rss_mb']:.0f} / {ref['peak_rss_mb']:.0f} MB)", ratio <= 1.3))
    sweeps = sq.get("sweep") or []
    if sweeps:
        # At each model batch size, the spread of worker peak RSS over the Arrow batch sizes.
        spreads = []
        for batch in sorted({s["model_batch"] for s in sweeps}):
            rss = {s["arrow_batch"]: s["worker_rss_mb"] for s in sweeps if s["model_batch"] == batch}
            spreads.append((max(rss.values()) / min(rss.values()) - 1, batch, rss))
        spread, batch, rss = max(spreads)
        out.append(Target("worker RSS across Arrow batch sizes", "<= +10%",
                          f"+{spread * 100:.1f}% at model batch {batch} (Arrow "
                          f"{', '.join(f'{k}: {v:.0f}' for k, v in sorted(rss.items()))} MB)", spread <= 0.10))
        best = max(sweeps, key=lambda s: s["images_per_second"])
        default = next((s for s in sweeps if s["model_batch"] == sq.get("default_model_batch")
                        and s["arrow_batch"] == sq.get("default_arrow_batch")), None)
        if default is not None:
            ratio = default["images_per_second"] / best["images_per_second"]
            out.append(Target("defaults vs best setting", ">= 0.90x",
                              f"{ratio:.2f}x (default {default['model_batch']}/{default['arrow_batch']}, best "
                              f"{best['model_batch']}/{best['arrow_batch']})", ratio >= 0.9))
    scale = results.get("scale")
    if scale and len(scale["sizes"]) > 1:
        first, last = scale["sizes"][0], scale["sizes"][-1]
        rss = last["worker_rss_mb"] / first["worker_rss_mb"] - 1
        per_row = last["seconds_per_row"] / first["seconds_per_row"] - 1
        span = f"{first['factor']}x to {last['factor']}x rows"
        out.append(Target(f"worker RSS, {span}", "<= +10%", f"{rss * 100:+.1f}%", rss <= 0.10))
        out.append(Target(f"time per row, {span}", "<= +10%", f"{per_row * 100:+.1f}%", per_row <= 0.10))
    else:
        out.append(Target("RSS and time per row, 1x to 10x rows", "<= +10%", "run with --scale", None))
    if results["meta"]["device"] == "cpu":
        out.append(Target("GPU: sqlinfer vs plain PyTorch on the same GPU", ">= 0.8x, GPU busy",
                          "no GPU in this run", None))
    elif warm is not None and ref is not None:
        ratio = warm["images_per_second"] / ref["images_per_second"]
        util = warm.get("gpu_utilization")
        out.append(Target("GPU: sqlinfer vs plain PyTorch on the same GPU", ">= 0.8x, GPU busy",
                          f"{ratio:.2f}x, GPU {_fmt(util, 0)}% busy", ratio >= 0.8))
    return out


def write_json(results: dict[str, Any], path: Path) -> None:
    data = dict(results)
    data["targets"] = [{"name": t.name, "wanted": t.wanted, "measured": t.measured, "met": t.met}
                       for t in targets(results)]
    path.write_text(json.dumps(data, indent=2, default=str))


def chart(results: dict[str, Any], path: Path) -> bool:
    """Images/second per contender, the reference as a dashed line. False when matplotlib is not
    installed (it comes with the `bench` extra: pip install -e ".[bench]")."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = results["lines"]
    names = [line["name"] for line in lines]
    values = [line["images_per_second"] for line in lines]
    colors = ["#4c72b0" if n.startswith("sqlinfer") else "#999999" if n.startswith("reference") else "#dd8452"
              for n in names]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    ax.barh(names[::-1], values[::-1], color=colors[::-1])
    reference = results.get("reference", {}).get("best", {}).get("images_per_second")
    if reference:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1)
        for i, value in enumerate(values[::-1]):
            ax.text(value, i, f" {value:.1f}/s ({value / reference:.2f}x)", va="center", fontsize=8)
    meta = results["meta"]
    ax.set_xlabel("images / second (higher is better)")
    ax.set_title(f"{meta['model']} {meta['size']}px, {meta['n']} images, {meta['device']}, {meta['cores']} cores")
    ax.set_xlim(0, max(values) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
