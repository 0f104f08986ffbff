"""The router's end of one worker socket: the hot I/O of the link (see :mod:`router.proto.link`).

A :class:`WorkerLink` writes request frames, matches reply frames to their
:class:`Call` by id (replies may come out of order), answers 504 for calls past
their deadline, and 503 for every call still pending when the worker goes away.
Starting, warming and restarting the process behind it is :mod:`router.replica`'s
job; batching shadow copies is :mod:`router.shadow`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgpack

from .cork import Cork, Holding
from .proto import link
from .proto.errors import FrameError, ModelLoadFailed
from .proto.framing import FrameScanner
from .proto.link import REFUSALS, STATUS_DRIFT, STATUS_HELLO, STATUS_REFUSED, STATUS_STATS

log = logging.getLogger("router.worker_link")

#: Called with (status, header_len, payload) when a request completes.
Done = Callable[[int, int, bytes], None]

_BIG = 65536  # payloads from this size are written after their head, not copied into one frame


class Call:
    """One request in flight on a link; :meth:`done` runs exactly once (reply, loss or deadline).

    ``deadline`` is on the ``time.monotonic()`` clock. Subclasses carry what
    their owner needs to finish the request (:class:`router.lifecycle.Exchange`,
    a shadow copy, a warm-up), so a request in flight is one object.
    """

    __slots__ = ("deadline",)

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def done(self, status: int, header_len: int, payload: bytes) -> None:
        raise NotImplementedError


class CallbackCall(Call):
    """A :class:`Call` that hands its outcome to a function (warm-ups, tests)."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Done, deadline: float) -> None:
        super().__init__(deadline)
        self._callback = callback

    def done(self, status: int, header_len: int, payload: bytes) -> None:
        self._callback(status, header_len, payload)


