"""``target/manifest.json``: what each node was last built from, and ``state:modified``, the nodes
that differ from an earlier build's manifest (dbt's state selection, for CI: build what a change
touched).

A node's state is its SQL as rendered (variables included; a seed: its CSV file), its config, what
it reads (refs and sources) and the fingerprints of the models it calls, so a new weights file
marks exactly the nodes that call that model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlinfer.build.manifest import Manifest, Node
from sqlinfer.errors import BuildError

MANIFEST = "manifest.json"


def _content(node: Node) -> bytes:
    return node.path.read_bytes() if node.config.materialized == "seed" else node.sql.encode()


def node_states(manifest: Manifest, fingerprints: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Each node's state, as the manifest records it (in JSON's types, so that a state read back
    from the file compares equal: tuples become lists)."""
    states = {name: {
        "sha256": hashlib.sha256(_content(node)).hexdigest(),
        "config": asdict(node.config),
        "refs": sorted(node.rendered.refs),
        "sources": sorted(node.rendered.sources),
        # A node calling `<f>_checked` depends on model f as much as one calling f.
        "models": {f: fingerprints[f] for f in sorted(node.udfs) if f in fingerprints},
    } for name, node in manifest.nodes.items()}
    normalized: dict[str, dict[str, Any]] = json.loads(json.dumps(states))
    return normalized


def write_manifest(target: Path, states: Mapping[str, dict[str, Any]]) -> Path:
    path = target / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
    partial.write_text(json.dumps({"nodes": states}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def read_manifest(state: Path) -> dict[str, dict[str, Any]]:
    """The node states of an earlier build: ``state`` is its target folder or its manifest.json."""
    path = state / MANIFEST if state.is_dir() else state
    try:
        nodes = json.loads(path.read_text(encoding="utf-8"))["nodes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"--state {state}: cannot read {path.name} of an earlier build ({exc})",
                         code="state.unreadable", path=path) from None
    if not isinstance(nodes, dict):
        raise BuildError(f"--state {state}: {path.name} has no node states", code="state.unreadable", path=path)
    return nodes


def modified(current: Mapping[str, dict[str, Any]], previous: Mapping[str, dict[str, Any]]) -> set[str]:
    """Nodes that are new or whose state differs."""
    return {name for name, state in current.items() if previous.get(name) != state}

