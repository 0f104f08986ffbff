"""Request decoding and reply encoding for the worker, in the three body formats.

A worker receives the caller's body untouched from the router, together with
its format (:data:`router.proto.link.FMT_JSON`, ``FMT_BINARY`` or ``FMT_MSGPACK``) and
the OIP ``Inference-Header-Content-Length``. :func:`decode_request` turns it into
numpy arrays validated against the model's :class:`~router.proto.meta.ModelMeta`;
:func:`encode_response` turns the model's outputs into a reply body in the same
format.

Formats:

* ``FMT_JSON`` -- Open Inference Protocol v2 JSON; ``data`` flat or nested.
* ``FMT_BINARY`` -- OIP JSON header followed by the raw bytes of the inputs that
  carry ``"parameters": {"binary_data_size": n}`` (binary tensor extension).
* ``FMT_MSGPACK`` -- the msgpack inference body of ``docs/protocol.md``.

JSON and binary replies follow the same output rules: an output is sent as
binary data when the request says ``"parameters": {"binary_data_output": true}``
or the output itself says ``"parameters": {"binary_data": true}`` (a per-output
``false`` wins over the request-level ``true``).

Every malformed or mismatching body raises :class:`router.proto.errors.BadRequest`,
and only that: this code faces arbitrary bytes from the network.

Arrays decoded from binary or msgpack data are views of the payload (no copy),
so they may be read-only; they are copied only when misaligned for their dtype.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from router.proto.errors import BadRequest, ConfigError, InternalError
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import DATATYPES, ModelMeta

__all__ = ["Request", "SimpleMsgpack", "decode_request", "encode_response", "example_request"]

# The one place the JSON implementation is chosen, so a faster library (orjson,
# which returns bytes) can be swapped in without touching the codecs.
json_loads: Callable[[bytes], Any] = json.loads


def json_dumps(obj: Any) -> bytes:
    """Serialise ``obj`` compactly to ASCII JSON bytes (so char length == byte length)."""
    return json.dumps(obj, separators=(",", ":")).encode()


# One Packer for the worker (single-threaded): msgpack.packb() builds one per call.
_pack = msgpack.Packer().pack

#: Wire dtypes: OIP is little-endian whatever the host's byte order.
_DTYPES: dict[str, np.dtype] = {dt: np.dtype(name).newbyteorder("<") for dt, name in DATATYPES.items()}
#: Known OIP datatypes that are not served: reported as a mismatch, not as unknown.
_UNSERVED = frozenset({"BYTES", "BF16"})

# Errors numpy and the parsers raise on garbage (ragged lists, out-of-range
# ints, absurd nesting); each becomes a BadRequest.
_GARBAGE = (ValueError, TypeError, OverflowError, RecursionError, MemoryError)


class Request:
    """One decoded, validated inference request.

    Attributes:
        id: the request's ``id`` if given, echoed back exactly.
        arrays: one array per ``meta.inputs``, in that order; dtype and shape
            validated, C-contiguous, possibly read-only views of the payload.
        outputs: indices into ``meta.outputs`` to return, in reply order.
        binary: per entry of ``outputs``, whether it goes out as binary data.
            Both are read, never changed: requests asking for every output
            share the same two lists.
        fmt: the body format of the request, and so of the reply.
        batch: dim 0 of the inputs (1 when the model is not batchable).
        live: for a shadow copy, the live version's outputs by name: the reply
            is then a comparison with them instead of this model's outputs.
    """

    __slots__ = ("id", "arrays", "outputs", "binary", "fmt", "batch", "live")

    def __init__(
        self,
        id: str | None,
        arrays: list[np.ndarray],
        outputs: list[int],
        binary: list[bool],
        fmt: int,
        batch: int,
    ) -> None:
        self.id = id
        self.arrays = arrays
        self.outputs = outputs
        self.binary = binary
        self.fmt = fmt
        self.batch = batch
        self.live: dict[str, np.ndarray] | None = None

    def __repr__(self) -> str:
        shapes = [list(a.shape) for a in self.arrays]
        return (
            f"Request(id={self.id!r}, shapes={shapes}, outputs={self.outputs}, "
            f"binary={self.binary}, fmt={self.fmt}, batch={self.batch})"
        )


class _Plan:
    """What decoding needs from a ModelMeta, computed once per meta instead of per request."""

    __slots__ = ("meta", "in_index", "in_dtypes", "out_index", "out_dtypes", "batchable", "every_output",
                 "all_binary", "none_binary", "only", "reply_parts")

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self.in_index = {t.name: i for i, t in enumerate(meta.inputs)}
        self.in_dtypes = [_DTYPES[t.datatype] for t in meta.inputs]
        self.out_index = {t.name: i for i, t in enumerate(meta.outputs)}
        self.out_dtypes = [_DTYPES[t.datatype] for t in meta.outputs]
        self.batchable = meta.batchable
        # Shared by the requests that ask for every output (the usual case): read-only.
        n = len(meta.outputs)
        self.every_output = list(range(n))
        self.all_binary = [True] * n
        self.none_binary = [False] * n
        # The common msgpack request in one pass (see _decode_msgpack): a single
        # input whose dtype needs no value check.
        self.only: tuple[str, str, tuple[int, ...], np.dtype, int] | None = None
        if len(meta.inputs) == 1 and self.in_dtypes[0].kind != "b":
            spec = meta.inputs[0]
            self.only = (spec.name, spec.datatype, spec.shape, self.in_dtypes[0], self.in_dtypes[0].itemsize)
        # The msgpack reply of a single-output model, asked for every output, is these constant
        # pieces around the shape and the data: the bytes Packer writes for the reply map.
        self.reply_parts: tuple[bytes, bytes, bytes, bytes] | None = None
        if n == 1:
            out = meta.outputs[0]
            names = _pack("model_name") + _pack(meta.name) + _pack("model_version") + _pack(meta.version)
            self.reply_parts = (
                b"\x83" + names,  # a map of 3 entries: no id
                b"\x84" + names + _pack("id"),  # 4 entries: the id's value follows
                _pack("outputs") + b"\x81" + _pack(out.name) + b"\x83" + _pack("datatype") + _pack(out.datatype)
                + _pack("shape"),
                _pack("data"),
            )


# ModelMeta holds a dict (unhashable), so plans are keyed by identity; the
# entry keeps its meta alive, so an id cannot be reused while cached.
_PLANS: dict[int, _Plan] = {}


def _plan(meta: ModelMeta) -> _Plan:
    plan = _PLANS.get(id(meta))
    if plan is None or plan.meta is not meta:
        if len(_PLANS) >= 64:  # a worker serves one version; this only bounds odd callers
            _PLANS.clear()
        plan = _PLANS[id(meta)] = _Plan(meta)
    return plan


# -- decoding ---------------------------------------------------------------------------------------------


def decode_request(fmt: int, payload: bytes | memoryview, header_len: int, meta: ModelMeta) -> Request:
    """Decode and validate one inference request body.

    Args:
        fmt: ``FMT_JSON``, ``FMT_BINARY`` or ``FMT_MSGPACK``.
        payload: the caller's body, untouched.
        header_len: the ``Inference-Header-Content-Length`` (``FMT_BINARY`` only;
            ignored otherwise).
        meta: the signature to validate against.

    Raises:
        BadRequest: the body is malformed or does not match ``meta``; the message
            names the offending input, output or field.
    """
    plan = _plan(meta)
    if fmt == FMT_MSGPACK:
        return _decode_msgpack(payload, plan)
    if fmt == FMT_JSON:
        # No binary section: an input claiming binary data fails its size check.
        return _decode_oip(payload, len(payload), plan, FMT_JSON)
    if fmt == FMT_BINARY:
        if not isinstance(header_len, int) or header_len < 0 or header_len > len(payload):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_len} is outside the body of {len(payload)} bytes"
            )
        return _decode_oip(payload, header_len, plan, FMT_BINARY)
    raise BadRequest(f"unknown body format {fmt!r}")


def _decode_oip(payload: bytes | memoryview, header_len: int, plan: _Plan, fmt: int) -> Request:
    """Decode an OIP JSON body, or a JSON header followed by binary tensor data."""
    header = payload if header_len == len(payload) else payload[:header_len]
    if isinstance(header, memoryview):
        header = bytes(header)  # the stdlib parser does not take memoryviews
    try:
        body = json_loads(header)
    except _GARBAGE as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("malformed JSON: the inference request must be an object")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("'id' must be a string")
    params = _params(body, "request")
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise BadRequest("'inputs' must be a list of tensors")

    meta = plan.meta
    arrays: list[np.ndarray | None] = [None] * len(meta.inputs)
    offset = header_len
    end = len(payload)
    for raw in inputs:
        if not isinstance(raw, dict):
            raise BadRequest("each entry of 'inputs' must be an object")
        idx = _input_index(plan, raw.get("name"), arrays)
        spec = meta.inputs[idx]
        name = spec.name  # the validated name
        dtype = plan.in_dtypes[idx]
        _check_datatype(raw.get("datatype"), name, spec.datatype)
        shape = _shape(raw.get("shape"), name, spec.shape)
        size = _binary_size(_params(raw, f"input {name!r}"), name)
        has_data = "data" in raw
        if has_data == (size is not None):
            which = "both 'data' and" if has_data else "neither 'data' nor"
            raise BadRequest(f"input {name!r}: has {which} 'binary_data_size' (exactly one is required)")
        if has_data:
            data = raw["data"]
            if not isinstance(data, list):  # OIP: flat or nested array, even for one element
                raise BadRequest(f"input {name!r}: 'data' must be a list")
            arrays[idx] = _from_json(data, shape, dtype, name)
            continue
        count = math.prod(shape)
        if size != count * dtype.itemsize:
            raise BadRequest(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                f"{spec.datatype} ({count * dtype.itemsize} bytes)"
            )
        if size > end - offset:
            raise BadRequest(
                f"unexpected size for input {name!r}: expected {size} bytes of binary data, "
                f"{end - offset} left in the body"
            )
        arrays[idx] = from_buffer(payload, offset, shape, dtype, "input", name)
        offset += size
    if offset != end:
        raise BadRequest(f"unexpected additional input data: {end - offset} bytes after the last input")
    checked, batch = _finish_inputs(plan, arrays)
    outputs, binary = _oip_outputs(body.get("outputs"), params, plan)
    return Request(rid, checked, outputs, binary, fmt, batch)


def _decode_msgpack(payload: bytes | memoryview, plan: _Plan) -> Request:
    """Decode the msgpack inference body of ``docs/protocol.md``."""
    try:
        body = msgpack.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadRequest(f"malformed msgpack: {exc or type(exc).__name__}") from None
    if plan.only is not None and type(body) is dict:
        one = _one_input(body, plan.only)
        if one is not None:
            return Request(one[0], [one[1]], plan.every_output, plan.none_binary, FMT_MSGPACK,
                           one[1].shape[0] if plan.batchable else 1)
    if not isinstance(body, dict):
        raise BadRequest("malformed msgpack: the inference request must be a map")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("'id' must be a string")
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise BadRequest("'inputs' must be a map of input name -> tensor")

    meta = plan.meta
    arrays: list[np.ndarray | None] = [None] * len(meta.inputs)
    for name, raw in inputs.items():
        idx = _input_index(plan, name, arrays)
        spec = meta.inputs[idx]
        dtype = plan.in_dtypes[idx]
        if not isinstance(raw, dict):
            raise BadRequest(f"input {name!r}: must be a map with datatype, shape and data")
        _check_datatype(raw.get("datatype"), name, spec.datatype)
        shape = _shape(raw.get("shape"), name, spec.shape)
        data = raw.get("data")
        if not isinstance(data, bytes):
            raise BadRequest(f"input {name!r}: 'data' must be msgpack bin")
        count = math.prod(shape)
        if len(data) != count * dtype.itemsize:
            raise BadRequest(
                f"input {name!r}: data holds {len(data)} bytes, shape {shape} of {spec.datatype} "
                f"needs {count * dtype.itemsize}"
            )
        arrays[idx] = from_buffer(data, 0, shape, dtype, "input", name)
    checked, batch = _finish_inputs(plan, arrays)

    names = body.get("outputs")
    if names is None or names == []:
        return Request(rid, checked, plan.every_output, plan.none_binary, FMT_MSGPACK, batch)
    if not isinstance(names, list):
        raise BadRequest("'outputs' must be a list of output names")
    outputs = _output_indices(plan, names)
    return Request(rid, checked, outputs, [False] * len(outputs), FMT_MSGPACK, batch)


def _one_input(body: dict, only: tuple[str, str, tuple[int, ...], np.dtype, int]
               ) -> tuple[str | None, np.ndarray] | None:
    """``(id, input)`` of a valid request of a single-input model asking for every output, in one pass; else None.

    Accepts a subset of what the general path accepts, with the same result
    (tests/test_codecs.py checks both on random bodies); anything else, errors
    included, is left to the general path, which names what is wrong.
    """
    inputs = body.get("inputs")
    if type(inputs) is not dict or len(inputs) != 1:
        return None
    name, datatype, expected, dtype, size = only
    raw = inputs.get(name)
    if type(raw) is not dict or raw.get("datatype") != datatype:
        return None
    shape = raw.get("shape")
    data = raw.get("data")
    if type(shape) is not list or len(shape) != len(expected) or type(data) is not bytes:
        return None
    for d, e in zip(shape, expected, strict=False):  # lengths checked above
        if type(d) is not int or d < 0 or (e != -1 and e != d):
            return None
        size *= d
    rid = body.get("id")
    names = body.get("outputs")
    if size != len(data) or (rid is not None and type(rid) is not str) or (names is not None and names != []):
        return None
    # No alignment check: msgpack gives each bin a bytes object of its own, and CPython
    # starts a bytes object's data 32 bytes into a 16-byte aligned block (test_codecs checks).
    return rid, np.ndarray(shape, dtype, data)


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    return params


def _input_index(plan: _Plan, name: Any, arrays: list[np.ndarray | None]) -> int:
    if not isinstance(name, str):
        raise BadRequest(f"input name must be a string, got {name!r}")
    idx = plan.in_index.get(name)
    if idx is None:
        raise BadRequest(f"unexpected input {name!r}")
    if arrays[idx] is not None:
        raise BadRequest(f"duplicate input {name!r}")
    return idx


def _shape(raw: Any, name: str, expected: tuple[int, ...]) -> list[int]:
    """Validate a request's shape against the signature (``-1`` = any size >= 0)."""
    if type(raw) is list and len(raw) == len(expected):
        # The common, valid case without generators (this runs once per input per request).
        for d, e in zip(raw, expected, strict=False):  # lengths checked above
            if type(d) is not int or d < 0 or (e != -1 and e != d):
                break
        else:
            return raw
    # bool is an int subclass: reject it explicitly, a shape of [true] is garbage.
    if not isinstance(raw, list) or not all(type(d) is int and d >= 0 for d in raw):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of integers >= 0, got {raw!r}")
    if len(raw) != len(expected) or any(e != -1 and e != d for e, d in zip(expected, raw, strict=True)):
        raise BadRequest(f"input {name!r}: expected shape {list(expected)}, got {raw}")
    return raw


