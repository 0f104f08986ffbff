"""Constants of the router <-> worker link, shared by ``router`` and ``runtime``.

The link is a Unix stream socket (one ``socketpair`` per worker) carrying
length-prefixed msgpack frames (see :mod:`router.proto.framing`).

Both directions use one fixed-width frame layout (see :func:`pack`).

Router -> worker, a msgpack array ``[rid, kind, header_len, payload]``:
    ``rid`` (uint, > 0) matches the reply; ``kind`` is a body format below or
    ``KIND_WARMUP``; ``header_len`` is the OIP ``Inference-Header-Content-Length``
    (0 when absent); ``payload`` (bin) is the caller's body, untouched.

Worker -> router, a msgpack array ``[rid, status, header_len, payload]``:
    ``status`` is an HTTP status code; on 200 ``payload`` is the encoded reply
    in the request's format and ``header_len`` its JSON header length (binary
    outputs only, else 0); otherwise ``payload`` is the UTF-8 error message.
    ``rid == 0`` carries ``STATUS_HELLO`` once the model is loaded, with a
    msgpack map payload describing the worker (pid, device, cpus, threads);
    or, instead of the hello, ``STATUS_REFUSED`` when the worker will not serve
    its version (its file fails the sha256 check, ``meta.json`` names another
    version, the model does not load), with a msgpack map ``{"reason": one of
    REFUSALS, "error": message}``; the worker then exits. Once serving, ``rid == 0``
    with ``STATUS_STATS`` carries its periodic statistics (:mod:`router.proto.stats`).

Shadow copies (``kind`` = format | ``SHADOW``) carry the live reply too: the
payload is an 8-byte prefix ``>II`` (request length, live reply's header
length), the caller's body, then the live reply's bytes, all untouched.
``header_len`` is the request's, as for any request. The shadow worker answers
200 with a small msgpack of comparison statistics (``runtime/compare.py``),
never tensors, or an error status and message. A copy whose kind also has
``SHADOW_OUTPUTS`` (sampled for the prediction log) gets its outputs too: a
third element of that array, the outputs as a msgpack reply body.
"""

from __future__ import annotations

import struct

from .errors import FrameError

#: Body formats: how the worker decodes a request and encodes its reply.
FMT_JSON = 0  # OIP JSON
FMT_BINARY = 1  # OIP JSON header + binary tensor data
FMT_MSGPACK = 2  # msgpack inference body (HTTP application/msgpack and TCP frames)
#: Run the model's example input end to end (decode, batch, forward, encode).
KIND_WARMUP = 9
#: Flag on a body format: a mirrored request that carries the live reply.
SHADOW = 0x10
#: Flag on a shadow copy: answer with the shadow's outputs besides the comparison (prediction log).
SHADOW_OUTPUTS = 0x20
#: The body format bits of a kind.
FMT_MASK = 0x0F

STATUS_HELLO = 1
STATUS_REFUSED = 2
#: ``rid == 0``: the worker's periodic statistics, and its drift summary (:mod:`router.proto.stats`).
STATUS_STATS = 3
STATUS_DRIFT = 4

#: Why a worker refuses its model version (``STATUS_REFUSED``): the model file's sha256 is not
#: meta.json's (integrity), meta.json names another model or version than its directory
#: (identity), meta.json or the version's files are invalid (meta), or loading raised (load).
REFUSALS = ("integrity", "identity", "meta", "load")
#: Every reason a replica fails to become ready (``ModelLoadFailed.reason``): a refusal, or
#: the worker died before its hello (exited), was not ready in time (timeout), or its warm-up
#: request failed (warmup).
LOAD_FAILURES = (*REFUSALS, "exited", "timeout", "warmup")

# Every link frame has the same fixed-width layout, which is valid msgpack
# (array of 4: uint32 rid, uint16 code, uint32 header_len, bin32 payload) and
# lets both sides pack and parse it with one struct call instead of a general
# msgpack encoder: frame length, then the 19-byte array head, then the payload.
_FRAME = struct.Struct(">IBBIBHBIBI")
_HEAD = struct.Struct(">BBIBHBIBI")
HEAD_SIZE = _HEAD.size
_MARKERS = (0x94, 0xCE, 0xCD, 0xCE, 0xC6)  # array of 4, uint32, uint16, uint32, bin32


def pack(rid: int, code: int, header_len: int, payload: bytes) -> bytes:
    """A whole link frame (length prefix included) carrying ``payload``."""
    n = len(payload)  # pack_head inlined: this runs once per request
    return _FRAME.pack(HEAD_SIZE + n, 0x94, 0xCE, rid, 0xCD, code, 0xCE, header_len, 0xC6, n) + payload


def pack_head(rid: int, code: int, header_len: int, n: int) -> bytes:
    """The length prefix and head of a frame whose ``n``-byte payload is written separately."""
    return _FRAME.pack(HEAD_SIZE + n, 0x94, 0xCE, rid, 0xCD, code, 0xCE, header_len, 0xC6, n)


_SHADOW_PREFIX = struct.Struct(">II")
SHADOW_PREFIX_SIZE = _SHADOW_PREFIX.size


def pack_shadow_head(rid: int, fmt: int, header_len: int, request_len: int, reply_header_len: int,
                     reply_len: int) -> bytes:
    """Frame head plus shadow prefix; the request body and the live reply follow, as they are."""
    n = SHADOW_PREFIX_SIZE + request_len + reply_len
    return pack_head(rid, fmt | SHADOW, header_len, n) + _SHADOW_PREFIX.pack(request_len, reply_header_len)


def split_shadow(payload: bytes | memoryview) -> tuple[memoryview, memoryview, int]:
    """A shadow payload's ``(request, live_reply, live_reply_header_len)``, as views.

    Raises:
        FrameError: the prefix does not fit the payload.
    """
    view = memoryview(payload)
    try:
        n, reply_hlen = _SHADOW_PREFIX.unpack_from(view)
    except struct.error:
        raise FrameError("shadow payload shorter than its prefix") from None
    end = SHADOW_PREFIX_SIZE + n
    if end > len(view) or reply_hlen > len(view) - end:
        raise FrameError("shadow payload lengths do not add up")
    return view[SHADOW_PREFIX_SIZE:end], view[end:], reply_hlen


def whole(data: bytes) -> tuple[int, int, int] | None:
    """``(rid, code, header_len)`` when ``data`` is exactly one whole link frame, length prefix included; else None.

    The payload is ``data[HEAD_SIZE + 4:]``. A read that is anything else (part
    of a frame, several frames, a malformed head) gives None: the frame scanner
    and :func:`unpack` deal with it.
    """
    try:
        size, a, b, rid, c, code, d, hlen, e, n = _FRAME.unpack_from(data)
    except struct.error:
        return None
    if size != len(data) - 4 or n != size - HEAD_SIZE or (a, b, c, d, e) != _MARKERS:
        return None
    return rid, code, hlen


def unpack(body: bytes) -> tuple[int, int, int, bytes]:
    """Split a link frame body into ``(rid, code, header_len, payload)``.

    Raises:
        FrameError: the body does not have the fixed link layout.
    """
    try:
        a, b, rid, c, code, d, hlen, e, n = _HEAD.unpack_from(body)
    except struct.error:
        raise FrameError("link frame shorter than its head") from None
    if (a, b, c, d, e) != _MARKERS or n != len(body) - HEAD_SIZE:
        raise FrameError("link frame does not have the fixed link layout")
    return rid, code, hlen, body[HEAD_SIZE:]
