"""Live traffic weights through the admin API and CLI: atomic swaps, validation, write-back, auth."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter

import pytest
from conftest import FRAUD, ROOT, free_port

from router.config import load_config

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole; its requests
#: go through the extensions, so it runs again on their twins.
pytestmark = [pytest.mark.daemon, pytest.mark.twins]

BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0]}]}).encode()


def put(d, model, body, headers=None):
    return d.call("PUT", f"/admin/models/{model}/traffic", body, headers)


def versions_answering(d, n=100, headers=None):
    c = Counter()
    for _ in range(n):
        status, _, raw = d.post("/v2/models/fraud/infer", BODY, headers)
        assert status == 200
        c[json.loads(raw)["model_version"]] += 1
    return c


def with_comments(d):
    text = d.config.read_text()
    d.config.write_text("# top comment kept\n" + text.replace("[[models]]", "[[models]]  # the fraud model", 1))


def test_weights_change_live_without_worker_restarts_and_are_written_back(start_daemon):
    d = start_daemon()
    with_comments(d)
    pids = sorted(d.workers)
    status, body = d.get("/admin/models/fraud/traffic")
    assert status == 200 and json.loads(body)["weights"] == {"1": 90, "2": 10}
    status, res = put(d, "fraud", {"weights": {"1": 0, "2": 100}})
    assert status == 200 and res["weights"] == {"1": 0, "2": 100} and res["live"] == ["2"]
    assert versions_answering(d, 50) == {"2": 50}
    # A version at weight 0 still answers when pinned.
    assert d.post("/v2/models/fraud/versions/1/infer", BODY)[0] == 200
    status, res = put(d, "fraud", {"weights": {"1": 100}})  # partial: v2 keeps 100
    assert res["weights"] == {"1": 100, "2": 100}
    text = d.config.read_text()
    assert "# top comment kept" in text and "# the fraud model" in text
    cfg = load_config(d.config)
    assert [(v.version, v.weight) for v in cfg.model("fraud").versions] == [("1", 100.0), ("2", 100.0)]
    from conftest import children_of
    assert sorted(children_of(d.proc.pid)) == pids, "a weight change must not restart workers"


@pytest.mark.parametrize("body,message", [
    ({"weights": {"9": 10}}, "weights.9: unknown version"),
    ({"weights": {"1": -1}}, "weights.1: must be >= 0"),
    ({"weights": {"1": "lots"}}, "weights.1: must be a number"),
    ({"weights": {"1": True}}, "weights.1: must be a"),
    ({"weights": {"1": 1e999}}, "weights.1: must be a finite number"),
    ({"weights": {"1": 0, "2": 0}}, "at least one version needs weight > 0"),
    ({"weights": {}}, "non-empty"),
    ({"wieghts": {"1": 1}}, "unknown field 'wieghts'"),
    ([1, 2], "body must be a JSON object"),
    (b"{nope", "malformed JSON"),
])
def test_invalid_changes_are_400_and_change_nothing(shared_daemon, body, message):
    d = shared_daemon  # each case changes nothing, which is what it asserts: one daemon serves them all
    before = d.config.read_text()
    status, res = put(d, "fraud", body)
    assert status == 400 and message in res["error"]
    assert json.loads(d.get("/admin/models/fraud/traffic")[1])["weights"] == {"1": 90, "2": 10}
    assert d.config.read_text() == before


def test_unknown_model_is_404(shared_daemon):
    status, res = put(shared_daemon, "nope", {"weights": {"1": 1}})
    assert status == 404 and "unknown model" in res["error"]


def test_no_request_sees_a_half_updated_table(start_daemon):
    d = start_daemon()
    seen: Counter[tuple[int, str]] = Counter()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            status, _, raw = d.post("/v2/models/fraud/infer", BODY)
            seen[(status, json.loads(raw).get("model_version", "?"))] += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            assert put(d, "fraud", {"weights": {"1": i % 2, "2": 1 - i % 2}})[0] == 200
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert {s for s, _ in seen} == {200} and {v for _, v in seen} <= {"1", "2"}


def test_token_guards_the_admin_api(start_daemon):
    d = start_daemon(env={"ROUTER_ADMIN_TOKEN": "s3cret"})
    status, body = d.get("/admin/models/fraud/versions")
    assert status == 401 and "Bearer" in json.loads(body)["error"]
    # What /metrics shows anyone, the read-only view reads without a token; the store's contents need it.
    for path in ("/admin/models", "/admin/models/fraud/traffic", "/admin/models/fraud/history",
                 "/admin/models/fraud/drift"):
        assert d.get(path)[0] == 200, path
    for path in ("/admin/models/fraud/predlog", "/admin/audit"):
        assert d.get(path)[0] == 401, path
    status, res = put(d, "fraud", {"weights": {"1": 1}}, {"Authorization": "Bearer wrong"})
    assert status == 403 and "invalid admin token" in res["error"]
    status, res = put(d, "fraud", {"weights": {"1": 50}}, {"Authorization": "Bearer s3cret"})
    assert status == 200 and res["weights"]["1"] == 50
    # Inference itself needs no token.
    assert d.post("/v2/models/fraud/infer", BODY)[0] == 200


@pytest.mark.daemon
def test_token_file_and_refusal_to_bind_beyond_loopback_without_a_token(tmp_path, store):
    from conftest import write_config
    cfg = write_config(tmp_path / "c.toml", store, [FRAUD])
    env = {k: v for k, v in __import__("os").environ.items() if k != "ROUTER_ADMIN_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(cfg),
                        "--http", f"0.0.0.0:{free_port()}", "--msgpack", ""],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr
    cfg.write_text(cfg.read_text() + '\n[admin]\ntoken_file = "missing-token"\n')
    r = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(cfg)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "admin.token_file: cannot read" in r.stderr


def test_cli_traffic_and_status(start_daemon):
    d = start_daemon()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "router", *args, "--url", d.url], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    r = cli("traffic", "fraud", "1=75", "2=25")
    assert r.returncode == 0, r.stderr
    assert "fraud v1: weight 75 (75.0%)" in r.stdout and "fraud v2: weight 25 (25.0%)" in r.stdout
    assert json.loads(d.get("/admin/models/fraud/traffic")[1])["weights"] == {"1": 75, "2": 25}
    r = cli("traffic", "fraud", "9=1")
    assert r.returncode == 1 and "400: weights.9: unknown version" in r.stderr
    r = cli("traffic", "fraud", "bogus")
    assert r.returncode == 2 and "expected VERSION=WEIGHT" in r.stderr
    r = cli("status")
    assert r.returncode == 0, r.stderr
    assert "model fraud (routing key: x-user-id)" in r.stdout and "live" in r.stdout and "pid" in r.stdout


def test_a_key_lands_on_the_same_version_in_two_daemons_over_http_and_msgpack(start_daemon):
    import numpy as np

    from router.client import WireClient
    models = [{"name": "fraud", "routing_key": "x-user-id",
               "versions": [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]}]
    a, b = start_daemon(models), start_daemon(models)
    x = np.array([[1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0]], np.float32)
    picks = []
    with WireClient("127.0.0.1", a.wire_port) as wa, WireClient("127.0.0.1", b.wire_port) as wb:
        for i in range(60):
            key = f"account-{i}"
            http = [json.loads(d.post("/v2/models/fraud/infer", BODY, {"X-User-Id": key})[2])["model_version"]
                    for d in (a, b)]
            wire = [c.infer("fraud", {"features": x}, key=key).model_version for c in (wa, wb)]
            assert len(set(http + wire)) == 1, (key, http, wire)
            picks.append(http[0])
    assert set(picks) == {"1", "2"}  # 50/50 over 60 keys: both versions get callers


def test_cli_sends_the_token_from_the_environment(start_daemon):
    import os
    d = start_daemon(env={"ROUTER_ADMIN_TOKEN": "t0ken"})
    base = {k: v for k, v in os.environ.items() if k != "ROUTER_ADMIN_TOKEN"}

    def versions(env):
        return subprocess.run([sys.executable, "-m", "router", "versions", "fraud", "--url", d.url], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)

    r = versions(base)
    assert r.returncode == 1 and "401" in r.stderr
    r = versions({**base, "ROUTER_ADMIN_TOKEN": "t0ken"})
    assert r.returncode == 0 and "model fraud" in r.stdout, r.stderr
