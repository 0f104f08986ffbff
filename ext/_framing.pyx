# cython: language_level=3
"""Compiled twin of ``router/_framing_py.py`` (the specification): same names,
signatures and results. Built as ``router._framing_c``."""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from router.proto.errors import FrameError


cdef inline uint32_t _be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | <uint32_t>p[3]


cdef inline uint64_t _be(const uint8_t* p, int size) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(size):
        v = (v << 8) | p[i]
    return v


cdef object _bad(list frames, str message, int status):
    exc = FrameError(message, status)
    exc.frames = frames
    return exc


@cython.final
cdef class FrameScanner:
    """Split a byte stream into frame bodies.

    Args:
        max_frame: largest body accepted; a longer declared length raises
            ``FrameError`` with status 413 before the body is buffered.
    """

    cdef bytearray _buf
    cdef public Py_ssize_t max_frame

    def __init__(self, Py_ssize_t max_frame):
        self._buf = bytearray()
        self.max_frame = max_frame

    @property
    def buffered(self):
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def feed(self, data):
        """Add ``data``; return the bodies of every frame it completed, in order.

        Raises:
            FrameError: a zero-length frame (400) or one over ``max_frame`` (413),
                with the frames completed before it in ``frames``. The stream
                cannot be resynchronised after this.
        """
        cdef bytes src
        if self._buf:
            self._buf += data
            src = bytes(self._buf)
            del self._buf[:]
        elif type(data) is bytes:
            src = <bytes>data
        else:
            src = bytes(data)
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(src)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(src)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t n
        cdef list frames = []
        while end - pos >= 4:
            n = _be32(p + pos)
            if n == 0:
                raise _bad(frames, "frame length must be at least 1", 400)
            if n > self.max_frame:
                raise _bad(frames, f"frame of {n} bytes exceeds the limit of {self.max_frame} bytes", 413)
            if end - pos - 4 < n:
                break
            frames.append(PyBytes_FromStringAndSize(<const char*>(p + pos + 4), n))
            pos += 4 + n
        if pos < end:
            self._buf += src[pos:]
        return frames


def pack_header(Py_ssize_t length):
    """The 4-byte prefix of a frame whose body is ``length`` bytes."""
    cdef unsigned char out[4]
    out[0] = (length >> 24) & 0xFF
    out[1] = (length >> 16) & 0xFF
    out[2] = (length >> 8) & 0xFF
    out[3] = length & 0xFF
    return PyBytes_FromStringAndSize(<const char*>out, 4)


cdef tuple _read_str(const uint8_t* p, Py_ssize_t pos, Py_ssize_t n, str what, bint allow_nil,
                     bint allow_bin):
    cdef uint8_t b = p[pos]
    cdef Py_ssize_t size, length, start
    cdef bint is_bin = False
    if b == 0xC0 and allow_nil:
        return None, pos + 1
    if 0xA0 <= b <= 0xBF:
        length = b & 0x1F
        start = pos + 1
    elif b == 0xD9 or b == 0xDA or b == 0xDB or (allow_bin and (b == 0xC4 or b == 0xC5 or b == 0xC6)):
        is_bin = b == 0xC4 or b == 0xC5 or b == 0xC6
        if b == 0xD9 or b == 0xC4:
            size = 1
        elif b == 0xDA or b == 0xC5:
            size = 2
        else:
            size = 4
        if pos + 1 + size > n:
            raise FrameError(f"truncated {what}", 400)
        length = <Py_ssize_t>_be(p + pos + 1, <int>size)
        start = pos + 1 + size
    else:
        kinds = "a string" + (", bin" if allow_bin else "") + (" or nil" if allow_nil else "")
        raise FrameError(f"{what} must be {kinds}", 400)
    if start + length > n:
        raise FrameError(f"truncated {what}", 400)
    if is_bin:
        return PyBytes_FromStringAndSize(<const char*>(p + start), length), start + length
    try:
        return (<const char*>(p + start))[:length].decode("utf-8"), start + length
    except UnicodeDecodeError:
        raise FrameError(f"{what} is not valid UTF-8", 400) from None


@cython.boundscheck(False)
@cython.wraparound(False)
def parse_request(bytes body):
    """Read a request frame's envelope ``[id, model, version, key, request]``.

    Returns:
        ``(id, model, version, key, offset)`` where ``body[offset:]`` is the
        msgpack inference body (item 4), left undecoded.

    Raises:
        FrameError: (400) the envelope is not a 5-item array of the right types.
    """
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t pos
    cdef uint8_t b
    cdef int size
    cdef uint64_t rid
    cdef object model = None, version = None, key = None
    if n < 1:
        raise FrameError("empty frame", 400)
    b = p[0]
    if b == 0x95:
        pos = 1
    elif b == 0xDC and n >= 3 and p[1] == 0 and p[2] == 5:
        pos = 3
    else:
        raise FrameError("request frame must be a msgpack array of 5 items [id, model, version, key, request]",
                         400)
    if pos >= n:
        raise FrameError("truncated request envelope", 400)
    b = p[pos]
    if b <= 0x7F:
        rid = b
        pos += 1
    else:
        # uint 8..64, or int 8..64 holding a value >= 0 (see the twin).
        if b == 0xCC or b == 0xD0:
            size = 1
        elif b == 0xCD or b == 0xD1:
            size = 2
        elif b == 0xCE or b == 0xD2:
            size = 4
        elif b == 0xCF or b == 0xD3:
            size = 8
        else:
            raise FrameError("request id must be an unsigned integer", 400)
        if pos + 1 + size > n or (b >= 0xD0 and p[pos + 1] & 0x80):
            raise FrameError("request id must be an unsigned integer", 400)
        rid = _be(p + pos + 1, size)
        pos += 1 + size
    if pos >= n:
        raise FrameError("truncated request envelope", 400)
    model, pos = _read_str(p, pos, n, "model", False, False)
    if pos >= n:
        raise FrameError("truncated request envelope", 400)
    version, pos = _read_str(p, pos, n, "version", True, False)
    if pos >= n:
        raise FrameError("truncated request envelope", 400)
    key, pos = _read_str(p, pos, n, "routing key", True, True)
    if pos >= n:
        raise FrameError("truncated request envelope: missing the request map", 400)
    b = p[pos]
    if not (0x80 <= b <= 0x8F or b == 0xDE or b == 0xDF):
        raise FrameError("request (item 4) must be a msgpack map", 400)
    return rid, model, version, key, pos
