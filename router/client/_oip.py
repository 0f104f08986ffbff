"""Open Inference Protocol v2 request bodies and replies, shared by the sync and async HTTP clients.

Three body formats (docs/protocol.md, OIP binary tensor extension):

* ``"json"`` -- OIP JSON both ways, tensor data as flat lists;
* ``"binary"`` -- a JSON header followed by the raw input bytes, and binary
  outputs asked for with ``binary_data_output``;
* ``"msgpack"`` -- the msgpack inference body, ``Content-Type: application/msgpack``.

Errors always come back as JSON ``{"error": msg}`` whatever the format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import msgpack

from ..proto import GENERATION_HEADER
from ..proto.errors import InferenceError, from_status
from ._result import InferResult
from ._tensors import binary_tensors, from_buffer, from_json, json_tensors, msgpack_outputs, msgpack_tensors

HCL = "Inference-Header-Content-Length"
FORMATS = ("json", "binary", "msgpack")
_MSGPACK_TYPE = "application/msgpack"

# Copied per request (callers add the routing header and the header length).
_HEADERS: dict[str, dict[str, str]] = {
    "json": {"Content-Type": "application/json"},
    "binary": {"Content-Type": "application/octet-stream"},
    "msgpack": {"Content-Type": _MSGPACK_TYPE},
}


def _dumps(obj: Any) -> bytes:
    # ASCII-only output: the header length in characters is its length in bytes. Strict JSON:
    # NaN and infinities go as the strings json_tensors writes, never as bare tokens.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def model_path(prefix: str, model: str, version: str | None, suffix: str = "") -> str:
    """``{prefix}/v2/models/{model}[/versions/{version}]{suffix}``, names percent-quoted."""
    path = f"{prefix}/v2/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(str(version), safe='')}"
    return path + suffix


def encode_infer(inputs: Mapping[str, Any], outputs: Sequence[str] | None, request_id: str | None,
                 fmt: str) -> tuple[bytes, dict[str, Any]]:
    """The body and headers of an inference request in format ``fmt``.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS`.
        TypeError: an input's dtype has no supported OIP datatype.
    """
    headers = _HEADERS.get(fmt)
    if headers is None:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    headers = dict(headers)  # str values; callers may add a bytes routing header
    req: dict[str, Any]
    if fmt == "msgpack":
        req = {"inputs": msgpack_tensors(inputs)}
        if outputs is not None:
            req["outputs"] = list(outputs)
        if request_id is not None:
            req["id"] = request_id
        return msgpack.packb(req), headers
    if fmt == "json":
        req = {"inputs": json_tensors(inputs)}
        blobs = None
    else:
        specs, blobs = binary_tensors(inputs)
        req = {"inputs": specs, "parameters": {"binary_data_output": True}}
    if outputs is not None:
        req["outputs"] = [{"name": n} for n in outputs]
    if request_id is not None:
        req["id"] = request_id
    head = _dumps(req)
    if blobs is None:
        return head, headers
    headers[HCL] = str(len(head))
    return b"".join([head, *blobs]), headers


def error_of(status: int, body: bytes, reason: str = "") -> InferenceError:
    """The typed error for a non-200 reply whose body should be ``{"error": msg}``."""
    try:
        msg = json.loads(body)["error"]
        if not isinstance(msg, str):
            msg = str(msg)
    except (ValueError, TypeError, KeyError):
        # Not our JSON error shape (a proxy in between?): keep whatever text there is.
        msg = body.decode(errors="replace") or reason or f"HTTP {status}"
    return from_status(status, msg)


def decode_infer(status: int, get_header: Callable[[str], str | None], body: bytes) -> InferResult:
    """Decode an inference reply (JSON, binary or msgpack, told apart by its headers).

    Args:
        status: the HTTP status.
        get_header: case-insensitive header lookup of the reply.
        body: the whole reply body.

    Raises:
        InferenceError: the typed error (``router.proto.errors``) for a non-200 status.
        ValueError: a 200 reply that cannot be decoded.
    """
    if status != 200:
        raise error_of(status, body)
    if (get_header("Content-Type") or "").startswith(_MSGPACK_TYPE):
        try:
            reply = msgpack.unpackb(body)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise ValueError(f"malformed msgpack reply: {exc}") from None
        if not isinstance(reply, dict):
            raise ValueError("malformed msgpack reply: not a map")
        return InferResult(msgpack_outputs(reply.get("outputs")), reply.get("model_name", ""),
                           reply.get("model_version", ""), reply.get("id"), _generation(get_header))
    hcl = get_header(HCL)
    if hcl is None:
        head_len = len(body)
        head = body
    else:
        head_len = int(hcl)
        if not 0 <= head_len <= len(body):
            raise ValueError(f"{HCL} {hcl} is outside the reply body of {len(body)} bytes")
        head = body[:head_len]
    reply = json.loads(head)
    outputs = {}
    offset = head_len
    for item in reply.get("outputs", ()):
        name = item["name"]
        params = item.get("parameters") or {}
        size = params.get("binary_data_size")
        if size is None:
            outputs[name] = from_json(item["data"], item["datatype"], item["shape"], name)
        else:
            outputs[name] = from_buffer(body, offset, size, item["datatype"], item["shape"], name)
            offset += size
    return InferResult(outputs, reply.get("model_name", ""), reply.get("model_version", ""), reply.get("id"),
                       _generation(get_header))


def _generation(get_header: Callable[[str], str | None]) -> int | None:
    raw = get_header(GENERATION_HEADER)
    return int(raw) if raw is not None and raw.isdigit() else None