def _check_datatype(raw: Any, name: str, expected: str) -> None:
    if raw == expected:
        return
    if not isinstance(raw, str) or (raw not in _DTYPES and raw not in _UNSERVED):
        raise BadRequest(f"input {name!r}: unknown datatype {raw!r}")
    raise BadRequest(f"input {name!r}: expected datatype {expected}, got {raw}")


def _binary_size(params: dict, name: str) -> int | None:
    size = params.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise BadRequest(f"input {name!r}: binary_data_size must be an integer >= 0, got {size!r}")
    return size


def from_buffer(
    buf: bytes | memoryview, offset: int, shape: list[int], dtype: np.dtype, what: str, name: str
) -> np.ndarray:
    """View ``buf`` from ``offset`` as an array of ``shape`` (the caller checked the size).

    Shared with :mod:`runtime.compare`; errors name ``what`` and ``name`` (``input 'x': ...``).
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


def _from_json(data: Any, shape: list[int], dtype: np.dtype, name: str) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested) to an array of ``shape`` and ``dtype``.

    numpy first infers the elements' own type, so that strings, bools, fractions
    or out-of-range values for the declared datatype are rejected instead of
    being parsed, truncated or wrapped by a direct ``astype``.
    """
    try:
        arr = np.asarray(data)
    except _GARBAGE as exc:
        raise BadRequest(f"input {name!r}: malformed data: {exc}") from None
    count = math.prod(shape)
    if arr.size != count:
        raise BadRequest(f"input {name!r}: data has {arr.size} elements, shape {shape} needs {count}")
    kind = arr.dtype.kind
    if count:
        target = dtype.kind
        if target == "b":
            ok = kind == "b"
        elif target == "f":
            ok = kind in "iuf"
        else:
            ok = kind in "iu"
            if ok:
                info = np.iinfo(dtype)
                ok = int(arr.min()) >= info.min and int(arr.max()) <= info.max
        if not ok:
            want = {"b": "booleans", "f": "numbers"}.get(dtype.kind, f"integers in the range of {dtype.name}")
            raise BadRequest(f"input {name!r}: data must hold {want}")
    if arr.dtype != dtype:
        # Overflow to inf (e.g. 1e300 as FP16) is the cast's defined result, not an error.
        with np.errstate(over="ignore"):
            arr = arr.astype(dtype)
    return arr.reshape(shape)


