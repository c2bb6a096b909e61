"""sqlinfer's worker path against plain PyTorch on one GPU, without Spark or Java:
``python bench/worker_bench.py --device cuda`` (``--quick --device cpu`` checks it in seconds).

For machines that have PyTorch, torchvision, Pillow, pyarrow, numpy, safetensors and pydantic but no
Java, pyspark or YAML library (issue 10's GPU boxes): nothing here imports them, and sqlinfer need
not be installed (the repository root goes on ``sys.path`` and ``PYTHONPATH``). On the same JPEGs
(generated, or ``--images``), the same random-init weights (saved once to a safetensors file) and
the same input size, it times in this one process, one after the other:

a. the forward-only ceiling: one preprocessed batch already on the device, channels-last, in fp32
   (TF32 off) and in bf16 (``module.to(torch.bfloat16)``);
b. plain PyTorch as a competent user writes it: bench.plain's Dataset (torchvision's eval
   transforms over PIL) and a DataLoader with a worker per core, ``pin_memory``, persistent
   workers, in fp32, channels-last fp32 and channels-last + bf16 autocast; the fastest is "best plain";
c. (CUDA only) a hand-written GPU-decode script: ``torchvision.io.decode_jpeg`` on batches on the
   GPU, resize and crop there, channels-last bf16: the bar a very good user could reach;
d. sqlinfer's worker path, ``sqlinfer.worker.score.score`` fed Arrow binary arrays as Spark would
   feed a UDF: fp32 and bf16 with ``preprocess.decoder: auto``, and fp32 with ``decoder: cpu``;
e. decoding alone (PIL decode + resize + crop, no network): 1 thread, a thread per core, a
   process per core, and sqlinfer's decode pool.

Each line prints images/s, the GPU's mean utilization while it ran (``nvidia-smi``, CUDA only) and
its ratio to the best plain line; then a prediction check (sqlinfer fp32 ``decoder: cpu`` against
plain PyTorch fp32 on the same images) and issue 10's targets. ``bench.json`` in ``--out`` has all
of it. docs/performance.md ("The Spark-free GPU bench") explains the lines; bench/gpu_box.sh runs it
on a fresh GPU machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# sqlinfer's decoder processes are fresh interpreters: they find sqlinfer through PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

from bench import images, worker_lines  # noqa: E402 - needs the sys.path entry above
from bench.gpu import GpuSampler  # noqa: E402
from bench.worker_lines import Inputs, Timed  # noqa: E402

if TYPE_CHECKING:
    from sqlinfer.models.resolve import ResolvedModel

# Issue 10's acceptance targets: (key, what, needed).
TARGETS = (
    ("bf16_vs_best_plain", "sqlinfer bf16 vs best plain PyTorch", 2.5),
    ("bf16_gpu_busy", "GPU busy during sqlinfer bf16 (%)", 60.0),
    ("fp32_vs_plain_fp32", "sqlinfer fp32 vs plain PyTorch fp32", 1.5),
    ("decoder_cpu_vs_best_plain", "sqlinfer fp32 decoder: cpu vs best plain PyTorch", 0.9),
    ("pool_vs_processes", "sqlinfer decode pool vs decoding in processes", 0.9),
)


def cores() -> int:
    """The cores this process may run on (what sqlinfer's worker takes without Spark)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/worker_bench.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--n", type=int, default=6144, help="images")
    parser.add_argument("--images", type=Path, help="use these JPEGs (the first N *.jpg) instead of generated ones")
    parser.add_argument("--model", default="resnet50", help="torchvision architecture (random-init weights)")
    parser.add_argument("--size", type=int, default=224, help="network input size (crop)")
    parser.add_argument("--batch", type=int, default=64, help="DataLoader batch and rows per Arrow batch")
    parser.add_argument("--forward-batch", type=int, default=256, help="batch of the ceiling and the GPU script")
    parser.add_argument("--workers", type=int, default=cores(),
                        help="DataLoader workers, decode threads and decode processes")
    parser.add_argument("--one-thread-n", type=int, default=1024,
                        help="images for the 1-thread decode line (the slowest; its rate is per image)")
    parser.add_argument("--check-n", type=int, default=256, help="images for the prediction check")
    parser.add_argument("--quick", action="store_true",
                        help="check the bench works: 32 small images, size 64, resnet18, batches of 8")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "worker")
    opts = parser.parse_args(argv)
    if opts.device is None:
        import torch

        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.quick:
        opts.n, opts.size, opts.model = min(opts.n, 32), 64, "resnet18"
        opts.batch = opts.forward_batch = 8
    opts.one_thread_n = min(opts.one_thread_n, opts.n)
    opts.check_n = min(opts.check_n, opts.n)
    return opts


