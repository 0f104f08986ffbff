"""Data drift through a real daemon: a version pushed with a reference sample, fed traffic like it (no
drift) and then shifted (drift on the shifted feature only), read from GET /admin/models/{m}/drift and
/metrics. The statistics themselves are in test_drift_stats.py, the merging of replicas in
test_worker_stats.py."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import Daemon, free_port
from storekit import build_models, meta_bytes, tar_gz, upload
from test_shadow import metric, scrape, wait_for

from router.store import push

pytestmark = pytest.mark.daemon

ROWS = 8  # per request


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """``tiny`` (3 inputs -> 2 outputs) pushed with a 2,000-row N(0, 1) sample; a 1,000-row window."""
    root = tmp_path_factory.mktemp("drift")
    models = build_models()
    sample = io.BytesIO()
    np.savez(sample, x=np.random.default_rng(1).normal(size=(2000, 3)).astype(np.float32))
    store = root / "store"
    push(upload(store, tar_gz([("model.pt", models.pt), ("meta.json", meta_bytes()),
                               ("sample.npz", sample.getvalue())]), model="tiny", version="1"))
    config = root / "config.toml"
    config.write_text(f"[store]\npath = {json.dumps(str(store))}\n\n"
                      '[[models]]\nname = "tiny"\n  [models.drift]\n  window_rows = 1000\n  min_window = 100\n'
                      '  [[models.versions]]\n  version = "1"\n')
    d = Daemon(config, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        yield d
    finally:
        assert d.stop() == 0


def send(d: Daemon, x: np.ndarray) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    status, _, reply = d.post("/v2/models/tiny/infer", body, {"Content-Type": "application/json"})
    assert status == 200, reply


def drift_of(d: Daemon) -> dict | None:
    status, body = d.call("GET", "/admin/models/tiny/drift")
    assert status == 200, body
    return body["versions"]["1"]


def test_traffic_like_the_sample_is_quiet_and_a_shifted_feature_drifts(daemon):
    d = daemon
    rng = np.random.default_rng(2)
    assert "the reference is sample.npz (2000 rows)" in d.log
    for _ in range(40):
        send(d, rng.normal(size=(ROWS, 3)).astype(np.float32))
    quiet = wait_for(lambda: (v := drift_of(d)) is not None and v["inputs"]["window"] >= 200 and v)
    assert quiet["inputs"]["reference"] == 2000 and quiet["outputs"]["reference"] == 2000  # outputs: run on it
    assert not quiet["drifting"], quiet
    assert set(quiet["inputs"]["features"]) == {"x[0]", "x[1]", "x[2]"}
    assert set(quiet["outputs"]["features"]) == {"y[0]", "y[1]"}

    shift = np.array([3.0, 0.0, 0.0], np.float32)
    for _ in range(200):  # 1,600 rows: more than the window
        send(d, rng.normal(size=(ROWS, 3)).astype(np.float32) + shift)
    drifted = wait_for(lambda: (v := drift_of(d)) is not None and v["drifting"] and v)
    features = drifted["inputs"]["features"]
    assert features["x[0]"]["drifting"] and features["x[0]"]["psi"] >= 0.25
    assert not features["x[1]"]["drifting"] and not features["x[2]"]["drifting"]
    s = scrape(d)
    assert metric(s, "router_drift_version_drifting", model="tiny", version="1") == 1
    assert metric(s, "router_drift_drifting", model="tiny", io="input", feature="x[0]") == 1
    assert metric(s, "router_drift_statistic", model="tiny", io="input", feature="x[0]", statistic="psi") >= 0.25
