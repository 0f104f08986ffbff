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
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import monotonic
from typing import TYPE_CHECKING

import msgpack

from .metrics import SHADOW_DROPPED, SHADOW_ERROR, SHADOW_OK, SHADOW_TIMEOUT
from .supervisor import CopyCall

if TYPE_CHECKING:
    from .metrics import Metrics
    from .pool import VersionPool

log = logging.getLogger("router.shadow")

_LOG_EVERY_S = 10.0  # one log line per shadow version per this many seconds of errors
# Results recorded per loop turn: a shadow answers a whole batch at once, and
# recording 32 results in one go would hold up the live requests behind them.
_RECORD_CHUNK = 8


class ShadowTarget:
    """The copies bound for one version of a model.

    Args:
        model: model name.
        pool: the version's replicas (its ``vc`` gives the queue bound, updated live).
        timeout: seconds a copy may take before it counts as ``timeout``.
        max_inflight: the most requests, live and copies, one worker link may hold.
        metrics: where results, latency, agreement and divergence go.
    """

    __slots__ = ("model", "pool", "version", "timeout", "max_inflight", "metrics", "outstanding", "last_error",
                 "_logged_at", "_counts", "_results", "_recording")

    def __init__(self, model: str, pool: VersionPool, timeout: float, max_inflight: int, metrics: Metrics) -> None:
        self.model = model
        self.pool = pool
        self.version = pool.version
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.outstanding = 0
        self.last_error = ""
        self._logged_at = 0.0
        self._counts = metrics.shadow_counts(model, pool.version)
        self._results: list[tuple[str, int, bytes, float]] = []
        self._recording = False
        metrics.shadow_queues[(model, pool.version)] = self

    def offer(self, protocol: str, fmt: int, header_len: int, body: bytes, reply_header_len: int, reply: bytes,
              now: float) -> bool:
        """Send one copy now, or drop it; never waits. Returns whether it was sent."""
        if self.outstanding >= self.pool.vc.shadow_queue:
            self._counts[SHADOW_DROPPED] += 1
            return False
        replica = self.pool.pick()
        link = replica.link if replica is not None else None
        if link is None or link.transport is None or len(link.pending) >= self.max_inflight:
            self._counts[SHADOW_DROPPED] += 1
            return False
        self.outstanding += 1

        def done(status: int, _hlen: int, payload: bytes) -> None:
            self.outstanding -= 1
            # Shadow latency counts from the write, not from the hold before it.
            self._results.append((protocol, status, payload, monotonic() - call.sent))
            if not self._recording:
                self._recording = True
                asyncio.get_running_loop().call_soon(self._record)

        call = CopyCall(done, now + self.timeout, now)
        link.send_shadow(fmt, header_len, body, reply_header_len, reply, call)
        return True

    def _record(self) -> None:
        results = self._results
        chunk = results[:_RECORD_CHUNK]
        del results[:_RECORD_CHUNK]
        try:
            for protocol, status, payload, seconds in chunk:
                self._result(protocol, status, payload, seconds)
        finally:
            if results:  # the rest after the loop has looked at the sockets again
                asyncio.get_running_loop().call_soon(self._record)
            else:
                self._recording = False

    def _result(self, protocol: str, status: int, payload: bytes, seconds: float) -> None:
        m = self.metrics
        m.observe(self.model, self.version, protocol, status, seconds, route="shadow")
        if status == 200:
            try:
                _rows, outputs = msgpack.unpackb(payload)
                for name, max_abs, max_rel, agree, rows in outputs:
                    m.observe_divergence(self.model, self.version, name, max_abs, max_rel, agree, rows)
            except (ValueError, TypeError) as exc:  # a worker bug; count it, never raise into the loop
                self._error(500, f"unreadable comparison from the shadow worker: {exc!r}".encode())
                return
            self._counts[SHADOW_OK] += 1
        elif status == 504:
            self._counts[SHADOW_TIMEOUT] += 1
        else:
            self._error(status, payload)

    def _error(self, status: int, payload: bytes) -> None:
        self._counts[SHADOW_ERROR] += 1
        self.last_error = f"{status}: {payload.decode(errors='replace')}"
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("shadow %s/%s: %s", self.model, self.version, self.last_error)
