"""Text rows -> token ids and attention masks, in the worker (the `transformers` flavor).

The tokenizer is the model folder's fast tokenizer (``tokenizer.json``, run by the `tokenizers`
library), carried in the broadcast weights' metadata and built once per process. Each batch is
padded to its own longest row, not to ``max_length``: a batch of short sentences costs what short
sentences cost. NULL, empty and whitespace-only rows are bad rows (NULL with a reason), never a
failed batch. Rows are sorted by length within windows of a few batches (:class:`LengthOrder`), so
a batch holds rows of about one length, and put back in order before they leave the task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from sqlinfer.models.flavors.base import Weights
from sqlinfer.models.flavors.transformers import packed_settings
from sqlinfer.worker.arrow_numpy import numbers
from sqlinfer.worker.decode import BadInput

if TYPE_CHECKING:
    from tokenizers import Tokenizer


_tokenizers: dict[str, Tokenizer] = {}  # by model fingerprint: one per process and model


def tokenizer_for(fingerprint: str, load_weights: Callable[[], Weights]) -> Tokenizer:
    """The model's tokenizer, cut at its ``max_length``; made from the weights' metadata once per
    process and model (a task of a model seen before only looks it up)."""
    if fingerprint not in _tokenizers:
        from tokenizers import Tokenizer

        settings = packed_settings(load_weights())
        tokenizer = Tokenizer.from_str(settings["tokenizer"])
        tokenizer.no_padding()  # padded per batch, in tokenize()
        tokenizer.enable_truncation(max_length=int(settings["max_length"]))
        _tokenizers[fingerprint] = tokenizer
    return _tokenizers[fingerprint]


def tokenize(tokenizer: Tokenizer, values: list[Any]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, BadInput]]]:
    """(N x 2 x L int64 ids and attention masks, ok per row, bad rows): L is the batch's longest
    row; bad rows are all padding."""
    ok = np.array([isinstance(value, str) and bool(value.strip()) for value in values], dtype=bool)
    errors = [(row, BadInput("empty", "NULL text" if value is None else "empty text"))
              for row, value in enumerate(values) if not ok[row]]
    encodings = tokenizer.encode_batch([value for value, good in zip(values, ok, strict=True) if good])
    longest = max((len(encoding.ids) for encoding in encodings), default=1)
    tokens = np.zeros((len(values), 2, longest), dtype=np.int64)
    for row, encoding in zip(np.flatnonzero(ok), encodings, strict=True):
        tokens[row, 0, :len(encoding.ids)] = encoding.ids
        tokens[row, 1, :len(encoding.ids)] = encoding.attention_mask
    return tokens, ok, errors


class LengthOrder:
    """Rows sorted by length within windows of a few batches, so that each batch pads little (as
    sentence-transformers' ``encode`` sorts its whole input), and the outputs put back in input
    order. On 2 cores, all-MiniLM-L6-v2 over a book's passages ran at 121 rows/s in input order,
    232 sorted in windows of 16 batches and 249 in windows of 64 (bench/text_bench.py). A window is
    ``window_batches`` model batches: its outputs go out when its last batch is done."""

    def __init__(self, batch_size: int, window_batches: int = 64) -> None:
        self.batch_size = batch_size
        self.window = batch_size * window_batches
        self._orders: deque[np.ndarray] = deque()  # per window not yet restored: its sorted order

    def chunks(self, windows: Iterable[list[Any]]) -> Iterator[list[tuple[int, Any]]]:
        """Each window of rows (from :func:`~sqlinfer.worker.score.rebatch` with ``self.window``),
        as batches of ``batch_size`` rows, shortest rows first: (the row's place in the task's
        input, its value), so that an error can name the row as the task received it."""
        first = 0
        for rows in windows:
            order = np.argsort([len(row) if isinstance(row, str) else 0 for row in rows], kind="stable")
            self._orders.append(order)
            for start in range(0, len(rows), self.batch_size):
                yield [(first + int(i), rows[i]) for i in order[start:start + self.batch_size]]
            first += len(rows)

    def restore(self, outputs: Iterable[pa.Array]) -> Iterator[pa.Array]:
        """The outputs of the batches of :meth:`chunks`, one array per window, in input order."""
        done: list[pa.Array] = []
        rows = 0
        for array in outputs:
            done.append(array)
            rows += len(array)
            if rows == len(self._orders[0]):  # windows end where a batch ends
                order = self._orders.popleft()
                inverse = np.empty_like(order)
                inverse[order] = np.arange(len(order))
                yield pa.concat_arrays(done).take(numbers(inverse))
                done, rows = [], 0
