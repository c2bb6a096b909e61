"""Image rows decoded by a pool of processes, straight into batch buffers in shared memory.

Why processes: PIL releases the GIL while it decodes and while it resizes, but not in the Python
between those calls, so threads stop scaling at a few cores (16 threads decoded 1,569 images/s
where 16 processes decoded 3,842 on issue 10's 16-core GPU machine). A GPU worker has its task's
cores free for decoding, so it decodes with one process per core.

How: each decoder is a plain ``python -c`` child (not ``multiprocessing``: that would re-import
the Spark worker's main module in every child) talking over a socket pair. The batch buffers are
files in ``/dev/shm`` mapped by the worker and by every decoder and unlinked as soon as all have
mapped them, so nothing is left behind whatever happens to the processes. Only the encoded bytes
travel over the sockets; decoded pixels are written once, in place. Rows go out in small chunks to
whichever decoder is free, so one large image does not hold up a batch. A decoder exits when its
socket closes (the worker ended), and a dead decoder's rows are decoded in the worker itself.

One pool per worker process (:func:`shared_pool`), reused by every task of the process, like the
model (:mod:`sqlinfer.worker.model_cache`).
"""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from sqlinfer.models.declaration import Preprocess
from sqlinfer.worker.decode import BadInput, decode_image

RowErrors = list[tuple[int, BadInput]]

# Chunks per decoder and batch: small enough to balance uneven images, large enough that the
# per-message cost (~50 us) stays under 1% of decoding (a 500x375 JPEG takes ~4 ms).
_CHUNKS_PER_DECODER = 4
_SHM = Path("/dev/shm")


def supported() -> bool:
    """Decoder processes need Linux (shared memory in /dev/shm, file descriptors passed to children)."""
    return sys.platform.startswith("linux")


@dataclass
class _Buffer:
    key: int
    array: np.ndarray  # batch, H, W, C uint8, mapped from shared memory
    mapping: mmap.mmap
    pinned: bool = False  # registered with CUDA as page-locked memory (see pin)