# --- the inputs: images, weights, sqlinfer's plans ---------------------------------------------------


def _generated(index_and_widths: tuple[int, int, int]) -> tuple[int, bytes]:
    index, min_width, max_width = index_and_widths
    # bench.images.write's seed for image `index` (its default seed 0): the same files it writes.
    return index, images.jpeg(index, min_width, max_width)


def image_files(opts: argparse.Namespace, work: Path) -> list[Path]:
    """The first N ``--images``, or N generated photo-like JPEGs (made once, in parallel, and kept
    in ``<out>/work`` for the next run)."""
    if opts.images is not None:
        found = sorted(opts.images.glob("*.jpg"))[:opts.n]
        if len(found) < opts.n:
            sys.exit(f"--images {opts.images}: {len(found)} *.jpg files, fewer than --n {opts.n}")
        return found
    widths = (96, 160) if opts.quick else (320, 640)  # bench.images' default: about 500x375 on average
    folder = work / f"images_{widths[0]}-{widths[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    missing = [(i, *widths) for i in range(opts.n) if not (folder / f"img_{i:05d}.jpg").exists()]
    if len(missing) > 64:  # one core makes ~35 images/s: spread thousands over the cores
        with multiprocessing.get_context("spawn").Pool(opts.workers) as pool:
            for index, data in pool.imap_unordered(_generated, missing, chunksize=16):
                (folder / f"img_{index:05d}.jpg").write_bytes(data)
    return images.write(folder, opts.n, min_width=widths[0], max_width=widths[1])


def weights_file(opts: argparse.Namespace, work: Path) -> Path:
    """Random-init weights (seed 0, like bench/run.py's) as a safetensors file, made once."""
    path = work / "weights" / f"{opts.model}.safetensors"
    if not path.exists():
        import torch
        import torchvision
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = torchvision.models.get_model(opts.model, weights=None)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def resolved_model(opts: argparse.Namespace, weights: Path, precision: str, decoder: str) -> ResolvedModel:
    """sqlinfer's model, declared from a dict instead of models.yml and resolved as a project
    would resolve it (the network checked, the fingerprint computed)."""
    from bench import plain
    from sqlinfer.models.declaration import Located, ModelDecl
    from sqlinfer.models.resolve import resolve
    from sqlinfer.yamlfile import LineDict

    # The plain Dataset's preprocessing spelled out, so both sides do the same work.
    declared = {"name": f"{opts.model}_{precision}_{decoder}", "flavor": "torchvision",
                "architecture": opts.model, "weights": weights.name,
                "preprocess": {"resize": opts.size * 256 // 224, "crop": opts.size, "interpolation": "bilinear",
                               "mean": list(plain.MEAN), "std": list(plain.STD), "decoder": decoder},
                "output": "logits", "device": opts.device, "precision": precision}
    # No YAML file: an empty line map, so an error in this declaration points at this file.
    raw = LineDict(declared)
    raw.key_lines = {}
    return resolve(Located(ModelDecl.model_validate(declared), Path(__file__), raw), weights.parent)


