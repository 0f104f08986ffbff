"""The msgpack TCP protocol's frames (docs/protocol.md), shared by the sync and async wire clients.

A frame is a 4-byte big-endian length and a msgpack body. Requests are
``[id, model, version, key, body]``; replies ``[id, status, version, result]``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from ..proto.errors import InferenceError, from_status
from ._result import InferResult
from ._tensors import msgpack_outputs, msgpack_tensors

_HEADER = struct.Struct(">I")
_MIN_FREE = 1 << 14


def new_packer() -> Callable[[Any], bytes]:
    """A msgpack pack function for one client: a reused Packer skips per-call setup, and one per
    client keeps it out of reach of other threads."""
    return msgpack.Packer().pack


def encode_request(pack: Callable[[Any], bytes], rid: int, model: str, version: str | None,
                   key: str | bytes | None, inputs: Mapping[str, Any], outputs: Sequence[str] | None,
                   request_id: str | None) -> bytes:
    """A whole request frame (length prefix included), ready for one send; ``pack`` from :func:`new_packer`.

    Raises:
        TypeError: an input's dtype has no supported OIP datatype.
    """
    req: dict[str, Any] = {"inputs": msgpack_tensors(inputs)}
    if outputs is not None:
        req["outputs"] = list(outputs)
    if request_id is not None:
        req["id"] = request_id
    body = pack([rid, model, version, key, req])
    return _HEADER.pack(len(body)) + body


def decode_reply(msg: Any) -> tuple[int | None, InferResult | InferenceError]:
    """``(id, result)`` of a decoded reply frame; ``result`` is the typed error when status != 200.

    An id of None means the server could not parse a request frame and is
    closing the connection.

    Raises:
        ValueError: the reply is not a ``[id, status, version, result, generation]`` array (or the first
            four, from a server before the generation).
    """
    if not isinstance(msg, list) or len(msg) not in (4, 5):
        raise ValueError("malformed reply frame: not a 4- or 5-item array")
    rid, status, version, result = msg[:4]
    generation = msg[4] if len(msg) == 5 and isinstance(msg[4], int) else None  # servers before it send 4
    if status != 200:
        return rid, from_status(status, result if isinstance(result, str) else repr(result))
    if not isinstance(result, dict):
        raise ValueError("malformed reply frame: the result of a 200 reply must be a map")
    return rid, InferResult(msgpack_outputs(result.get("outputs")), result.get("model_name", ""),
                            result.get("model_version") or version or "", result.get("id"), generation)


class FrameBuffer:
    """Receive buffer that splits the byte stream into decoded reply messages.

    Bytes are received straight into it (``recv_into`` / ``BufferedProtocol``)
    through :meth:`free` and :meth:`filled`; the buffer is reused across
    replies and only reallocated to fit a larger frame.
    """

    __slots__ = ("_buf", "_start", "_end")

    def __init__(self, size: int = 1 << 16) -> None:
        self._buf = bytearray(size)
        self._start = 0
        self._end = 0

    def free(self) -> memoryview:
        """Writable space after the buffered bytes, big enough for the frame being received."""
        buf, start, end = self._buf, self._start, self._end
        if start == end:
            start = end = self._start = self._end = 0
        pending = end - start
        need = _HEADER.size
        if pending >= need:
            need += _HEADER.unpack_from(buf, start)[0]
        want = max(need, pending + _MIN_FREE)
        if len(buf) - end < _MIN_FREE or len(buf) - start < need:
            # Move the partial frame to the front of a fresh buffer. Never resize in place:
            # the transport may still hold a view of the old one.
            new = bytearray(max(len(buf), want))
            new[:pending] = buf[start:end]
            self._buf, self._start, self._end = new, 0, pending
            buf, end = new, pending
        return memoryview(buf)[end:]

    def filled(self, n: int) -> None:
        """Record that ``n`` bytes were written into the view returned by :meth:`free`."""
        self._end += n

    def messages(self) -> list[Any]:
        """Every complete frame received so far, msgpack-decoded, in order.

        Raises:
            ValueError: a frame is not one valid msgpack object.
        """
        out = []
        buf, start, end = self._buf, self._start, self._end
        view = memoryview(buf)
        while end - start >= 4:
            n = _HEADER.unpack_from(buf, start)[0]
            if end - start - 4 < n:
                break
            try:
                # bin objects come out as bytes copies, so the buffer can be reused at once.
                out.append(msgpack.unpackb(view[start + 4:start + 4 + n]))
            except Exception as exc:  # msgpack raises several unrelated types on garbage
                raise ValueError(f"malformed reply frame: {exc}") from None
            start += 4 + n
        self._start = start
        return out