class _Decoder:
    """One child process and the worker's end of its socket."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        code = f"from sqlinfer.worker.decode_pool import serve; serve({theirs.fileno()})"
        # The worker's own interpreter, and its sys.path: Spark adds shipped packages (--py-files,
        # the UDF's dependencies) to a worker's sys.path at run time, not to its environment.
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL, env=environment)
        theirs.close()
        self.connection = Connection(ours.detach())

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.connection.close()  # the child sees EOF and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class DecodePool:
    """``processes`` decoder processes and the shared batch buffers they decode into."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._decoders = [_Decoder() for _ in range(processes)]
        self._buffers: dict[tuple[tuple[int, ...], int], list[_Buffer]] = {}
        self._next_key = 0
        self._lock = threading.Lock()  # one batch at a time: the sockets carry one request each

    def buffers(self, shape: tuple[int, ...], count: int) -> list[np.ndarray]:
        """``count`` uint8 arrays of ``shape`` (batch, H, W, C) in shared memory, mapped by every
        decoder; made once per shape and reused by later tasks of this process."""
        with self._lock:
            if (shape, count) not in self._buffers:
                self._buffers[(shape, count)] = [self._share(shape) for _ in range(count)]
            return [buffer.array for buffer in self._buffers[(shape, count)]]

    def _share(self, shape: tuple[int, ...]) -> _Buffer:
        size = int(np.prod(shape))
        folder = _SHM if _SHM.is_dir() else None  # elsewhere a temporary file, still shared via mmap
        fd, path = tempfile.mkstemp(prefix="sqlinfer-batch-", dir=folder)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
            key, self._next_key = self._next_key, self._next_key + 1
            for decoder in self._live():
                try:
                    decoder.connection.send(("map", key, path, shape))
                    _reply(decoder.connection)
                except (EOFError, OSError):  # died (or never started): dropped by _live()
                    decoder.process.wait()
            if not self._live():
                print("sqlinfer: the image decoder processes are not running; this worker decodes its "
                      "rows itself (slower)", file=sys.stderr)
        finally:
            os.close(fd)
            os.unlink(path)  # every process holds its mapping; the name is no longer needed
        return _Buffer(key, np.frombuffer(mapping, dtype=np.uint8).reshape(shape), mapping)

    def pin(self, array: np.ndarray) -> None:
        """Register ``array``'s shared buffer with CUDA as page-locked memory, so host-to-device
        copies from it run asynchronously like those from torch's pinned tensors (once per buffer)."""
        buffer = self._owner(array)
        if buffer.pinned:
            return
        import torch

        error = torch.cuda.cudart().cudaHostRegister(buffer.array.ctypes.data, buffer.array.nbytes, 0)
        buffer.pinned = int(error) == 0  # cudaSuccess; otherwise copies from it are synchronous, not wrong

    def _live(self) -> list[_Decoder]:
        """The decoders still running; a dead one (killed, out of memory) is dropped for good."""
        self._decoders = [decoder for decoder in self._decoders if decoder.alive()]
        return self._decoders

    def _owner(self, out: np.ndarray) -> _Buffer:
        start = out.__array_interface__["data"][0]
        for group in self._buffers.values():
            for buffer in group:
                if buffer.array.__array_interface__["data"][0] == start:
                    return buffer
        raise ValueError("decode pool: `out` must be one of this pool's buffers, starting at row 0")

    def decode(self, values: Sequence[bytes | None], rows: Sequence[int], pp: Preprocess,
               out: np.ndarray) -> RowErrors:
        """Decode ``values[r]`` into ``out[r]`` for each row in ``rows``; the bad rows, by row."""
        with self._lock:
            buffer = self._owner(out)
            size = max(1, -(-len(rows) // (max(1, len(self._decoders)) * _CHUNKS_PER_DECODER)))
            chunks = [list(rows[i:i + size]) for i in range(0, len(rows), size)]
            errors: RowErrors = []
            busy: dict[Connection, tuple[_Decoder, list[int]]] = {}
            idle = self._live()
            while chunks or busy:
                while chunks and idle:
                    decoder, chunk = idle.pop(), chunks.pop()
                    try:
                        decoder.connection.send(("decode", buffer.key, pp, [(row, values[row]) for row in chunk]))
                    except OSError:  # the decoder died since it was last seen
                        errors += _decode_here(values, chunk, pp, out)
                        continue
                    busy[decoder.connection] = (decoder, chunk)
                if not busy:  # every decoder died: the rest is decoded here
                    errors += _decode_here(values, [row for chunk in chunks for row in chunk], pp, out)
                    break
                for ready in wait(list(busy)):
                    assert isinstance(ready, Connection)
                    decoder, chunk = busy.pop(ready)
                    try:
                        errors += [(row, BadInput(kind, detail)) for row, kind, detail in _reply(ready)]
                        idle.append(decoder)
                    except (EOFError, OSError):  # the decoder died (killed, out of memory): its rows here
                        errors += _decode_here(values, chunk, pp, out)
            return sorted(errors, key=lambda item: item[0])

    def close(self) -> None:
        with self._lock:
            for decoder in self._decoders:
                decoder.close()
            self._decoders = []


def _decode_here(values: Sequence[bytes | None], rows: Sequence[int], pp: Preprocess, out: np.ndarray) -> RowErrors:
    errors: RowErrors = []
    for row in rows:
        try:
            decode_image(values[row], pp, out[row])
        except BadInput as exc:
            errors.append((row, exc))
    return errors


def _reply(connection: Connection) -> Any:
    status, payload = connection.recv()
    if status == "error":
        raise RuntimeError(f"sqlinfer: an image decoder process failed:\n{payload}")
    return payload


def serve(fd: int) -> None:
    """A decoder process's loop: map buffers, decode chunks of rows into them, until EOF."""
    connection = Connection(fd)
    arrays: dict[int, np.ndarray] = {}
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        try:
            if message[0] == "map":
                _, key, path, shape = message
                with open(path, "r+b") as file:
                    arrays[key] = np.frombuffer(mmap.mmap(file.fileno(), 0), dtype=np.uint8).reshape(shape)
                connection.send(("ok", None))
            else:
                _, key, pp, items = message
                out = arrays[key]
                bad = []
                for row, data in items:
                    try:
                        decode_image(data, pp, out[row])
                    except BadInput as exc:
                        bad.append((row, exc.kind, exc.detail))
                connection.send(("ok", bad))
        except Exception:  # a bug, not a bad row: the worker raises it with this traceback
            connection.send(("error", traceback.format_exc()))


_POOL: DecodePool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool(processes: int) -> DecodePool:
    """This worker process's pool with ``processes`` decoders (started on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.processes != processes:
            if _POOL is not None:
                _POOL.close()
            _POOL = DecodePool(processes)
        return _POOL
