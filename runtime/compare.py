"""Shadow mode: compare a shadow version's outputs with the live version's reply.

A shadow worker receives a copy of a live request together with the live
version's reply body, runs its own model on the request, and reports how far its
outputs are from the live ones. The live reply is decoded with
:func:`decode_reply` (the inverse of :func:`runtime.codecs.encode_response`, in
the same three body formats), the two sets of outputs are compared with
:func:`compare`, and the result is packed with :func:`pack_stats`.

Measures, per output present in both (see :func:`compare`): the largest absolute
difference, the largest relative difference ``|s - l| / max(|s|, |l|)`` (in
``[0, 2]``, symmetric), and for classifier-like outputs (``ndim >= 2``, last
dimension >= 2) how many rows have the same argmax along the last axis.

Stats payload (:func:`pack_stats`): the payload of the shadow worker's 200 reply
on the router <-> worker link (``[rid, 200, 0, payload]``, see
:mod:`router.proto.link`) is the msgpack array::

    [rows_total, [[name, max_abs, max_rel, agree, rows], ...]]

``rows_total`` (uint) is dim 0 of the first compared output (0 for a 0-d one);
then one entry per compared output, in the live reply's order: ``name`` (str),
``max_abs`` and ``max_rel`` (float64, ``inf`` where a NaN or an infinity
disagrees), ``agree`` and ``rows`` (int, both ``-1`` for outputs that are not
classifier-like). Plain msgpack types only: the router unpacks it without numpy.

Every malformed live reply raises :class:`router.proto.errors.BadRequest`, and only
that; messages start with ``live reply:`` and name the output and field.

Arrays decoded from binary or msgpack data are views of the payload (no copy),
so they may be read-only; they are copied only when misaligned for their dtype
(as in :mod:`runtime.codecs`, so they are safe to hand to compiled kernels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from router.proto.errors import BadRequest
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from runtime import codecs
from runtime.codecs import _DTYPES, _GARBAGE, from_buffer

__all__ = ["Diff", "Diffs", "compare", "decode_reply", "pack_stats"]

#: One compared output: ``(name, max_abs, max_rel, agree, rows)``.
Diff = tuple[str, float, float, int, int]

_WHERE = "live reply"
_OUTPUT = f"{_WHERE}: output"
_F64 = np.dtype(np.float64)
_INF = math.inf


# -- decoding ---------------------------------------------------------------------------------------------


def decode_reply(fmt: int, payload: bytes | memoryview, header_len: int) -> dict[str, np.ndarray]:
    """Decode a reply body produced by :func:`runtime.codecs.encode_response`.

    Args:
        fmt: ``FMT_JSON``, ``FMT_BINARY`` or ``FMT_MSGPACK``.
        payload: the reply body, untouched.
        header_len: the reply's JSON header length (JSON and binary formats: 0
            when the whole body is JSON; ignored for msgpack).

    Returns:
        ``{output name: array}`` in the reply's order, each shaped per the reply's
        ``shape`` with the little-endian wire dtype of its OIP ``datatype``.

    Raises:
        BadRequest: the body is malformed; the message names what is wrong.
    """
    if fmt == FMT_MSGPACK:
        return _decode_msgpack(payload)
    if fmt == FMT_JSON or fmt == FMT_BINARY:
        # encode_response picks the layout by output, not by format: a JSON request
        # may ask for binary outputs, so both formats carry an optional binary section.
        end = len(payload)
        if type(header_len) is not int or header_len < 0 or header_len > end:
            raise BadRequest(f"{_WHERE}: JSON header length {header_len!r} is outside the body of {end} bytes")
        return _decode_oip(payload, header_len or end)
    raise BadRequest(f"{_WHERE}: unknown body format {fmt!r}")


def _decode_oip(payload: bytes | memoryview, header_len: int) -> dict[str, np.ndarray]:
    """Decode an OIP JSON reply, or a JSON header followed by binary output data."""
    header = payload if header_len == len(payload) else payload[:header_len]
    if not isinstance(header, bytes):
        header = bytes(header)  # the stdlib parser does not take memoryviews
    try:
        body = codecs.json_loads(header)  # looked up per call: follows a swapped-in parser
    except _GARBAGE as exc:
        raise BadRequest(f"{_WHERE}: malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{_WHERE}: malformed JSON: the reply must be an object")
    outputs = body.get("outputs")
    if not isinstance(outputs, list):
        raise BadRequest(f"{_WHERE}: 'outputs' must be a list of tensors")

    arrays: dict[str, np.ndarray] = {}
    offset = header_len
    end = len(payload)
    for raw in outputs:
        if not isinstance(raw, dict):
            raise BadRequest(f"{_WHERE}: each entry of 'outputs' must be an object")
        name = _name(raw.get("name"), arrays)
        where = f"{_WHERE}: output {name!r}"
        datatype, dtype = _datatype(raw.get("datatype"), where)
        shape = _shape(raw.get("shape"), where)
        params = raw.get("parameters")
        if params is None:
            params = {}
        elif not isinstance(params, dict):
            raise BadRequest(f"{where}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        has_data = "data" in raw
        if has_data == (size is not None):
            which = "both 'data' and" if has_data else "neither 'data' nor"
            raise BadRequest(f"{where}: has {which} 'binary_data_size' (exactly one is required)")
        count = math.prod(shape)
        if has_data:
            arrays[name] = _from_json(raw["data"], shape, count, dtype, where)
            continue
        if type(size) is not int or size < 0:
            raise BadRequest(f"{where}: binary_data_size must be an integer >= 0, got {size!r}")
        expected = count * dtype.itemsize
        if size != expected:
            raise BadRequest(f"{where}: binary_data_size {size} for shape {shape} {datatype} ({expected} expected)")
        if size > end - offset:
            raise BadRequest(f"{where}: binary_data_size {size}, but only {end - offset} bytes of binary data left")
        arrays[name] = from_buffer(payload, offset, shape, dtype, _OUTPUT, name)
        offset += size
    if offset != end:
        raise BadRequest(f"{_WHERE}: {end - offset} bytes of binary data after the last binary output")
    return arrays


def _decode_msgpack(payload: bytes | memoryview) -> dict[str, np.ndarray]:
    """Decode a msgpack reply: ``outputs`` maps each name to datatype, shape and raw bytes."""
    try:
        body = msgpack.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadRequest(f"{_WHERE}: malformed msgpack: {exc or type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"{_WHERE}: malformed msgpack: the reply must be a map")
    outputs = body.get("outputs")
    if not isinstance(outputs, dict):
        raise BadRequest(f"{_WHERE}: 'outputs' must be a map of output name -> tensor")

    arrays: dict[str, np.ndarray] = {}
    for key, raw in outputs.items():
        name = _name(key, arrays)
        where = f"{_WHERE}: output {name!r}"
        if not isinstance(raw, dict):
            raise BadRequest(f"{where}: must be a map with datatype, shape and data")
        datatype, dtype = _datatype(raw.get("datatype"), where)
        shape = _shape(raw.get("shape"), where)
        data = raw.get("data")
        if not isinstance(data, bytes):
            raise BadRequest(f"{where}: 'data' must be msgpack bin")
        count = math.prod(shape)
        expected = count * dtype.itemsize
        if len(data) != expected:
            raise BadRequest(f"{where}: {len(data)} bytes of data for shape {shape} {datatype} ({expected} expected)")
        arrays[name] = from_buffer(data, 0, shape, dtype, _OUTPUT, name)
    return arrays


def _name(raw: Any, seen: dict[str, np.ndarray]) -> str:
    if not isinstance(raw, str):
        raise BadRequest(f"{_WHERE}: output name must be a string, got {raw!r}")
    if raw in seen:
        raise BadRequest(f"{_WHERE}: duplicate output {raw!r}")
    return raw


def _datatype(raw: Any, where: str) -> tuple[str, np.dtype]:
    dtype = _DTYPES.get(raw) if isinstance(raw, str) else None
    if dtype is None:
        raise BadRequest(f"{where}: unknown datatype {raw!r}")
    return raw, dtype


def _shape(raw: Any, where: str) -> list[int]:
    # bool is an int subclass: a shape of [true] is garbage, not [1].
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise BadRequest(f"{where}: 'shape' must be a list of integers >= 0, got {raw!r}")
    return raw


def _from_json(data: Any, shape: list[int], count: int, dtype: np.dtype, where: str) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested) to an array of ``shape`` and ``dtype``.

    numpy first infers the elements' own type, so that strings, bools or
    out-of-range values are rejected instead of being parsed or wrapped by a cast.
    """
    if not isinstance(data, list):  # OIP: flat or nested array, even for one element
        raise BadRequest(f"{where}: 'data' must be a list")
    try:
        arr = np.asarray(data)
    except _GARBAGE as exc:
        raise BadRequest(f"{where}: malformed data: {exc}") from None
    if arr.size != count:
        raise BadRequest(f"{where}: {arr.size} elements of data for shape {shape} ({count} expected)")
    if not count:
        return np.zeros(shape, dtype)  # [] infers as float64 whatever the datatype
    if arr.dtype != dtype:
        kind, target = arr.dtype.kind, dtype.kind
        if target == "f" and kind in "iuf":
            with np.errstate(over="ignore"):  # 1e300 as FP16 is inf, the cast's defined result
                arr = arr.astype(dtype)
        elif target in "iu" and kind in "iu":
            info = np.iinfo(dtype)
            if int(arr.min()) < info.min or int(arr.max()) > info.max:
                raise BadRequest(f"{where}: data must hold integers in the range of {dtype.name}")
            arr = arr.astype(dtype)
        elif target in "iu" and kind == "f":
            arr = _exact_ints(data, arr, dtype, where)
        else:
            want = {"b": "booleans", "f": "numbers"}.get(target, "integers")
            raise BadRequest(f"{where}: data must hold {want}")
    return arr.reshape(shape)


