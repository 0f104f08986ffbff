"""The prediction log through a real daemon, its writer process and real Parquet files.

One daemon serves ``fraud`` (v1 live, v2 a shadow of half the callers, ``log_rate = 0.1``) and
``mlp-small`` (``log_rate = 1``, whose log folder starts out as a file: unwritable). The files and
rows themselves are in test_predlog.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Daemon, children_of, free_port
from test_shadow import metric, scrape, shadow_results, wait_for

from router.client import WireClient

pytestmark = pytest.mark.daemon

REQUESTS = 10_000
RATE = 0.1


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("predlog")
    log = root / "predictions"
    log.mkdir()
    (log / "mlp-small").write_text("a file where the model's log folder should be\n")
    config = root / "config.toml"
    config.write_text(f"[store]\npath = {json.dumps(str(store))}\n\n"
                      f"[predlog]\npath = {json.dumps(str(log))}\nfile_s = 1\n\n"
                      f'[[models]]\nname = "fraud"\nrouting_key = "x-user-id"\nlog_rate = {RATE}\n'
                      '  [[models.versions]]\n  version = "1"\n'
                      '  [[models.versions]]\n  version = "2"\n  shadow = 0.5\n  shadow_queue = 100000\n\n'
                      '[[models]]\nname = "mlp-small"\nlog_rate = 1.0\n'
                      '  [[models.versions]]\n  version = "1"\n')
    d = Daemon(config, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        yield d
    finally:
        assert d.stop() == 0


def log_dir(d: Daemon) -> Path:
    return d.config.parent / "predictions"


def counts(d: Daemon, model: str) -> dict[str, float]:
    s = scrape(d)
    return {"sampled": metric(s, "router_predlog_sampled_total", model=model),
            "written": metric(s, "router_predlog_written_total", model=model),
            **{r: metric(s, "router_predlog_dropped_total", model=model, reason=r)
               for r in ("queue_full", "writer_down", "write_failed")}}


def settled(d: Daemon, model: str) -> dict[str, float]:
    """The model's numbers once every sampled record is written or counted as dropped."""
    return wait_for(lambda: (c := counts(d, model))["sampled"] > 0
                    and c["sampled"] == c["written"] + c["queue_full"] + c["writer_down"] + c["write_failed"] and c)


def features(i: int) -> np.ndarray:
    x = np.zeros((1, 8), np.float32)
    x[0, 0] = i  # which request a row came from, readable back from the log
    x[0, 1:] = np.linspace(-1, 1, 7)
    return x


