"""Pure-Python twin of ``ext/_http.pyx``: the specification both follow.

The HTTP front's request-head parser. It takes the strict, common form of an
HTTP/1.0 or 1.1 request head and nothing else: a request line
``METHOD SP /origin-target SP HTTP/1.x CRLF``, header lines ``name: value CRLF``
and the empty line. Anything else (a bare LF, an absolute target, obsolete line
folding, a control character) raises :class:`~router.proto.errors.HttpHeadError`, and
the front hands the connection to aiohttp, which answers it as it would any
request: so strictness here costs nothing in what callers may send.
"""

from __future__ import annotations

import re

from .proto.errors import HttpHeadError

#: A head longer than this is not parsed here (aiohttp then answers it).
MAX_HEAD = 65536

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD = re.compile(rb"[A-Z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def parse_head(buf: bytes, start: int = 0) -> tuple[int, str, str, int, dict[str, str]] | None:
    """Parse the request head that begins at ``buf[start]``.

    Returns ``None`` while the head is incomplete, else
    ``(end, method, target, minor, headers)``: ``end`` is the offset just past
    the empty line, ``minor`` the HTTP/1.x minor version, ``headers`` maps each
    lower-cased name to its value (UTF-8, undecodable bytes kept as surrogate
    escapes), repeated names joined with ``", "``.

    Raises:
        HttpHeadError: not a head of the strict form above (status 400), or
            longer than :data:`MAX_HEAD` (status 431).
    """
    stop = buf.find(b"\r\n\r\n", start)
    if stop < 0:
        if len(buf) - start > MAX_HEAD:
            raise HttpHeadError(f"request head longer than {MAX_HEAD} bytes", 431)
        return None
    end = stop + 4
    if end - start > MAX_HEAD:
        raise HttpHeadError(f"request head longer than {MAX_HEAD} bytes", 431)
    lines = buf[start:stop].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HttpHeadError("malformed request line")
    method, target, version = parts
    if _METHOD.fullmatch(method) is None:
        raise HttpHeadError("malformed method")
    if _TARGET.fullmatch(target) is None:
        raise HttpHeadError("request target is not an origin-form path")
    if version == b"HTTP/1.1":
        minor = 1
    elif version == b"HTTP/1.0":
        minor = 0
    else:
        raise HttpHeadError("not HTTP/1.0 or HTTP/1.1")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0 or _TOKEN.fullmatch(line, 0, colon) is None:
            raise HttpHeadError("malformed header line")
        raw = line[colon + 1:].strip(b" \t")
        if _VALUE_BAD.search(raw) is not None:
            raise HttpHeadError("control character in a header value")
        name = line[:colon].decode("ascii").lower()
        value = raw.decode("utf-8", "surrogateescape")
        old = headers.get(name)
        headers[name] = value if old is None else f"{old}, {value}"
    return end, method.decode("ascii"), target.decode("ascii"), minor, headers
