"""Shadow mode: copies of live requests to shadow versions, off the hot path.

A front hands a copy over only after the live reply is written to the caller.
The copy reuses the caller's body and the live reply as they are (no
re-encoding); the shadow worker runs its model, compares its outputs with the
live ones and answers with a few numbers (``runtime/compare.py``), which land
here as metrics. Nothing here can touch a live reply: a copy that cannot be
sent at once (queue full, no live worker, draining) is dropped and counted.

Each shadow version's queue is the number of its copies sent and not yet
answered, bounded by ``shadow_queue``: a slow shadow fills it and the excess
is dropped, never waited for.

Copies for one worker are held for ``server.shadow_flush_us`` (or until 32
wait) and written together (:class:`CopyBatch`): one write and one wake-up of
the shadow, and one answer back, for several copies instead of each, which is
most of what a copy costs the router.

A copy of a request sampled for the prediction log asks the shadow for its
outputs as well (``SHADOW_OUTPUTS``); its answer goes to the log beside the
live reply (:meth:`router.predlog.PredictionLog.shadow`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from .metrics import SHADOW_DROPPED, SHADOW_ERROR, SHADOW_OK, SHADOW_TIMEOUT
from .proto import link as frames
from .worker_link import Call, WorkerLink

if TYPE_CHECKING:
    from .metrics import Metrics
    from .predlog import Sampled

log = logging.getLogger("router.shadow")

_LOG_EVERY_S = 10.0  # one log line per shadow version per this many seconds of errors
# Results recorded per loop turn: a shadow answers a whole batch at once, and
# recording 32 results in one go would hold up the live requests behind them.
_RECORD_CHUNK = 8
#: Most copies held for one write.
_COPIES_PER_WRITE = 32


class Replicas(Protocol):
    """The shadow version's replicas, as this module uses them (:class:`router.routing.ReplicaSet`)."""

    version: str
    vc: Any

    def pick(self) -> Any: ...


class Copy(Call):
    """A shadow copy in flight: ``sent`` becomes the time it was actually written; ``sampled`` is the
    prediction log's record of the live request, when it was sampled."""

    __slots__ = ("target", "protocol", "sent", "sampled")

    def __init__(self, target: ShadowTarget, protocol: str, deadline: float, now: float,
                 sampled: Sampled | None = None) -> None:
        super().__init__(deadline)
        self.target = target
        self.protocol = protocol
        self.sent = now
        self.sampled = sampled

    def done(self, status: int, header_len: int, payload: bytes) -> None:
        self.target.answered(self, status, payload)


