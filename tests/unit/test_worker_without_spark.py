"""The worker path runs where neither Spark nor YAML is installed (a GPU box for benchmarks has
torch, torchvision, Pillow, pyarrow, numpy, safetensors and pydantic, nothing more): a model
resolved here is scored in a Python whose imports of those libraries fail."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
from helpers import jpeg_bytes, write_project

from sqlinfer import Project
from sqlinfer.worker.score import score

MODELS = """\
models:
  - name: tiny
    flavor: torchvision
    architecture: squeezenet1_1
    kwargs: {num_classes: 5}
    weights: random
    preprocess: {resize: 40, crop: 32}
    output: label
"""

# pandas is left importable: torch and pyarrow probe for it with find_spec, which a blocked name breaks.
BLOCKED = ("yaml", "pyspark", "py4j", "jinja2", "click")

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, pickle, sys

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import pyarrow as pa
    from sqlinfer.worker.score import score
    plan, weights, blobs = pickle.load(open(sys.argv[1], "rb"))
    arrays = iter([pa.array(blobs, type=pa.binary())])
    rows = [row for array in score(plan, lambda: weights, arrays, lambda _: None) for row in array.to_pylist()]
    print(json.dumps(rows))
    print(sorted(name for name in {blocked!r} if name in sys.modules))
""")


def test_a_worker_without_spark_or_yaml_scores_like_this_one(tmp_path: Path) -> None:
    (model,) = Project.load(write_project(tmp_path / "p", MODELS)).resolve_models()
    blobs = [jpeg_bytes(i, 50 + i, 40 + i) for i in range(6)] + [b"not an image"]
    expected = [row for array in score(model.plan, lambda: model.weights, iter([pa.array(blobs, type=pa.binary())]),
                                       lambda _: None) for row in array.to_pylist()]
    job = tmp_path / "job.pickle"
    job.write_bytes(pickle.dumps((model.plan, model.weights, blobs)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=BLOCKED), str(job)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows_line, loaded_line = proc.stdout.strip().splitlines()
    rows = json.loads(rows_line)
    # Labels exactly; scores to float32 rounding (on a GPU, cuDNN may pick another algorithm per process).
    assert [row and (row["label"], row["index"]) for row in rows] == \
        [row and (row["label"], row["index"]) for row in expected]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(rows[:-1], expected[:-1], strict=True))
    assert expected[-1] is None and all(row is not None for row in expected[:-1])
    assert loaded_line == "[]"