def test_a_sample_of_the_requests_is_logged_with_their_inputs_outputs_and_shadow_outputs(daemon):
    d = daemon
    with WireClient("127.0.0.1", d.wire_port) as c:
        results = c.infer_many([{"model": "fraud", "inputs": {"features": features(i)}, "key": f"user-{i % 97}",
                                 "request_id": f"req-{i}"} for i in range(REQUESTS)], depth=32)
    assert all(not isinstance(r, Exception) for r in results)
    replies = {f"req-{i}": r.outputs["probabilities"] for i, r in enumerate(results)}
    # Every copy (half the requests, by routing key) answered, or dropped or timed out: a shadow (idle CPU
    # priority) never holds the live path up, so under load some are lost. Then every sampled record is written.
    copies = wait_for(lambda: metric(scrape(d), "router_shadow_queue", model="fraud", version="2") == 0
                      and shadow_results(d, "2"))
    assert copies["ok"] > 0 and copies["error"] == 0
    n = settled(d, "fraud")
    assert n["queue_full"] == n["writer_down"] == n["write_failed"] == 0
    wait_for(lambda: not list(log_dir(d).glob("fraud/*/date=*/.*")))  # every file closed (file_s = 1)

    live = pd.read_parquet(log_dir(d) / "fraud" / "1")
    shadow = pd.read_parquet(log_dir(d) / "fraud" / "2")
    assert len(live) + len(shadow) == n["written"]  # one row per record: one row per request here
    # Sampled at random: 10 % of 10,000, within 5 standard deviations (+-150).
    sd = (REQUESTS * RATE * (1 - RATE)) ** 0.5
    assert abs(len(live) - REQUESTS * RATE) <= 5 * sd, len(live)
    assert set(live["route"]) == {"live"} and set(live["status"]) == {200} and set(live["version"]) == {"1"}
    assert live["request_id"].is_unique
    for _, row in live.iterrows():
        i = int(row["client_id"].removeprefix("req-"))
        np.testing.assert_array_equal(row["input.features"], features(i)[0])
        np.testing.assert_array_equal(row["output.probabilities"], replies[row["client_id"]][0])
        assert row["key_hash"] == hashlib.blake2b(f"user-{i % 97}".encode(), digest_size=8).hexdigest()
        assert row["latency_ms"] > 0 and row["protocol"] == "msgpack" and pd.isna(row["live_version"])

    # Each sampled request's shadow answer (where its copy was not dropped), beside the live outputs it was
    # compared with.
    assert shadow["request_id"].is_unique and set(shadow["request_id"]) <= set(live["request_id"])
    assert len(shadow) > 0
    both = live.merge(shadow, on="request_id", suffixes=("", "_shadow"))
    for _, row in both.iterrows():
        assert row["route_shadow"] == "shadow" and row["live_version_shadow"] == "1"
        np.testing.assert_array_equal(row["live.probabilities_shadow"], row["output.probabilities"])
        np.testing.assert_array_equal(row["input.features_shadow"], row["input.features"])
    # v2 is another model: its outputs are its own, not a copy of v1's.
    assert any(not np.array_equal(a, b) for a, b in zip(both["output.probabilities_shadow"],
                                                        both["output.probabilities"], strict=True))

    status, info = d.call("GET", "/admin/models/fraud/predlog")
    assert status == 200, info
    assert info["rate"] == RATE and info["path"] == str(log_dir(d) / "fraud") and info["format"] == "parquet"
    assert info["written"] == n["written"] and info["dropped"] == 0 and info["writer"] == "running"
    assert info["file_count"] == len(list(log_dir(d).glob("fraud/*/date=*/[!.]*.parquet"))) > 0


def test_an_unwritable_log_folder_drops_and_counts_and_serving_goes_on(daemon):
    d = daemon
    blocked = log_dir(d) / "mlp-small"
    x = np.ones((2, 4), np.float32)
    with WireClient("127.0.0.1", d.wire_port) as c:
        for _ in range(20):
            assert c.infer("mlp-small", {"x": x}).outputs  # every request answered
    n = settled(d, "mlp-small")
    assert n["sampled"] == 20 and n["written"] == 0 and n["write_failed"] == 20
    assert "not written" in d.log

    blocked.unlink()  # the folder becomes writable: the next records are written
    with WireClient("127.0.0.1", d.wire_port) as c:
        for _ in range(5):
            c.infer("mlp-small", {"x": x})
    n = wait_for(lambda: (c := settled(d, "mlp-small"))["written"] == 5 and c)
    assert n["write_failed"] == 20
    wait_for(lambda: list(blocked.glob("1/date=*/[!.]*.parquet")))
    assert len(pd.read_parquet(blocked / "1")) == 5 * 2  # two rows per request


def test_a_killed_writer_is_restarted_and_every_record_is_accounted_for(daemon):
    d = daemon
    writer = [p for p in children_of(d.proc.pid)
              if b"runtime.predlog" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(writer) == 1
    before = settled(d, "mlp-small")
    os.kill(writer[0], signal.SIGKILL)
    x = np.ones((1, 4), np.float32)
    with WireClient("127.0.0.1", d.wire_port) as c:
        for _ in range(50):
            c.infer("mlp-small", {"x": x})
    wait_for(lambda: "prediction log writer started" in d.log.split("exited; restarting")[-1])
    with WireClient("127.0.0.1", d.wire_port) as c:
        for _ in range(10):
            c.infer("mlp-small", {"x": x})
    after = wait_for(lambda: (c := settled(d, "mlp-small"))["sampled"] == before["sampled"] + 60 and c)
    # Every record is written or counted: those the killed writer held and never reported as writer_down.
    assert after["written"] > before["written"]
    assert after["writer_down"] > before["writer_down"] or after["written"] == before["written"] + 60
    assert any(p != writer[0] and b"runtime.predlog" in Path(f"/proc/{p}/cmdline").read_bytes()
               for p in children_of(d.proc.pid))
