"""The overhead floor: what sqlinfer costs around a network that costs almost nothing.

``.venv/bin/python bench/floor.py [--rows 100000] [--tasks 200] [--repeat 3]``

The digits example's CNN (projects/digits: 8x8 grayscale in, 10 classes out, about 1.3 million
multiply-adds a row) scores ``--rows`` small inputs, 8x8 PNG bytes and 64-float tensors:

1. plain Python: one process, a loop over the same bytes (PIL decode into a batch, torch forward
   in batches of 64, argmax), as a competent user writes it; from memory, and from the files;
2. through SQL, warm (the second query of one session): from a parquet table (PNG bytes, and
   tensors), and from the PNG files through the ``binaryFile`` source;
3. per-task overhead: ``--tasks`` tasks of one row each (``spark.range`` with one partition per
   row, the PNG bytes as a literal), timed three ways in the same session: no Python at all (the
   JVM's floor), an Arrow UDF that returns its input's lengths (Spark's Python-worker floor) and
   the model function. Time per task = wall seconds x task slots / tasks.

Prints a table and writes ``floor.json`` to ``--out``. docs/performance.md explains the lines.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIGITS = Path(__file__).resolve().parent.parent / "projects" / "digits"
BATCH = 64
MODELS = """\
models:
  - name: floor_png
    udf: floor_png
    flavor: python
    class: digits_net:DigitsCNN
    weights: weights/digits_cnn.safetensors
    preprocess: {color_mode: L, resize: [8, 8], mean: [0.5], std: [0.5]}
    output: label
    labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    batch_size: 64
  - name: floor_tensor
    udf: floor_tensor
    flavor: python
    class: digits_net:DigitsCNN
    weights: weights/digits_cnn.safetensors
    input: tensor
    shape: [1, 8, 8]
    output: label
    labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    batch_size: 64
"""
PROJECT = """\
name: floor
sources:
  png_files: {format: binaryFile, path: files, glob: "*.png", recursive: true}
  inputs: {format: parquet, path: inputs.parquet}
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/floor.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="inputs of each kind")
    parser.add_argument("--file-rows", type=int, default=None,
                        help="PNG files for the binaryFile source (default: --rows)")
    parser.add_argument("--tasks", type=int, default=200, help="one-row tasks for the per-task overhead")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each warm measurement (the fastest is kept)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    return parser.parse_args(argv)


# --- inputs ------------------------------------------------------------------------------------


def digit_pngs() -> list[bytes]:
    return [path.read_bytes() for path in sorted((DIGITS / "data" / "images").rglob("*.png"))]


def prepare(root: Path, rows: int, file_rows: int) -> list[bytes]:
    """The project (models.yml, the digits class and weights), the parquet table and the files.
    Returns the PNG bytes of every row (the digits images, repeated)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    pngs = digit_pngs()
    contents = [pngs[i % len(pngs)] for i in range(rows)]
    (root / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copy(DIGITS / "digits_net.py", root / "digits_net.py")
    shutil.copy(DIGITS / "weights" / "digits_cnn.safetensors", root / "weights" / "digits_cnn.safetensors")
    (root / "models.yml").write_text(MODELS)
    (root / "sqlinfer_project.yml").write_text(PROJECT)
    pixels = [((np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255 - 0.5) / 0.5).ravel()
              for png in pngs]
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "content": pa.array(contents, pa.binary()),
                      "pixels": pa.array([pixels[i % len(pngs)] for i in range(rows)], pa.list_(pa.float32()))})
    pq.write_table(table, root / "inputs.parquet")
    files = root / "files"
    if len(list(files.rglob("*.png"))) != file_rows:
        shutil.rmtree(files, ignore_errors=True)
        for i in range(file_rows):
            folder = files / f"{i // 1000:04d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True)
            (folder / f"{i:06d}.png").write_bytes(contents[i])
    return contents


# --- plain Python --------------------------------------------------------------------------------


def plain_loop(read: Callable[[int], bytes], rows: int) -> float:
    """Rows per second of a plain loop: decode each PNG into a batch buffer, normalize, forward."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    sys.path.insert(0, str(DIGITS))
    from digits_net import DigitsCNN

    net = DigitsCNN()
    net.load_state_dict(load_file(DIGITS / "weights" / "digits_cnn.safetensors"))
    net.eval()
    buffer = np.empty((BATCH, 1, 8, 8), np.uint8)
    predictions = np.empty(rows, np.int64)
    started = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, rows, BATCH):
            count = min(BATCH, rows - first)
            for row in range(count):
                buffer[row, 0] = np.asarray(Image.open(io.BytesIO(read(first + row))).convert("L"))
            batch = (torch.from_numpy(buffer[:count]).float() / 255 - 0.5) / 0.5
            predictions[first:first + count] = net(batch).argmax(1).numpy()
    return rows / (time.perf_counter() - started)


# --- through SQL ---------------------------------------------------------------------------------


