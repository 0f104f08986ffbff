"""The in-memory history: points per model version from the router's own counters, a bounded ring,
quantiles as histogram_quantile computes them, and the admin query. In process, with fake workers and
explicit sample times (no timer is waited for)."""

from __future__ import annotations

import asyncio
import math

import msgpack
import numpy as np
import pytest
from fakes import IN_PROCESS, start_server
from test_lifecycle import Front, settle

from router.history import ALL_SERIES, Ring, quantile
from router.metrics import LATENCY_BUCKETS
from router.proto import link
from router.proto.errors import ConfigError, NotFound
from router.proto.link import STATUS_DRIFT
from router.server import Server

CONFIG = IN_PROCESS.replace("[server]\n", "[server]\nhistory_interval_s = 10\nhistory_s = 60\n") + """
[[models]]
name = "fraud"
routing_key = "x-user-id"
  [[models.versions]]
  version = "1"
  weight = 3
  [[models.versions]]
  version = "2"
  weight = 1
"""


async def started(tmp_path) -> Server:
    return (await start_server(tmp_path, CONFIG, {"fraud": ["1", "2"]}))[0]


async def send(s: Server, n: int, prefix: str) -> None:
    front = Front(s)
    for i in range(n):
        front.send(key=f"{prefix}-{i}")
    await settle(lambda: len(front.replies) == n)


def test_points_are_the_differences_over_each_interval(tmp_path):
    async def main() -> None:
        s = await started(tmp_path)
        h = s.history
        h.sample(1000.0)  # the first reading: no point yet
        assert h.rings == {}
        await send(s, 400, "a")
        h.sample(1010.0)
        q = s.control.history("fraud")
        assert q.series == list(ALL_SERIES) and q.interval_s == 10
        v1, v2 = q.versions["1"], q.versions["2"]
        assert v1["t"] == [1010.0] and v2["t"] == [1010.0]
        n1, n2 = v1["rate"][0] * 10, v2["rate"][0] * 10
        assert n1 + n2 == 400 and n1 > n2 > 0  # weights 3:1
        assert v1["share"][0] == pytest.approx(n1 / 400) and v1["share"][0] + v2["share"][0] == pytest.approx(1)
        assert v1["error_rate"] == [0.0]
        assert 0 < v1["p50"][0] <= v1["p99"][0] <= LATENCY_BUCKETS[-1]
        assert v1["agreement"] == [None]  # no shadow
        assert v1["cpu"] == [None] and v1["memory"] == [None]  # fakes have no process
        assert v1["drift_psi"] == [None] and v1["drifting"] == [None]  # no drift report yet
        # An interval with no request: rate 0, no latency, no share.
        h.sample(1020.0)
        q = s.control.history("fraud", ["rate", "p99", "share"], since=1015.0)
        assert q.versions["1"] == {"t": [1020.0], "rate": [0.0], "p99": [None], "share": [None]}
        await s.deployments.stop()

    asyncio.run(main())


def test_the_ring_keeps_the_last_points_in_fixed_memory():
    ring = Ring(3, ["rate"])
    for t in range(1, 6):
        ring.append(float(t), {"rate": t * 10.0})
    assert ring.since(0, ["rate"]) == {"t": [3.0, 4.0, 5.0], "rate": [30.0, 40.0, 50.0]}
    assert ring.since(4.0, ["rate"]) == {"t": [5.0], "rate": [50.0]}
    assert ring.last() == 5.0 and len(ring.times) == 3


def test_history_size_follows_the_config_and_old_versions_are_forgotten(tmp_path):
    async def main() -> None:
        s = await started(tmp_path)
        h = s.history
        assert h.size == 6  # 60 s at 10 s
        for k in range(10):
            h.sample(1000.0 + 10 * k)
        assert len(s.control.history("fraud").versions["1"]["t"]) == 6
        await s.control.deploy("fraud", [{"version": "1", "weight": 1}])
        for k in range(10, 16):
            h.sample(1000.0 + 10 * k)
        assert set(s.control.history("fraud").versions) == {"1", "2"}  # v2 until its points age out
        h.sample(1160.0)
        assert set(s.control.history("fraud").versions) == {"1"}
        await s.deployments.stop()

    asyncio.run(main())