class WorkerLink(asyncio.Protocol, Holding):
    """One worker socket: sends requests, matches replies by id, expires deadlines.

    Args:
        name: the replica's name, for messages (``model/version#index``).
        max_frame: largest frame the worker may send.
        on_lost: called once with this link when the socket closes.
        cork: the router's write coalescing, shared by every link and the msgpack front.
        on_resume: called with this link when a worker marked :attr:`hung` answers again.
    """

    def __init__(self, name: str, max_frame: int, on_lost: Callable[[WorkerLink], None],
                 cork: Cork | None = None, on_resume: Callable[[WorkerLink], None] | None = None) -> None:
        self.name = name
        self.cork = cork if cork is not None else Cork()
        self._held: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        #: rid -> call, in insertion (so deadline) order.
        self.pending: dict[int, Call] = {}
        self.hello: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        #: The shadow copies held for this link's next write (:class:`router.shadow.CopyBatch`).
        self.copies: Any = None
        self.lost_reason = ""
        #: The deadline of the oldest call the worker has owed since it last answered anything
        #: (0: it owes nothing). Expiry leaves it: a worker that answers nothing stays suspect.
        #: The routing's sweep reads it to find hung workers; no clock is read per request for it.
        self.owed_from = 0.0
        #: The worker's last statistics and drift payloads (:mod:`router.proto.stats`), as they came: decoded
        #: when read (a scrape, the drift API).
        self.stats: bytes | None = None
        self.drift: bytes | None = None
        #: Set by the routing when the worker answered nothing for ``server.hang_timeout_s``.
        self.hung = False
        self.hung_since = 0.0
        self._scanner = FrameScanner(max_frame)
        self._next = 1
        self._on_lost = on_lost
        self._on_resume = on_resume

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            try:
                frames = self._scanner.feed(data)
            except FrameError as exc:
                self.cork.run(self._replies, exc.frames)  # the replies before the bad frame are good
                raise
            self.cork.run(self._replies, frames)  # a batch of replies: one write to each pipelined client
        except FrameError as exc:
            self._corrupt(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.copies is not None:
            self.copies.drop()  # their calls are pending: fail_all answers them
        reason = self.lost_reason or "worker exited"
        self.fail_all(503, f"{self.name}: {reason}")
        if not self.hello.done():
            self._not_ready(ModelLoadFailed(f"{self.name}: {reason} before it was ready", "exited"))
        self._on_lost(self)

    def _not_ready(self, exc: ModelLoadFailed) -> None:
        self.hello.set_exception(exc)
        self.hello.exception()  # retrieved: nothing may warn about it later

    def _refused(self, payload: bytes) -> None:
        """The worker refused its version (``STATUS_REFUSED``) and is exiting: its hello fails with the reason."""
        try:
            info = msgpack.unpackb(payload)
            reason, error = info["reason"], str(info["error"])
        except Exception:  # a worker bug; still a refusal
            reason, error = "load", f"unreadable refusal {bytes(payload[:200])!r}"
        if reason not in REFUSALS:  # label values come from the kernel's list, never from a process's say-so
            reason = "load"
        self._not_ready(ModelLoadFailed(f"{self.name}: worker refused the model before it was ready: {error}",
                                        reason))

    def _replies(self, frames: list[bytes]) -> None:
        pending = self.pending
        for body in frames:
            rid, status, hlen, payload = link.unpack(body)
            call = pending.pop(rid, None)
            if call is not None:
                call.done(status, hlen, payload)
            elif rid == 0 and status == STATUS_HELLO and not self.hello.done():
                self.hello.set_result(msgpack.unpackb(payload))
            elif rid == 0 and status == STATUS_STATS:
                self.stats = payload
            elif rid == 0 and status == STATUS_DRIFT:
                self.drift = payload
            elif rid == 0 and status == STATUS_REFUSED and not self.hello.done():
                self._refused(payload)
            # else: the reply of a request already answered 504: dropped.
        # It answered: it owes only what is still pending, from the oldest of those on.
        self.owed_from = next(iter(pending.values())).deadline if pending else 0.0
        if self.hung:
            self.hung = False
            if self._on_resume is not None:
                self._on_resume(self)

    def _corrupt(self, exc: FrameError) -> None:
        log.error("%s: corrupt frame from worker (%s); dropping the link", self.name, exc)
        self.lost_reason = f"corrupt frame from worker: {exc}"
        if self.transport is not None:
            self.transport.abort()

    # -- requests ------------------------------------------------------------------------------------------

    def send(self, kind: int, header_len: int, payload: bytes, call: Call) -> None:
        """Send one request; ``call.done`` runs exactly once, on reply, loss or deadline."""
        rid = self._next
        self._next = rid + 1 if rid < 0xFFFFFFFF else 1
        t = self.transport
        if t is None:
            call.done(503, 0, f"{self.name}: worker not connected".encode())
            return
        if not self.owed_from:
            self.owed_from = call.deadline
        self.pending[rid] = call
        if self.cork.depth:  # more requests of the same read follow: write them together
            if len(payload) < _BIG:
                self.hold_frame(link.pack(rid, kind, header_len, payload))
            else:
                self.hold_frame(link.pack_head(rid, kind, header_len, len(payload)))
                self.hold_frame(payload)
        elif len(payload) < _BIG:
            t.write(link.pack(rid, kind, header_len, payload))
        else:  # skip the copy of a large payload
            t.writelines((link.pack_head(rid, kind, header_len, len(payload)), payload))

    def register(self, call: Call) -> int:
        """File ``call`` under a fresh id whose frame the caller writes itself (shadow copies)."""
        rid = self._next
        self._next = rid + 1 if rid < 0xFFFFFFFF else 1
        if not self.owed_from:
            self.owed_from = call.deadline
        self.pending[rid] = call
        return rid

    def expire(self, now: float) -> int:
        """Answer 504 to every call past its deadline; returns how many.

        Calls are inserted in deadline order (one timeout per server), so only
        the head of the dict needs looking at.
        """
        pending = self.pending
        n = 0
        while pending:
            rid = next(iter(pending))
            call = pending[rid]
            if call.deadline > now:
                break
            del pending[rid]
            call.done(504, 0, b"deadline exceeded: no answer from the worker in time")
            n += 1
        return n

    def fail_all(self, status: int, reason: str) -> None:
        """Answer every pending call with ``status`` and ``reason``."""
        pending, self.pending = self.pending, {}
        self.owed_from = 0.0
        msg = reason.encode()
        for call in pending.values():
            call.done(status, 0, msg)