class CopyBatch:
    """The copies held for one worker link's next write.

    Args:
        link: the shadow worker's link; its ``pending`` holds each copy's call.
        delay: longest a copy is held to be written with others (seconds).
    """

    __slots__ = ("link", "delay", "_out", "_copies", "_timer")

    def __init__(self, link: WorkerLink, delay: float) -> None:
        self.link = link
        self.delay = delay
        self._out: list[bytes] = []
        self._copies: list[Copy] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, fmt: int, header_len: int, body: bytes, reply_header_len: int, reply: bytes, copy: Copy) -> None:
        """Hold one copy: the caller's body and the live reply, as they are (see :mod:`router.proto.link`)."""
        rid = self.link.register(copy)
        out = self._out
        out.append(frames.pack_shadow_head(rid, fmt, header_len, len(body), reply_header_len, len(reply)))
        out.append(body)
        out.append(reply)
        self._copies.append(copy)
        if len(self._copies) >= _COPIES_PER_WRITE:
            self.write()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.write)

    def write(self) -> None:
        """Write the copies held so far; each copy's latency counts from here."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        out, self._out = self._out, []
        copies, self._copies = self._copies, []
        t = self.link.transport
        if t is None or not out:
            return
        t.writelines(out)
        now = monotonic()
        for c in copies:
            c.sent = now

    def drop(self) -> None:
        """The link is lost: forget what is held (its calls are failed with the link's pending ones)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        self._copies.clear()


class ShadowTarget:
    """The copies bound for one version of a model.

    Args:
        model: model name.
        replicas: the version's replicas (their ``vc`` gives the queue bound, updated live).
        timeout: seconds a copy may take before it counts as ``timeout``.
        max_inflight: the most requests, live and copies, one worker link may hold.
        metrics: where results, latency, agreement and divergence go.
        flush_s: longest a copy is held to be written with others.
    """

    __slots__ = ("model", "replicas", "version", "timeout", "max_inflight", "metrics", "flush_s", "outstanding",
                 "last_error", "_logged_at", "_counts", "_results", "_recording")

    def __init__(self, model: str, replicas: Replicas, timeout: float, max_inflight: int, metrics: Metrics,
                 flush_s: float = 0.001) -> None:
        self.model = model
        self.replicas = replicas
        self.version = replicas.version
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.flush_s = flush_s
        self.outstanding = 0
        self.last_error = ""
        self._logged_at = 0.0
        self._counts = metrics.shadow_counts(model, replicas.version)
        self._results: list[tuple[str, int, bytes, float, Sampled | None]] = []
        self._recording = False

    def offer(self, protocol: str, fmt: int, header_len: int, body: bytes, reply_header_len: int, reply: bytes,
              now: float, sampled: Sampled | None = None) -> bool:
        """Send one copy now, or drop it; never waits. Returns whether it was sent."""
        if self.outstanding >= self.replicas.vc.shadow_queue:
            self._counts[SHADOW_DROPPED] += 1
            return False
        replica = self.replicas.pick()
        link = replica.link if replica is not None else None
        if link is None or link.transport is None or len(link.pending) >= self.max_inflight:
            self._counts[SHADOW_DROPPED] += 1
            return False
        self.outstanding += 1
        batch = link.copies
        if batch is None:
            batch = link.copies = CopyBatch(link, self.flush_s)
        if sampled is not None:
            fmt |= frames.SHADOW_OUTPUTS
        copy = Copy(self, protocol, now + self.timeout, now, sampled)
        batch.add(fmt, header_len, body, reply_header_len, reply, copy)
        return True

    def answered(self, copy: Copy, status: int, payload: bytes) -> None:
        """A copy's outcome: recorded a few per loop turn (see ``_RECORD_CHUNK``)."""
        self.outstanding -= 1
        # Shadow latency counts from the write, not from the hold before it.
        self._results.append((copy.protocol, status, payload, monotonic() - copy.sent, copy.sampled))
        if not self._recording:
            self._recording = True
            asyncio.get_running_loop().call_soon(self._record)

    def _record(self) -> None:
        results = self._results
        chunk = results[:_RECORD_CHUNK]
        del results[:_RECORD_CHUNK]
        try:
            for protocol, status, payload, seconds, sampled in chunk:
                self._result(protocol, status, payload, seconds, sampled)
        finally:
            if results:  # the rest after the loop has looked at the sockets again
                asyncio.get_running_loop().call_soon(self._record)
            else:
                self._recording = False

    def _result(self, protocol: str, status: int, payload: bytes, seconds: float,
                sampled: Sampled | None = None) -> None:
        m = self.metrics
        m.observe(self.model, self.version, protocol, status, seconds, route="shadow")
        if status == 200:
            try:
                # [rows, comparisons] (+ the outputs, as a msgpack reply, when the copy asked for them)
                answer = msgpack.unpackb(payload)
                for name, max_abs, max_rel, agree, rows in answer[1]:
                    m.observe_divergence(self.model, self.version, name, max_abs, max_rel, agree, rows)
                outputs = answer[2] if len(answer) > 2 else None
            except (ValueError, TypeError, IndexError) as exc:  # a worker bug; count it, never raise into the loop
                self._error(500, f"unreadable comparison from the shadow worker: {exc!r}".encode())
                return
            self._counts[SHADOW_OK] += 1
            if sampled is not None:
                sampled.log.shadow(sampled, self.version, status, seconds, outputs)
            return
        if status == 504:
            self._counts[SHADOW_TIMEOUT] += 1
        else:
            self._error(status, payload)
        if sampled is not None:
            sampled.log.shadow(sampled, self.version, status, seconds, payload)

    def _error(self, status: int, payload: bytes) -> None:
        self._counts[SHADOW_ERROR] += 1
        self.last_error = f"{status}: {payload.decode(errors='replace')}"
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("shadow %s/%s: %s", self.model, self.version, self.last_error)