# --- running and reporting ---------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import numpy
    import PIL
    import pyarrow
    import torch
    import torchvision

    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor())
    return {"machine": platform.node(), "platform": platform.platform(), "cpu": cpu,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pillow": PIL.__version__, "pyarrow": pyarrow.__version__, "numpy": numpy.__version__}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def run(opts: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench import plain

    print(f"[{time.strftime('%H:%M:%S')}] images, weights and sqlinfer's models ...", flush=True)
    work = opts.out / "work"
    files = image_files(opts, work)
    weights = weights_file(opts, work)
    inputs = Inputs(blobs=[p.read_bytes() for p in files], architecture=opts.model,
                    state=plain.load_state(weights), size=opts.size, device=opts.device, batch=opts.batch,
                    forward_batch=opts.forward_batch, workers=opts.workers)
    cuda = opts.device == "cuda"
    # Fixed input sizes: cuDNN may pick its fastest kernels, for every line alike (sqlinfer's
    # network turns this on process-wide anyway).
    torch.backends.cudnn.benchmark = True
    sizes = sorted({images.size_of(p) for p in files[:200]})
    results: dict[str, Any] = {"meta": {
        **_machine(), "device": opts.device, "cores": cores(), "workers": opts.workers,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu", "n": opts.n, "model": opts.model,
        "size": opts.size, "batch": opts.batch, "forward_batch": opts.forward_batch,
        "images": str(opts.images) if opts.images else "generated",
        "image_sizes": f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}",
        "mean_image_kb": round(sum(map(len, inputs.blobs)) / len(inputs.blobs) / 1024, 1),
        "bf16": "a, c, sqlinfer: module.to(torch.bfloat16); b: torch.autocast",
        "tf32": "a and sqlinfer fp32: TF32 off; b: PyTorch's defaults (cuDNN convolutions in TF32)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S")}}
    models = {(p, d): resolved_model(opts, weights, p, d) for p, d in (("fp32", "auto"), ("bf16", "auto"),
                                                                         ("fp32", "cpu"))}
    pp = models[("fp32", "cpu")].plan.preprocess
    assert pp is not None  # an image model's plan always has its preprocessing
    timed: list[Timed] = []
    plain_outputs: dict[str, Any] = {}
    sqlinfer_outputs: dict[str, Any] = {}
    missing: list[str] = []

    def step(what: str, call: Callable[[], Timed | None]) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what} ...", flush=True)
        line = call()
        if line is None:
            missing.append(what)
            print(f"  {what}: not available", flush=True)
        else:
            timed.append(line)
            print(f"  {line.images_per_second:,.0f} images/s", flush=True)

    def plain_step(setting: str) -> Timed:
        line, outputs = worker_lines.plain_loader(inputs, setting)
        plain_outputs[setting] = outputs
        return line

    def sqlinfer_step(precision: str, decoder: str) -> Timed:
        line, logits = worker_lines.sqlinfer_worker(inputs, models[(precision, decoder)], arrays,
                                                    f"{precision}, decoder: {decoder}")
        sqlinfer_outputs[f"{precision}/{decoder}"] = logits
        return line

    arrays = worker_lines.arrow_batches(inputs.blobs, opts.batch)
    with GpuSampler(opts.device) as gpu:
        step("a. forward only fp32", lambda: worker_lines.forward_only(inputs, bf16=False))
        step("a. forward only bf16", lambda: worker_lines.forward_only(inputs, bf16=True))
        for setting in ("fp32", "channels_last", "channels_last_bf16"):
            step(f"b. plain PyTorch {setting}", functools.partial(plain_step, setting))
        if cuda:
            step("c. GPU-decode script", lambda: worker_lines.gpu_decode_script(inputs))
        for precision, decoder in models:
            step(f"d. sqlinfer {precision}, decoder {decoder}", functools.partial(sqlinfer_step, precision, decoder))
        step("e. decode, 1 thread", lambda: worker_lines.decode_one_thread(inputs, pp, opts.one_thread_n))
        step("e. decode, threads", lambda: worker_lines.decode_threads(inputs, pp))
        step("e. decode, processes", lambda: worker_lines.decode_processes(inputs, pp))
        step("sqlinfer decode pool", lambda: worker_lines.decode_pool(inputs, pp))
    results["lines"] = lines(timed, gpu)
    results["missing"] = missing
    results["check"] = check(inputs, opts.check_n, sqlinfer_outputs["fp32/cpu"])
    results["targets"] = targets(results["lines"], cuda)
    return results