def timed(action: Callable[[], Any], repeat: int) -> float:
    """The fastest of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def run_all(spark: Any, sql: str) -> None:
    """Run ``sql`` over every row (Spark's no-op sink evaluates every column of every row)."""
    spark.sql(sql).write.format("noop").mode("overwrite").save()


def one_row_tasks(spark: Any, tasks: int, png: bytes) -> None:
    """View ``one_row_tasks``: ``tasks`` partitions of one row each, no file or shuffle read."""
    spark.range(0, tasks, 1, tasks).selectExpr(f"unhex('{png.hex()}') AS content") \
        .createOrReplaceTempView("one_row_tasks")


def register_lengths(spark: Any) -> None:
    """``arrow_lengths(binary)``: the cheapest Arrow UDF, for Spark's own Python-worker cost."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    def lengths(arrays: Any) -> Any:
        for array in arrays:
            yield pc.binary_length(array).cast(pa.int32())

    spark.udf.register("arrow_lengths", arrow_udf(lengths, "int", ArrowUDFType.SCALAR_ITER))


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    file_rows = opts.file_rows or opts.rows
    root = (opts.out / "floor").resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"floor: {opts.rows:,} rows (parquet), {file_rows:,} PNG files, {opts.tasks} one-row tasks", flush=True)
    contents = prepare(root, opts.rows, file_rows)
    files = sorted((root / "files").rglob("*.png"))
    results: dict[str, Any] = {"rows": opts.rows, "file_rows": file_rows, "tasks": opts.tasks}

    results["plain_memory"] = max(plain_loop(contents.__getitem__, opts.rows) for _ in range(opts.repeat))
    results["plain_files"] = max(plain_loop(lambda i: files[i].read_bytes(), file_rows) for _ in range(opts.repeat))
    print(f"  plain loop: {results['plain_memory']:,.0f} rows/s from memory, "
          f"{results['plain_files']:,.0f} rows/s from files", flush=True)

    import sqlinfer

    project = sqlinfer.Project.load(root)
    spark = project.start()
    project.register(spark)
    register_lengths(spark)
    slots = spark.sparkContext.defaultParallelism
    queries = {"parquet_png": ("SELECT floor_png(content) FROM inputs", opts.rows),
               "parquet_tensor": ("SELECT floor_tensor(pixels) FROM inputs", opts.rows),
               "files_png": ("SELECT floor_png(content) FROM png_files", file_rows)}
    for name, (sql, rows) in queries.items():
        run_all(spark, sql)  # the cold run: workers and networks start
        results[name] = rows / timed(lambda sql=sql: run_all(spark, sql), opts.repeat)
        print(f"  {name}: {results[name]:,.0f} rows/s (warm, through SQL)", flush=True)

    one_row_tasks(spark, opts.tasks, contents[0])
    per_task: dict[str, float] = {}
    for name, sql in (("jvm", "SELECT length(content) FROM one_row_tasks"),
                      ("python_udf", "SELECT arrow_lengths(content) FROM one_row_tasks"),
                      ("sqlinfer", "SELECT floor_png(content) FROM one_row_tasks")):
        run_all(spark, sql)
        per_task[name] = timed(lambda sql=sql: run_all(spark, sql), opts.repeat) * slots / opts.tasks * 1000
    results["task_ms"] = per_task
    print(f"  per task (1 row, {slots} slots): {per_task['jvm']:.1f} ms without Python, "
          f"{per_task['python_udf']:.1f} ms with Spark's cheapest Arrow UDF, "
          f"{per_task['sqlinfer']:.1f} ms with the model function: sqlinfer adds "
          f"{per_task['sqlinfer'] - per_task['python_udf']:.1f} ms, the Python UDF "
          f"{per_task['python_udf'] - per_task['jvm']:.1f} ms", flush=True)
    spark.stop()

    print("\nfloor, digits CNN, rows/s (ratio to the plain loop over the same bytes):")
    for name, base in (("parquet_png", "plain_memory"), ("parquet_tensor", "plain_memory"),
                       ("files_png", "plain_files")):
        print(f"  {name:15} {results[name]:10,.0f}  {results[name] / results[base]:.2f}x {base}")
    targets = [("per-task overhead at 1 row per task (ms)", per_task["sqlinfer"], "<=", 10.0),
               ("digits-size rows from parquet, warm (rows/s)", results["parquet_png"], ">=", 3000.0),
               ("digits-size rows from binaryFile files, warm (rows/s)", results["files_png"], ">=", 1000.0)]
    results["targets"] = [{"name": name, "value": value, "target": f"{op} {goal:g}",
                           "met": value <= goal if op == "<=" else value >= goal}
                          for name, value, op, goal in targets]
    print("targets:")
    for target in results["targets"]:
        print(f"  {'met' if target['met'] else 'NOT met'}: {target['name']}: {target['value']:,.1f} "
              f"(target {target['target']})")
    (opts.out / "floor.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {opts.out / 'floor.json'}")


if __name__ == "__main__":
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    main()
