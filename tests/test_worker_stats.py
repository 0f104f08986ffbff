"""Worker resources: the worker's statistics frame (rows per forward, time queued, time computing),
``/proc`` readings at scrape time, and the series they make on ``/metrics``. In process with fake
workers; test_workers.py holds a real daemon's workers to the same series."""

from __future__ import annotations

import asyncio
import os

import msgpack
import numpy as np
import pytest
from fakes import IN_PROCESS, start_server
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router import drift
from router.metrics import proc_usage
from router.proto import link, stats
from router.proto.link import STATUS_DRIFT, STATUS_STATS
from router.proto.stats import BATCH_BUCKETS, SECONDS_BUCKETS
from router.server import Server
from runtime.stats import WorkerStats, timed

CONFIG = IN_PROCESS + """
[[models]]
name = "fraud"
  [[models.versions]]
  version = "1"
  replicas = 2
"""


def samples(s: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(s.metrics.registry).decode()
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text) for x in f.samples if x.name.startswith("router_worker_")}


def labels(replica: int, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model": "fraud", "version": "1", "replica": str(replica), "pool": "blue", **extra}.items()))


def test_timed_counts_rows_and_durations_of_each_forward_that_returns() -> None:
    ws = WorkerStats()
    calls = []

    def forward(inputs):
        calls.append(len(inputs[0]))
        if len(inputs[0]) == 3:
            raise RuntimeError("a poisoned batch")
        return [inputs[0] * 2]

    run = timed(forward, ws)
    for rows in (1, 2, 5, 64, 1):
        out = run([np.ones((rows, 4), np.float32)])
        assert out[0].shape == (rows, 4)
    with pytest.raises(RuntimeError):
        run([np.ones((3, 4), np.float32)])
    assert calls == [1, 2, 5, 64, 1, 3]
    # Per bucket (non-cumulative): 1 -> le 1 (twice), 2 -> le 2, 5 -> le 8, 64 -> le 64; the raise is not counted.
    assert ws.batch[:len(BATCH_BUCKETS) + 1] == [2, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert ws.batch[-1] == 73
    assert sum(ws.compute[:-1]) == 5 and ws.compute[-1] > 0
    assert ws.dirty
    ws.waited(0.0)
    ws.waited(20.0)  # past the last bucket: +Inf
    assert ws.queued[0] == 1 and ws.queued[len(SECONDS_BUCKETS)] == 1
    report = stats.unpack(ws.payload())
    assert report is not None and report["batch"] == ws.batch and "device_memory" not in report
    assert not ws.dirty
    assert stats.unpack(WorkerStats(lambda: 1234).payload())["device_memory"] == 1234


@pytest.mark.parametrize("payload", [
    b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"batch": [1], "queued": [], "compute": []}),
    msgpack.packb({"batch": [0] * 13, "queued": [0] * 21, "compute": ["x"] * 21}),
    stats.pack([0] * 13, [0] * 21, [0] * 21, None)[:-1],
])
def test_a_malformed_statistics_payload_is_ignored_not_an_error(payload: bytes) -> None:
    assert stats.unpack(payload) is None


def test_proc_usage_reads_cpu_seconds_and_resident_bytes() -> None:
    sum(i * i for i in range(200_000))  # some CPU time of our own
    cpu, rss = proc_usage(os.getpid())  # type: ignore[misc]
    assert cpu > 0 and rss > 10 << 20
    assert proc_usage(2 ** 22 + 12345) is None  # no such process (above the default pid_max)


