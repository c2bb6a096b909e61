"""The worker loop without Spark: re-batching to `batch_size` whatever the input batching, one model
build per process, and output rows in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import jpeg_bytes, write_project

from sqlinfer import Project
from sqlinfer.worker import model_cache
from sqlinfer.worker.score import score as score_task

MODELS = """\
models:
  - name: w
    flavor: python
    class: worker_tiny_net:TinyNet
    weights: weights/tiny.safetensors
    kwargs: {num_classes: 5}
    preprocess: {resize: 36, crop: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
    output: logits
    batch_size: 6
"""

# A small network with a batch norm (folded into its convolution when built): the worker loop's
# behaviour does not depend on the network's size.
NETWORK = """\
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    import torch
    from safetensors.torch import save_file

    root = write_project(tmp_path_factory.mktemp("w") / "p", MODELS)
    (root / "worker_tiny_net.py").write_text(NETWORK)
    (root / "weights").mkdir()
    namespace: dict = {}
    exec(NETWORK, namespace)
    torch.manual_seed(0)
    network = namespace["TinyNet"](5)
    with torch.no_grad():  # running statistics that are not the identity, so folding them matters
        network.bn.running_mean.uniform_(-0.5, 0.5)
        network.bn.running_var.uniform_(0.5, 2.0)
    save_file(network.state_dict(), str(root / "weights" / "tiny.safetensors"))
    (resolved,) = Project.load(root).resolve_models()
    return resolved


def score(model, blobs: list[bytes], arrow_batch: int) -> tuple[np.ndarray, dict[str, float], list[int]]:
    """Logits per row, the summed counters, and the length of each output array."""
    counters: dict[str, float] = {}

    def count(values: dict[str, float]) -> None:
        for key, value in values.items():
            counters[key] = counters.get(key, 0) + value

    arrays = (pa.array(blobs[i:i + arrow_batch], type=pa.binary()) for i in range(0, len(blobs), arrow_batch))
    out = list(score_task(model.plan, lambda: model.weights, arrays, count))
    return np.array([row for array in out for row in array.to_pylist()]), counters, [len(o) for o in out]


BLOBS = [jpeg_bytes(i, 40 + i, 30 + i) for i in range(23)]


@pytest.fixture(scope="module")
def baseline(model) -> tuple[np.ndarray, dict[str, float], list[int]]:
    """The 23 images in one Arrow batch, scored by a process that has not built the model yet."""
    model_cache._NETWORKS.clear()
    return score(model, BLOBS, arrow_batch=23)


def test_first_task_builds_the_model_once(baseline) -> None:
    _, counters, _ = baseline
    assert counters["builds"] == 1
    assert counters["rows"] == 23


def test_model_batches_have_batch_size_rows(baseline) -> None:
    logits, counters, sizes = baseline
    assert logits.shape == (23, 5)
    assert len({tuple(np.round(row, 4)) for row in logits}) == 23  # every image gets its own output
    assert sizes == [6, 6, 6, 5]  # 23 rows in model batches of 6
    assert counters["batches"] == 4


@pytest.mark.parametrize("arrow_batch", [1, 4, 7])
def test_results_do_not_depend_on_arrow_batch_size(model, baseline, arrow_batch: int) -> None:
    result, counters, sizes = score(model, BLOBS, arrow_batch)
    np.testing.assert_allclose(result, baseline[0], atol=1e-5)
    assert sizes == [6, 6, 6, 5]
    assert counters["rows"] == 23


def test_later_tasks_reuse_the_built_model(model, baseline) -> None:
    _, counters, _ = score(model, BLOBS[:3], arrow_batch=3)
    assert "builds" not in counters  # cached in this process


def test_each_row_is_scored_on_its_own(model, baseline) -> None:
    alone, _, _ = score(model, [BLOBS[17]], arrow_batch=1)
    np.testing.assert_allclose(alone[0], baseline[0][17], atol=1e-5)


def test_empty_input_yields_nothing(model) -> None:
    result, counters, sizes = score(model, [], arrow_batch=4)
    assert sizes == []
    assert len(result) == 0
    assert "rows" not in counters


def test_a_long_task_gives_free_memory_back_as_it_goes(model, baseline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TRIM_EVERY_ROWS rows and at the end: here every 10 rows of 23 (batches of 6: after the
    batches that cross rows 10 and 20), then the end. The trims are counted, glibc's still runs."""
    from sqlinfer.worker import score as score_module

    trims: list[int] = []
    real = score_module.release_free_memory

    def counted() -> None:
        trims.append(1)
        real()

    monkeypatch.setattr(score_module, "TRIM_EVERY_ROWS", 10)
    monkeypatch.setattr(score_module, "release_free_memory", counted)
    result, _, _ = score(model, BLOBS, arrow_batch=23)
    np.testing.assert_allclose(result, baseline[0], atol=1e-5)
    assert len(trims) == 3


def test_new_weights_for_a_function_replace_its_old_network(model, baseline) -> None:
    """A kept session's workers outlive commands: when a function's weights change (a new
    fingerprint), the worker builds the new network and lets the old one go; other functions'
    networks stay. The old weights are freed, though TinyNet's batch norm is folded through
    torch.fx, whose module and graph reference each other: a cycle that the worker froze out of
    the collector's reach after the build."""
    import dataclasses
    import weakref

    plan = model.plan
    old = model_cache.get_model(plan, lambda: model.weights, lambda _counters: None)
    other_function = dataclasses.replace(plan, decl=plan.decl.model_copy(update={"name": "other"}),
                                         fingerprint="another function's fingerprint")
    model_cache.get_model(other_function, lambda: model.weights, lambda _counters: None)
    retrained = dataclasses.replace(plan, fingerprint="the same function, new weights")
    weights_ref = weakref.ref(next(old.module.parameters()))
    del old
    built: list[dict[str, float]] = []
    new = model_cache.get_model(retrained, lambda: model.weights, built.append)
    assert [counters["builds"] for counters in built] == [1]
    fingerprints = {key[0] for key in model_cache._NETWORKS}
    assert plan.fingerprint not in fingerprints
    assert {retrained.fingerprint, other_function.fingerprint} <= fingerprints
    assert weights_ref() is None  # freed, not only forgotten
    assert new.plan.udf_name == plan.udf_name
    model_cache._NETWORKS.clear()


def test_an_embedding_network_is_freed_by_its_last_reference(model, tmp_path) -> None:
    """The embedding hooks hold the list they fill, not the network: a network reachable from its
    own module would wait for the collector, which a worker has frozen it out of."""
    import gc
    import shutil
    import weakref

    from sqlinfer.models.network import Network

    root = tmp_path / "p"
    shutil.copytree(Path(model.weights.file.path).parents[1], root)  # the fixture's project
    (root / "models.yml").write_text(MODELS.replace("output: logits", "output: embedding"))
    (embedding_model,) = Project.load(root).resolve_models()
    network = Network(embedding_model.plan, embedding_model.weights, "cpu")
    pixels = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    assert network.forward(pixels).shape == (2, 8)  # the last Linear's input: TinyNet's 8 channels
    gc.disable()
    try:
        freed = weakref.ref(network)
        del network
        assert freed() is None
    finally:
        gc.enable()
