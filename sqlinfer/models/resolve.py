"""From declarations to ready-to-ship models: weights read once, defaults applied, the network
checked against its weights and input, and a fingerprint computed. Driver side; no Spark here.

Checking a network means importing torch and building it: seconds of CPU at every command, so
models unchanged since an earlier check come from the project's cache instead
(:mod:`sqlinfer.models.resolve_cache`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlinfer.models import flavors
from sqlinfer.models.declaration import Located, Preprocess
from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.plan import ModelPlan
from sqlinfer.paths import inside


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to register: its plan (travels in the UDF), weights (broadcast) and the
    project modules its workers import."""

    plan: ModelPlan
    weights: Weights
    python_files: tuple[Path, ...]


def _preprocess(item: Located, default: Preprocess | None) -> Preprocess | None:
    decl = item.decl
    if decl.input != "image":
        return None
    if decl.preprocess is None and default is None:
        raise item.error("input image needs `preprocess` (at least `crop` or `resize: [h, w]`)",
                         code="config.missing_key")
    if decl.preprocess is None:
        assert default is not None
        return default
    pp = decl.preprocess
    if default is not None:
        # Declared keys win; the rest come from the weights' own transforms.
        declared = pp.model_dump(exclude_unset=True)
        pp = default.model_copy(update=declared)
    if pp.output_size is None:
        raise item.error("preprocess must give a fixed size: `crop`, or `resize: [h, w]`",
                         code="config.invalid_value", key="preprocess")
    return pp


def _labels(item: Located, root: Path, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    labels = item.decl.labels
    if labels is None:
        return default
    if isinstance(labels, tuple):
        return labels
    path = inside(root, labels, what=f"model {item.decl.name!r}: labels path", path=item.path,
                  line=item.raw.line_of("labels"), allow_outside=item.decl.allow_outside_project)
    if not path.is_file():
        raise item.error(f"labels file not found: {path}", code="config.missing_file", key="labels")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


# Text rows vary in length: the declaration check runs ids and attention mask of this many tokens.
TEXT_PROBE_SHAPE = (2, 8)


def _input_shape(item: Located, pp: Preprocess | None) -> tuple[int, ...]:
    if item.decl.input == "text":
        return TEXT_PROBE_SHAPE
    if pp is None:
        assert item.decl.shape is not None
        return tuple(item.decl.shape)
    assert pp.output_size is not None  # _preprocess refuses a preprocess without a fixed size
    height, width = pp.output_size
    return (3 if pp.color_mode == "RGB" else 1, height, width)


def _check_network(item: Located, weights: Weights, shape: tuple[int, ...]) -> int:
    """Build the network from its weights and run one zero input: mismatched weights, a wrong
    input shape or a bad embedding layer are caught here, before any Spark job. Returns the number
    of outputs per row."""
    import numpy as np

    from sqlinfer.models.network import Network

    probe = ModelPlan(item.decl, None, shape, None, 0, "check")
    try:
        network = Network(probe, weights, "cpu")
    except (RuntimeError, ValueError, TypeError) as exc:
        raise item.error(f"the weights do not fit the network: {str(exc).splitlines()[0]}",
                         code="config.weights_mismatch", key="weights") from None
    try:
        return int(network.forward(np.zeros((1, *shape), dtype=np.float32)).shape[1])
    except Exception as exc:  # any failure of the forward pass means a bad declaration
        raise item.error(f"the network does not accept input of shape {list(shape)}: "
                         f"{str(exc).splitlines()[0]}", code="config.bad_input_shape",
                         key="preprocess" if item.decl.input == "image" else "shape") from None


def fingerprint(item: Located, pp: Preprocess | None, labels: tuple[str, ...] | None, weights: Weights) -> str:
    """sha256 of what decides a model's predictions: a table built with another one is stale."""
    # batch_size and device change how fast a model runs, not what it predicts; where the files
    # may be, or whether their loading may run code, is no part of the model either (their contents are).
    ignored = {"batch_size", "device", "allow_outside_project", "trust_code", "description"}
    if item.decl.uri is None:
        ignored.add("uri")  # keys added later leave the fingerprints of models without them as they were
    description = {
        "decl": item.decl.model_dump(mode="json", by_alias=True, exclude=ignored),
        # `decoder: auto` leaves the choice to each worker's device, so it is no part of the model;
        # an explicit decoder is (GPU-decoded pixels differ from PIL's by a few levels).
        "preprocess": pp.model_dump(mode="json", exclude={"decoder"} if pp.decoder == "auto" else None)
        if pp else None,
        "labels": list(labels) if labels else None,
        "weights": weights.digest,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def resolve(item: Located, root: Path) -> ResolvedModel:
    """Everything the driver needs to register one model's UDF, checked from scratch."""
    decl = item.decl
    flavor = flavors.get(decl.flavor)
    flavor.check(item)
    defaults = flavor.defaults(decl)
    pp = _preprocess(item, defaults.preprocess)
    shape = _input_shape(item, pp)
    weights = flavor.load_weights(item, root)
    num_outputs = _check_network(item, weights, shape)
    labels = _labels(item, root, defaults.labels or flavor.labels_in(weights))
    if labels is not None and len(labels) != num_outputs and {"label", "topk"} & set(decl.output_kinds):
        if decl.labels is None:
            labels = None  # the architecture's default names do not fit this head (e.g. num_classes=10)
        else:
            raise item.error(f"{len(labels)} labels, but the network has {num_outputs} outputs",
                             code="config.labels_mismatch", key="labels")
    plan = ModelPlan(decl, pp, shape, labels, num_outputs, fingerprint(item, pp, labels, weights))
    return ResolvedModel(plan, weights, flavor.source_files(item, root) or ())


def resolve_all(items: tuple[Located, ...], root: Path, cache_file: Path | None = None) -> tuple[ResolvedModel, ...]:
    """Every model resolved; with ``cache_file``, unchanged models come from the cache, and the
    file is rewritten with the entries of these models only."""
    from sqlinfer.models.resolve_cache import ResolveCache

    if cache_file is None:
        return tuple(resolve(item, root) for item in items)
    cache = ResolveCache(cache_file, root)
    resolved = tuple(cache.get(item) or cache.put(item, resolve(item, root)) for item in items)
    cache.save()
    return resolved
