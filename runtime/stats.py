"""The worker's own statistics: rows per forward, time queued, time computing, device memory.

Kept as plain histogram rows (:mod:`router.proto.stats`) and sent to the router in a small
periodic frame, at most once per ``INTERVAL_S`` and only after work was done: the router never
does anything per request for them, and an idle worker sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

import numpy as np

from router.proto import stats
from router.proto.stats import BATCH_BUCKETS, SECONDS_BUCKETS


class WorkerStats:
    """Histogram rows of one worker, counted from its start.

    Args:
        device_memory: reads the bytes the device holds for this process (CUDA), or None on the CPU.
    """

    __slots__ = ("batch", "queued", "compute", "device_memory", "dirty")

    def __init__(self, device_memory: Callable[[], int] | None = None) -> None:
        self.batch = stats.new_row(BATCH_BUCKETS)
        self.queued = stats.new_row(SECONDS_BUCKETS)
        self.compute = stats.new_row(SECONDS_BUCKETS)
        self.device_memory = device_memory
        #: Something was counted since the last report.
        self.dirty = False

    def forward(self, rows: int, seconds: float) -> None:
        """One forward of ``rows`` rows that took ``seconds``."""
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


def timed(forward: Callable[[Sequence[np.ndarray]], list[np.ndarray]], stats: WorkerStats
          ) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """``forward``, counting each call's rows (the first input's first dimension) and duration in ``stats``.
    A forward that raises is not counted."""
    observe = stats.forward

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        t0 = perf_counter()
        out = forward(inputs)
        observe(len(inputs[0]) if len(inputs) else 0, perf_counter() - t0)
        return out

    return run
