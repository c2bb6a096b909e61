"""From declarations to ready-to-ship models: weights read once, defaults applied, the network
checked against its weights and input, and a fingerprint computed. Driver side; no Spark here.

Checking a network means importing torch and building it: seconds of CPU at every command. A
model whose weights file is shipped as it is (a ``.safetensors`` state_dict, a TorchScript file)
and whose declaration, weights, labels file, project module and library versions are those of an
earlier successful check is taken from the project's cache (``target/resolved_models.json``)
instead: then the driver does not import torch at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

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
    """Everything the driver needs to register one model's UDF, checked from scratch."""
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
    return ResolvedModel(plan, weights, _python_files(item, root))


def _python_files(item: Located, root: Path) -> tuple[Path, ...]:
    """The project module a python-flavor model's class lives in, shipped to the workers."""
    if item.decl.flavor != "python":
        return ()
    module_file = flavors.get("python").project_module_file(item.decl, root)
    return (module_file,) if module_file else ()


# Bump when what resolve() derives from a declaration changes, so older cache entries miss.
CACHE_VERSION = 1


def resolve_all(items: tuple[Located, ...], root: Path, cache_file: Path | None = None) -> tuple[ResolvedModel, ...]:
    """Every model resolved; with ``cache_file``, unchanged models come from the cache (see above)
    and the file is rewritten with the entries of these models only."""
    cache = _read_cache(cache_file)
    kept: dict[str, Any] = {}
    resolved = []
    for item in items:
        shipped = _shipped_file(item, root)
        key = _cache_key(item, root, shipped[1]) if shipped else None
        if key is not None and key in cache:
            model = _from_cache(item, root, cache[key], Weights(shipped[0], shipped[1]))  # type: ignore[index]
        else:
            model = resolve(item, root)
        if key is not None:
            kept[key] = _cache_entry(model)
        resolved.append(model)
    if cache_file is not None and kept != cache:
        _write_cache(cache_file, kept)
    return tuple(resolved)


def _shipped_file(item: Located, root: Path) -> tuple[str, bytes] | None:
    """(format, bytes) of a weights file the driver broadcasts unchanged; None when the weights
    are generated or converted (``random``, a torchvision weights name, a ``.pt`` state_dict)."""
    decl = item.decl
    if decl.flavor == "torchscript":
        weights_format = "torchscript"
    elif decl.weights is not None and decl.weights.endswith(".safetensors"):
        weights_format = "safetensors"
    else:
        return None
    return weights_format, flavors.weights_path(item, root).read_bytes()


def _cache_key(item: Located, root: Path, data: bytes) -> str | None:
    """A digest of everything resolve() reads; None when something it reads cannot be tracked (a
    python-flavor module installed outside the project)."""
    decl = item.decl
    parts: dict[str, Any] = {
        "version": CACHE_VERSION,
        "decl": decl.model_dump(mode="json", by_alias=True),
        "weights": hashlib.sha256(data).hexdigest(),
        "libraries": {name: _version(name) for name in ("sqlinfer", "torch", "torchvision")},
    }
    if isinstance(decl.labels, str):
        labels = (root / decl.labels).resolve()
        parts["labels"] = labels.read_text(encoding="utf-8") if labels.is_file() else None
    if decl.flavor == "python":
        module_file = flavors.get("python").project_module_file(decl, root)
        if module_file is None:
            return None
        parts["module"] = module_file.read_text(encoding="utf-8")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cache_entry(model: ResolvedModel) -> dict[str, Any]:
    plan = model.plan
    return {"preprocess": plan.preprocess.model_dump(mode="json") if plan.preprocess else None,
            "input_shape": list(plan.input_shape), "labels": list(plan.labels) if plan.labels else None,
            "num_outputs": plan.num_outputs, "fingerprint": plan.fingerprint}


def _from_cache(item: Located, root: Path, entry: dict[str, Any], weights: Weights) -> ResolvedModel:
    decl = item.decl
    pp = Preprocess.model_validate(entry["preprocess"]) if entry["preprocess"] is not None else None
    labels = tuple(entry["labels"]) if entry["labels"] is not None else None
    plan = ModelPlan(decl, pp, tuple(entry["input_shape"]), labels, entry["num_outputs"], entry["fingerprint"])
    return ResolvedModel(plan, weights, _python_files(item, root))


def _read_cache(cache_file: Path | None) -> dict[str, Any]:
    if cache_file is None:
        return {}
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: check everything again
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(cache_file: Path, entries: dict[str, Any]) -> None:
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        os.replace(temporary, cache_file)
    except OSError:  # a read-only project: the next command checks the networks again
        pass


__all__ = ["ResolvedModel", "resolve", "resolve_all", "SqlinferError"]
