"""The worker's own statistics: rows per forward, time queued, time computing, device memory.

Kept as plain histogram rows (:mod:`router.proto.stats`) and sent to the router in a small
periodic frame, at most once per ``INTERVAL_S`` and only after work was done: the router never
does anything per request for them, and an idle worker sends nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from time import monotonic, perf_counter

import msgpack
import numpy as np

from router.proto import stats
from router.proto.stats import BATCH_BUCKETS, SECONDS_BUCKETS

from .drift import DriftMonitor


class WorkerStats:
    """Histogram rows of one worker, counted from its start.

    Args:
        device_memory: reads the bytes the device holds for this process (CUDA), or None on the CPU.
    """

    __slots__ = ("batch", "queued", "compute", "device_memory", "drift", "dirty", "_drift_due", "drift_new")

    def __init__(self, device_memory: Callable[[], int] | None = None, drift: DriftMonitor | None = None) -> None:
        self.batch = stats.new_row(BATCH_BUCKETS)
        self.queued = stats.new_row(SECONDS_BUCKETS)
        self.compute = stats.new_row(SECONDS_BUCKETS)
        self.device_memory = device_memory
        #: The version's drift monitor: fed each forward's inputs and outputs, summarised in the report.
        self.drift = drift
        #: Something was counted since the last report.
        self.dirty = False
        self._drift_due = 0.0
        #: The monitor saw rows its last summary did not.
        self.drift_new = False

    def forward(self, rows: int, seconds: float) -> None:
        """One forward of ``rows`` rows that took ``seconds`` (:func:`timed` counts the same, written out)."""
        stats.observe(self.batch, BATCH_BUCKETS, rows)
        stats.observe(self.compute, SECONDS_BUCKETS, seconds)
        self.dirty = True

    def waited(self, seconds: float) -> None:
        """A batch's oldest request waited ``seconds`` before its forward."""
        stats.observe(self.queued, SECONDS_BUCKETS, seconds)

    def payload(self) -> bytes:
        """The statistics frame's payload; clears ``dirty``."""
        self.dirty = False
        mem = self.device_memory() if self.device_memory is not None else None
        return stats.pack(self.batch, self.queued, self.compute, mem)

    def drift_payload(self) -> bytes | None:
        """The drift frame's payload when the monitor saw new rows and one is due (at most every
        ``DRIFT_INTERVAL_S``: a summary takes a few hundred microseconds for a few features), else None.
        New rows whose summary is not due yet keep ``dirty`` set, so that a worker gone idle still sends it."""
        if self.drift is None or not self.drift_new:
            return None
        now = monotonic()
        if now < self._drift_due:
            self.dirty = True
            return None
        self._drift_due = now + stats.DRIFT_INTERVAL_S
        self.drift_new = False
        return msgpack.packb(self.drift.summary())


def timed(forward: Callable[[Sequence[np.ndarray]], list[np.ndarray]], stats: WorkerStats
          ) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """``forward``, counting each call's rows (the first input's first dimension) and duration in ``stats``,
    and handing its inputs and outputs to the drift monitor. A forward that raises is not counted.

    It runs once per forward, the express path's included: the counting is written out here, with local
    names, rather than as calls (about 0.5 us instead of 2)."""
    batch, compute = stats.batch, stats.compute
    drift = stats.drift
    observe = drift.observe if drift is not None else None

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        t0 = perf_counter()
        out = forward(inputs)
        seconds = perf_counter() - t0
        rows = len(inputs[0]) if len(inputs) else 0
        batch[bisect_left(BATCH_BUCKETS, rows)] += 1
        batch[-1] += rows
        compute[bisect_left(SECONDS_BUCKETS, seconds)] += 1
        compute[-1] += seconds
        stats.dirty = True
        if observe is not None:
            observe(inputs, out)
            stats.drift_new = True
        return out

    return run
