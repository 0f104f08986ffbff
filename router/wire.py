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
from .proto.errors import FrameError, InferenceError, WorkerUnavailable
from .proto.framing import FrameScanner, pack_header, parse_request
from .proto.link import FMT_MSGPACK

if TYPE_CHECKING:
    from .pool import ModelRoute
    from .server import Server

log = logging.getLogger("router.wire")

_HIGH_WATER = 1 << 20  # pause reading while this much reply data waits to be sent


# One Packer for the process (the loop is single-threaded): packb() builds one per call.
_packb = msgpack.Packer().pack
#: (status, version) -> their msgpack bytes: a reply packs only its id anew.
_MIDDLES: dict[tuple[int, str | None], bytes] = {}


def reply_frame(rid: int | None, status: int, version: str | None, result: bytes | str) -> bytes:
    """A whole reply frame; ``result`` is a msgpack body already encoded (bytes) or an error message."""
    if isinstance(result, bytes):
        middle = _MIDDLES.get((status, version))
        if middle is None:
            middle = _packb(status) + _packb(version)
            if len(_MIDDLES) < 1024:  # versions come from the config: few
                _MIDDLES[(status, version)] = middle
        head = b"\x94" + _packb(rid) + middle
        return pack_header(len(head) + len(result)) + head + result
    body = msgpack.packb([rid, status, version, result])
    return pack_header(len(body)) + body


class WireProtocol(asyncio.Protocol, Holding):
    """One client connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pools = server.pools
        self.metrics = server.metrics
        self.loop = asyncio.get_running_loop()
        self.scanner = FrameScanner(server.config.server.max_body_bytes)
        self.transport: asyncio.Transport | None = None
        self.in_flight = 0
        self._paused = False
        self.cork = self.pools.cork
        self._held: list[bytes] = []
        self._last: bytes | None = None  # the error reply a malformed frame gets, once in-flight ones are answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        # The client reads slower than it sends: stop reading its requests.
        if self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused:
            self.transport.resume_reading()
            self._paused = False

    def data_received(self, data: bytes) -> None:
        if self._last is not None:
            return  # closing after a malformed frame
        try:
            frames = self.scanner.feed(data)
        except FrameError as exc:
            self._fatal(exc)
            return
        self.cork.run(self._requests, frames)  # many requests in one read: one write to each worker

    def _requests(self, frames: list[bytes]) -> None:
        for body in frames:
            try:
                rid, model, version, key, offset = parse_request(body)
            except FrameError as exc:
                self._fatal(exc)
                return
            self._dispatch(rid, model, version, key, body[offset:])

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
            self._last = reply_frame(None, exc.status, None, str(exc))
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

    def _dispatch(self, rid: int, model: str, version: str | None, key: str | bytes | None,
                  payload: bytes) -> None:
        t0 = monotonic()
        counts = self.metrics.in_flight
        ckey = (model, "msgpack")
        route: ModelRoute | None = None

        def done(status: int, _hlen: int, result: bytes) -> None:
            counts[ckey] -= 1
            self.in_flight -= 1
            if self.transport is not None:
                self._write(reply_frame(rid, status, answered, result if status == 200
                                        else result.decode(errors="replace")))
                if self._last is not None and not self.in_flight:
                    self._close_with_last()
            self.metrics.observe(model, answered or "", "msgpack", status, monotonic() - t0)
            r = route  # set before submit, so before any answer
            if status == 200 and r is not None and r.mirror is not None:  # after the reply is written
                r.mirror_copy(answered, key, "msgpack", FMT_MSGPACK, 0, payload, 0, result)

        try:
            if self.server.draining:
                raise WorkerUnavailable("server is shutting down")
            answered: str | None = version
            route = self.pools.route(model)
            counts[ckey] += 1
            self.in_flight += 1
            try:
                answered = self.pools.submit(route, version, key, FMT_MSGPACK, 0, payload, done, t0)
            except BaseException:
                counts[ckey] -= 1
                self.in_flight -= 1
                raise
        except InferenceError as exc:
            self._write(reply_frame(rid, exc.status, None, exc.message))
            if model in self.pools.models:  # unknown names must not mint label sets
                self.metrics.observe(model, version or "", "msgpack", exc.status, monotonic() - t0)