def _exact_ints(data: list, inferred: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """Integers that numpy inferred as floats (a UINT64 above 2**63 next to small ones) converted exactly.

    Converting from the Python values keeps every bit; comparing the result with
    the inferred floats rejects real fractions and out-of-range values.
    """
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            exact = np.array(data, dtype=dtype)
    except _GARBAGE:
        exact = None
    if exact is None or not np.array_equal(exact.astype(_F64), inferred):
        raise BadRequest(f"{where}: data must hold integers in the range of {dtype.name}")
    return exact


# -- comparison -------------------------------------------------------------------------------------------


class Diffs(list[Diff]):
    """What :func:`compare` returns: a list of :data:`Diff`, plus ``rows_total`` for :func:`pack_stats`."""

    __slots__ = ("rows_total",)

    def __init__(self, rows_total: int = 0) -> None:
        super().__init__()
        self.rows_total = rows_total


def compare(live: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> Diffs:
    """Compare the shadow's outputs with the live ones, output by output.

    Arrays are compared as float64. Per position: both NaN or equal (equal
    infinities included) is no difference; differing values where either is NaN
    or infinite count as ``inf`` for both measures; otherwise the absolute
    difference is ``|s - l|`` and the relative one ``|s - l| / max(|s|, |l|)``.

    Returns:
        One :data:`Diff` ``(name, max_abs, max_rel, agree, rows)`` per output name
        present in both, in ``live``'s order (plain Python numbers). Empty arrays
        give ``0.0``. For arrays with ``ndim >= 2`` and a last dimension >= 2,
        ``rows`` is the number of rows (all dims but the last) and ``agree`` the
        number whose argmax along the last axis is the same; else both are ``-1``.
        ``rows_total`` is dim 0 of the first compared output (0 for a 0-d one).

    Raises:
        BadRequest: no output name is shared, or a shared output's shapes differ.
    """
    diffs: Diffs | None = None
    # One errstate for all outputs: inf - inf, 0 / 0 and overflow are handled below, not warnings.
    with np.errstate(all="ignore"):
        for name, lv in live.items():
            if name not in shadow:
                continue
            lo = np.asarray(lv)
            so = np.asarray(shadow[name])
            if lo.shape != so.shape:
                raise BadRequest(f"output {name!r}: shapes differ: live {list(lo.shape)}, shadow {list(so.shape)}")
            if diffs is None:
                diffs = Diffs(lo.shape[0] if lo.ndim else 0)
            max_abs, max_rel = _differences(lo.astype(_F64, copy=False), so.astype(_F64, copy=False))
            if lo.ndim >= 2 and lo.shape[-1] >= 2:
                # argmax on the original dtypes: float64 would tie large distinct integers.
                rows = lo.size // lo.shape[-1]
                agree = int(np.count_nonzero(lo.argmax(-1) == so.argmax(-1)))
            else:
                agree = rows = -1
            diffs.append((name, max_abs, max_rel, agree, rows))
    if diffs is None:
        raise BadRequest(f"no output in common: live has {sorted(live)}, shadow has {sorted(shadow)}")
    return diffs


def _differences(lv: np.ndarray, sv: np.ndarray) -> tuple[float, float]:
    """``(max_abs, max_rel)`` of two float64 arrays of one shape (rules in :func:`compare`)."""
    if not lv.size:
        return 0.0, 0.0
    if not lv.ndim:  # ufuncs return scalars for 0-d inputs, and out= needs arrays
        lv, sv = lv.reshape(1), sv.reshape(1)
    # In place where possible: fresh temporaries dominate the cost for big arrays.
    d = np.subtract(sv, lv)
    np.abs(d, out=d)
    max_abs = float(d.max())  # NaN if any NaN: max propagates it
    if max_abs == 0.0:
        return 0.0, 0.0
    if max_abs < _INF:
        # Everything is finite (a NaN or an infinity makes max_abs NaN or inf), and
        # where max(|s|, |l|) is 0 so is d: fmax skips those 0/0 NaNs.
        m = np.abs(sv)
        np.maximum(m, np.abs(lv), out=m)
        np.divide(d, m, out=d)
        return max_abs, float(np.fmax.reduce(d, axis=None))
    # Rare: NaN or infinities, or finite values whose difference overflows.
    lnan, snan = np.isnan(lv), np.isnan(sv)
    differ = ~((lv == sv) | (lnan & snan))
    if not differ.any():
        return 0.0, 0.0
    lv, sv = lv[differ], sv[differ]
    if not (np.isfinite(lv).all() and np.isfinite(sv).all()):
        return _INF, _INF  # a differing NaN or infinity (equal ones and NaN pairs were dropped above)
    m = np.maximum(np.abs(sv), np.abs(lv))  # > 0: the values differ
    # Scaled before subtracting, so that an overflowing |s - l| still gives max_rel <= 2.
    return float(np.abs(sv - lv).max()), float(np.abs(sv / m - lv / m).max())


def pack_stats(diffs: Sequence[Diff], rows_total: int | None = None) -> bytes:
    """Pack :func:`compare`'s result as the shadow worker's reply payload (layout in the module docstring).

    Args:
        diffs: the result of :func:`compare`, or any sequence of :data:`Diff`.
        rows_total: overrides ``diffs.rows_total``; required when ``diffs`` is a
            plain sequence.

    Raises:
        TypeError: ``rows_total`` is neither given nor carried by ``diffs``.
    """
    if rows_total is None:
        rows_total = getattr(diffs, "rows_total", None)
        if rows_total is None:
            raise TypeError("pack_stats: rows_total is required when diffs does not come from compare()")
    # Plain Python numbers: numpy scalars are not msgpack types.
    entries = [[str(n), float(a), float(r), int(g), int(k)] for n, a, r, g, k in diffs]
    return msgpack.packb([int(rows_total), entries])
