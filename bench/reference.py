"""The reference: plain PyTorch without Spark, at its best on this machine.

``sweep`` tries every (processes x threads, batch size) setting; each setting runs its processes
side by side, each over its share of the images (held in memory as bytes, a Dataset + DataLoader),
after the network is built and one warm-up batch has run, and is timed from a common start signal
to the last process's end. The fastest setting is the limit the other contenders are compared to.

``end_to_end`` times what a user's script costs from a cold start: a fresh ``python`` that
imports torch, builds the network, reads the files, predicts and writes a parquet file.

Run as ``python -m bench.reference worker|e2e|weights ...`` for the subprocess side.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from bench import protocol
from bench.memory import MB, RssSampler


@dataclass(frozen=True)
class Setting:
    processes: int
    threads: int
    batch: int
    loader_workers: int = 0  # DataLoader num_workers (GPU runs decode in loader processes)
    tuned: bool = False  # batch norms folded, channels-last (plain.tuned)

    @property
    def label(self) -> str:
        extra = f", {self.loader_workers} loader workers" if self.loader_workers else ""
        extra += ", BN folded, channels_last" if self.tuned else ""
        return f"{self.processes} proc x {self.threads} thr, batch {self.batch}{extra}"


def settings(cores: int, device: str, batches: list[int]) -> list[Setting]:
    """One process with every core's threads, and one single-threaded process per core (CPU);
    one process with a loader worker per core (GPU)."""
    if device != "cpu":
        return [Setting(1, 1, b, loader_workers=cores) for b in batches]
    out = [Setting(1, cores, b) for b in batches]
    if cores > 1:
        out += [Setting(cores, 1, b) for b in batches]
    return out


def measure(setting: Setting, paths: list[Path], common: dict[str, Any], log: IO[str]) -> dict[str, Any]:
    """Images per second of ``setting`` over ``paths`` (start-up excluded), and each process's peak RSS."""
    listing = common["workdir"] / "reference_files.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    args = ["--list", str(listing), "--architecture", common["architecture"], "--weights", str(common["weights"]),
            "--size", str(common["size"]), "--device", common["device"], "--threads", str(setting.threads),
            "--batch", str(setting.batch), "--shards", str(setting.processes),
            "--loader-workers", str(setting.loader_workers)] + (["--tuned"] if setting.tuned else [])
    procs = [protocol.start("reference", ["worker", *args, "--shard", str(i)], log, stdin=True)
             for i in range(setting.processes)]
    with RssSampler({p.pid: "reference" for p in procs}) as sampler:
        for proc in procs:
            protocol.read_event(proc, log, "ready")
        sampler.phase("run")
        started = time.perf_counter()
        for proc in procs:  # the common start signal
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        done = [protocol.read_event(proc, log, "done") for proc in procs]
        seconds = time.perf_counter() - started
    for proc in procs:
        proc.wait()
    peaks = sampler.phases["run"]
    rows = sum(d["rows"] for d in done)
    per_process = [peaks.per_pid.get(p.pid, 0) for p in procs]
    children = peaks.peak("reference_child")
    return {"setting": asdict(setting), "label": setting.label, "rows": rows, "seconds": seconds,
            "images_per_second": rows / seconds, "peak_rss_mb": max(per_process) / MB,
            "loader_rss_mb": children / MB, "builds": setting.processes,
            "gpu_utilization": max((d.get("gpu_utilization") or 0) for d in done) or None,
            "foreign_cpu": peaks.foreign_cpu, "cpu_ms_per_image": peaks.tree_cpu / rows * 1000}


# --- subprocess side -------------------------------------------------------------------------


def _loader(dataset: Any, batch: int, loader_workers: int, device: str) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch, num_workers=loader_workers, shuffle=False,
                      pin_memory=device != "cpu")


def _predict(model: Any, loader: Any, device: str, channels_last: bool) -> list[Any]:
    import torch

    outputs = []
    with torch.inference_mode():
        for batch in loader:
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(model(batch.to(device, non_blocking=True)).float().cpu().numpy())
    return outputs


