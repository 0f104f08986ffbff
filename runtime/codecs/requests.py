"""Request decoding for the worker, in the three body formats.

A worker receives the caller's body untouched from the router, together with
its format (:data:`router.proto.link.FMT_JSON`, ``FMT_BINARY`` or ``FMT_MSGPACK``) and
the OIP ``Inference-Header-Content-Length``. :func:`decode_request` turns it into
numpy arrays validated against the model's :class:`~router.proto.meta.ModelMeta`.

Formats:

* ``FMT_JSON`` -- Open Inference Protocol v2 JSON; ``data`` flat or nested.
* ``FMT_BINARY`` -- OIP JSON header followed by the raw bytes of the inputs that
  carry ``"parameters": {"binary_data_size": n}`` (binary tensor extension).
* ``FMT_MSGPACK`` -- the msgpack inference body of ``docs/protocol.md``.

Numbers that are not numbers: a model's ``nonfinite`` policy (config.toml) says
whether FP inputs may hold NaN or an infinity. ``"reject"`` (the default) answers
400 naming the input, whatever the body format; ``"allow"`` passes them to the
model. In JSON data they are the bare tokens ``NaN``, ``Infinity``, ``-Infinity``
or the proto3 JSON strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

The request also says which outputs to send and which of them as binary data:
an output is sent as binary data when the request says
``"parameters": {"binary_data_output": true}`` or the output itself says
``"parameters": {"binary_data": true}`` (a per-output ``false`` wins over the
request-level ``true``).

Every malformed or mismatching body raises :class:`router.proto.errors.BadRequest`,
and only that: this code faces arbitrary bytes from the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from router.proto.errors import BadRequest, ConfigError, shown
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import ModelMeta

from . import tensors
from .plan import Plan, plan_of
from .tensors import (
    GARBAGE,
    UNSERVED,
    WIRE_DTYPES,
    binary_size,
    cast_json,
    check_data_or_binary,
    from_buffer,
    json_array,
    params_of,
    shape_list,
)

__all__ = ["NONFINITE", "Request", "check_finite", "decode_request", "example_request", "one_input"]

#: The values of a model's ``nonfinite`` policy (``ModelConfig.nonfinite`` in router/config.py).
NONFINITE = ("reject", "allow")


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
        log_outputs: for a shadow copy sampled for the prediction log: the
            comparison comes with this model's outputs.
    """

    __slots__ = ("id", "arrays", "outputs", "binary", "fmt", "batch", "live", "log_outputs")

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
        self.log_outputs = False

    def __repr__(self) -> str:
        shapes = [list(a.shape) for a in self.arrays]
        return (
            f"Request(id={self.id!r}, shapes={shapes}, outputs={self.outputs}, "
            f"binary={self.binary}, fmt={self.fmt}, batch={self.batch})"
        )


# -- decoding ---------------------------------------------------------------------------------------------


def decode_request(fmt: int, payload: bytes | memoryview, header_len: int, meta: ModelMeta,
                   nonfinite: str = "reject") -> Request:
    """Decode and validate one inference request body.

    Args:
        fmt: ``FMT_JSON``, ``FMT_BINARY`` or ``FMT_MSGPACK``.
        payload: the caller's body, untouched.
        header_len: the ``Inference-Header-Content-Length`` (``FMT_BINARY`` only;
            ignored otherwise).
        meta: the signature to validate against.
        nonfinite: the model's policy for NaN and infinities in FP inputs
            (:data:`NONFINITE`): ``"allow"`` passes them on; anything else rejects them.

    Raises:
        BadRequest: the body is malformed or does not match ``meta``, or (policy
            ``"reject"``) an FP input holds a NaN or an infinity; the message
            names the offending input, output or field.
    """
    plan = plan_of(meta)
    finite = nonfinite != "allow"  # an unknown policy is the strict one
    if fmt == FMT_MSGPACK:
        return _decode_msgpack(payload, plan, finite)
    if fmt == FMT_JSON:
        # No binary section: an input claiming binary data fails its size check.
        return _decode_oip(payload, len(payload), plan, FMT_JSON, finite)
    if fmt == FMT_BINARY:
        if not isinstance(header_len, int) or header_len < 0 or header_len > len(payload):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_len} is outside the body of {len(payload)} bytes"
            )
        return _decode_oip(payload, header_len, plan, FMT_BINARY, finite)
    raise BadRequest(f"unknown body format {fmt!r}")


def check_finite(plan: Plan, arrays: Sequence[np.ndarray]) -> None:
    """Check that no FP input holds a NaN or an infinity (the ``"reject"`` policy).

    Args:
        plan: the model's plan (which inputs are FP).
        arrays: one array per input, in ``plan.meta.inputs`` order.

    Raises:
        BadRequest: naming the first input that does, and the policy.
    """
    for i in plan.float_inputs:
        if not np.isfinite(arrays[i]).all():  # vectorised: one pass, no Python per element
            raise BadRequest(
                f"input {plan.meta.inputs[i].name!r} contains NaN or Infinity (model {plan.meta.name!r} "
                f'rejects non-finite numbers: nonfinite = "reject")'
            )


