"""A kept session's memory while a model's weights keep changing: the RSS of its processes after each
command.

``.venv/bin/python bench/kept_memory.py [--commands 16] [--work DIR] [--out bench/results]``

Someone iterating on a model retrains it and runs the next command in the same kept session
(docs/session.md). The bench makes a project with one torchvision ResNet-18 whose weights are a
``.pth`` state_dict (so they are broadcast, not read in place) and eight small PNGs, and for each
command saves new random weights and runs ``sqlinfer sql PROJECT "SELECT count(r18_predict(content))
..."`` with ``SQLINFER_KEEP_SESSION`` set. After each command it prints the resident memory of the
kept session's driver, its JVM and its Python workers and daemon, and at the end the growth per
command over the second half of the commands (a least-squares slope: the JVM's heap and the
allocators settle in the first half). Target: the session's memory does not grow with each new
version of the weights (<= 10 MB per command, against 45 MB of weights).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from sqlinfer.runtime import kept_session

MB = 2**20
TARGET_MB_PER_COMMAND = 10.0
MODELS = """\
models:
  - name: r18
    flavor: torchvision
    architecture: resnet18
    weights: r18.pth
    output: embedding
    preprocess: {resize: 64, crop: 56}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/kept_memory.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--commands", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None, help="folder for the project (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser.parse_args(argv)


def make_project(root: Path) -> None:
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "sqlinfer_project.yml").write_text("name: kept_memory\n")
    (root / "models.yml").write_text(MODELS)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")


def save_weights(root: Path, seed: int) -> None:
    """New weights in a process of their own, as a training script would write them."""
    subprocess.run([sys.executable, "-c", "import sys, torch, torchvision; torch.manual_seed(int(sys.argv[1])); "
                    "torch.save(torchvision.models.resnet18().state_dict(), sys.argv[2])",
                    str(seed), str(root / "r18.pth")], check=True)


def session_rss(server: int) -> dict[str, float]:
    """MB by role: the kept session's own process (the driver), its JVM, and every other Python
    process below it (the worker daemon and the workers)."""
    out = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
    root = psutil.Process(server)
    for proc in [root, *root.children(recursive=True)]:
        try:
            role = "driver" if proc.pid == server else "jvm" if proc.name() == "java" else "workers"
            out[role] += proc.memory_info().rss / MB
        except psutil.Error:  # a worker that ended while it was looked at
            continue
    return out


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    work = opts.work or Path(tempfile.mkdtemp(prefix="sqlinfer-kept-memory-"))
    root = work / "project"
    shutil.rmtree(root, ignore_errors=True)
    make_project(root)
    env = {**os.environ, kept_session.ENV: "10"}
    query = f"SELECT count(r18_predict(content)) FROM binaryFile.`{root / 'images'}`"
    totals: list[float] = []
    commands: list[dict[str, float]] = []
    try:
        for command in range(1, opts.commands + 1):
            save_weights(root, command)
            started = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "sqlinfer", "sql", str(root), query], env=env, cwd=root,
                                 capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if run.returncode != 0 or "8" not in run.stdout.split():
                raise SystemExit(f"command {command} failed (exit code {run.returncode}):\n{run.stdout}{run.stderr}")
            time.sleep(1)  # the session releases what the command left between commands
            server = kept_session.server_pid(root / "target")
            if server is None:
                raise SystemExit(f"no kept session after command {command}")
            rss = session_rss(server)
            totals.append(sum(rss.values()))
            commands.append({"seconds": round(seconds, 2), **{role: round(mb, 1) for role, mb in rss.items()}})
            print(f"command {command:2d}: {seconds:5.1f} s | driver {rss['driver']:6.0f} MB | jvm {rss['jvm']:6.0f} MB"
                  f" | workers and daemon {rss['workers']:6.0f} MB | all {totals[-1]:6.0f} MB", flush=True)
    finally:
        kept_session.stop(root / "target")
    settled = list(enumerate(totals, start=1))[len(totals) // 2:]
    growth = None
    if len(settled) >= 2:
        growth = statistics.linear_regression([c for c, _ in settled], [mb for _, mb in settled]).slope
        verdict = "met" if growth <= TARGET_MB_PER_COMMAND else "NOT MET"
        print(f"growth over commands {settled[0][0]}-{settled[-1][0]}: {growth:+.1f} MB per command "
              f"(target <= {TARGET_MB_PER_COMMAND:.0f}; each version of the weights is 45 MB): {verdict}")
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "kept_memory.json").write_text(json.dumps({"commands": commands, "growth_mb_per_command": growth},
                                                          indent=2) + "\n")
    print(f"wrote {opts.out / 'kept_memory.json'}")

if __name__ == "__main__":
    main()