def _finish_inputs(plan: _Plan, arrays: Sequence[np.ndarray | None]) -> tuple[list[np.ndarray], int]:
    """Check that every input is present and that batched inputs agree on dim 0.

    Returns:
        The arrays (none missing) and the batch size.
    """
    only = arrays[0] if len(arrays) == 1 else None
    if only is not None:  # the common single-input model
        return [only], (only.shape[0] if plan.batchable else 1)
    checked: list[np.ndarray] = []
    for spec, arr in zip(plan.meta.inputs, arrays, strict=True):
        if arr is None:
            raise BadRequest(f"missing input {spec.name!r}")
        checked.append(arr)
    if not plan.batchable:
        return checked, 1
    batch = checked[0].shape[0]
    for spec, arr in zip(plan.meta.inputs, checked, strict=True):
        if arr.shape[0] != batch:
            raise BadRequest(
                f"inputs disagree on the batch size (dim 0): {plan.meta.inputs[0].name!r} has {batch}, "
                f"{spec.name!r} has {arr.shape[0]}"
            )
    return checked, batch


def _output_indices(plan: _Plan, names: list) -> list[int]:
    out = []
    for name in names:
        if not isinstance(name, str):
            raise BadRequest(f"output name must be a string, got {name!r}")
        idx = plan.out_index.get(name)
        if idx is None:
            raise BadRequest(f"unknown output {name!r}")
        if idx in out:
            raise BadRequest(f"duplicate output {name!r}")
        out.append(idx)
    return out