def lines(timed: list[Timed], gpu: GpuSampler) -> list[dict[str, Any]]:
    """Each line with its rate, its GPU utilization and its ratio to the best plain line."""
    best_plain = max(t.images_per_second for t in timed if t.section == "b")
    return [{"section": t.section, "name": t.name, "images_per_second": t.images_per_second, "rows": t.rows,
             "seconds": t.seconds, "gpu_busy": gpu.mean([(t.started, t.ended)]) if gpu.enabled else None,
             "vs_best_plain": t.images_per_second / best_plain, **t.extra} for t in timed]


def check(inputs: Inputs, rows: int, ours: Any) -> dict[str, Any]:
    """sqlinfer fp32 (decoder: cpu) against plain PyTorch fp32 (TF32 off) on the first ``rows`` images."""
    import numpy as np

    theirs = worker_lines.plain_reference(inputs, rows)
    ours = ours[:rows]
    return {"rows": rows, "max_abs_diff": float(np.max(np.abs(ours - theirs))),
            "argmax_agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
            "max_abs_logit": float(np.max(np.abs(theirs)))}


def targets(table: list[dict[str, Any]], cuda: bool) -> list[dict[str, Any]]:
    """Issue 10's targets, measured where this run has the lines (they are for CUDA: on a CPU
    they are computed for information, and the GPU's utilization is not measured)."""
    def rate(section: str, *settings: str) -> float | None:
        found = [line["images_per_second"] for line in table
                 if line["section"] == section and line.get("setting") in settings]
        return max(found) if found else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    bf16 = next((line for line in table if line.get("setting") == "bf16, decoder: auto"), None)
    best_plain = rate("b", "fp32", "channels_last", "channels_last_bf16")
    measured = {
        "bf16_vs_best_plain": ratio(rate("d", "bf16, decoder: auto"), best_plain),
        "bf16_gpu_busy": bf16["gpu_busy"] if bf16 and cuda else None,
        "fp32_vs_plain_fp32": ratio(rate("d", "fp32, decoder: auto"), rate("b", "fp32", "channels_last")),
        "decoder_cpu_vs_best_plain": ratio(rate("d", "fp32, decoder: cpu"), best_plain),
        "pool_vs_processes": ratio(rate("e", "pool"), rate("e", "processes")),
    }
    return [{"key": key, "name": name, "needed": needed, "measured": value,
             "met": None if value is None else value >= needed}
            for key, name, needed in TARGETS for value in [measured[key]]]


def _cell(value: Any, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "not measured"
    return f"{value:,.{digits}f}{suffix}"


def summary(results: dict[str, Any]) -> str:
    from sqlinfer.text_table import format_table

    meta = results["meta"]
    out = [f"sqlinfer worker bench: {meta['model']} at {meta['size']}px, {meta['n']} images "
           f"({meta['image_sizes']}, {meta['mean_image_kb']} KB on average), {meta['device_name']}, "
           f"{meta['cores']} cores, torch {meta['torch']}, torchvision {meta['torchvision']}", ""]
    out.append(format_table(["", "what", "images/s", "GPU busy", "vs best plain"], [
        [line["section"], line["name"], _cell(line["images_per_second"]), _cell(line["gpu_busy"], suffix="%"),
         f"{line['vs_best_plain']:.2f}x"] for line in results["lines"]]))
    out += [f"{what}: not available" for what in results["missing"]]
    c = results["check"]
    out += ["", f"prediction check (sqlinfer fp32 decoder: cpu vs plain PyTorch fp32, TF32 off, first {c['rows']} "
                f"images): max abs logit difference {c['max_abs_diff']:.2e} (logits up to {c['max_abs_logit']:.1f}), "
                f"argmax agreement {c['argmax_agreement']:.3f}", "", "targets (issue 10):"]
    out.append(format_table(["target", "measured", "needed", "met"], [
        [t["name"], _cell(t["measured"], 2 if t["needed"] < 10 else 0), f">= {t['needed']:g}",
         {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]] for t in results["targets"]]))
    if meta["device"] != "cuda":
        out.append("(the targets are for a CUDA GPU: on a CPU these ratios are for information only)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    results = run(opts)
    results["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(summary(results))
    (opts.out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {opts.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
