"""The project's cache of model checks (``target/resolved_models.json``).

A model whose weights file is broadcast as it is on disk (a ``.safetensors`` state_dict, a
TorchScript file) and whose declaration, weights, labels file, project module and library
versions are those of an earlier successful check is taken from here: then the driver does not
import torch at all. Anything that cannot be tracked (weights generated or downloaded, a module
installed outside the project) is checked every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlinfer.models import flavors
from sqlinfer.models.declaration import Located, Preprocess
from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.plan import ModelPlan
from sqlinfer.models.resolve import ResolvedModel

# Bump when what resolve() derives from a declaration changes, so older entries miss.
CACHE_VERSION = 1


class ResolveCache:
    """Entries read at start, looked up and added per model, written back by :meth:`save` (only
    the entries of the models of this call: removed models leave the file)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.entries = _read(path)
        self.kept: dict[str, Any] = {}
        self._keys: dict[str, tuple[str, Weights] | None] = {}

    def get(self, item: Located) -> ResolvedModel | None:
        found = self._key(item)
        if found is None:
            return None
        key, weights = found
        entry = self.entries.get(key)
        if entry is None:
            return None
        model = _from_entry(item, self.root, entry, weights)
        self.kept[key] = entry
        return model

    def put(self, item: Located, model: ResolvedModel) -> ResolvedModel:
        found = self._key(item)
        if found is not None:
            self.kept[found[0]] = _entry(model)
        return model

    def save(self) -> None:
        if self.kept == self.entries:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.kept, indent=1), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError:  # a read-only project: the next command checks the networks again
            pass

    def _key(self, item: Located) -> tuple[str, Weights] | None:
        """(digest of everything resolve() reads, the weights) or None when something cannot be tracked."""
        name = item.decl.name
        if name not in self._keys:
            self._keys[name] = _digest(item, self.root)
        return self._keys[name]


def _digest(item: Located, root: Path) -> tuple[str, Weights] | None:
    decl = item.decl
    flavor = flavors.get(decl.flavor)
    weights = flavor.file_weights(item, root)
    sources = flavor.source_files(item, root)
    if weights is None or sources is None:
        return None
    parts: dict[str, Any] = {
        "version": CACHE_VERSION,
        "decl": decl.model_dump(mode="json", by_alias=True),
        "weights": weights.digest,
        "libraries": {name: _version(name) for name in ("sqlinfer", "torch", "torchvision", "onnxruntime")},
        "sources": [path.read_text(encoding="utf-8") for path in sources],
    }
    if isinstance(decl.labels, str):
        labels = (root / decl.labels).resolve()
        parts["labels"] = labels.read_text(encoding="utf-8") if labels.is_file() else None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), weights


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _entry(model: ResolvedModel) -> dict[str, Any]:
    plan = model.plan
    return {"preprocess": plan.preprocess.model_dump(mode="json") if plan.preprocess else None,
            "input_shape": list(plan.input_shape), "labels": list(plan.labels) if plan.labels else None,
            "num_outputs": plan.num_outputs, "fingerprint": plan.fingerprint}


def _from_entry(item: Located, root: Path, entry: dict[str, Any], weights: Weights) -> ResolvedModel:
    pp = Preprocess.model_validate(entry["preprocess"]) if entry["preprocess"] is not None else None
    labels = tuple(entry["labels"]) if entry["labels"] is not None else None
    plan = ModelPlan(item.decl, pp, tuple(entry["input_shape"]), labels, entry["num_outputs"], entry["fingerprint"])
    return ResolvedModel(plan, weights, flavors.get(item.decl.flavor).source_files(item, root) or ())


def _read(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: check everything again
        return {}
    return cache if isinstance(cache, dict) else {}
