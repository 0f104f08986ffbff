"""OIP tensors as numpy arrays, shared by request decoding and reply decoding and encoding.

Wire dtypes come from the one datatype table, :data:`router.proto.meta.DATATYPES`.
Every check here raises :class:`router.proto.errors.BadRequest` with a message
that starts with the caller's ``where`` (``input 'x'``, ``live reply: output 'y'``),
so requests and live replies name what is wrong the same way.

Arrays decoded from binary or msgpack data are views of the payload (no copy),
so they may be read-only; they are copied only when misaligned for their dtype.

JSON has no number for NaN or the infinities. Replies write them as the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the proto3 JSON mapping of floats,
which the OIP REST API's protobuf definition implies), never as the bare tokens
strict parsers reject; JSON data of FP tensors may hold either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from router.proto.errors import BadRequest
from router.proto.meta import DATATYPES, JSON_NONFINITE, nonfinite_floats

__all__ = [
    "GARBAGE", "JSON_NONFINITE", "UNSERVED", "WIRE_DTYPES", "binary_size", "cast_json", "check_data_or_binary",
    "from_buffer", "json_array", "json_dumps", "json_floats", "json_loads", "pack", "params_of", "raw_bytes",
    "shape_list", "wire",
]

# The one place the JSON implementation is chosen, so a faster library (orjson,
# which returns bytes) can be swapped in without touching the codecs; both
# decoders look it up per call.
json_loads: Callable[[bytes], Any] = json.loads


def json_dumps(obj: Any) -> bytes:
    """Serialise ``obj`` compactly to ASCII JSON bytes (so char length == byte length).

    Raises:
        ValueError: ``obj`` holds a NaN or an infinity, which strict JSON has no number for
            (write them with :func:`json_floats`).
    """
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def json_floats(values: list) -> list:
    """``values`` (a flat list of Python numbers) with each NaN or infinity as its proto3 JSON string."""
    return [v if type(v) is not float or math.isfinite(v) else
            "NaN" if v != v else "Infinity" if v > 0 else "-Infinity" for v in values]


# One Packer for the worker (single-threaded): msgpack.packb() builds one per call.
pack: Callable[[Any], bytes] = msgpack.Packer().pack

#: OIP datatype -> wire dtype: little-endian whatever the host's byte order.
WIRE_DTYPES: dict[str, np.dtype] = {dt: np.dtype(name).newbyteorder("<") for dt, name in DATATYPES.items()}
#: Known OIP datatypes that are not served: reported as a mismatch, not as unknown.
UNSERVED = frozenset({"BYTES", "BF16"})

# Errors numpy and the parsers raise on garbage (ragged lists, out-of-range
# ints, absurd nesting); each becomes a BadRequest.
GARBAGE = (ValueError, TypeError, OverflowError, RecursionError, MemoryError)

_F64 = np.dtype(np.float64)


# -- fields of a tensor -----------------------------------------------------------------------------------


def params_of(obj: dict, where: str) -> dict:
    """``obj``'s ``parameters`` object (empty when absent).

    Raises:
        BadRequest: ``parameters`` is not an object.
    """
    value = obj.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return value


def binary_size(tensor_params: dict, where: str) -> int | None:
    """The ``binary_data_size`` parameter, or None when absent.

    Raises:
        BadRequest: it is not an integer >= 0.
    """
    size = tensor_params.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise BadRequest(f"{where}: binary_data_size must be an integer >= 0, got {size!r}")
    return size


def check_data_or_binary(has_data: bool, size: int | None, where: str) -> None:
    """Check that a tensor has exactly one of JSON ``data`` and a ``binary_data_size``.

    Raises:
        BadRequest: it has both or neither.
    """
    if has_data == (size is not None):
        which = "both 'data' and" if has_data else "neither 'data' nor"
        raise BadRequest(f"{where}: has {which} 'binary_data_size' (exactly one is required)")


def shape_list(raw: Any, where: str) -> list[int]:
    """``raw`` if it is a list of integers >= 0.

    Raises:
        BadRequest: anything else; bool is an int subclass, so a shape of [true] is garbage, not [1].
    """
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise BadRequest(f"{where}: 'shape' must be a list of integers >= 0, got {raw!r}")
    return raw


# -- data -> arrays ---------------------------------------------------------------------------------------


def from_buffer(
    buf: bytes | memoryview, offset: int, shape: list[int], dtype: np.dtype, what: str, name: str
) -> np.ndarray:
    """View ``buf`` from ``offset`` as an array of ``shape`` (the caller checked the size).

    Errors name ``what`` and ``name`` (``input 'x': ...``), formatted only on error:
    this runs for every binary or msgpack tensor.

    Raises:
        BadRequest: a BOOL tensor holds a byte other than 0 or 1.
    """
    # One constructor call: a third of np.frombuffer(...).reshape(...)'s cost, the same read-only view.
    arr = np.ndarray(shape, dtype, buf, offset)
    if not arr.flags.aligned:
        # The JSON header has any length, so binary data lands at any offset;
        # misaligned element access is undefined for compiled kernels.
        arr = arr.copy()
    if dtype.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise BadRequest(f"{what} {name!r}: BOOL bytes must be 0 or 1")
    return arr


def json_array(data: Any, where: str) -> np.ndarray:
    """JSON ``data`` (flat or nested) as numpy infers it, before any cast.

    Raises:
        BadRequest: ragged or otherwise not an array.
    """
    try:
        return np.asarray(data)
    except GARBAGE as exc:
        raise BadRequest(f"{where}: malformed data: {exc}") from None


def cast_json(arr: np.ndarray, data: Any, shape: list[int], dtype: np.dtype, where: str, *,
              exact_ints: bool = False) -> np.ndarray:
    """:func:`json_array`'s result, whose size the caller checked, as an array of ``shape`` and ``dtype``.

    numpy first inferred the elements' own type, so that strings, bools, fractions
    or out-of-range values for the declared datatype are rejected here instead of
    being parsed, truncated or wrapped by a direct ``astype``. The one exception:
    FP data may hold the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
    (:data:`JSON_NONFINITE`), read as those floats; whether a request may carry
    them at all is the model's policy (:mod:`runtime.codecs.requests`).

    Args:
        data: the JSON value ``arr`` came from.
        exact_ints: accept integers that numpy inferred as floats (a UINT64 above
            2**63 next to small ones), converted exactly from ``data``.

    Raises:
        BadRequest: the values do not fit the datatype.
    """
    if not arr.size:
        return np.zeros(shape, dtype)  # [] infers as float64 whatever the datatype
    if arr.dtype != dtype:
        kind, target = arr.dtype.kind, dtype.kind
        if target == "f" and kind == "U":  # strings: "NaN", "Infinity", "-Infinity" are floats
            try:
                floats = nonfinite_floats(data)
            except ValueError:  # another string among the numbers
                raise BadRequest(f"{where}: data must hold numbers") from None
            arr = json_array(floats, where)
            kind = arr.dtype.kind
        if target == "f" and kind in "iuf":
            with np.errstate(over="ignore"):  # 1e300 as FP16 is inf, the cast's defined result
                arr = arr.astype(dtype)
        elif target in "iu" and kind in "iu":
            info = np.iinfo(dtype)
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise BadRequest(f"{where}: data must hold integers in the range of {dtype.name}")
            arr = arr.astype(dtype)
        elif target in "iu" and kind == "f" and exact_ints:
            arr = _exact_ints(data, arr, dtype, where)
        else:
            want = {"b": "booleans", "f": "numbers"}.get(target, f"integers in the range of {dtype.name}")
            raise BadRequest(f"{where}: data must hold {want}")
    return arr.reshape(shape)


def _exact_ints(data: Any, inferred: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """Integers that numpy inferred as floats, converted exactly.

    Converting from the Python values keeps every bit; comparing the result with
    the inferred floats rejects real fractions and out-of-range values.
    """
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            exact = np.array(data, dtype=dtype)
    except GARBAGE:
        exact = None
    if exact is None or not np.array_equal(exact.astype(_F64), inferred):
        raise BadRequest(f"{where}: data must hold integers in the range of {dtype.name}")
    return exact


# -- arrays -> wire ---------------------------------------------------------------------------------------


def wire(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as a C-contiguous array of the declared wire dtype, copying only when needed."""
    arr = np.asarray(arr)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def raw_bytes(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (works for 0-d and empty arrays too)."""
    return arr.reshape(-1).view(np.uint8).data
