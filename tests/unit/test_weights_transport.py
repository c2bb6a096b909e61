"""How weights reach the Python workers: a local master's workers read the weights file itself,
only while it is the file the driver read and checked; otherwise a broadcast, or a shipped file
above the limit (sqlinfer/models/udf.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyspark import cloudpickle

from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.udf import read_in_place, weights_transport

BLOB = bytes(range(256)) * 64


def test_transport_by_master_and_origin(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    path.write_bytes(BLOB)
    from_file, generated = Weights.read("safetensors", path), Weights("safetensors", BLOB)
    assert from_file.data == BLOB and from_file.file is not None and from_file.file.size == len(BLOB)
    assert weights_transport(from_file, limit_mb=0.001, local=True) == "local file"
    assert weights_transport(generated, limit_mb=1, local=True) == "broadcast"
    assert weights_transport(from_file, limit_mb=1, local=False) == "broadcast"
    assert weights_transport(from_file, limit_mb=0.001, local=False) == "file"


def test_workers_read_the_file_only_while_it_is_the_one_read(tmp_path: Path) -> None:
    path = tmp_path / "net.safetensors"
    path.write_bytes(BLOB)
    weights = Weights.read("safetensors", path)
    assert weights.file is not None
    counted: list[dict[str, float]] = []
    load = read_in_place(weights, counted.append)
    assert BLOB not in cloudpickle.dumps(load)  # the closure carries the file's stamp, not its bytes
    assert load().data == BLOB and counted == [{"weights_reads": 1}]

    # Rewritten in place with bytes of the same size: its modification time differs.
    path.write_bytes(BLOB[::-1])
    os.utime(path, ns=(weights.file.mtime_ns, weights.file.mtime_ns + 1_000_000))
    with pytest.raises(RuntimeError, match="changed since this command read and checked it"):
        load()
    # Replaced by another file with the same size and time: another inode.
    other = tmp_path / "other"
    other.write_bytes(BLOB)
    os.utime(other, ns=(weights.file.mtime_ns, weights.file.mtime_ns))
    os.replace(other, path)
    with pytest.raises(RuntimeError, match="changed since"):
        load()
    path.unlink()
    with pytest.raises(RuntimeError, match="is gone since this command read it"):
        load()
