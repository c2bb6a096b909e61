"""From declarations to ready-to-ship models: weights read once, defaults applied, the network
checked against its weights and input, and a fingerprint computed. Driver side; no Spark here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlinfer import flavors
from sqlinfer.errors import SqlinferError
from sqlinfer.flavors import Weights
from sqlinfer.plan import ModelPlan
from sqlinfer.spec import Located, Preprocess


@dataclass(frozen=True)
class ResolvedModel:
    plan: ModelPlan
    weights: Weights
    python_files: tuple[Path, ...]  # project modules the workers must import (python flavor)


def _preprocess(item: Located, default: Preprocess | None) -> Preprocess | None:
    decl = item.decl
    if decl.input != "image":
        return None
    if decl.preprocess is None and default is None:
        raise item.error("input image needs `preprocess` (at least `crop` or `resize: [h, w]`)",
                         code="config.missing_key")
    if decl.preprocess is None:
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
    path = (root / labels).resolve()
    if not path.is_relative_to(root.resolve()):
        raise item.error(f"labels path {labels!r} leaves the project folder", code="config.path_outside_project",
                         key="labels")
    if not path.is_file():
        raise item.error(f"labels file not found: {path}", code="config.missing_file", key="labels")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _input_shape(item: Located, pp: Preprocess | None) -> tuple[int, ...]:
    if pp is None:
        assert item.decl.shape is not None
        return tuple(item.decl.shape)
    height, width = pp.output_size  # type: ignore[misc]
    return (3 if pp.color_mode == "RGB" else 1, height, width)


def _check_network(item: Located, weights: Weights, shape: tuple[int, ...]) -> int:
    """Build the network from its weights and run one zero input: mismatched weights, a wrong
    input shape or a bad embedding layer are caught here, before any Spark job. Returns the number
    of outputs per row."""
    import numpy as np

    from sqlinfer.worker import LoadedModel

    probe = ModelPlan(item.decl, None, shape, None, 0, "check")
    try:
        model = LoadedModel(probe, weights, "cpu")
    except (RuntimeError, ValueError, TypeError) as exc:
        raise item.error(f"the weights do not fit the network: {str(exc).splitlines()[0]}",
                         code="config.weights_mismatch", key="weights") from None
    try:
        return int(model.forward(np.zeros((1,) + shape, dtype=np.float32)).shape[1])
    except Exception as exc:  # noqa: BLE001 - any failure of the forward pass means a bad declaration
        raise item.error(f"the network does not accept input of shape {list(shape)}: "
                         f"{str(exc).splitlines()[0]}", code="config.bad_input_shape",
                         key="preprocess" if item.decl.input == "image" else "shape") from None


def fingerprint(item: Located, pp: Preprocess | None, labels: tuple[str, ...] | None, weights: Weights) -> str:
    # batch_size and device change how fast a model runs, not what it predicts.
    description = {
        "decl": item.decl.model_dump(mode="json", by_alias=True, exclude={"batch_size", "device"}),
        "preprocess": pp.model_dump(mode="json") if pp else None,
        "labels": list(labels) if labels else None,
        "weights": weights.digest,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def resolve(item: Located, root: Path) -> ResolvedModel:
    """Everything the driver needs to register one model's UDF."""
    decl = item.decl
    flavor = flavors.get(decl.flavor)
    if decl.flavor == "torchvision":
        flavor.check(item)
    defaults = flavor.defaults(decl)
    pp = _preprocess(item, defaults.preprocess)
    shape = _input_shape(item, pp)
    weights = flavor.load_weights(item, root)
    num_outputs = _check_network(item, weights, shape)
    labels = _labels(item, root, defaults.labels)
    if labels is not None and len(labels) != num_outputs and decl.output in ("label", "topk"):
        if decl.labels is None:
            labels = None  # the architecture's default names do not fit this head (e.g. num_classes=10)
        else:
            raise item.error(f"{len(labels)} labels, but the network has {num_outputs} outputs",
                             code="config.labels_mismatch", key="labels")
    plan = ModelPlan(decl, pp, shape, labels, num_outputs, fingerprint(item, pp, labels, weights))
    python_files = ()
    if decl.flavor == "python":
        module_file = flavors.get("python").project_module_file(decl, root)
        python_files = (module_file,) if module_file else ()
    return ResolvedModel(plan, weights, python_files)


def resolve_all(items: tuple[Located, ...], root: Path) -> tuple[ResolvedModel, ...]:
    return tuple(resolve(item, root) for item in items)


__all__ = ["ResolvedModel", "resolve", "resolve_all", "SqlinferError"]
