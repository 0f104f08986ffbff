"""The HTTP front's hot path: an asyncio Protocol that serves OIP v2 over HTTP/1.x itself.

It parses request heads (:mod:`router.httpparse`) and answers inference,
health, metadata and ``/metrics`` requests without a framework: one request at
a time per connection (HTTP/1.1 answers in order), the request's state kept on
the protocol object, the reply written from the worker's callback — no task,
future or response object per request.

The first request it does not take — the admin API, any other path, a chunked
body, ``Expect: 100-continue``, a percent-encoded path, a head it cannot parse —
hands the connection, with every byte not yet answered, to the aiohttp
application (:mod:`router.app`), which serves the whole HTTP surface and
answers that request and the rest of the connection as it always would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from email.utils import formatdate
from time import monotonic, time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import oip
from .httpparse import parse_head
from .lifecycle import Exchange
from .limits import Listener, Timeouts
from .proto.errors import BadRequest, HttpHeadError
from .proto.link import FMT_MSGPACK

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .lifecycle import Lifecycle
    from .state import ServerState

log = logging.getLogger("router.http")

_HIGH_WATER = 1 << 20  # stop reading while this much of a pipelined client's input waits
_LINGER_S = 10.0  # longest wait for the rest of a refused body
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_V2_MODELS = "/v2/models/"

# What a request is, once its path is matched.
_INFER, _LIVE, _READY, _SERVER_META, _MODEL_META, _MODEL_READY, _METRICS = range(7)


class _Clock:
    """The ``Date`` header, formatted once per second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def date(self) -> bytes:
        now = int(time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


_clock = _Clock()


def match(method: str, target: str) -> tuple[int, str, str | None] | None:
    """What ``method target`` asks for: ``(kind, model, version)``, or None when it is not ours."""
    q = target.find("?")
    path = target if q < 0 else target[:q]
    if "%" in path:
        return None  # aiohttp decodes percent-escapes; leave those to it
    if path.startswith(_V2_MODELS):
        parts = path[len(_V2_MODELS):].split("/")
        n = len(parts)
        model = parts[0]
        if not model:
            return None
        if method == "POST":
            if n == 2 and parts[1] == "infer":
                return _INFER, model, None
            if n == 4 and parts[1] == "versions" and parts[3] == "infer" and parts[2]:
                return _INFER, model, parts[2]
            return None
        if method != "GET":
            return None
        if n == 1:
            return _MODEL_META, model, None
        if n == 2 and parts[1] == "ready":
            return _MODEL_READY, model, None
        if n >= 3 and parts[1] == "versions" and parts[2]:
            if n == 3:
                return _MODEL_META, model, parts[2]
            if n == 4 and parts[3] == "ready":
                return _MODEL_READY, model, parts[2]
        return None
    if method != "GET":
        return None
    if path == "/v2/health/ready":
        return _READY, "", None
    if path == "/v2/health/live":
        return _LIVE, "", None
    if path == "/v2":
        return _SERVER_META, "", None
    if path == "/metrics":
        return _METRICS, "", None
    return None


class HttpProtocol(asyncio.Protocol):
    """One client connection.

    Args:
        lifecycle: what every inference request does once parsed.
        answers: health and metadata answers.
        registry: the metrics served at ``/metrics``.
        max_body: largest body accepted (``server.max_body_bytes``).
        fallback: makes the aiohttp protocol a connection is handed to (it takes over ``listener``'s count).
        listener: the listener's connection count and cap (:mod:`router.limits`).
    """

    def __init__(self, lifecycle: Lifecycle, answers: oip.Answers, registry: CollectorRegistry, max_body: int,
                 fallback: Callable[[], asyncio.Protocol], listener: Listener) -> None:
        self.lifecycle = lifecycle
        self.listener = listener
        self.state: ServerState = lifecycle.state
        self.answers = answers
        self.registry = registry
        self.max_body = max_body
        self.fallback = fallback
        self.transport: asyncio.Transport | None = None
        self._buf: bytes | bytearray = b""
        #: A parsed head whose body has not all arrived: (end, kind, model, version, headers, minor, length).
        self._head: tuple[int, int, str, str | None, dict[str, str], int, int] | None = None
        self._paused = False
        self._writing_paused = False
        # The request in flight: at most one per connection.
        self._busy = False
        self._discard = 0  # bytes of a refused body still to read before closing
        self._processing = False
        self._close = False
        self._minor = 1
        #: When the connection last received bytes or answered (monotonic): the idle sweep reads it.
        self.last_seen = 0.0
        # For the sweep (router.limits): when the head being received began, when its body
        # began, when the client stopped reading replies. 0: not now.
        self._head_since = 0.0
        self._body_since = 0.0
        self._write_paused_at = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.listener.admit():
            transport.abort()  # type: ignore[attr-defined]  # at the cap: closed at once
            return
        self.transport = transport  # type: ignore[assignment]
        self.last_seen = monotonic()
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.listener.release()
        self.transport = None
        self._buf = b""
        self.state.connections.discard(self)

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its requests.
        self._writing_paused = True
        self._write_paused_at = monotonic()
        if self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._write_paused_at = 0.0
        if self.transport is not None and not self._busy:
            if self._buf and not self._processing:
                self._process()  # the pipelined requests left waiting while the client read nothing
            elif self._paused:
                self.transport.resume_reading()
                self._paused = False

    def data_received(self, data: bytes) -> None:
        self.last_seen = monotonic()
        if self._discard:
            self._discard -= len(data)
            if self._discard <= 0 and self.transport is not None:
                self.transport.close()
            return
        buf = self._buf
        if buf:
            if type(buf) is bytes:
                buf = self._buf = bytearray(buf)
            buf += data
        else:
            self._buf = data
        if not self._busy:
            self._process()
        elif len(self._buf) > _HIGH_WATER and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    # -- requests ------------------------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer every whole request buffered, in order, until one is in flight."""
        self._processing = True
        try:
            # A client that reads no replies gets no more answered (pipelined cheap requests
            # with costly answers, /metrics, must not hold the loop).
            while self._buf and not self._busy and not self._writing_paused and self.transport is not None:
                if not self._next():
                    break
        finally:
            self._processing = False
        if self._paused and not self._busy and not self._writing_paused and self.transport is not None:
            self.transport.resume_reading()
            self._paused = False

    def _next(self) -> bool:
        """Start the first buffered request; False when it has not all arrived (or was handed off)."""
        buf = self._buf
        head = self._head
        if head is None:
            try:
                parsed = parse_head(buf)
            except HttpHeadError as exc:
                if exc.status == 431:  # too long for aiohttp as well: answered here, in JSON
                    self._minor, self._close = 1, True
                    self._write(431, oip.error_body(str(exc)), close=True)
                    return False
                self._hand_off()  # aiohttp takes what the strict parser does not (and answers the rest)
                return False
            if parsed is None:
                if not self._head_since:
                    self._head_since = self.last_seen
                return False
            self._head_since = 0.0
            end, method, target, minor, headers = parsed
            what = match(method, target)
            if what is None or "transfer-encoding" in headers or "upgrade" in headers:
                self._hand_off()
                return False
            expect = headers.get("expect")
            if expect is not None and expect.lower() != "100-continue":
                self._hand_off()  # aiohttp answers 417
                return False
            length = 0
            cl = headers.get("content-length")
            if cl is not None:
                if not (cl.isdigit() and cl.isascii()):
                    self._hand_off()  # aiohttp answers the malformed length
                    return False
                # int() refuses strings over 4,300 digits; any length over 18 digits is over the limit anyway.
                length = int(cl) if len(cl) <= 18 else 1 << 62
                if length > self.max_body:
                    self._refuse_body(minor, length - (len(buf) - end), oip.error_body(
                        f"body of {length} bytes exceeds the limit of {self.max_body} bytes"))
                    return False
            kind, model, version = what
            if len(buf) < end + length:
                self._head = (end, kind, model, version, headers, minor, length)
                self._body_since = self.last_seen
                if expect is not None and self.transport is not None:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return False  # the body is still arriving
        else:
            end, kind, model, version, headers, minor, length = head
            if len(buf) < end + length:
                return False
            self._head = None
        stop = end + length
        # One copy of the body whether it came in one read (bytes) or many (bytearray).
        body = buf[end:stop] if type(buf) is bytes else bytes(memoryview(buf)[end:stop])
        self._buf = buf[stop:]
        conn = headers.get("connection", "").lower()
        self._minor = minor
        self._close = "close" in conn if minor else "keep-alive" not in conn
        if kind == _INFER:
            self._infer(model, version, headers, body)
        else:
            self._answer(kind, model, version)
        return True

    def _infer(self, model: str, version: str | None, headers: dict[str, str], body: bytes) -> None:
        t0 = monotonic()
        ex = Exchange(self.lifecycle, self, "http")
        self._busy = True
        try:
            fmt, hlen = oip.body_format(headers.get("inference-header-content-length"),
                                        headers.get("content-type", ""), len(body))
        except BadRequest as exc:
            self.lifecycle.refuse(ex, model, version, exc, t0)
            return
        self.lifecycle.submit(ex, model, version, None, fmt, hlen, body, t0, headers)

    def reply(self, ex: Exchange, status: int, hlen: int, payload: bytes) -> None:
        """Write the answer to the request in flight (:class:`router.lifecycle.Front`)."""
        self._busy = False
        t = self.transport
        if status == 200:
            if t is not None:
                if hlen:
                    ctype = b"application/octet-stream\r\nInference-Header-Content-Length: %d" % hlen
                elif ex.fmt == FMT_MSGPACK:
                    ctype = b"application/msgpack"
                else:
                    ctype = b"application/json"
                self._send(200, ctype, payload)
        else:
            self._write(status, oip.error_body(payload.decode(errors="replace")))
        self.last_seen = monotonic()
        self.lifecycle.written(ex, status, hlen, payload)
        if self._buf and t is not None and not self._processing:
            self._process()
        elif self._paused and not self._writing_paused and t is not None:
            t.resume_reading()
            self._paused = False

    def _answer(self, kind: int, model: str, version: str | None) -> None:
        answers = self.answers
        if kind == _READY:
            status, body = answers.ready()
        elif kind == _LIVE:
            status, body = answers.live()
        elif kind == _MODEL_META:
            status, body = answers.model_metadata(model, version)
        elif kind == _MODEL_READY:
            status, body = answers.model_ready(model, version)
        elif kind == _SERVER_META:
            status, body = answers.server_metadata()
        else:
            self._send(200, CONTENT_TYPE_LATEST.encode(), generate_latest(self.registry))
            return
        self._write(status, body)

    # -- writing -------------------------------------------------------------------------------------------

    def _write(self, status: int, body: bytes, close: bool = False) -> None:
        """An answer with a JSON body (or none)."""
        self._send(status, b"application/json" if body else b"", body, close)

    def _send(self, status: int, ctype: bytes, body: bytes, announce_close: bool = False) -> None:
        t = self.transport
        if t is None:
            return
        state = self.state
        close = self._close or state.draining or state.stopping
        announce_close = announce_close or close
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Error").encode())]
        if ctype:
            parts.append(b"Content-Type: %s\r\n" % ctype)
        if announce_close:
            parts.append(b"Connection: close\r\n")
        elif not self._minor:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"Content-Length: %d\r\nDate: %s\r\n%s\r\n" % (len(body), _clock.date(), state.generation_header))
        if len(body) < 65536:
            parts.append(body)
            t.write(b"".join(parts))
        else:  # no copy of a large body
            t.write(b"".join(parts))
            t.write(body)
        if close:
            self._buf = b""
            t.close()

    @property
    def idle(self) -> bool:
        """No request in flight (a partial one may be buffered: it counts as idle)."""
        return not self._busy

    # -- limits (router.limits) ----------------------------------------------------------------------------

    def overdue(self, now: float, t: Timeouts) -> str | None:
        """Why the sweep must close this connection now, or None."""
        if self.transport is None:
            return None
        if self._writing_paused and t.send and now - self._write_paused_at > t.send:
            return "send_timeout"
        if self._busy or self._discard:
            return None  # the request's deadline and the refused body's linger bound these
        head = self._head
        if head is not None:
            received = len(self._buf) - head[0]
            if t.body and now - self._body_since > t.body + received / t.body_rate:
                return "body_timeout"
            return None
        if self._buf and self._head_since and t.head and now - self._head_since > t.head:
            return "head_timeout"
        if t.keepalive and now - self.last_seen > t.keepalive:
            return "idle"
        return None

    def time_out(self, reason: str) -> None:
        """Close for ``reason``: a 408 naming the limit for a slow request, silently when idle."""
        t = self.transport
        if t is None:
            return
        if reason == "send_timeout":
            t.abort()  # it reads nothing: a goodbye would only wait in the buffer
            return
        if reason != "idle":
            what = "request head" if reason == "head_timeout" else "request body"
            self._close = True
            self._write(408, oip.error_body(f"{what} not received in time ({reason.replace('_', ' ')})"), close=True)
        t.close()

    def _refuse_body(self, minor: int, unread: int, error: bytes) -> None:
        """413 at once, then read and drop the rest of the body before closing.

        Closing with the body unread would reset the connection, and the caller
        might lose the answer before reading it.
        """
        self._minor, self._close = minor, False
        self._buf = b""
        self._head = None
        self._discard = max(unread, 1)
        self._write(413, error, close=True)
        t = self.transport
        if t is not None:
            asyncio.get_running_loop().call_later(_LINGER_S, t.close)
            if unread <= 0:
                t.close()

    def _hand_off(self) -> None:
        """Give this connection, with every byte not yet answered, to the aiohttp application."""
        t = self.transport
        if t is None:
            return
        buf = bytes(self._buf)
        self._buf = b""
        self._head = None
        self.transport = None
        self.state.connections.discard(self)
        proto: Any = self.fallback()
        t.set_protocol(proto)
        proto.connection_made(t)
        if buf:
            proto.data_received(buf)
        if self._paused:
            t.resume_reading()
            self._paused = False
