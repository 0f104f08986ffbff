"""Recent history of the series people look at, kept in memory: no Prometheus needed to look back.

Every ``server.history_interval_s`` (default 10 s) a timer reads the router's own counters (the
request histograms, the shadow comparisons, the workers' ``/proc`` readings) and appends one point
per model version: request rate, error rate, p50 and p99 latency, traffic share, shadow
agreement, worker CPU and memory. Each series is a ring of ``history_s / history_interval_s``
floats (default 6 h at 10 s: 2,160 points, 17 KB a series), so memory is bounded whatever runs.
Nothing here runs per request; Prometheus stays the long-term store.

Rates and quantiles are over the interval that ends at the point (the differences of cumulative
counters), as Prometheus' ``rate`` and ``histogram_quantile`` would compute them.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Callable, Iterable
from typing import Any

from .metrics import DIVERGENCE_BUCKETS, LATENCY_BUCKETS, Metrics, proc_usage

#: The series of each version (their meanings: docs/monitoring.md, "History in the daemon").
SERIES = ("rate", "error_rate", "p50", "p99", "share", "agreement", "divergence", "cpu", "memory", "drift_psi",
          "drifting")
#: Not a number per point but one series per drift feature: ``{"t", "inputs": {feature: [...]}, "outputs"}``.
FEATURES = "feature_psi"
ALL_SERIES = (*SERIES, FEATURES)
NAN = float("nan")


class Ring:
    """The last ``size`` points of a set of series, with their times: fixed memory."""

    __slots__ = ("size", "times", "values", "next", "count")

    def __init__(self, size: int, names: Iterable[str]) -> None:
        self.size = size
        self.times = array("d", bytes(8 * size))
        self.values = {name: array("d", bytes(8 * size)) for name in names}
        self.next = 0
        self.count = 0

    def append(self, t: float, point: dict[str, float]) -> None:
        i = self.next
        self.times[i] = t
        for name, values in self.values.items():
            values[i] = point.get(name, NAN)
        self.next = (i + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def last(self) -> float:
        """The time of the newest point (0 when there is none)."""
        return self.times[(self.next - 1) % self.size] if self.count else 0.0

    def since(self, t0: float, names: Iterable[str]) -> dict[str, list[float | None]]:
        """``{"t": [...], name: [...]}`` of the points after ``t0``, oldest first; no value is None."""
        start = (self.next - self.count) % self.size
        idx = [(start + k) % self.size for k in range(self.count)]
        idx = [i for i in idx if self.times[i] > t0]
        out: dict[str, list[float | None]] = {"t": [self.times[i] for i in idx]}
        for name in names:
            values = self.values[name]
            out[name] = [None if math.isnan(values[i]) else values[i] for i in idx]
        return out


def quantile(q: float, counts: list[int], buckets: tuple[float, ...] = LATENCY_BUCKETS) -> float:
    """The ``q`` quantile of per-bucket counts over ``buckets`` (+Inf last), interpolated linearly inside
    its bucket as ``histogram_quantile`` does; NaN with no observation."""
    total = sum(counts)
    if total <= 0:
        return NAN
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(buckets):  # the +Inf bucket: the largest finite bound, as Prometheus says
                return buckets[-1]
            lo = buckets[i - 1] if i else 0.0
            return lo + (buckets[i] - lo) * (rank - seen) / n
        seen += n
    return buckets[-1]


class History:
    """Per model version, the rings of :data:`SERIES`; sampled by a timer (:meth:`start`).

    Args:
        metrics: the counters read at each sample.
        workers: yields ``(replica, pool color)`` of every worker (as :attr:`Metrics.workers`).
        active: model -> the version names of its active pool, and which of them are shadows.
        interval_s, keep_s: the resolution, and how far back the rings reach.
        drift: ``(model, version)`` -> the version's merged drift summary (:mod:`router.drift`), or None.
    """

    def __init__(self, metrics: Metrics, workers: Callable[[], Iterable[tuple[Any, str]]],
                 active: Callable[[], dict[str, tuple[list[str], set[str]]]], interval_s: float,
                 keep_s: float, drift: Callable[[str, str], dict[str, Any] | None] | None = None) -> None:
        self.metrics = metrics
        self.workers = workers
        self.active = active
        self.drift = drift
        self.interval_s = interval_s
        self.size = max(1, int(keep_s // interval_s))
        self.rings: dict[tuple[str, str], Ring] = {}
        #: (model, version) -> (input feature names, output feature names, their PSI rings).
        self.features: dict[tuple[str, str], tuple[list[str], list[str], Ring]] = {}
        #: (model, version, io, feature) or (model, version) -> when it was first seen drifting, while it is.
        self.drifting_since: dict[tuple[str, ...], float] = {}
        self._last: dict[str, Any] | None = None
        self._last_t = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Take a first reading now, then a point every ``interval_s``."""
        self.sample(time.time())
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.sample(time.time())
        self._schedule()

    def _read(self) -> dict[str, Any]:
        """The cumulative counters a point is the difference of."""
        requests: dict[tuple[str, str, str], list] = {}
        for (model, version, route, _, status), row in self.metrics.request_series.items():
            if not version:  # requests naming no version that exists
                continue
            acc = requests.setdefault((model, version, route), [[0] * (len(LATENCY_BUCKETS) + 1), 0, 0])
            counts = acc[0]
            for i, n in enumerate(row[:-1]):
                counts[i] += n
            n = sum(row[:-1])
            acc[1] += n
            if status >= 500:
                acc[2] += n
        agreement: dict[tuple[str, str], list[int]] = {}
        divergence: dict[tuple[str, str], list[int]] = {}
        for (model, version, _), row in self.metrics.divergence_series.items():
            a = agreement.setdefault((model, version), [0, 0])
            a[0] += row[2]
            a[1] += row[3]
            d = divergence.setdefault((model, version), [0] * (len(DIVERGENCE_BUCKETS) + 1))
            for i, n in enumerate(row[1][:-1]):  # the relative differences' buckets, all outputs together
                d[i] += n
        workers: dict[tuple[str, str], list[float]] = {}
        for r, _ in self.workers():
            pid = r.pid
            usage = proc_usage(pid) if pid is not None and r.live else None
            if usage is not None:
                # Keyed by pid as well: a restarted worker's CPU time starts again from zero.
                w = workers.setdefault((r.model, r.vc.version), [])
                w.append((pid, usage[0], usage[1]))  # type: ignore[arg-type]
        return {"requests": requests, "agreement": agreement, "divergence": divergence, "workers": workers}

    def sample(self, now: float) -> None:
        """Append one point per active model version: the differences since the last reading over its time."""
        reading = self._read()
        last, dt = self._last, now - self._last_t
        self._last, self._last_t = reading, now
        if last is None or dt <= 0:
            return
        active = self.active()
        for model, (versions, shadows) in active.items():
            model_total = sum(reading["requests"].get((model, v, "live"), [0, 0])[1]
                              - last["requests"].get((model, v, "live"), [0, 0])[1] for v in versions)
            for version in versions:
                key = (model, version)
                point = self._point(reading, last, key, dt, model_total, version in shadows)
                summary = self.drift(model, version) if self.drift is not None else None
                if summary is not None:
                    psis = [f["psi"] for f in summary["inputs"]["features"].values() if f["psi"] is not None]
                    point["drift_psi"] = max(psis) if psis else NAN
                    point["drifting"] = 1.0 if summary["drifting"] else 0.0
                    self._features(now, key, summary)
                ring = self.rings.get(key)
                if ring is None:
                    ring = self.rings[key] = Ring(self.size, SERIES)
                ring.append(now, point)
        # A version out of every active set keeps its history until its last point is as old as the rings reach.
        horizon = now - self.size * self.interval_s
        for key in [k for k, ring in self.rings.items()
                    if k[1] not in active.get(k[0], ((), ()))[0] and ring.last() < horizon]:
            del self.rings[key]
            self.features.pop(key, None)

    def _features(self, now: float, key: tuple[str, str], summary: dict[str, Any]) -> None:
        """Each feature's PSI at ``now``, and since when what drifts has drifted."""
        ins, outs = summary["inputs"]["features"], summary["outputs"]["features"]
        entry = self.features.get(key)
        if entry is None or entry[0] != list(ins) or entry[1] != list(outs):  # first summary, or new features
            names = [f"inputs/{n}" for n in ins] + [f"outputs/{n}" for n in outs]
            entry = self.features[key] = (list(ins), list(outs), Ring(self.size, names))
        entry[2].append(now, {f"{io}/{n}": f["psi"] if f["psi"] is not None else NAN
                              for io, group in (("inputs", ins), ("outputs", outs)) for n, f in group.items()})
        since = self.drifting_since
        flags = [((*key, io, n), f["drifting"]) for io, group in (("inputs", ins), ("outputs", outs))
                 for n, f in group.items()]
        for k, drifting in [*flags, (key, summary["drifting"])]:
            if drifting:
                since.setdefault(k, now)
            else:
                since.pop(k, None)

    @staticmethod
    def _point(reading: dict[str, Any], last: dict[str, Any], key: tuple[str, str], dt: float,
               model_total: int, shadow: bool) -> dict[str, float]:
        empty = [[0] * (len(LATENCY_BUCKETS) + 1), 0, 0]
        # A shadow version answers mirrored copies: its rate and latency are those of its copies.
        rkey = (*key, "shadow" if shadow else "live")
        now_r, then_r = reading["requests"].get(rkey, empty), last["requests"].get(rkey, empty)
        counts = [a - b for a, b in zip(now_r[0], then_r[0], strict=True)]
        n, errors = now_r[1] - then_r[1], now_r[2] - then_r[2]
        point = {"rate": n / dt, "error_rate": errors / n if n else NAN,
                 "p50": quantile(0.5, counts), "p99": quantile(0.99, counts),
                 "share": n / model_total if model_total and not shadow else NAN}
        a_now, a_then = reading["agreement"].get(key), last["agreement"].get(key, [0, 0])
        if a_now is not None:
            agree, disagree = a_now[0] - a_then[0], a_now[1] - a_then[1]
            point["agreement"] = agree / (agree + disagree) if agree + disagree else NAN
        d_now = reading["divergence"].get(key)
        if d_now is not None:
            d_then = last["divergence"].get(key, [0] * len(d_now))
            point["divergence"] = quantile(0.5, [a - b for a, b in zip(d_now, d_then, strict=True)],
                                           DIVERGENCE_BUCKETS)
        before = {pid: cpu for pid, cpu, _ in last["workers"].get(key, [])}
        procs = reading["workers"].get(key, [])
        if procs:
            # A worker that started within the interval counts from zero.
            point["cpu"] = sum(cpu - before.get(pid, 0.0) for pid, cpu, _ in procs) / dt
            point["memory"] = float(sum(rss for _, _, rss in procs))
        return point

    def query(self, model: str, names: list[str], since: float) -> dict[str, Any]:
        """The model's versions' points after ``since`` (unix seconds) for the series ``names`` (of
        :data:`ALL_SERIES`)."""
        plain = [n for n in names if n != FEATURES]
        versions: dict[str, dict[str, Any]] = {}
        for (m, v), ring in sorted(self.rings.items()):
            if m != model:
                continue
            out: dict[str, Any] = ring.since(since, plain)
            if FEATURES in names:
                out[FEATURES] = self._feature_points((m, v), since)
            versions[v] = out
        return {"model": model, "interval_s": self.interval_s, "series": names, "versions": versions}

    def _feature_points(self, key: tuple[str, str], since: float) -> dict[str, Any]:
        entry = self.features.get(key)
        if entry is None:
            return {"t": [], "inputs": {}, "outputs": {}}
        ins, outs, ring = entry
        points = ring.since(since, ring.values)
        return {"t": points["t"], "inputs": {n: points[f"inputs/{n}"] for n in ins},
                "outputs": {n: points[f"outputs/{n}"] for n in outs}}
