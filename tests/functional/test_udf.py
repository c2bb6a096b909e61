"""Model UDFs on a real local[2] SparkSession: results equal plain PyTorch, one model build per
worker process, every output kind with its Spark type, and bad rows as NULL (or a failed query)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from helpers import bomb_png, jpeg_bytes, png_bytes, save_random_resnet18, write_images, write_project
from PIL import Image
from safetensors.torch import load_file

from sqlinfer import Project
from sqlinfer.models.udf import _Broadcasts

pytestmark = pytest.mark.spark

MODELS = """\
models:
  - name: r18
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64}
    output: logits
    batch_size: 7
  - name: r18_probs
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64}
    output: probabilities
  - name: r18_label
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64}
    output: label
  - name: r18_top
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64}
    output: topk
    k: 3
  - name: r18_embed
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64}
    output: embedding
  - name: r18_strict
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64}
    output: label
    on_error: fail
  - name: tiny_small_limit
    flavor: torchvision
    architecture: resnet18
    weights: weights/r18.safetensors
    preprocess: {resize: 72, crop: 64, max_pixels: 3000}
    output: label
  - name: lin
    flavor: torchscript
    weights: weights/lin.pt
    input: tensor
    shape: [2, 3]
    output: logits
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, spark) -> Project:
    root = write_project(tmp_path_factory.mktemp("udf") / "p", MODELS)
    (root / "weights").mkdir()
    save_random_resnet18(root / "weights" / "r18.safetensors")
    torch.manual_seed(1)
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4))),
                   str(root / "weights" / "lin.pt"))
    loaded = Project.load(root)
    loaded.register(spark)
    return loaded


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, spark) -> Path:
    folder = tmp_path_factory.mktemp("jpegs")
    write_images(folder, 216)
    frame = spark.read.format("binaryFile").load(str(folder)).repartition(9)
    frame.createOrReplaceTempView("jpegs")
    return folder


def reference_network(root: Path) -> torch.nn.Module:
    model = torchvision.models.resnet18()
    model.load_state_dict(load_file(str(root / "weights" / "r18.safetensors")))
    return model.eval()


