"""Pure-Python twin of ``ext/_framing.pyx``: the specification both follow.

Length-prefixed frames (4-byte big-endian length + body) and the envelope of a
client request frame (docs/protocol.md): the router reads the id, model,
version and routing key, and hands the rest (the inference body) to a worker
without decoding it.
"""

from __future__ import annotations

from .errors import FrameError


def _bad(frames: list[bytes], message: str, status: int) -> FrameError:
    exc = FrameError(message, status)
    exc.frames = frames
    return exc


class FrameScanner:
    """Split a byte stream into frame bodies.

    Args:
        max_frame: largest body accepted; a longer declared length raises
            ``FrameError`` with status 413 before the body is buffered.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the bodies of every frame it completed, in order.

        Raises:
            FrameError: a zero-length frame (400) or one over ``max_frame`` (413),
                with the frames completed before it in ``frames``. The stream
                cannot be resynchronised after this.
        """
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        frames: list[bytes] = []
        pos = 0
        end = len(data)
        while end - pos >= 4:
            n = int.from_bytes(data[pos:pos + 4], "big")
            if n == 0:
                raise _bad(frames, "frame length must be at least 1", 400)
            if n > self.max_frame:
                raise _bad(frames, f"frame of {n} bytes exceeds the limit of {self.max_frame} bytes", 413)
            if end - pos - 4 < n:
                break
            frames.append(data[pos + 4:pos + 4 + n])
            pos += 4 + n
        if pos < end:
            buf += data[pos:]
        return frames


def pack_header(length: int) -> bytes:
    """The 4-byte prefix of a frame whose body is ``length`` bytes."""
    return length.to_bytes(4, "big")


def _read_uint(body: bytes, pos: int) -> tuple[int, int]:
    b = body[pos]
    if b <= 0x7F:
        return b, pos + 1
    # uint 8..64, or int 8..64 holding a value >= 0: a reader takes any width an encoder chose (found by tests/fuzz).
    size = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}.get(b)
    if size is None or pos + 1 + size > len(body) or (b >= 0xD0 and body[pos + 1] & 0x80):
        raise FrameError("request id must be an unsigned integer", 400)
    return int.from_bytes(body[pos + 1:pos + 1 + size], "big"), pos + 1 + size


def _read_str(body: bytes, pos: int, what: str, allow_nil: bool, allow_bin: bool) -> tuple[object, int]:
    b = body[pos]
    if b == 0xC0 and allow_nil:
        return None, pos + 1
    is_bin = False
    if 0xA0 <= b <= 0xBF:
        n, start = b & 0x1F, pos + 1
    elif b in (0xD9, 0xDA, 0xDB) or (allow_bin and b in (0xC4, 0xC5, 0xC6)):
        is_bin = b in (0xC4, 0xC5, 0xC6)
        size = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}[b]
        if pos + 1 + size > len(body):
            raise FrameError(f"truncated {what}", 400)
        n, start = int.from_bytes(body[pos + 1:pos + 1 + size], "big"), pos + 1 + size
    else:
        kinds = "a string" + (", bin" if allow_bin else "") + (" or nil" if allow_nil else "")
        raise FrameError(f"{what} must be {kinds}", 400)
    if start + n > len(body):
        raise FrameError(f"truncated {what}", 400)
    raw = body[start:start + n]
    if is_bin:
        return bytes(raw), start + n
    try:
        return raw.decode("utf-8"), start + n
    except UnicodeDecodeError:
        raise FrameError(f"{what} is not valid UTF-8", 400) from None


def parse_request(body: bytes) -> tuple[int, str, str | None, str | bytes | None, int]:
    """Read a request frame's envelope ``[id, model, version, key, request]``.

    Returns:
        ``(id, model, version, key, offset)`` where ``body[offset:]`` is the
        msgpack inference body (item 4), left undecoded.

    Raises:
        FrameError: (400) the envelope is not a 5-item array of the right types.
    """
    n = len(body)
    if n < 1:
        raise FrameError("empty frame", 400)
    b = body[0]
    if b == 0x95:
        pos = 1
    elif b == 0xDC and n >= 3 and body[1] == 0 and body[2] == 5:
        pos = 3
    else:
        raise FrameError("request frame must be a msgpack array of 5 items [id, model, version, key, request]",
                         400)
    try:
        rid, pos = _read_uint(body, pos)
        model, pos = _read_str(body, pos, "model", False, False)
        version, pos = _read_str(body, pos, "version", True, False)
        key, pos = _read_str(body, pos, "routing key", True, True)
    except IndexError:
        raise FrameError("truncated request envelope", 400) from None
    if pos >= n:
        raise FrameError("truncated request envelope: missing the request map", 400)
    m = body[pos]
    if not (0x80 <= m <= 0x8F or m in (0xDE, 0xDF)):
        raise FrameError("request (item 4) must be a msgpack map", 400)
    return rid, model, version, key, pos  # type: ignore[return-value]