def worker_main(opts: argparse.Namespace) -> None:
    import torch

    from bench import plain
    from bench.gpu import GpuSampler

    torch.set_num_threads(opts.threads)
    paths = Path(opts.list).read_text().split("\n")[opts.shard::opts.shards]
    blobs = [Path(p).read_bytes() for p in paths]
    device = "cuda" if opts.device == "cuda" else "cpu"
    model = plain.network(opts.architecture, plain.load_state(Path(opts.weights)), device)
    if opts.tuned:
        model = plain.tuned(model)
    # One warm-up batch: the first call of a network pays one-time costs a long job does not.
    _predict(model, _loader(plain.BytesDataset(blobs[:opts.batch], opts.size), opts.batch, 0, device),
             device, opts.tuned)
    loader = _loader(plain.BytesDataset(blobs, opts.size), opts.batch, opts.loader_workers, device)
    protocol.emit("ready")
    sys.stdin.readline()
    with GpuSampler(device) as gpu:
        started = time.perf_counter()
        outputs = _predict(model, loader, device, opts.tuned)
        seconds = time.perf_counter() - started
    protocol.emit("done", rows=sum(len(o) for o in outputs), seconds=seconds, gpu_utilization=gpu.mean())


def _e2e_shard(job: tuple[list[str], argparse.Namespace]) -> Any:
    import numpy as np
    import torch

    from bench import plain

    paths, opts = job
    torch.set_num_threads(opts.threads)
    device = "cuda" if opts.device == "cuda" else "cpu"
    model = plain.network(opts.architecture, plain.load_state(Path(opts.weights)), device)
    if opts.tuned:
        model = plain.tuned(model)
    loader = _loader(plain.FileDataset([Path(p) for p in paths], opts.size), opts.batch, opts.loader_workers, device)
    outputs = _predict(model, loader, device, opts.tuned)
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def e2e_main(opts: argparse.Namespace) -> None:
    """A user's whole script: imports, network, files in, predictions out (parquet)."""
    import multiprocessing

    import numpy as np
    import torch  # noqa: F401 - imported once here, before the fork, as a careful user would

    paths = sorted(str(p) for p in Path(opts.images).glob("*.jpg"))
    shards = [(paths[i::opts.shards], opts) for i in range(opts.shards)]
    if opts.shards == 1:
        parts = [_e2e_shard(shards[0])]
    else:
        # fork: the children inherit the imported torch (no thread has started yet).
        with multiprocessing.get_context("fork").Pool(opts.shards) as pool:
            parts = pool.map(_e2e_shard, shards)
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = [p for shard, _ in shards for p in shard]
    logits = np.concatenate(parts)
    column = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])
    pq.write_table(pa.table({"path": ordered, "pred": column}), opts.out)
    protocol.emit("done", rows=len(ordered))


def end_to_end(setting: Setting, images: Path, common: dict[str, Any], log: IO[str]) -> dict[str, Any]:
    """Wall time of the end-to-end script as a subprocess, process start included."""
    out = common["workdir"] / "reference_predictions.parquet"
    args = ["e2e", "--images", str(images), "--out", str(out), "--architecture", common["architecture"],
            "--weights", str(common["weights"]), "--size", str(common["size"]), "--device", common["device"],
            "--threads", str(setting.threads), "--batch", str(setting.batch), "--shards", str(setting.processes),
            "--loader-workers", str(setting.loader_workers)] + (["--tuned"] if setting.tuned else [])
    started = time.perf_counter()
    proc = protocol.start("reference", args, log)
    with RssSampler({proc.pid: "reference"}) as sampler:
        seen = protocol.events(proc, log)
        proc.wait()
    seconds = time.perf_counter() - started
    rows = protocol.last_event(seen, "done", proc, log)["rows"]
    peaks = sampler.phases["start"]
    return {"label": f"python script, {setting.label}", "rows": rows, "seconds": seconds,
            "images_per_second": rows / seconds, "foreign_cpu": peaks.foreign_cpu,
            "cpu_ms_per_image": peaks.tree_cpu / rows * 1000,
            "cpu_seconds_by_role": {role: round(cpu, 2) for role, cpu in peaks.role_cpu.items()},
            "peak_rss_mb": max(peaks.peak("reference"), peaks.peak("reference_child")) / MB}


def weights_main(opts: argparse.Namespace) -> None:
    """A random-init state_dict (seed 0) as a safetensors file: no download needed."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.get_model(opts.architecture, weights=None)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, opts.weights)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference")
    parser.add_argument("mode", choices=["worker", "e2e", "weights"])
    parser.add_argument("--list")
    parser.add_argument("--images")
    parser.add_argument("--out")
    parser.add_argument("--architecture", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--tuned", action="store_true", help="batch norms folded, channels-last (plain.tuned)")
    opts = parser.parse_args(argv)
    {"worker": worker_main, "e2e": e2e_main, "weights": weights_main}[opts.mode](opts)


if __name__ == "__main__":
    main()
