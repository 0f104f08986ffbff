# cython: language_level=3
"""Compiled twin of ``router/_http_py.py`` (the specification): same names,
signatures and results. Built as ``router._http_c``."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp

from router.proto.errors import HttpHeadError

MAX_HEAD = 65536

cdef Py_ssize_t _MAX_HEAD = MAX_HEAD
# tchar of RFC 9110, and the bytes a header value may hold (VCHAR, obs-text, SP, HTAB).
cdef unsigned char _TCHAR[256]
cdef unsigned char _VALUE_OK[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        _TCHAR[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122)
        _VALUE_OK[c] = c == 9 or (32 <= c <= 126) or c >= 128
    for c in b"!#$%&'*+-.^_`|~":
        _TCHAR[c] = 1


_init_tables()

# The usual methods as shared strings: no new str per request.
cdef str _POST = "POST"
cdef str _GET = "GET"


@cython.boundscheck(False)
@cython.wraparound(False)
def parse_head(buf, Py_ssize_t start=0):
    """Parse the request head that begins at ``buf[start]``.

    Returns ``None`` while the head is incomplete, else
    ``(end, method, target, minor, headers)`` (see ``router/_http_py.py``).

    Raises:
        HttpHeadError: not a head of the strict form (status 400), or longer
            than ``MAX_HEAD`` (status 431).
    """
    cdef bytes data = buf if type(buf) is bytes else bytes(buf)
    cdef const unsigned char* base = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if start < 0 or start > n:
        raise ValueError("start out of range")
    cdef const unsigned char* p = base + start
    cdef const unsigned char* e = base + n
    cdef const unsigned char* q = p
    cdef const unsigned char* stop = NULL
    while e - q >= 4:
        q = <const unsigned char*>memchr(q, 13, e - q - 3)
        if q == NULL:
            break
        if q[1] == 10 and q[2] == 13 and q[3] == 10:
            stop = q
            break
        q += 1
    if stop == NULL:
        if n - start > _MAX_HEAD:
            raise HttpHeadError(f"request head longer than {_MAX_HEAD} bytes", 431)
        return None
    if stop + 4 - p > _MAX_HEAD:
        raise HttpHeadError(f"request head longer than {_MAX_HEAD} bytes", 431)

    # Request line.
    q = p
    while q < stop and 65 <= q[0] <= 90:
        q += 1
    if q == p or q >= stop or q[0] != 32:
        raise HttpHeadError("malformed method")
    cdef str method
    if q - p == 4 and memcmp(p, b"POST", 4) == 0:
        method = _POST
    elif q - p == 3 and memcmp(p, b"GET", 3) == 0:
        method = _GET
    else:
        method = PyUnicode_DecodeASCII(<const char*>p, q - p, NULL)
    q += 1
    cdef const unsigned char* t = q
    if q >= stop or q[0] != 47:  # '/'
        raise HttpHeadError("request target is not an origin-form path")
    while q < stop and 33 <= q[0] <= 126:
        q += 1
    if q >= stop or q[0] != 32:
        raise HttpHeadError("request target is not an origin-form path")
    cdef str target = PyUnicode_DecodeASCII(<const char*>t, q - t, NULL)
    q += 1
    cdef int minor
    if stop - q < 8 or memcmp(q, b"HTTP/1.", 7) != 0 or not (q[7] == 48 or q[7] == 49):
        raise HttpHeadError("not HTTP/1.0 or HTTP/1.1")
    minor = q[7] - 48
    q += 8
    if q != stop and not (q[0] == 13 and q[1] == 10):
        raise HttpHeadError("not HTTP/1.0 or HTTP/1.1")

    # Header lines: q sits on the CRLF that ends the previous line.
    cdef dict headers = {}
    cdef const unsigned char* name
    cdef const unsigned char* v
    cdef const unsigned char* ve
    cdef char lower[64]
    cdef Py_ssize_t i, nlen
    cdef object key, value
    cdef PyObject* old
    while q < stop:
        q += 2
        name = q
        while q < stop and _TCHAR[q[0]]:
            q += 1
        nlen = q - name
        if nlen == 0 or q >= stop or q[0] != 58:  # ':'
            raise HttpHeadError("malformed header line")
        q += 1
        while q < stop and (q[0] == 32 or q[0] == 9):
            q += 1
        v = q
        while q < stop and q[0] != 13:
            if not _VALUE_OK[q[0]]:
                raise HttpHeadError("control character in a header value")
            q += 1
        if q < stop and q[1] != 10:
            raise HttpHeadError("control character in a header value")
        ve = q
        while ve > v and (ve[-1] == 32 or ve[-1] == 9):
            ve -= 1
        if nlen <= 64:
            for i in range(nlen):
                lower[i] = name[i] + 32 if 65 <= name[i] <= 90 else name[i]
            key = PyUnicode_DecodeASCII(lower, nlen, NULL)
        else:
            key = PyUnicode_DecodeASCII(<const char*>name, nlen, NULL).lower()
        value = PyUnicode_DecodeUTF8(<const char*>v, ve - v, "surrogateescape")
        old = PyDict_GetItem(headers, key)
        if old != NULL:
            value = f"{<object>old}, {value}"
        PyDict_SetItem(headers, key, value)
    return stop + 4 - base, method, target, minor, headers
