"""Interactive latency: how long short commands take on a project, start to exit.

``.venv/bin/python bench/latency.py [--project projects/digits] [--runs 5] [--keep-session]``

Runs each command once to warm the JVM class archive, then ``--runs`` times as a fresh process
(``sqlinfer --timings ...``), and prints the median wall time with the start-up timeline of the
median run: ``sql "SELECT 1"``, ``compile``, and a SQL typo (the time to its error line). With
``--keep-session`` the commands run with ``SQLINFER_KEEP_SESSION`` set: the warm-up run starts the
project's kept session, the timed runs are handed to it (docs/session.md), and it is stopped at
the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sqlinfer.runtime import jvm_cache, kept_session

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {"sql SELECT 1": ["sql", "{project}", "SELECT 1"],
            "compile": ["compile", "{project}"],
            "sql typo": ["sql", "{project}", "SELEC 1"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/latency.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--project", type=Path, default=REPO / "projects" / "digits")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--keep-session", action="store_true", help="run the commands in a kept session")
    return parser.parse_args(argv)


def timed_run(args: list[str], env: dict[str, str]) -> tuple[float, list[str]]:
    """Wall seconds of ``sqlinfer --timings ARGS`` and its timeline lines."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sqlinfer", "--timings", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env=env)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.splitlines()
    marker = "timings (seconds since the process started):"
    timeline = stderr[stderr.index(marker) + 1:] if marker in stderr else stderr[-5:]
    return seconds, timeline


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    results: dict[str, dict[str, object]] = {}
    env = {**os.environ, kept_session.ENV: "10"} if opts.keep_session else dict(os.environ)
    if not opts.keep_session:
        env.pop(kept_session.ENV, None)
    for name, template in COMMANDS.items():
        args = [part.format(project=opts.project) for part in template]
        timed_run(args, env)  # the class archive and the page cache, as after any earlier command
        jvm_cache.wait_for_writers()  # a first command's JVM writes the archive after it has returned
        runs = sorted((timed_run(args, env) for _ in range(opts.runs)), key=lambda run: run[0])
        median_seconds, median_timeline = runs[len(runs) // 2]
        walls = [round(seconds, 2) for seconds, _ in runs]
        results[name] = {"median_s": statistics.median(walls), "runs_s": walls, "timeline": median_timeline}
        print(f"{name}: median {statistics.median(walls):.2f} s of {opts.runs} runs {walls}; the median run:")
        for line in median_timeline:
            print(f"  {line.strip()}")
    if opts.keep_session:
        from sqlinfer.project import Project

        kept_session.stop(Project.load(opts.project).target)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {opts.out / 'latency.json'}")


if __name__ == "__main__":
    main()