def _decode_oip(payload: bytes | memoryview, header_len: int, plan: Plan, fmt: int, finite: bool = True
                ) -> Request:
    """Decode an OIP JSON body, or a JSON header followed by binary tensor data."""
    header = payload if header_len == len(payload) else payload[:header_len]
    if isinstance(header, memoryview):
        header = bytes(header)  # the stdlib parser does not take memoryviews
    try:
        body = tensors.json_loads(header)  # looked up per call: follows a swapped-in parser
    except GARBAGE as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("malformed JSON: the inference request must be an object")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("'id' must be a string")
    params = params_of(body, "request")
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
        where = f"input {name!r}"
        size = binary_size(params_of(raw, where), where)
        has_data = "data" in raw
        check_data_or_binary(has_data, size, where)
        if has_data:
            data = raw["data"]
            if not isinstance(data, list):  # OIP: flat or nested array, even for one element
                raise BadRequest(f"{where}: 'data' must be a list")
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
    if finite:
        check_finite(plan, checked)
    return Request(rid, checked, outputs, binary, fmt, batch)


def _decode_msgpack(payload: bytes | memoryview, plan: Plan, finite: bool = True) -> Request:
    """Decode the msgpack inference body of ``docs/protocol.md``."""
    try:
        body = msgpack.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadRequest(f"malformed msgpack: {exc or type(exc).__name__}") from None
    if plan.only is not None and type(body) is dict:
        one = one_input(body, plan.only)
        if one is not None:
            if finite:
                check_finite(plan, (one[1],))
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
        outputs, binary = plan.every_output, plan.none_binary
    elif not isinstance(names, list):
        raise BadRequest("'outputs' must be a list of output names")
    else:
        outputs = _output_indices(plan, names)
        binary = [False] * len(outputs)
    if finite:
        check_finite(plan, checked)
    return Request(rid, checked, outputs, binary, FMT_MSGPACK, batch)


def one_input(body: dict, only: tuple[str, str, tuple[int, ...], np.dtype, int]
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


def _input_index(plan: Plan, name: Any, arrays: list[np.ndarray | None]) -> int:
    if not isinstance(name, str):
        raise BadRequest(f"input name must be a string, got {shown(name)}")
    idx = plan.in_index.get(name)
    if idx is None:
        raise BadRequest(f"unexpected input {shown(name)}")
    if arrays[idx] is not None:
        raise BadRequest(f"duplicate input {shown(name)}")
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
    shape_list(raw, f"input {name!r}")
    if len(raw) != len(expected) or any(e != -1 and e != d for e, d in zip(expected, raw, strict=True)):
        raise BadRequest(f"input {name!r}: expected shape {list(expected)}, got {shown(raw)}")
    return raw


def _check_datatype(raw: Any, name: str, expected: str) -> None:
    if raw == expected:
        return
    if not isinstance(raw, str) or (raw not in WIRE_DTYPES and raw not in UNSERVED):
        raise BadRequest(f"input {name!r}: unknown datatype {shown(raw)}")
    raise BadRequest(f"input {name!r}: expected datatype {expected}, got {raw}")


def _from_json(data: Any, shape: list[int], dtype: np.dtype, name: str) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested) to an array of ``shape`` and ``dtype`` (rules in :func:`cast_json`)."""
    where = f"input {name!r}"
    arr = json_array(data, where)
    count = math.prod(shape)
    if arr.size != count:
        raise BadRequest(f"{where}: data has {arr.size} elements, shape {shape} needs {count}")
    return cast_json(arr, data, shape, dtype, where)


def _finish_inputs(plan: Plan, arrays: Sequence[np.ndarray | None]) -> tuple[list[np.ndarray], int]:
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


def _output_indices(plan: Plan, names: list) -> list[int]:
    out = []
    for name in names:
        if not isinstance(name, str):
            raise BadRequest(f"output name must be a string, got {shown(name)}")
        idx = plan.out_index.get(name)
        if idx is None:
            raise BadRequest(f"unknown output {shown(name)}")
        if idx in out:
            raise BadRequest(f"duplicate output {shown(name)}")
        out.append(idx)
    return out


def _flag(params: dict, key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {shown(key)} must be true or false, got {shown(value)}")
    return value


def _oip_outputs(raw: Any, params: dict, plan: Plan) -> tuple[list[int], list[bool]]:
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
        oparams = params_of(o, where)
        # Silently ignoring these would answer something other than what was asked.
        for unsupported in ("shared_memory_region", "classification"):
            if oparams.get(unsupported) not in (None, 0, ""):
                raise BadRequest(f"{where}: parameter {unsupported!r} is not supported")
        flag = _flag(oparams, "binary_data", where)
        binary.append(default if flag is None else flag)
    return indices, binary


# -- warm-up ----------------------------------------------------------------------------------------------


def example_request(meta: ModelMeta) -> Request:
    """Build the warm-up request from ``meta.example`` (all outputs, msgpack format).

    Each example value is a nested list in the input's shape; a flat list is
    accepted too when the shape has at most one variable dimension.

    Raises:
        ConfigError: the example does not fit the signature.
    """
    plan = plan_of(meta)
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
    except GARBAGE as exc:  # BadRequest included: it is a ValueError
        raise ConfigError(f"model {meta.name!r} version {meta.version!r}: example: {exc}") from None
    n = len(meta.outputs)
    return Request(None, checked, list(range(n)), [False] * n, FMT_MSGPACK, batch)