def test_bad_queries_name_what_is_wrong(tmp_path):
    async def main() -> None:
        s = await started(tmp_path)
        with pytest.raises(NotFound, match="unknown model 'nosuch'"):
            s.control.history("nosuch")
        with pytest.raises(ConfigError, match="series: unknown 'p42'"):
            s.control.history("fraud", ["rate", "p42"])
        await s.deployments.stop()

    asyncio.run(main())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantile_interpolates_inside_buckets_as_histogram_quantile_does(seed):
    rng = np.random.default_rng(seed)
    counts = list(rng.integers(0, 50, size=len(LATENCY_BUCKETS) + 1))
    total = sum(counts)
    bounds = [0.0, *LATENCY_BUCKETS]
    cum = np.cumsum(counts)
    for q in (0.5, 0.9, 0.99):
        rank = q * total
        i = int(np.searchsorted(cum, rank))  # the first bucket whose cumulative count reaches the rank
        if i >= len(LATENCY_BUCKETS):
            want = LATENCY_BUCKETS[-1]
        else:
            below = cum[i - 1] if i else 0
            want = bounds[i] + (bounds[i + 1] - bounds[i]) * (rank - below) / counts[i]
        assert quantile(q, counts) == pytest.approx(want, rel=1e-12)
    assert math.isnan(quantile(0.5, [0] * (len(LATENCY_BUCKETS) + 1)))


def test_drift_reports_become_points(tmp_path):
    async def main() -> None:
        s = await started(tmp_path)
        h = s.history
        h.sample(1000.0)
        feature = {"psi": 0.4, "js": 0.2, "ks": 0.3, "nonfinite": 0, "warning": True, "drifting": True}
        calm = {**feature, "psi": 0.05, "warning": False, "drifting": False}
        group = {"reference": 500, "collecting": 0, "window": 300, "skipped": 0,
                 "features": {"x[0]": feature, "x[1]": calm}}
        summary = {"drifting": True, "warning": True, "stride": 1, "skipped": 0, "inputs": group,
                   "outputs": {**group, "features": {}}}
        (replica,) = [r for r in s.routing.active["fraud"].versions["1"].replicas]
        replica.link.data_received(link.pack(0, STATUS_DRIFT, 0, msgpack.packb(summary)))
        h.sample(1010.0)
        q = s.control.history("fraud", ["drift_psi", "drifting"])
        assert q.versions["1"]["drift_psi"] == [0.4] and q.versions["1"]["drifting"] == [1.0]
        assert q.versions["2"]["drift_psi"] == [None]
        # Per feature, over time; and since when what drifts has drifted (to the history's resolution).
        h.sample(1020.0)
        replica.link.data_received(link.pack(0, STATUS_DRIFT, 0, msgpack.packb(
            {**summary, "drifting": False, "inputs": {**group, "features": {"x[0]": calm, "x[1]": calm}}})))
        d = s.control.drift("fraud").versions["1"]
        assert d["since"] is None and d["inputs"]["features"]["x[0]"]["since"] is None  # not drifting now
        h.sample(1030.0)
        f = s.control.history("fraud", ["feature_psi"]).versions["1"]["feature_psi"]
        assert f == {"t": [1010.0, 1020.0, 1030.0], "inputs": {"x[0]": [0.4, 0.4, 0.05], "x[1]": [0.05] * 3},
                     "outputs": {}}
        assert s.control.history("fraud", ["feature_psi"]).versions["2"]["feature_psi"] == \
            {"t": [], "inputs": {}, "outputs": {}}
        replica.link.data_received(link.pack(0, STATUS_DRIFT, 0, msgpack.packb(summary)))
        h.sample(1040.0)
        h.sample(1050.0)
        d = s.control.drift("fraud").versions["1"]
        assert d["since"] == 1040.0 and d["inputs"]["features"]["x[0]"]["since"] == 1040.0
        assert d["inputs"]["features"]["x[1]"]["since"] is None
        await s.deployments.stop()

    asyncio.run(main())


def test_shadow_divergence_is_the_median_relative_difference_of_the_interval(tmp_path):
    async def main() -> None:
        s = await started(tmp_path)
        h, m = s.history, s.metrics
        h.sample(1000.0)
        for max_rel in (0.2, 0.25, 0.3, 0.45):  # all inside the (0.1, 0.5] bucket: interpolated, rank 2 of 4
            m.observe_divergence("fraud", "2", "probabilities", max_rel / 2, max_rel, 1, 1)
        h.sample(1010.0)
        for _ in range(3):  # an identical shadow: no difference at all
            m.observe_divergence("fraud", "2", "probabilities", 0.0, 0.0, 1, 1)
        h.sample(1020.0)
        h.sample(1030.0)
        q = s.control.history("fraud", ["divergence"])
        assert q.versions["2"]["divergence"] == [pytest.approx(0.1 + 0.4 * 2 / 4), 0.0, None]
        assert q.versions["1"]["divergence"] == [None, None, None]
        await s.deployments.stop()

    asyncio.run(main())
