"""Every Prometheus metric of the router, built against one registry.

Workers report numbers in frames; the router owns every metric (no
multiprocess mode). Label children are cached per (model, version, protocol,
status) so the hot path does one dict lookup, not a label resolution.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import drift
from .proto import stats

#: 25 us .. 10 s: fine enough for a router that adds tens of microseconds.
LATENCY_BUCKETS = (
    25e-6, 50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 10e-3, 15e-3, 25e-3, 50e-3, 75e-3,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Shadow divergence (max abs / max rel difference per request): 0 is its own
#: bucket (an identical model), then decades up to gross disagreement.
_LE = [*(floatToGoString(b) for b in LATENCY_BUCKETS), "+Inf"]
DIVERGENCE_BUCKETS = (0.0, 1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 10.0)
_DIVERGENCE_LE = [*(floatToGoString(b) for b in DIVERGENCE_BUCKETS), "+Inf"]
#: Shadow copy results, in the order of :meth:`Metrics.shadow_counts` rows.
SHADOW_RESULTS = ("ok", "error", "dropped", "timeout")
SHADOW_OK, SHADOW_ERROR, SHADOW_DROPPED, SHADOW_TIMEOUT = range(4)


class Metrics:
    """The router's metrics.

    Args:
        registry: where to register; tests pass a fresh one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        #: (model, version, route, protocol, status) -> per-bucket counts, then the sum of
        #: seconds: the request histogram and counter, kept as plain lists (an observation is
        #: a bisect and two additions, not prometheus_client's locked objects) and turned
        #: into ``router_request_duration_seconds`` and ``router_requests_total`` at scrape time.
        self.request_series: dict[tuple[str, str, str, str, int], list] = {}
        r.register(_Requests(self.request_series))
        #: (model, protocol) -> requests received and not yet answered. Plain ints
        #: bumped by the fronts, read only at scrape time: no lock per request.
        self.in_flight: defaultdict[tuple[str, str], int] = defaultdict(int)
        r.register(_InFlight(self.in_flight))
        self.worker_up = Gauge(
            "router_worker_up",
            "1 when the worker process is live and serving.",
            ["model", "version", "replica", "pool"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "router_worker_restarts",
            "Worker processes restarted after they died.",
            ["model", "version", "replica", "pool"],
            registry=r,
        )
        self.worker_hangs = Counter(
            "router_worker_hangs",
            "Workers taken out of routing because they owed answers and gave none for server.hang_timeout_s.",
            ["model", "version", "replica", "pool"],
            registry=r,
        )
        self.load_failures = Counter(
            "router_model_load_failures",
            "Workers that did not become live, by reason: the worker refused its version (integrity: the "
            "model file's sha256 is not meta.json's; identity: meta.json names another model or version; "
            "meta: invalid meta.json or files; load: loading raised), or it exited, timed out or failed "
            "its warm-up first (exited, timeout, warmup).",
            ["model", "version", "reason"],
            registry=r,
        )
        self.active_pool = Gauge("router_active_pool", "1 for the model's active pool (blue or green).",
                                 ["model", "pool"], registry=r)
        self.previous_warm = Gauge("router_previous_pool_warm",
                                   "1 while the model's previous pool is kept warm for a rollback.", ["model"],
                                   registry=r)
        self.deploys = Counter("router_deploys", "Blue-green deploys by result (ok, failed).", ["model", "result"],
                               registry=r)
        self.store_bytes = Gauge("router_store_bytes",
                                 "Bytes the model's stored versions take in the model store (every version, "
                                 "serving or not).", ["model"], registry=r)
        self.store_versions = Gauge("router_store_versions", "Versions of the model in the model store.",
                                    ["model"], registry=r)
        self.swap_seconds = Gauge("router_pool_swap_seconds",
                                  "Duration of the model's last pool swap (standby ready -> active).", ["model"],
                                  registry=r)
        self.reloads = Counter(
            "router_reloads",
            "Config reloads by result: ok (applied), invalid (the file did not validate), refused (it changes "
            "what needs a deploy or a restart). Nothing changes unless ok.",
            ["result"],
            registry=r,
        )
        #: (model, version) -> copies by result, in ``SHADOW_RESULTS`` order: plain ints
        #: (``router_shadow_requests_total`` at scrape time), no lock per copy.
        self.shadow_results: dict[tuple[str, str], list[int]] = {}
        #: (model, version, output) -> [abs buckets + sum, rel buckets + sum, agree, disagree]:
        #: ``router_shadow_divergence`` and ``router_shadow_agreement_total`` at scrape time.
        #: An observation is two bisects and a few additions (prometheus_client's locked
        #: Histogram and Counter took 3.4 us per compared output).
        self.divergence_series: dict[tuple[str, str, str], list] = {}
        r.register(_Shadow(self.shadow_results, self.divergence_series))
        #: Yields the shadow targets to report (``model``, ``version``, ``outstanding``): those of
        #: the active pools only, so a failed deploy or a rollback leaves no stale series.
        self.shadow_queues: Callable[[], Iterable[Any]] = tuple
        r.register(_ShadowQueues(self))
        #: Yields ``(replica, pool color)`` for every worker of every pool: read at scrape time for
        #: the worker resource series (``/proc`` and the workers' statistics frames).
        self.workers: Callable[[], Iterable[tuple[Any, str]]] = tuple
        r.register(_Workers(self))
        #: Yields ``(model, version, replicas)`` of every active pool's versions: their drift at scrape time.
        self.drift_versions: Callable[[], Iterable[tuple[str, str, Any]]] = tuple
        r.register(_Drift(self))
        #: The prediction log (:class:`router.predlog.PredictionLog`): its numbers at scrape time.
        self.predlog: Any = None
        r.register(_Predlog(self))

    def register_model(self, model: str) -> None:
        """Create the model's in-flight gauges and the label set of requests naming what it does not have.

        A request for an unknown version is recorded as version ``""``: made here, when
        the model registers, so no request, whatever it names, ever adds a series.
        """
        for protocol in ("http", "msgpack"):
            self.request_series.setdefault((model, "", "live", protocol, 404), _new_row())
            self.in_flight[(model, protocol)] += 0

    def observe(self, model: str, version: str, protocol: str, status: int, seconds: float,
                route: str = "live") -> None:
        """Record one answered request."""
        key = (model, version, route, protocol, status)
        row = self.request_series.get(key)
        if row is None:
            row = self.request_series[key] = _new_row()
        row[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def shadow_counts(self, model: str, version: str) -> list[int]:
        """The result counts of one shadow version (index with ``SHADOW_RESULTS``); every result shows from now on."""
        return self.shadow_results.setdefault((model, version), [0] * len(SHADOW_RESULTS))

    def observe_divergence(self, model: str, version: str, output: str, max_abs: float, max_rel: float,
                           agree: int, rows: int) -> None:
        """Record one shadow comparison of one output (``agree``/``rows`` are -1 when not a classifier)."""
        key = (model, version, output)
        row = self.divergence_series.get(key)
        if row is None:
            n = len(DIVERGENCE_BUCKETS) + 1
            row = self.divergence_series[key] = [[0] * n + [0.0], [0] * n + [0.0], 0, 0]
        # compare.py reports a NaN difference as inf: every value has its bucket.
        a = row[0]
        a[bisect_left(DIVERGENCE_BUCKETS, max_abs)] += 1
        a[-1] += max_abs
        r = row[1]
        r[bisect_left(DIVERGENCE_BUCKETS, max_rel)] += 1
        r[-1] += max_rel
        if rows > 0:
            row[2] += agree
            row[3] += rows - agree


def _new_row() -> list:
    return [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]


class _ShadowQueues(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("router_shadow_queue", "Shadow copies sent and not yet answered (bounded by "
                              "shadow_queue; beyond it copies are dropped).", labels=["model", "version"])
        for t in sorted(self._metrics.shadow_queues(), key=lambda t: (t.model, t.version)):
            g.add_metric([t.model, t.version], t.outstanding)
        yield g


def _cumulative(row: list, le: list[str]) -> tuple[list[tuple[str, float]], float]:
    """Per-bucket counts (then the sum) as Prometheus' cumulative buckets, and the count."""
    buckets = []
    total = 0
    for bound, n in zip(le, row, strict=False):
        total += n
        buckets.append((bound, total))
    return buckets, total


class _Shadow(Collector):
    def __init__(self, results: dict[tuple[str, str], list[int]], divergence: dict[tuple[str, str, str], list]) -> None:
        self._results = results
        self._divergence = divergence

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        c = CounterMetricFamily("router_shadow_requests", "Shadow copies by result: ok (compared), error, dropped "
                                "(queue full or no live worker), timeout.", labels=["model", "version", "result"])
        for (model, version), counts in sorted(self._results.items()):
            for result, n in zip(SHADOW_RESULTS, counts, strict=True):
                c.add_metric([model, version, result], n)
        yield c
        a = CounterMetricFamily("router_shadow_agreement", "Rows whose arg-max (predicted class) the shadow version "
                                "agrees or disagrees on with the live one.",
                                labels=["model", "version", "output", "result"])
        h = HistogramMetricFamily("router_shadow_divergence", "Per shadow copy and output, the largest difference "
                                  "from the live output: measure=abs is |s - l|, measure=rel is |s - l| / "
                                  "max(|s|, |l|).", labels=["model", "version", "output", "measure"])
        for (model, version, output), row in sorted(self._divergence.items()):
            a.add_metric([model, version, output, "agree"], row[2])
            a.add_metric([model, version, output, "disagree"], row[3])
            for measure, series in (("abs", row[0]), ("rel", row[1])):
                buckets, _ = _cumulative(series, _DIVERGENCE_LE)
                h.add_metric([model, version, output, measure], buckets, series[-1])
        yield a
        yield h


class _Requests(Collector):
    def __init__(self, series: dict[tuple[str, str, str, str, int], list]) -> None:
        self._series = series

    def collect(self) -> Iterator[HistogramMetricFamily | CounterMetricFamily]:
        labels = ["model", "version", "route", "protocol", "status"]
        h = HistogramMetricFamily("router_request_duration_seconds",
                                  "Time from request received to reply handed to the transport.", labels=labels)
        c = CounterMetricFamily("router_requests", "Requests answered, by outcome.", labels=labels)
        for (model, version, route, protocol, status), row in sorted(self._series.items()):
            values = [model, version, route, protocol, str(status)]
            buckets, total = _cumulative(row, _LE)
            h.add_metric(values, buckets, row[-1])
            c.add_metric(values, total)
        yield h
        yield c


class _InFlight(Collector):
    def __init__(self, counts: dict[tuple[str, str], int]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("router_requests_in_flight", "Requests received and not yet answered.",
                              labels=["model", "protocol"])
        for (model, protocol), n in sorted(self._counts.items()):
            g.add_metric([model, protocol], n)
        yield g


_BATCH_LE = [*(floatToGoString(b) for b in stats.BATCH_BUCKETS), "+Inf"]
_SECONDS_LE = [*(floatToGoString(b) for b in stats.SECONDS_BUCKETS), "+Inf"]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident bytes of a process, from ``/proc``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(statm.split()[1]) * _PAGE


class _Workers(Collector):
    """Per worker (model, version, replica, pool): CPU seconds and resident memory from ``/proc``, requests
    in flight from its link, and the histograms and device memory of its last statistics frame. Nothing
    of it is counted per request in the router."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        labels = ["model", "version", "replica", "pool"]
        cpu = CounterMetricFamily("router_worker_cpu_seconds", "CPU time (user + system) of the worker process.",
                                  labels=labels)
        rss = GaugeMetricFamily("router_worker_resident_memory_bytes", "Resident memory of the worker process.",
                                labels=labels)
        depth = GaugeMetricFamily("router_worker_queue_depth", "Requests sent to the worker and not answered yet "
                                  "(queued in it, or computing).", labels=labels)
        device = GaugeMetricFamily("router_worker_device_memory_bytes", "Bytes the CUDA caching allocator holds "
                                   "for the worker (CUDA workers only).", labels=labels)
        batch = HistogramMetricFamily("router_worker_batch_size", "Rows per forward.", labels=labels)
        queued = HistogramMetricFamily("router_worker_queue_seconds", "How long a batch waited in the worker before "
                                       "its forward: from the read that brought its first request, or from the end "
                                       "of the previous batch.", labels=labels)
        compute = HistogramMetricFamily("router_worker_compute_seconds", "Duration of each forward (the model "
                                        "alone).", labels=labels)
        for r, color in sorted(self._metrics.workers(), key=lambda w: (w[0].model, w[0].vc.version, w[0].index)):
            values = [r.model, r.vc.version, str(r.index), color]
            pid = r.pid
            usage = proc_usage(pid) if pid is not None and r.live else None
            if usage is not None:
                cpu.add_metric(values, usage[0])
                rss.add_metric(values, usage[1])
            depth.add_metric(values, r.outstanding)
            link = getattr(r, "link", None)
            report = stats.unpack(link.stats) if link is not None and link.stats is not None else None
            if report is None:
                continue
            for family, key, le in ((batch, "batch", _BATCH_LE), (queued, "queued", _SECONDS_LE),
                                    (compute, "compute", _SECONDS_LE)):
                buckets, _ = _cumulative(report[key], le)
                family.add_metric(values, buckets, report[key][-1])
            if "device_memory" in report:
                device.add_metric(values, report["device_memory"])
        yield from (cpu, rss, depth, device, batch, queued, compute)


class _Drift(Collector):
    """Per active model version, its drift merged over its replicas (:mod:`router.drift`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stat = GaugeMetricFamily("router_drift_statistic", "Drift of one input or output column (feature) from the "
                                 "version's reference: statistic=psi (population stability index), js "
                                 "(Jensen-Shannon distance, base 2), ks (two-sample Kolmogorov-Smirnov, on fine "
                                 "bins).", labels=["model", "version", "io", "feature", "statistic"])
        flag = GaugeMetricFamily("router_drift_drifting", "1 when the feature's drift is over a [models.drift] "
                                 "threshold.", labels=["model", "version", "io", "feature"])
        version_flag = GaugeMetricFamily("router_drift_version_drifting", "1 when any feature of the version is "
                                         "drifting.", labels=["model", "version"])
        window = GaugeMetricFamily("router_drift_window_rows", "Rows in the sliding windows compared with the "
                                   "reference (all replicas).", labels=["model", "version", "io"])
        reference = GaugeMetricFamily("router_drift_reference_rows", "Rows of the reference (0 while the first "
                                      "live rows are being collected).", labels=["model", "version", "io"])
        for model, version, replicas in sorted(self._metrics.drift_versions(), key=lambda x: (x[0], x[1])):
            merged = drift.of_replicas(replicas)
            if merged is None:
                continue
            version_flag.add_metric([model, version], 1 if merged["drifting"] else 0)
            for io, group in (("input", merged["inputs"]), ("output", merged["outputs"])):
                window.add_metric([model, version, io], group["window"])
                reference.add_metric([model, version, io], group["reference"])
                for feature, f in group["features"].items():
                    for name in drift.STATISTICS:
                        if f[name] is not None:
                            stat.add_metric([model, version, io, feature, name], f[name])
                    flag.add_metric([model, version, io, feature], 1 if f["drifting"] else 0)
        yield from (stat, flag, version_flag, window, reference)


class _Predlog(Collector):
    """Per model, what its prediction log sampled, wrote and lost (:mod:`router.predlog`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sampled = CounterMetricFamily("router_predlog_sampled", "Requests (and shadow answers) sampled for the "
                                      "prediction log (the model's log_rate).", labels=["model"])
        written = CounterMetricFamily("router_predlog_written", "Sampled records written to the prediction log's "
                                      "files.", labels=["model"])
        dropped = CounterMetricFamily("router_predlog_dropped", "Sampled records not written, by reason: the "
                                      "writer was behind (queue_full: over [predlog] queue_bytes waiting), not "
                                      "running (writer_down), or could not write them (write_failed: an "
                                      "unwritable folder, a full disk).", labels=["model", "reason"])
        size = GaugeMetricFamily("router_predlog_bytes", "Bytes of the model's closed prediction log files.",
                                 labels=["model"])
        files = GaugeMetricFamily("router_predlog_files", "The model's closed prediction log files.", labels=["model"])
        plog = self._metrics.predlog
        if plog is not None:
            for model, c in sorted(plog.series()):
                sampled.add_metric([model], c.sampled)
                written.add_metric([model], c.written)
                for reason, n in plog.dropped(model).items():
                    dropped.add_metric([model, reason], n)
                size.add_metric([model], c.bytes)
                files.add_metric([model], c.files)
        yield from (sampled, written, dropped, size, files)
