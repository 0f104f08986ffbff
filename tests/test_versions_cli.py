"""Versions through a real daemon: push, roll out, list, drop and remove over the admin API and the CLI,
a new model served without a restart, the store's bytes on /metrics. The control plane's rules are
tested in process in test_rollout.py; this holds the adapters and the real workers to them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import ROOT, Daemon, free_port
from prometheus_client.parser import text_string_to_metric_families
from storekit import Models, archive, build_models, meta_bytes, upload
from test_shadow import wait_for

from router.store import push

pytestmark = pytest.mark.daemon

TOKEN = "versions-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def models() -> Models:
    return build_models()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[Daemon]:
    """A daemon behind an admin token serving ``tiny`` v1 (a 3 -> 2 linear layer), with v2 stored too."""
    root = tmp_path_factory.mktemp("versions")
    store = root / "store"
    push(upload(store, archive(models), model="tiny", version="1"))
    push(upload(store, archive(models, model=models.pt_other), model="tiny", version="2"))
    config = root / "config.toml"
    config.write_text("# keep this comment\n[server]\nhistory_interval_s = 1\n\n"
                      f"[store]\npath = {json.dumps(str(store))}\n"
                      "validate_timeout_s = 60\nvalidate_memory_mb = 4096\n\n"
                      '[[models]]\nname = "tiny"\nkeep_previous_s = 300\n'
                      '[[models.versions]]\nversion = "1"   # the first one\nweight = 100\n')
    d = Daemon(config, free_port(), free_port(), {**os.environ, "ROUTER_ADMIN_TOKEN": TOKEN})
    d.store = store  # type: ignore[attr-defined]
    try:
        d.wait_ready()
        yield d
    finally:
        assert d.stop() == 0


def cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", *args, "--url", d.url], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ROUTER_ADMIN_TOKEN": TOKEN})


def infer(d: Daemon, model: str, key: str, version: str | None = None) -> dict:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    status, _, reply = d.post(path, body.encode(), {"Content-Type": "application/json", "x-user-id": key})
    assert status == 200, reply
    return json.loads(reply)


def store_gauges(d: Daemon, model: str) -> tuple[float, float]:
    _, text = d.get("/metrics")
    found = {s.name: s.value for f in text_string_to_metric_families(text.decode()) for s in f.samples
             if s.name in ("router_store_bytes", "router_store_versions") and s.labels["model"] == model}
    return found["router_store_bytes"], found["router_store_versions"]


def file_versions(d: Daemon, model: str = "tiny") -> list[dict]:
    doc = tomllib.loads(d.config.read_text())
    return next(m for m in doc["models"] if m["name"] == model)["versions"]


def test_roll_out_list_drop_and_remove_over_the_api(daemon, models):
    d = daemon
    assert d.call("GET", "/admin/models/tiny/versions")[0] == 401  # the token rule holds here too
    status, listing = d.call("GET", "/admin/models/tiny/versions", headers=AUTH)
    assert status == 200
    assert [(v["version"], v["state"]) for v in listing["versions"]] == [("1", "serving"), ("2", "stored")]
    assert store_gauges(d, "tiny") == (listing["bytes"], 2)

    status, out = d.call("POST", "/admin/models/tiny/versions/2/rollout", {"percent": 25}, AUTH)
    assert status == 200, out
    assert (out["action"], out["weights"], out["active"]) == ("deploy", {"1": 75, "2": 25}, "green")
    answered = {infer(d, "tiny", f"user-{i}")["model_version"] for i in range(60)}
    assert answered == {"1", "2"}
    assert file_versions(d) == [{"version": "1", "weight": 75}, {"version": "2", "weight": 25}]
    assert "# keep this comment" in d.config.read_text() and "# the first one" in d.config.read_text()

    status, out = d.call("DELETE", "/admin/models/tiny/versions/2", headers=AUTH)
    assert status == 409 and "is in the active set" in out["error"] and "drop it first" in out["error"]
    status, out = d.call("POST", "/admin/models/tiny/versions/1/drop", {}, AUTH)
    assert status == 200 and (out["action"], out["dropped"], out["versions"]) == ("drop", "1", ["2"])
    assert {infer(d, "tiny", f"user-{i}")["model_version"] for i in range(20)} == {"2"}
    # Dropped, v1 is warm in the previous pool: still held, so not removable; a rollback brings it back.
    status, out = d.call("DELETE", "/admin/models/tiny/versions/1", headers=AUTH)
    assert status == 409 and "kept warm in the previous (green) pool" in out["error"]
    status, listing = d.call("GET", "/admin/models/tiny/versions", headers=AUTH)
    assert [(v["version"], v["state"]) for v in listing["versions"]] == [("1", "previous"), ("2", "serving")]

    # A stored-only version goes; its bytes leave the gauge.
    status, _ = push_body(d, "tiny", "3", archive(models, meta=meta_bytes(description="spare")))
    assert status == 201
    size = d.call("GET", "/admin/models/tiny/versions", headers=AUTH)[1]["versions"][2]["bytes"]
    before = store_gauges(d, "tiny")
    req = urllib.request.Request(d.url + "/admin/models/tiny/versions/3", method="DELETE", headers=AUTH)
    with urllib.request.urlopen(req, timeout=30) as r:  # no Content-Type: a DELETE carries no body
        assert (r.status, json.loads(r.read())) == (200, {"model": "tiny", "version": "3", "bytes": size})
    assert store_gauges(d, "tiny") == (before[0] - size, before[1] - 1)
    assert not (d.store / "tiny" / "3").exists()  # type: ignore[attr-defined]
    assert d.call("DELETE", "/admin/models/tiny/versions/3", headers=AUTH)[0] == 404
    status, out = d.call("POST", "/admin/models/tiny/versions/3/rollout", {"percent": 10}, AUTH)
    assert status == 404 and "has no version '3' in the store" in out["error"]
    status, out = d.call("POST", "/admin/models/tiny/versions/2/rollout", {"percent": 10, "shadow": 1}, AUTH)
    assert status == 400 and "exactly one of weight, percent or shadow" in out["error"]
    status, out = d.call("POST", "/admin/models/tiny/versions/2/rollout", b"{}", {"Content-Type": "text/plain",
                                                                                     **AUTH})
    assert status == 415


def push_body(d: Daemon, model: str, version: str, body: bytes) -> tuple[int, dict]:
    return d.call("POST", f"/admin/models/{model}/versions/{version}", body,
                  {"Content-Type": "application/octet-stream", **AUTH}, timeout=120)


def test_a_new_model_is_pushed_and_served_without_a_restart_through_the_cli(daemon, models, tmp_path):
    d = daemon
    pid = d.proc.pid
    path = tmp_path / "churn.tar.gz"
    path.write_bytes(archive(models, meta=meta_bytes(description="churn, first cut")))
    assert d.post("/v2/models/churn/infer", b"{}", {"Content-Type": "application/json"})[0] == 404
    out = cli(d, "push", "churn", "1", str(path))
    assert out.returncode == 0, out.stderr
    out = cli(d, "rollout", "churn", "1", "--shadow", "0.5")
    assert out.returncode == 1 and "400" in out.stderr and "its first version takes live traffic" in out.stderr
    out = cli(d, "rollout", "churn", "1", "--percent", "100", "--set", "max_batch_size=8")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("churn version 1: 100.0% of traffic (weight 100); a new model, serving from "
                                 "the blue pool")
    assert infer(d, "churn", "a")["model_version"] == "1"
    assert d.proc.pid == pid and d.proc.poll() is None
    assert file_versions(d, "churn") == [{"version": "1", "weight": 100, "max_batch_size": 8}]
    status, ready = d.get("/v2/models/churn/ready")
    assert status == 200

    out = cli(d, "versions", "churn")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("model churn: 1 stored version(s), ")
    assert "serving (weight 100)" in lines[1] and "pytorch_torchscript" in lines[1] and "churn, first cut" in lines[1]

    out = cli(d, "rm", "churn", "1")
    assert out.returncode == 1 and "409" in out.stderr and "drop it first" in out.stderr
    out = cli(d, "drop", "churn", "1")
    assert out.returncode == 1 and "409" in out.stderr and "the only version of model 'churn'" in out.stderr
    assert infer(d, "churn", "b")["model_version"] == "1"  # refusals changed nothing

    out = cli(d, "versions", "nosuch")
    assert out.returncode == 1 and "404" in out.stderr


def test_the_history_answers_over_http(daemon):
    d = daemon
    for i in range(5):
        infer(d, "tiny", f"h-{i}")

    def points() -> dict:
        status, body = d.call("GET", "/admin/models/tiny/history?series=rate,p99&since=-3600", headers=AUTH)
        assert status == 200, body
        return body if any(sum(v["rate"]) > 0 for v in body["versions"].values()) else {}

    body = wait_for(points)
    assert body["series"] == ["rate", "p99"] and body["interval_s"] == 1
    for v in body["versions"].values():
        assert set(v) == {"t", "rate", "p99"} and len(v["t"]) == len(v["rate"])
    status, body = d.call("GET", "/admin/models/tiny/history?since=yesterday", headers=AUTH)
    assert status == 400 and "since: expected unix seconds" in body["error"]
    status, body = d.call("GET", "/admin/models/tiny/history?series=qps", headers=AUTH)
    assert status == 400 and "series: unknown 'qps'" in body["error"]
    assert d.call("GET", "/admin/models/nosuch/history", headers=AUTH)[0] == 404


def test_the_audit_trail_names_who_changed_what_over_the_api_and_the_cli(daemon, models, tmp_path):
    import getpass

    d = daemon
    serving = next(iter(d.call("GET", "/admin/models/tiny/traffic", headers=AUTH)[1]["weights"]))
    status, body = d.call("PUT", "/admin/models/tiny/traffic", {"weights": {serving: 100}},
                          {**AUTH, "X-Router-User": "carol"})
    assert status == 200, body
    status, _ = d.call("PUT", "/admin/models/tiny/traffic", {"weights": {"7": 1}}, AUTH)  # no name given
    assert status == 400
    path = tmp_path / "audit.tar.gz"
    path.write_bytes(archive(models, meta=meta_bytes(description="audited")))
    assert cli(d, "push", "tiny", "9", str(path)).returncode == 0
    status, body = d.call("GET", "/admin/audit?model=tiny&limit=3", headers=AUTH)
    assert status == 200, body
    newest = body["entries"]
    assert [(e["action"], e["result"]) for e in newest] == [("push", "ok"), ("traffic", "refused"), ("traffic", "ok")]
    assert newest[0]["who"] == f"{getpass.getuser()}@127.0.0.1" and newest[0]["version"] == "9"
    assert newest[0]["detail"]["size"] == path.stat().st_size
    assert newest[1]["who"] == "127.0.0.1" and "unknown version" in newest[1]["error"]
    assert newest[2]["who"] == "carol@127.0.0.1" and newest[2]["detail"] == {"weights": {serving: 100}}
    out = cli(d, "audit", "--model", "tiny", "--limit", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and "push tiny v9" in lines[0] and lines[0].endswith(": ok")
    assert "traffic tiny" in lines[1] and ": refused (" in lines[1] and "carol@127.0.0.1" in lines[2]
    assert d.call("GET", "/admin/audit?limit=0", headers=AUTH)[0] == 400
    assert d.call("GET", "/admin/audit")[0] == 401  # the token rule, as for every admin read
    on_disk = [json.loads(line) for line in (d.config.parent / "audit.jsonl").read_text().splitlines()]
    assert on_disk[-3:] == newest[::-1]
