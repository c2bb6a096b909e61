"""Arrow arrays from numpy, and numpy views of Arrow arrays, without importing pandas.

pyarrow's ``pa.array()`` and ``Array.to_numpy()`` import pandas whenever it is installed (to ask
whether their argument is a pandas object), even when given numpy arrays or Python lists: 0.25 s
of CPU and about 40 MB in every Python worker on its first batch, for a library the worker never
uses otherwise. The arrays a worker reads and writes (numbers, booleans, strings, their lists) are
simple enough to read and build through their buffers instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# Arrow's names for the floating types; the integer types have numpy's names.
_FLOATS = {"halffloat": np.float16, "float": np.float32, "double": np.float64}


def numbers(values: np.ndarray) -> pa.Array:
    """A 1-d numpy array of numbers as an Arrow array of the same type, without nulls."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _bits(flags: np.ndarray) -> pa.Buffer:
    return pa.py_buffer(np.packbits(np.asarray(flags, dtype=bool), bitorder="little"))


def booleans(values: np.ndarray) -> pa.Array:
    """A 1-d numpy array of booleans as an Arrow boolean array, without nulls."""
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, _bits(values)])


def strings(values: Sequence[str | None]) -> pa.Array:
    """Python strings (None: a null) as an Arrow string array."""
    encoded = [b"" if value is None else value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    missing = np.fromiter((value is None for value in values), dtype=bool, count=len(encoded))
    null_count = int(missing.sum())
    validity = _bits(~missing) if null_count else None
    return pa.Array.from_buffers(pa.string(), len(encoded), [validity, pa.py_buffer(offsets),
                                                             pa.py_buffer(b"".join(encoded))], null_count)


def view(array: pa.Array) -> np.ndarray:
    """The values of an Arrow array of numbers as a numpy array over its buffer (no copy); the
    slots of null rows hold whatever the buffer holds."""
    name = str(array.type)
    dtype = np.dtype(_FLOATS.get(name, name))
    data = array.buffers()[1]
    if data is None:  # an empty array may have no buffer
        return np.zeros(0, dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def nulls(array: pa.Array) -> np.ndarray:
    """Per row of ``array``: is it null?"""
    validity = array.buffers()[0]
    if array.null_count == 0 or validity is None:
        return np.zeros(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little",
                         count=array.offset + len(array))
    return bits[array.offset:] == 0
