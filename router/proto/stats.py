"""What a worker reports about itself in its periodic statistics frame (``STATUS_STATS``).

A worker sends, at most once per :data:`INTERVAL_S` and only after it did something, one link
frame with ``rid`` 0 and status ``STATUS_STATS`` whose payload is a msgpack map:

``batch``
    rows per forward: a cumulative histogram row over :data:`BATCH_BUCKETS` (one count per
    bucket, then the ``+Inf`` count, then the sum of rows);
``queued``
    seconds the oldest request of each batch waited between its arrival and the forward, a row
    over :data:`SECONDS_BUCKETS` (counts, ``+Inf``, sum);
``compute``
    seconds each forward took (the model alone: not decoding or encoding), the same shape;
``device_memory``
    bytes the CUDA caching allocator holds for this worker's tensors, or absent on the CPU.

With its report, at most every :data:`DRIFT_INTERVAL_S`, a worker that monitors drift also sends a
frame with status ``STATUS_DRIFT`` whose payload is the msgpack summary of ``runtime.drift``
(``DriftMonitor.summary``): reference and window sizes, and per input and output feature its PSI,
JS distance, KS statistic and flags.

The rows count from the worker's start: a restarted worker starts again from zero, which a
Prometheus counter reading takes as a reset. The router keeps the last payload as it came and
decodes it only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import msgpack

#: How often, at most, a busy worker reports.
INTERVAL_S = 1.0
#: How often, at most, a worker sends its drift summary (``STATUS_DRIFT``, ``runtime.drift``).
DRIFT_INTERVAL_S = 5.0
#: Rows per forward (the same rows as the router's histograms: a count per bucket, +Inf, the sum).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Seconds queued or computing: 10 us .. 10 s.
SECONDS_BUCKETS = (
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
)


def new_row(buckets: tuple[float, ...]) -> list[Any]:
    """A histogram row over ``buckets``: a count per bucket, the ``+Inf`` count, the sum."""
    return [0] * (len(buckets) + 1) + [0]


def observe(row: list[Any], buckets: tuple[float, ...], value: float) -> None:
    """Count ``value`` in its bucket (non-cumulative; :func:`cumulative` adds them up)."""
    row[bisect_left(buckets, value)] += 1
    row[-1] += value


def pack(batch: list[Any], queued: list[Any], compute: list[Any], device_memory: int | None) -> bytes:
    """The payload of a statistics frame."""
    d: dict[str, Any] = {"batch": batch, "queued": queued, "compute": compute}
    if device_memory is not None:
        d["device_memory"] = device_memory
    return msgpack.packb(d)


def unpack(payload: bytes) -> dict[str, Any] | None:
    """A statistics payload, or None when it is not one (a worker bug must not break a scrape)."""
    try:
        d = msgpack.unpackb(payload)
    except Exception:
        return None
    if not isinstance(d, dict):
        return None
    for key, buckets in (("batch", BATCH_BUCKETS), ("queued", SECONDS_BUCKETS), ("compute", SECONDS_BUCKETS)):
        row = d.get(key)
        if not (isinstance(row, list) and len(row) == len(buckets) + 2
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in row)):
            return None
    mem = d.get("device_memory")
    if mem is not None and not (isinstance(mem, int) and not isinstance(mem, bool)):
        return None
    return d


def unpack_drift(payload: bytes) -> dict[str, Any] | None:
    """A drift frame's summary (``STATUS_DRIFT``), or None when it is not one."""
    try:
        d = msgpack.unpackb(payload)
    except Exception:
        return None
    if not (isinstance(d, dict) and isinstance(d.get("inputs"), dict) and isinstance(d.get("outputs"), dict)):
        return None
    return d