def test_the_scrape_turns_each_workers_last_report_into_series(tmp_path) -> None:
    async def main() -> None:
        s, reps = await start_server(tmp_path, CONFIG, {"fraud": ["1"]})
        first, second = reps.of("1")
        before = samples(s)
        assert before[("router_worker_queue_depth", labels(0))] == 0
        assert not any(name.startswith("router_worker_batch_size") for name, _ in before)  # no report yet
        # The first worker reports: its link keeps the payload as it came.
        ws = WorkerStats(lambda: 5 << 20)
        for rows in (1, 4, 4, 32):
            ws.forward(rows, 0.001)
        ws.waited(0.0002)
        first.link.data_received(link.pack(0, STATUS_STATS, 0, ws.payload()))
        second.link.data_received(link.pack(0, STATUS_STATS, 0, b"not msgpack"))  # ignored
        after = samples(s)
        assert after[("router_worker_batch_size_count", labels(0))] == 4
        assert after[("router_worker_batch_size_sum", labels(0))] == 41
        assert after[("router_worker_batch_size_bucket", labels(0, le="4.0"))] == 3
        assert after[("router_worker_batch_size_bucket", labels(0, le="+Inf"))] == 4
        assert after[("router_worker_compute_seconds_count", labels(0))] == 4
        assert after[("router_worker_queue_seconds_count", labels(0))] == 1
        assert after[("router_worker_device_memory_bytes", labels(0))] == 5 << 20
        assert ("router_worker_batch_size_count", labels(1)) not in after
        # A fake has no process: no /proc series, and nothing fails for it.
        assert not any(name == "router_worker_cpu_seconds_total" for name, _ in after)
        await s.deployments.stop()

    asyncio.run(main())


def feature(psi: float | None, drifting: bool = False, nonfinite: int = 0) -> dict:
    return {"psi": psi, "js": None if psi is None else psi / 2, "ks": None if psi is None else psi / 4,
            "nonfinite": nonfinite, "warning": drifting, "drifting": drifting}


def report(window: int, features: dict, reference: int = 500, drifting: bool = False) -> dict:
    group = {"reference": reference, "collecting": 0, "window": window, "skipped": 0, "features": features}
    return {"drifting": drifting, "warning": drifting, "stride": 1, "skipped": 0, "inputs": group,
            "outputs": {**group, "features": {}}}


def test_drift_of_a_version_merges_its_replicas_weighted_by_window() -> None:
    a = report(300, {"x[0]": feature(0.1), "x[1]": feature(None, nonfinite=2)})
    b = report(100, {"x[0]": feature(0.5, drifting=True), "x[1]": feature(0.2, nonfinite=1)}, reference=400,
               drifting=True)
    m = drift.merge([a, b])
    assert (m["replicas"], m["drifting"], m["warning"]) == (2, True, True)
    x0, x1 = m["inputs"]["features"]["x[0]"], m["inputs"]["features"]["x[1]"]
    assert x0["psi"] == pytest.approx((300 * 0.1 + 100 * 0.5) / 400) and x0["drifting"]
    assert x0["js"] == pytest.approx((300 * 0.05 + 100 * 0.25) / 400)
    assert x1["psi"] == pytest.approx(0.2) and x1["nonfinite"] == 3 and not x1["drifting"]  # a has no value
    assert (m["inputs"]["window"], m["inputs"]["reference"]) == (400, 500)
    assert drift.merge([]) is None


def test_the_scrape_and_the_drift_api_read_each_workers_last_drift_frame(tmp_path) -> None:
    async def main() -> None:
        s, reps = await start_server(tmp_path, CONFIG, {"fraud": ["1"]})
        assert s.control.drift("fraud").versions == {"1": None}  # nothing reported yet
        first, second = reps.of("1")
        first.link.data_received(link.pack(0, STATUS_DRIFT, 0, msgpack.packb(
            report(200, {"x[0]": feature(0.4, drifting=True)}, drifting=True))))
        second.link.data_received(link.pack(0, STATUS_DRIFT, 0, b"\xc1"))  # unreadable: ignored
        d = s.control.drift("fraud")
        assert d.enabled and d.thresholds["psi_drift"] == 0.25
        assert d.versions["1"]["drifting"] and d.versions["1"]["replicas"] == 1
        text = generate_latest(s.metrics.registry).decode()
        got = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for f in text_string_to_metric_families(text) for x in f.samples if x.name.startswith("router_drift")}
        base = (("feature", "x[0]"), ("io", "input"), ("model", "fraud"))
        assert got[("router_drift_statistic", (*base, ("statistic", "psi"), ("version", "1")))] == 0.4
        assert got[("router_drift_drifting", (*base, ("version", "1")))] == 1
        assert got[("router_drift_version_drifting", (("model", "fraud"), ("version", "1")))] == 1
        assert got[("router_drift_window_rows", (("io", "input"), ("model", "fraud"), ("version", "1")))] == 200
        await s.deployments.stop()

    asyncio.run(main())