def reference_inputs(blobs: list[bytes]) -> torch.Tensor:
    """The classic torchvision eval pipeline, as a user would write it without sqlinfer."""
    from torchvision import transforms

    pipeline = transforms.Compose([transforms.Resize(72), transforms.CenterCrop(64), transforms.ToTensor(),
                                   transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    return torch.stack([pipeline(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def test_a_build_builds_the_networks_it_needs_in_the_workers_before_its_first_query(spark, project: Project) -> None:
    """What ``sqlinfer build`` starts while it compiles its nodes (Runner.build): each named
    model's network built in the Python workers, nothing scored, no other model built."""
    builds_before = {name: stats.totals().get("builds", 0) for name, stats in project.stats.items()}
    thread = project._build_models(spark, {"lin_predict_checked"})  # a _checked name stands for its model
    assert thread is not None
    thread.join(timeout=300)
    assert not thread.is_alive()
    lin = project.stats["lin_predict"]
    assert len(lin.per_process("builds")) >= 1
    assert set(lin.per_process("builds").values()) == {1}  # one build per worker process
    assert lin.per_process("weights_reads") == lin.per_process("builds")
    assert lin.totals().get("rows", 0) == 0 and lin.totals().get("batches", 0) == 0
    assert {name: stats.totals().get("builds", 0) for name, stats in project.stats.items() if name != "lin_predict"} \
        == {name: count for name, count in builds_before.items() if name != "lin_predict"}
    assert project._build_models(spark, {"no_such_function"}) is None  # nothing to build: no job


def test_logits_equal_plain_pytorch_and_one_build_per_worker(spark, project: Project, images: Path) -> None:
    stats = project.stats["r18_predict"]
    frame = spark.sql("SELECT path, content, r18_predict(content) AS logits FROM jpegs")
    assert frame.rdd.getNumPartitions() >= 8
    rows = frame.collect()
    assert len(rows) == 216

    with torch.inference_mode():
        expected = reference_network(project.root)(reference_inputs([r.content for r in rows])).numpy()
    actual = np.array([r.logits for r in rows], dtype=np.float32)
    assert actual.shape == (216, 1000)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)

    builds = stats.per_process("builds")
    workers = stats.per_process("batches")  # every process that scored at least one batch
    assert stats.totals()["rows"] == 216
    assert len(workers) >= 1
    assert sum(builds.values()) <= len(workers)
    assert all(count == 1 for count in builds.values())
    # The local master's workers read the weights file itself, once per build (sqlinfer/models/udf.py):
    # these weights were never broadcast.
    r18 = next(m for m in project.resolve_models() if m.plan.udf_name == "r18_predict")
    assert r18.weights.file is not None and r18.weights.file.path == str(project.root / "weights" / "r18.safetensors")
    assert (r18.weights.format, r18.weights.digest) not in _Broadcasts.of(spark.sparkContext).by_key
    assert stats.per_process("weights_reads") == builds
    # batch_size 7 holds whatever Arrow's batch size (16 rows per Arrow batch here).
    assert stats.totals()["batches"] >= 216 / 7

    # A second query in the same session builds nothing again.
    builds_before = stats.totals()["builds"]
    assert spark.sql("SELECT r18_predict(content) FROM jpegs").count() == 216
    assert spark.sql("SELECT count(r18_predict(content)) FROM jpegs").first()[0] == 216
    assert stats.totals()["builds"] == builds_before


def test_output_kinds_and_spark_types(spark, project: Project, images: Path) -> None:
    frame = spark.sql("""
        SELECT content, r18_probs_predict(content) AS probs, r18_label_predict(content) AS label,
               r18_top_predict(content) AS top, r18_embed_predict(content) AS embed
        FROM jpegs ORDER BY path LIMIT 12""")
    types = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    assert types["probs"] == "array<float>"
    assert types["label"] == "struct<label:string,index:int,score:float>"
    assert types["top"] == "array<struct<label:string,index:int,score:float>>"
    assert types["embed"] == "array<float>"
    rows = frame.collect()

    network = reference_network(project.root)
    features: list[torch.Tensor] = []
    network.fc.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))
    with torch.inference_mode():
        probs = torch.softmax(network(reference_inputs([r.content for r in rows])), dim=1).numpy()
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    for row, expected, embedding in zip(rows, probs, features[0].numpy(), strict=True):
        assert sum(row.probs) == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(row.probs, expected, atol=1e-5)
        best = int(expected.argmax())
        assert row.label["index"] == best
        assert row.label.label == categories[best]
        assert row.label.score == pytest.approx(float(expected[best]), abs=1e-5)
        order = np.argsort(-expected)[:3]
        assert [t["index"] for t in row.top] == [int(i) for i in order]
        assert [t.label for t in row.top] == [categories[int(i)] for i in order]
        assert row.top[0].score >= row.top[1].score >= row.top[2].score
        assert len(row.embed) == 512
        np.testing.assert_allclose(row.embed, embedding, atol=1e-4)


BAD_INPUTS = {
    "empty": b"",
    "garbage": b"this is not an image at all" * 10,
    "truncated": jpeg_bytes(7, 200, 150)[:400],
    "bomb": bomb_png(),
}


@pytest.fixture(scope="module")
def mixed(spark, project: Project) -> list:
    """Good JPEG/PNG rows with every kind of bad row between them, in one partition and batch."""
    good = [(f"good_jpeg_{i}", jpeg_bytes(100 + i)) for i in range(5)] + [("good_png", png_bytes(3))]
    rows = good[:3] + list(BAD_INPUTS.items()) + good[3:] + [("null", None)]
    frame = spark.createDataFrame(rows, "name string, content binary").coalesce(1)
    frame.createOrReplaceTempView("mixed")
    return rows


def test_bad_rows_are_null_and_good_rows_unchanged(spark, project: Project, mixed: list) -> None:
    stats = project.stats["r18_label_predict"]
    bad_before = stats.totals().get("bad_rows", 0)
    frame = spark.sql("SELECT name, r18_label_predict(content) AS label FROM mixed")
    result = {r.name: r.label for r in frame.collect()}
    for name in (*BAD_INPUTS, "null"):
        assert result[name] is None, name
    good = [(n, c) for n, c in mixed if n.startswith("good")]
    alone = spark.createDataFrame(good, "name string, content binary").coalesce(1)
    expected = {r.name: r.label for r in alone.selectExpr("name", "r18_label_predict(content) AS label").collect()}
    assert {n: result[n] for n in expected} == expected
    assert all(v is not None for v in expected.values())
    assert stats.totals()["bad_rows"] - bad_before == len(BAD_INPUTS) + 1


def test_max_pixels_makes_large_images_null(spark, project: Project) -> None:
    frame = spark.createDataFrame([("small", jpeg_bytes(1, 50, 40)), ("large", jpeg_bytes(2, 80, 60))],
                                  "name string, content binary")
    result = {r.name: r.p for r in frame.selectExpr("name", "tiny_small_limit_predict(content) AS p").collect()}
    assert result["small"] is not None
    assert result["large"] is None


def test_on_error_fail_names_model_and_kind(spark, project: Project, mixed: list) -> None:
    from sqlinfer.runtime.spark_errors import translate

    with pytest.raises(Exception) as info:
        spark.sql("SELECT r18_strict_predict(content) FROM mixed").collect()
    error = translate(info.value)
    assert error is not None
    assert error.code == "udf.failed"
    # Row 3 of the one partition is the first bad row: the empty one after three good ones.
    assert error.message == ("model 'r18_strict' (r18_strict_predict): bad input at row 3 of this task: empty: "
                             "no image bytes (on_error: fail; use on_error: null to get NULL for such rows)")


def test_tensor_input_and_wrong_length_rows(spark, project: Project) -> None:
    network = torch.jit.load(str(project.root / "weights" / "lin.pt"))
    good = [[float(i + j) for j in range(6)] for i in range(5)]
    rows = [(0, good[0]), (1, [1.0, 2.0]), (2, good[1]), (3, None), (4, good[2]), (5, good[3] + [9.0]), (6, good[4]),
            (7, [1.0, None, 3.0, 4.0, 5.0, 6.0])]
    frame = spark.createDataFrame(rows, "id int, x array<float>")
    result = {r.id: r.y for r in frame.selectExpr("id", "lin_predict(x) AS y").collect()}
    assert [row_id for row_id in sorted(result) if result[row_id] is None] == [1, 3, 5, 7]
    with torch.inference_mode():
        expected = network(torch.tensor(good).view(5, 2, 3)).numpy()
    for row_id, index in {0: 0, 2: 1, 4: 2, 6: 4}.items():
        np.testing.assert_allclose(result[row_id], expected[index], atol=1e-5)


def test_workers_fork_from_the_early_daemon(spark) -> None:
    """On a local master the worker daemon was started with the session, torch already imported,
    and the daemon Spark launched handed its place to it (sqlinfer/runtime/daemon.py)."""
    import pyarrow as pa
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    def parent_command(batches):
        import os
        import sys

        command = open(f"/proc/{os.getppid()}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        preloaded = "torch" in sys.modules  # imported before this worker was forked
        for batch in batches:
            yield pa.array([f"{command} | torch={preloaded}"] * len(batch))

    udf = arrow_udf(parent_command, "string", ArrowUDFType.SCALAR_ITER)
    rows = {r[0] for r in spark.range(4, numPartitions=2).select(udf("id")).collect()}
    assert len(rows) >= 1
    for row in rows:
        assert "sqlinfer.runtime.daemon --early" in row and row.endswith("torch=True"), row


def test_a_builds_workers_inherit_the_networks_the_early_daemon_built(tmp_path: Path) -> None:
    """`sqlinfer build` on a local master: its early worker daemon builds the network (weights a
    local file, on the CPU) before it forks the workers (sqlinfer/runtime/daemon.py), so no worker
    builds it or reads its weights, each reports it inherited, and the logits equal plain PyTorch's."""
    import json
    import os
    import subprocess

    import pyarrow.parquet as pq
    from helpers import SQLINFER

    root = write_project(tmp_path / "p", MODELS.split("  - name: r18_probs")[0],
                         "name: inherited\nsources:\n  images: {format: binaryFile, path: images}\n")
    (root / "weights").mkdir()
    save_random_resnet18(root / "weights" / "r18.safetensors")
    write_images(root / "images", 40)
    (root / "sql").mkdir()
    node = "SELECT path, content, r18_predict(content) AS logits FROM {{ source('images') }}"
    (root / "sql" / "scored.sql").write_text(f"{{{{ config(materialized='table') }}}}\n{node}\n")
    own_tmp = tmp_path / "tmp"  # the early daemon's folder goes here (with the networks it was sent)
    own_tmp.mkdir()
    done = subprocess.run([SQLINFER, "build", str(root), "--master", "local[2]", "--conf", "spark.ui.enabled=false"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(own_tmp)})
    assert done.returncode == 0, done.stderr
    workers = json.loads((root / "target" / "run_results.json").read_text())["model_workers"]["r18_predict"]
    assert workers["builds"] == {} and workers["weights_reads"] == {}, workers
    assert len(workers["inherited"]) >= 1 and set(workers["inherited"].values()) == {1}, workers
    assert list(own_tmp.glob("sqlinfer-daemon-*")) == []  # removed, networks file and all

    folders = {path.parent for path in (root / "target" / "warehouse").rglob("*.parquet")}
    assert len(folders) == 1, folders
    table = pq.read_table(folders.pop()).to_pydict()
    assert len(table["path"]) == 40
    with torch.inference_mode():
        expected = reference_network(root)(reference_inputs(table["content"])).numpy()
    np.testing.assert_allclose(np.array(table["logits"], dtype=np.float32), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("output", ["logits", "probabilities", "embedding", "label", "topk",
                                    ("label", "probabilities"), ("topk", "logits")])
def test_return_types_parsed_in_python_equal_sparks_own_parse(spark, output: str | tuple[str, ...]) -> None:
    """sqlinfer parses its return types without the JVM (udf.data_type); Spark's DDL parser must agree."""
    from pyspark.sql.types import _parse_datatype_string

    from sqlinfer.models.declaration import ModelDecl
    from sqlinfer.models.udf import data_type

    ddl = ModelDecl.model_construct(output=output).return_type
    checked = f"struct<result: {ddl}, error: struct<kind: string, message: string>>"
    for text in (ddl, checked):
        assert data_type(text) == _parse_datatype_string(text)


def test_a_kept_session_releases_the_broadcasts_the_last_command_did_not_use(
        spark, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two commands a kept session destroys the weights broadcasts that the command just
    run did not use (sqlinfer/runtime/kept_server.py): weights changed twice would otherwise stay
    in the driver and the JVM for the session's life. Those it used stay for the next command.
    (A shelf of its own: the session fixture's broadcasts belong to other tests.)"""
    from sqlinfer.models.flavors.base import Weights
    from sqlinfer.models.udf import _broadcast, release_unused_broadcasts

    sc = spark.sparkContext
    monkeypatch.setitem(sc.__dict__, "_sqlinfer_broadcasts", _Broadcasts())
    first, retrained = Weights("safetensors", b"first weights"), Weights("safetensors", b"retrained weights")

    def shelf() -> dict:
        return _Broadcasts.of(sc).by_key

    loads = [_broadcast(sc, weights, lambda _counters: None) for weights in (first, retrained)]
    assert [load().data for load in loads] == [b"first weights", b"retrained weights"]
    broadcasts = dict(shelf())
    assert release_unused_broadcasts(sc) == 0  # the command that just ended used both
    _broadcast(sc, retrained, lambda _counters: None)  # the next command uses the retrained weights only
    assert release_unused_broadcasts(sc) == 1
    assert set(shelf()) == {("safetensors", retrained.digest)}
    assert not broadcasts[("safetensors", first.digest)]._jbroadcast.isValid()
    assert broadcasts[("safetensors", retrained.digest)]._jbroadcast.isValid()
    assert release_unused_broadcasts(sc) == 1  # a command that scored with neither
    assert shelf() == {}


def test_two_declarations_of_one_network_share_one_broadcast(spark, digits_copy: Path) -> None:
    """projects/digits declares its CNN twice (label; label and probabilities) with the same weights file. The
    local master's workers read that file in place: nothing is broadcast. Where the weights are
    broadcast (a cluster master, generated weights), the two declarations share one broadcast."""
    from sqlinfer.models.udf import _broadcast

    shared = _Broadcasts.of(spark.sparkContext).by_key
    before = set(shared)
    project = Project.load(digits_copy)
    project.register(spark)
    label_model, scores_model = project.resolve_models()
    key = ("safetensors", label_model.weights.digest)
    assert scores_model.weights.digest == label_model.weights.digest
    assert set(shared) == before  # read in place
    loads = [_broadcast(spark.sparkContext, model.weights, lambda _counters: None)
             for model in (label_model, scores_model)]
    assert set(shared) - before == {key}
    assert loads[0]().data == loads[1]().data == label_model.weights.data
    rows = spark.sql("SELECT digits_predict(content) AS predicted, digits_scores(content) AS scores "
                     "FROM digits_images WHERE split = 'test' LIMIT 40").collect()
    assert len(rows) == 40
    # One forward pass, two outputs: the same label as the label-only function, and its probabilities.
    assert [row.scores.label for row in rows] == [row.predicted for row in rows]
    assert [int(np.argmax(row.scores.probabilities)) for row in rows] == [row.predicted["index"] for row in rows]
    assert [row.scores.probabilities[row.predicted["index"]] for row in rows] == pytest.approx(
        [row.predicted.score for row in rows], rel=1e-6)
    assert all(abs(sum(row.scores.probabilities) - 1) < 1e-4 for row in rows), rows[:3]
    # Its `_checked` twin: the struct under `result`, NULL with the reason for a row that is no image.
    checked = spark.sql("SELECT digits_scores_checked(content) AS c FROM ((SELECT content FROM digits_images "
                        "WHERE split = 'test' LIMIT 3) UNION ALL (SELECT CAST('not an image' AS BINARY)))").collect()
    errors = sorted((row.c.error.kind if row.c.error else "") for row in checked)
    assert errors == ["", "", "", "undecodable"], checked
    assert sorted(len(row.c.result.probabilities) if row.c.result else 0 for row in checked) == [0, 10, 10, 10]
