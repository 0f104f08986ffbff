"""The msgpack TCP front (docs/protocol.md): pipelined frames, replies matched by id.

The router parses only each frame's envelope (id, model, version, routing key)
and forwards the rest, the inference body, to a worker as bytes. Replies are
written as soon as each worker answers, so they may leave out of order.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING

import msgpack

from .cork import Holding
from .lifecycle import Exchange
from .limits import Listener, Timeouts
from .proto.errors import FrameError
from .proto.framing import FrameScanner, pack_header, parse_request
from .proto.link import FMT_MSGPACK

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = logging.getLogger("router.wire")

_HIGH_WATER = 1 << 20  # pause reading while this much reply data waits to be sent


# One Packer for the process (the loop is single-threaded): packb() builds one per call.
_packb = msgpack.Packer().pack
#: (status, version) -> their msgpack bytes: a reply packs only its id anew.
_MIDDLES: dict[tuple[int, str | None], bytes] = {}


def reply_frame(rid: int | None, status: int, version: str | None, result: bytes | str,
                generation: bytes = b"\x00") -> bytes:
    """A whole reply frame; ``result`` is a msgpack body already encoded (bytes) or an error message, and
    ``generation`` the configuration generation, packed (:attr:`router.state.ServerState.generation_item`)."""
    if isinstance(result, bytes):
        middle = _MIDDLES.get((status, version))
        if middle is None:
            middle = _packb(status) + _packb(version)
            if len(_MIDDLES) < 1024:  # versions come from the config: few
                _MIDDLES[(status, version)] = middle
        head = b"\x95" + _packb(rid) + middle
        return pack_header(len(head) + len(result) + len(generation)) + head + result + generation
    body = msgpack.packb([rid, status, version, result])
    body = b"\x95" + body[1:] + generation  # the same array, one item longer
    return pack_header(len(body)) + body


class WireProtocol(asyncio.Protocol, Holding):
    """One client connection.

    Args:
        lifecycle: what every request does once parsed.
        max_body: largest frame accepted (``server.max_body_bytes``).
        listener: the listener's connection count and cap (:mod:`router.limits`).
    """

    def __init__(self, lifecycle: Lifecycle, max_body: int, listener: Listener) -> None:
        self.lifecycle = lifecycle
        self.listener = listener
        self.state = lifecycle.state
        self.scanner = FrameScanner(max_body)
        self.transport: asyncio.Transport | None = None
        #: Requests received on this connection and not yet answered.
        self.in_flight = 0
        self._paused = False
        self.cork = lifecycle.routing.cork
        self._held: list[bytes] = []
        self._last: bytes | None = None  # the error reply a malformed frame gets, once in-flight ones are answered
        #: When the last whole frame arrived, or (as the sweep saw) a request was last in flight.
        self.last_frame = 0.0
        self._write_paused_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.listener.admit():
            transport.abort()  # type: ignore[attr-defined]  # at the cap: closed at once
            return
        self.transport = transport  # type: ignore[assignment]
        self.last_frame = monotonic()
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.listener.release()
        self.transport = None
        self.state.connections.discard(self)

    def pause_writing(self) -> None:
        # The client reads slower than it sends: stop reading its requests.
        self._write_paused_at = monotonic()
        if self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def resume_writing(self) -> None:
        self._write_paused_at = 0.0
        if self.transport is not None and self._paused:
            self.transport.resume_reading()
            self._paused = False

    def data_received(self, data: bytes) -> None:
        if self._last is not None:
            return  # closing after a malformed frame
        try:
            frames = self.scanner.feed(data)
        except FrameError as exc:
            # The requests before the bad header came first: they are answered first.
            if exc.frames:
                self.cork.run(self._requests, exc.frames)
            self._fatal(exc)
            return
        self.cork.run(self._requests, frames)  # many requests in one read: one write to each worker

    def _requests(self, frames: list[bytes]) -> None:
        lifecycle = self.lifecycle
        for body in frames:
            t0 = monotonic()
            try:
                rid, model, version, key, offset = parse_request(body)
            except FrameError as exc:
                self._fatal(exc)
                return
            self.in_flight += 1
            self.last_frame = t0
            lifecycle.submit(Exchange(lifecycle, self, "msgpack", rid), model, version, key, FMT_MSGPACK, 0,
                             body[offset:], t0)

    def reply(self, ex: Exchange, status: int, _hlen: int, payload: bytes) -> None:
        """Write one reply frame (:class:`router.lifecycle.Front`); out of order is fine, ids match them."""
        self.in_flight -= 1
        if self.transport is not None:
            # The version that answered; nil when none did (refused before reaching a worker).
            version = (ex.answered or None) if ex.counted is not None else None
            self._write(reply_frame(ex.tag, status, version,
                                    payload if status == 200 else payload.decode(errors="replace"),
                                    self.lifecycle.state.generation_item))
            if self._last is not None and not self.in_flight:
                self._close_with_last()
        self.lifecycle.written(ex, status, 0, payload)

    def overdue(self, now: float, t: Timeouts) -> str | None:
        """Why the sweep must close this connection now (:mod:`router.limits`), or None."""
        if self.transport is None:
            return None
        if self._write_paused_at and t.send and now - self._write_paused_at > t.send:
            return "send_timeout"
        if self.in_flight:
            self.last_frame = now  # idle time counts from the last answer, to the sweep's precision
            return None
        if t.msgpack_idle and now - self.last_frame > t.msgpack_idle:
            return "idle"
        return None

    def time_out(self, reason: str) -> None:
        """Close for ``reason``: nothing is in flight, so nothing is lost (a stalled reader is cut off)."""
        t = self.transport
        if t is not None:
            t.abort() if reason == "send_timeout" else t.close()

    def _write(self, frame: bytes) -> None:
        t = self.transport
        if t is None:
            return
        if self.cork.depth:  # more replies of the same worker read follow
            self.hold_frame(frame)
        else:
            t.write(frame)

    def _fatal(self, exc: FrameError) -> None:
        """A malformed frame: read no more, answer what is in flight, then one error reply and close.

        Only this connection closes; requests it sent before the bad frame still get their replies.
        """
        log.info("closing msgpack connection: %s", exc)
        t = self.transport
        if t is None:
            return
        if self._last is None:
            t.pause_reading()
            self._last = reply_frame(None, exc.status, None, str(exc), self.lifecycle.state.generation_item)
        if not self.in_flight:
            self._close_with_last()

    def _close_with_last(self) -> None:
        t = self.transport
        if t is None or self._last is None:
            return
        if self._held:  # replies to its earlier requests go first
            self.flush_held()
        t.write(self._last)
        t.close()
