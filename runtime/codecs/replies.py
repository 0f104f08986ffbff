"""Reply encoding for the worker, and the decoding of those replies for shadow comparison.

:func:`encode_response` turns a model's outputs into the reply body, in the
request's own format (see :mod:`runtime.codecs.requests` for which outputs go
as binary data). :func:`decode_reply` is its inverse: a shadow worker decodes
the live version's reply with it before comparing (:mod:`runtime.compare`).
JSON data writes NaN and the infinities as the strings ``"NaN"``, ``"Infinity"``
and ``"-Infinity"`` (strict JSON has no number for them), and reads them back as
floats; binary and msgpack data carry the IEEE values as they are.

Every malformed live reply raises :class:`router.proto.errors.BadRequest`, and
only that; messages start with ``live reply:`` and name the output and field.
Arrays decoded from binary or msgpack data are views of the payload (no copy),
so they may be read-only; they are copied only when misaligned for their dtype
(so they are safe to hand to compiled kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from router.proto.errors import BadRequest, InternalError
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import ModelMeta

from . import tensors
from .plan import plan_of
from .requests import Request
from .tensors import (
    GARBAGE,
    WIRE_DTYPES,
    binary_size,
    cast_json,
    check_data_or_binary,
    from_buffer,
    json_array,
    json_dumps,
    json_floats,
    pack,
    params_of,
    raw_bytes,
    shape_list,
    wire,
)

__all__ = ["decode_reply", "encode_response", "one_output"]

_WHERE = "live reply"
_OUTPUT = f"{_WHERE}: output"


# -- encoding ---------------------------------------------------------------------------------------------


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
    plan = plan_of(meta)
    specs = meta.outputs
    if req.fmt == FMT_MSGPACK:
        parts = plan.reply_parts
        if parts is not None and req.outputs is plan.every_output:
            return 0, one_output(parts, req.id, outputs[0], plan.out_dtypes[0])
        by_name = {}
        for i in req.outputs:
            arr = wire(outputs[i], plan.out_dtypes[i])
            spec = specs[i]
            # Small outputs: one bytes copy is cheaper than the views that avoid it.
            data = arr.tobytes() if arr.nbytes <= 4096 else raw_bytes(arr)
            by_name[spec.name] = {"datatype": spec.datatype, "shape": list(arr.shape), "data": data}
        reply: dict[str, Any] = {"model_name": meta.name, "model_version": meta.version}
        if req.id is not None:
            reply["id"] = req.id
        reply["outputs"] = by_name
        return 0, pack(reply)

    items = []
    blobs: list[memoryview] = []
    for i, binary in zip(req.outputs, req.binary, strict=True):
        arr = wire(outputs[i], plan.out_dtypes[i])
        spec = specs[i]
        item: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape)}
        if binary:
            blob = raw_bytes(arr)
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
    try:
        head = json_dumps(reply)
    except ValueError:  # a NaN or an infinity, rare: written as proto3 JSON strings, never as bare tokens
        for item in items:
            if "data" in item:
                item["data"] = json_floats(item["data"])
        head = json_dumps(reply)
    if not blobs:
        return 0, head
    return len(head), b"".join([head, *blobs])


def one_output(parts: tuple[bytes, bytes, bytes, bytes], rid: str | None, output: np.ndarray,
               dtype: np.dtype) -> bytes:
    """The msgpack reply of a single-output model asked for every output: constant pieces around shape and data."""
    if output.dtype != dtype:
        output = output.astype(dtype)
    # Small outputs: one bytes copy (in C order, whatever the strides) is cheaper than the view that avoids it.
    data = output.tobytes() if output.nbytes <= 4096 else raw_bytes(np.ascontiguousarray(output))
    head = parts[0] if rid is None else parts[1] + pack(rid)
    return b"".join((head, parts[2], pack(list(output.shape)), parts[3], pack(data)))


# -- decoding ---------------------------------------------------------------------------------------------


def decode_reply(fmt: int, payload: bytes | memoryview, header_len: int) -> dict[str, np.ndarray]:
    """Decode a reply body produced by :func:`encode_response`.

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
        body = tensors.json_loads(header)  # looked up per call: follows a swapped-in parser
    except GARBAGE as exc:
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
        shape = shape_list(raw.get("shape"), where)
        tensor_params = params_of(raw, where)
        has_data = "data" in raw
        check_data_or_binary(has_data, tensor_params.get("binary_data_size"), where)
        count = math.prod(shape)
        if has_data:
            arrays[name] = _from_json(raw["data"], shape, count, dtype, where)
            continue
        size = binary_size(tensor_params, where)
        expected = count * dtype.itemsize
        if size != expected:
            raise BadRequest(f"{where}: binary_data_size {size} for shape {shape} {datatype} ({expected} expected)")
        if expected > end - offset:
            raise BadRequest(f"{where}: binary_data_size {size}, but only {end - offset} bytes of binary data left")
        arrays[name] = from_buffer(payload, offset, shape, dtype, _OUTPUT, name)
        offset += expected
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
        shape = shape_list(raw.get("shape"), where)
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
    dtype = WIRE_DTYPES.get(raw) if isinstance(raw, str) else None
    if dtype is None:
        raise BadRequest(f"{where}: unknown datatype {raw!r}")
    return raw, dtype


def _from_json(data: Any, shape: list[int], count: int, dtype: np.dtype, where: str) -> np.ndarray:
    """Convert JSON ``data`` (flat or nested) to an array of ``shape`` and ``dtype`` (rules in :func:`cast_json`).

    Unlike a request's data, integers that numpy inferred as floats are taken
    when exact: the reply of a UINT64 output above 2**63 next to small values.
    """
    if not isinstance(data, list):  # OIP: flat or nested array, even for one element
        raise BadRequest(f"{where}: 'data' must be a list")
    arr = json_array(data, where)
    if arr.size != count:
        raise BadRequest(f"{where}: {arr.size} elements of data for shape {shape} ({count} expected)")
    return cast_json(arr, data, shape, dtype, where, exact_ints=True)