def _flag(params: dict, key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {key!r} must be true or false, got {value!r}")
    return value


def _oip_outputs(raw: Any, params: dict, plan: _Plan) -> tuple[list[int], list[bool]]:
    """Requested outputs and their binary flags from an OIP request."""
    default = bool(_flag(params, "binary_data_output", "request"))
    if raw is None or raw == []:
        return plan.every_output, (plan.all_binary if default else plan.none_binary)
    if not isinstance(raw, list) or not all(isinstance(o, dict) for o in raw):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    indices = _output_indices(plan, [o.get("name") for o in raw])
    binary = []
    for o in raw:
        where = f"output {o['name']!r}"
        oparams = _params(o, where)
        # Silently ignoring these would answer something other than what was asked.
        for unsupported in ("shared_memory_region", "classification"):
            if oparams.get(unsupported) not in (None, 0, ""):
                raise BadRequest(f"{where}: parameter {unsupported!r} is not supported")
        flag = _flag(oparams, "binary_data", where)
        binary.append(default if flag is None else flag)
    return indices, binary


# -- encoding ---------------------------------------------------------------------------------------------


def _wire(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` as a C-contiguous array of the declared wire dtype, copying only when needed."""
    arr = np.asarray(arr)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def _raw(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (works for 0-d and empty arrays too)."""
    return arr.reshape(-1).view(np.uint8).data


def _one_output(parts: tuple[bytes, bytes, bytes, bytes], rid: str | None, output: np.ndarray,
                dtype: np.dtype) -> bytes:
    """The msgpack reply of a single-output model asked for every output: constant pieces around shape and data."""
    if output.dtype != dtype:
        output = output.astype(dtype)
    # Small outputs: one bytes copy (in C order, whatever the strides) is cheaper than the view that avoids it.
    data = output.tobytes() if output.nbytes <= 4096 else _raw(np.ascontiguousarray(output))
    head = parts[0] if rid is None else parts[1] + _pack(rid)
    return b"".join((head, parts[2], _pack(list(output.shape)), parts[3], _pack(data)))


#: Most body layouts one SimpleMsgpack remembers (one per request shape, as a rule).
_MAX_LAYOUTS = 64
#: A body length whose layout is not known yet (None: known, and not one to remember).
_NEW: tuple[bytes, list[int]] = (b"", [])


class SimpleMsgpack:
    """The common msgpack exchange of a model with one input and one output, in one pass each way.

    For the worker's express path (:mod:`runtime.express`): a well-formed
    request that asks for every output decodes to its id and input array,
    and the output array encodes to the reply body, exactly as
    :func:`decode_request` and :func:`encode_response` would. Anything else
    decodes to None, and the general path takes the request.

    A client sends the same layout again and again: the same map, keys and
    shape, only the tensor's bytes change. Once a body without an id has
    decoded, its layout is remembered: the bytes before the tensor data, when
    the data is the body's tail (checked by decoding a copy whose data bytes
    are all flipped). A later body of the same length that starts with those
    bytes is the same request with other data, taken without decoding the
    map. Replies are built the same way: the bytes before the output data,
    per output shape.

    Raises:
        ValueError: the model does not have one input (not boolean) and one output.
    """

    __slots__ = ("_only", "_parts", "_dtype", "_in_dtype", "_layouts", "_replies")

    def __init__(self, meta: ModelMeta) -> None:
        plan = _plan(meta)
        if plan.only is None or plan.reply_parts is None:
            raise ValueError(f"model {meta.name!r} does not have one input and one output")
        self._only = plan.only
        self._parts = plan.reply_parts
        self._dtype = plan.out_dtypes[0]
        self._in_dtype = plan.only[3]
        #: body length -> (the bytes before the data, the input's shape), or None: not a layout to take
        self._layouts: dict[int, tuple[bytes, list[int]] | None] = {}
        #: output shape -> the reply's bytes before the data (requests without an id)
        self._replies: dict[tuple[int, ...], bytes] = {}

    def decode(self, payload: bytes) -> tuple[str | None, np.ndarray] | None:
        """``(id, input)`` of the common request, or None for anything else (errors included)."""
        layout = self._layouts.get(len(payload), _NEW)
        if layout is not None and layout is not _NEW and payload.startswith(layout[0]):
            return None, np.ndarray(layout[1], self._in_dtype, payload[len(layout[0]):])
        one = self._decode(payload)
        # The first layout of a length stays: bodies of another layout of that length, or of
        # one that cannot be remembered, are decoded in full, never learned again and again.
        if layout is _NEW and one is not None and one[0] is None and len(self._layouts) < _MAX_LAYOUTS:
            self._layouts[len(payload)] = self._learn(payload, one[1])
        return one

    def _decode(self, payload: bytes) -> tuple[str | None, np.ndarray] | None:
        try:
            body = msgpack.unpackb(payload)
        except Exception:  # the general path says why
            return None
        return _one_input(body, self._only) if type(body) is dict else None

    def _learn(self, payload: bytes, arr: np.ndarray) -> tuple[bytes, list[int]] | None:
        """``payload``'s layout if its tail is the tensor data ``arr``; else None."""
        n = arr.nbytes
        head = payload[:len(payload) - n]
        if n:
            # The tail holds the data only if flipping every byte of it flips every byte of
            # the decoded data and nothing else: were the data anywhere else, some of its
            # bytes would stay as they were, or the map around it would change.
            flipped = (np.frombuffer(payload, np.uint8, n, len(head)) ^ 0xFF).tobytes()
            probe = self._decode(head + flipped)
            if probe is None or probe[0] is not None or probe[1].shape != arr.shape or \
                    probe[1].tobytes() != flipped:
                return None
        return head, list(arr.shape)

    def encode(self, rid: str | None, output: np.ndarray) -> bytes:
        """The reply body to a request with id ``rid`` (None: no id) whose output is ``output``."""
        if rid is not None:
            return _one_output(self._parts, rid, output, self._dtype)
        if output.dtype != self._dtype:
            output = output.astype(self._dtype)
        head = self._replies.get(output.shape)
        if head is None:
            body = _one_output(self._parts, None, output, self._dtype)
            if len(self._replies) < _MAX_LAYOUTS:
                self._replies[output.shape] = body[:len(body) - output.nbytes]
            return body
        if output.nbytes <= 4096:
            return head + output.tobytes()
        return b"".join((head, _raw(np.ascontiguousarray(output))))


def encode_response(req: Request, outputs: Sequence[np.ndarray], meta: ModelMeta) -> tuple[int, bytes]:
    """Encode the reply to ``req`` in its own format.

    Args:
        req: the decoded request (selects outputs, their order and binary flags).
        outputs: every model output for this request, in ``meta.outputs`` order;
            cast to the declared datatype if the model returned another.
        meta: the model's signature; ``name``/``version`` fill the reply.

    Returns:
        ``(json_header_len, body)``: ``json_header_len`` is the
        ``Inference-Header-Content-Length`` to send, 0 unless some output is binary.

    Raises:
        InternalError: the model did not return one array per declared output.
    """
    if len(outputs) != len(meta.outputs):
        raise InternalError(
            f"model returned {len(outputs)} outputs, the signature declares {len(meta.outputs)}"
        )
    plan = _plan(meta)
    specs = meta.outputs
    if req.fmt == FMT_MSGPACK:
        parts = plan.reply_parts
        if parts is not None and req.outputs is plan.every_output:
            return 0, _one_output(parts, req.id, outputs[0], plan.out_dtypes[0])
        tensors = {}
        for i in req.outputs:
            arr = _wire(outputs[i], plan.out_dtypes[i])
            spec = specs[i]
            # Small outputs: one bytes copy is cheaper than the views that avoid it.
            data = arr.tobytes() if arr.nbytes <= 4096 else _raw(arr)
            tensors[spec.name] = {"datatype": spec.datatype, "shape": list(arr.shape), "data": data}
        reply: dict[str, Any] = {"model_name": meta.name, "model_version": meta.version}
        if req.id is not None:
            reply["id"] = req.id
        reply["outputs"] = tensors
        return 0, _pack(reply)

    items = []
    blobs: list[memoryview] = []
    for i, binary in zip(req.outputs, req.binary, strict=True):
        arr = _wire(outputs[i], plan.out_dtypes[i])
        spec = specs[i]
        item: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape)}
        if binary:
            blob = _raw(arr)
            item["parameters"] = {"binary_data_size": blob.nbytes}
            blobs.append(blob)
        else:
            # tolist() yields Python floats holding the exact float32/16 value, whose
            # repr round-trips through float32.
            item["data"] = arr.reshape(-1).tolist()
        items.append(item)
    reply = {"model_name": meta.name, "model_version": meta.version}
    if req.id is not None:
        reply["id"] = req.id
    reply["outputs"] = items
    head = json_dumps(reply)
    if not blobs:
        return 0, head
    return len(head), b"".join([head, *blobs])


# -- warm-up ----------------------------------------------------------------------------------------------


def example_request(meta: ModelMeta) -> Request:
    """Build the warm-up request from ``meta.example`` (all outputs, msgpack format).

    Each example value is a nested list in the input's shape; a flat list is
    accepted too when the shape has at most one variable dimension.

    Raises:
        ConfigError: the example does not fit the signature.
    """
    plan = _plan(meta)
    arrays: list[np.ndarray | None] = []
    try:
        for spec, dtype in zip(meta.inputs, plan.in_dtypes, strict=True):
            if spec.name not in meta.example:
                raise BadRequest(f"missing input {spec.name!r}")
            value = np.asarray(meta.example[spec.name])
            arr = _from_json(value, list(value.shape), dtype, spec.name)
            if arr.ndim != len(spec.shape) and list(spec.shape).count(-1) <= 1:
                try:
                    arr = arr.reshape(spec.shape)
                except ValueError:
                    pass  # reported as a shape mismatch just below
            _shape(list(arr.shape), spec.name, spec.shape)
            arrays.append(arr)
        checked, batch = _finish_inputs(plan, arrays)
    except _GARBAGE as exc:  # BadRequest included: it is a ValueError
        raise ConfigError(f"model {meta.name!r} version {meta.version!r}: example: {exc}") from None
    n = len(meta.outputs)
    return Request(None, checked, list(range(n)), [False] * n, FMT_MSGPACK, batch)
