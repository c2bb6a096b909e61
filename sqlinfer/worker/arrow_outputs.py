"""Network outputs (a float tensor per batch) as Arrow arrays of the declared output kind.

Rows that failed to decode are NULL; the arrays are built column-wise, without a Python loop per
value, so the conversion stays a small part of a batch's time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sqlinfer.worker.arrow_numpy import booleans, numbers, strings
from sqlinfer.worker.decode import BadInput

# The Arrow form of models.declaration.LABEL_STRUCT, the element of `label` and `topk` outputs.
LABEL_TYPE = pa.struct([("label", pa.string()), ("index", pa.int32()), ("score", pa.float32())])
# Why a row has no result, in a model's `<function>_checked` companion (NULL for good rows).
ERROR_TYPE = pa.struct([("kind", pa.string()), ("message", pa.string())])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _scatter(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Rows of ``values`` (for the good rows only) placed at their positions among all rows."""
    full = np.zeros((len(ok),) + values.shape[1:], dtype=values.dtype)
    full[ok] = values
    return full


def _float_lists(values: np.ndarray, ok: np.ndarray) -> pa.Array:
    width = values.shape[1] if values.ndim > 1 else 1
    flat = _scatter(values.reshape(len(values), width).astype(np.float32, copy=False), ok)
    offsets = numbers(np.arange(len(ok) + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, numbers(flat.reshape(-1)), mask=booleans(~ok))


def _label_struct(indices: np.ndarray, scores: np.ndarray, labels: tuple[str, ...] | None,
                  mask: np.ndarray | None) -> pa.StructArray:
    names = [labels[i] for i in indices] if labels else [str(i) for i in indices]
    return pa.StructArray.from_arrays(
        [strings(names), numbers(indices.astype(np.int32)), numbers(scores.astype(np.float32))],
        fields=list(LABEL_TYPE), mask=booleans(mask) if mask is not None else None)


def _probabilities(outputs: np.ndarray) -> np.ndarray:
    return softmax(outputs.astype(np.float64)) if len(outputs) else outputs


def to_arrow(kind: str, outputs: np.ndarray, ok: np.ndarray, labels: tuple[str, ...] | None,
             k: int, probs: np.ndarray | None = None) -> pa.Array:
    """``outputs`` holds one row per good input (``ok`` marks them among all rows); ``probs``,
    their softmax, when the caller has it already."""
    if kind in ("logits", "embedding"):
        return _float_lists(outputs, ok)
    probs = _probabilities(outputs) if probs is None else probs
    if kind == "probabilities":
        return _float_lists(probs, ok)
    if kind == "label":
        index = _scatter(probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64), ok)
        score = _scatter(probs.max(axis=1) if len(probs) else np.zeros(0), ok)
        return _label_struct(index, score, labels, ~ok)
    k = min(k, outputs.shape[1]) if outputs.ndim > 1 else k
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(probs, top, axis=1)
    per_row = np.where(ok, k, 0)
    offsets = numbers(np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32))
    structs = _label_struct(top.reshape(-1), top_scores.reshape(-1), labels, None)
    return pa.ListArray.from_arrays(offsets, structs, mask=booleans(~ok))


def output_array(output: str | tuple[str, ...], outputs: np.ndarray, ok: np.ndarray,
                 labels: tuple[str, ...] | None, k: int) -> pa.Array:
    """A model's declared ``output``: one kind's array, or for a list of kinds a struct with a
    field per kind, all read off the same network outputs (NULL for the rows that failed)."""
    if isinstance(output, str):
        return to_arrow(output, outputs, ok, labels, k)
    # The softmax once, for every listed kind that reads the class probabilities.
    probs = _probabilities(outputs) if set(output) - {"logits", "embedding"} else None
    fields = [to_arrow(kind, outputs, ok, labels, k, probs) for kind in output]
    return pa.StructArray.from_arrays(fields, names=list(output), mask=booleans(~ok))


def with_errors(result: pa.Array, errors: list[tuple[int, BadInput]]) -> pa.StructArray:
    """``result`` and each row's error side by side: ``struct<result, error: struct<kind, message>>``;
    the error of a good row is NULL."""
    kinds: list[str | None] = [None] * len(result)
    messages: list[str | None] = [None] * len(result)
    for row, error in errors:
        kinds[row], messages[row] = error.kind, error.detail
    good = booleans(np.array([kind is None for kind in kinds], dtype=bool))
    error = pa.StructArray.from_arrays([strings(kinds), strings(messages)],
                                       fields=list(ERROR_TYPE), mask=good)
    return pa.StructArray.from_arrays([result, error], names=["result", "error"])
