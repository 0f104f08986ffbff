"""Shadow mode end to end: mirrored copies after the live reply, comparison in the shadow worker, metrics.

The store's mlp-small versions: ``1`` (live), ``copy`` (version 1 bit for bit),
``2`` (other weights), ``slow`` (version 1 after a 20 ms sleep), ``faulty``
(raises on inputs beyond +-1000).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from prometheus_client.parser import text_string_to_metric_families

from router.client import HttpClient, WireClient
from router.splitter import MirrorTable

RNG = np.random.default_rng(5)

#: Server keys for tests that count what shadows answer. At idle CPU priority (the default, and the
#: point of it) a shadow gets no CPU while other programs keep every core busy, as on a shared CI
#: machine: its copies time out and the counts depend on the machine. Here shadows run at normal
#: priority and a copy has 10 s; the priority itself has tests of its own at the end.
STEADY = {"shadow_priority": "normal", "request_timeout_ms": 10_000}
#: For the tests of 20,000 requests: however far behind a shadow falls, no copy is refused for a
#: full link (1024 by default) or expires (the queue bound, 100,000 there, does the same).
BACKLOG = {**STEADY, "request_timeout_ms": 60_000, "max_inflight_per_worker": 100_000}


def mlp(*shadows: tuple[str, float], queue: int | None = None, key: bool = True) -> dict:
    versions: list[dict] = [{"version": "1", "weight": 1}]
    for v, f in shadows:
        entry: dict = {"version": v, "shadow": f}
        if queue is not None:
            entry["shadow_queue"] = queue
        versions.append(entry)
    m: dict = {"name": "mlp-small", "versions": versions}
    if key:
        m["routing_key"] = "x-user-id"
    return m


def scrape(d) -> dict[tuple[str, frozenset], float]:
    status, body = d.get("/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def shadow_results(d, version: str) -> dict[str, float]:
    s = scrape(d)
    return {r: metric(s, "router_shadow_requests_total", version=version, result=r)
            for r in ("ok", "error", "dropped", "timeout")}


def wait_for(cond, timeout: float = 60.0):
    """Poll ``cond`` until it returns something true, and return that; the timeout only bounds a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s (last: {value!r})")
        time.sleep(0.02)


def settled(d, version: str, n: int) -> dict[str, float]:
    """Wait until ``n`` copies to ``version`` have a result; return the results."""
    return wait_for(lambda: (r := shadow_results(d, version)) and sum(r.values()) >= n and r)


def all_settled(d, version: str) -> dict[str, float]:
    """Wait until no copy to ``version`` is in flight; return the results.

    A copy is queued as its live reply is sent, so once the replies of every request are
    in, an empty queue means every copy of them has a result."""
    wait_for(lambda: metric(scrape(d), "router_shadow_queue", version=version) == 0 or None)
    return shadow_results(d, version)


def put(d, body) -> tuple[int, dict]:
    return d.call("PUT", "/admin/models/mlp-small/traffic", body)


def worker(d, version: str) -> dict:
    models = json.loads(d.get("/admin/models")[1])["models"]
    m = next(m for m in models if m["model"] == "mlp-small")
    return next(v for v in m["versions"] if v["version"] == version)["workers"][0]


def worker_pid(d, version: str) -> int:
    return worker(d, version)["pid"]


def inputs(n: int = 1, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": (RNG.standard_normal((n, 4)) * scale).astype(np.float32)}


def raw_replies(d, xs: list[np.ndarray], key: str = "k") -> list[tuple[int, dict, bytes]]:
    """The exact bytes of JSON, binary and msgpack HTTP replies and of TCP replies for each input."""
    out = []
    for i, x in enumerate(xs):
        data = x.tolist()
        js = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": data}]}).encode()
        status, headers, body = d.post("/v2/models/mlp-small/infer", js, {"x-user-id": f"{key}{i}"})
        out.append((status, headers.get("Content-Type"), body))
        head = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                       "parameters": {"binary_data_size": 16}}],
                           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
        status, headers, body = d.post("/v2/models/mlp-small/infer", head + x.tobytes(),
                                       {"Inference-Header-Content-Length": str(len(head)), "x-user-id": f"{key}{i}"})
        out.append((status, headers.get("Inference-Header-Content-Length"), body))
    with WireClient("127.0.0.1", d.wire_port) as c:
        for i, x in enumerate(xs):
            r = c.infer("mlp-small", {"x": x}, key=f"{key}{i}")
            out.append((200, r.model_version, r.outputs["y"].tobytes()))
    return out


def test_live_replies_are_byte_identical_with_and_without_shadows(start_daemon):
    d = start_daemon(models=[mlp(("copy", 1.0), ("2", 1.0))], **STEADY)
    xs = [inputs()["x"] for _ in range(10)]
    with_shadow = raw_replies(d, xs)
    settled(d, "copy", 30)
    status, res = put(d, {"shadow": {"copy": 0, "2": 0}})
    assert status == 200 and res["shadow"] == {}
    before = shadow_results(d, "copy")
    without = raw_replies(d, xs)
    assert all(s == 200 for s, _, _ in with_shadow)
    assert with_shadow == without
    assert all_settled(d, "copy") == before  # no copies once the fraction is 0


def test_identical_shadow_agrees_fully_and_differs_by_zero(start_daemon):
    d = start_daemon(models=[mlp(("copy", 1.0))], **STEADY)
    n = 40
    with HttpClient(d.url, routing_header="x-user-id") as c:
        for i in range(n):
            fmt = ("json", "binary", "msgpack")[i % 3]
            c.infer("mlp-small", inputs(), key=f"user{i}", format=fmt)
    res = settled(d, "copy", n)
    assert res == {"ok": n, "error": 0, "dropped": 0, "timeout": 0}
    s = scrape(d)
    labels = {"model": "mlp-small", "version": "copy", "output": "y"}
    assert metric(s, "router_shadow_agreement_total", result="agree", **labels) == n
    assert metric(s, "router_shadow_agreement_total", result="disagree", **labels) == 0
    for measure in ("abs", "rel"):
        assert metric(s, "router_shadow_divergence_count", measure=measure, **labels) == n
        assert metric(s, "router_shadow_divergence_bucket", measure=measure, le="0.0", **labels) == n
        assert metric(s, "router_shadow_divergence_sum", measure=measure, **labels) == 0
    # Shadow latency is recorded under route="shadow"; live counts stay live-only.
    assert metric(s, "router_request_duration_seconds_count", route="shadow", version="copy") == n
    assert metric(s, "router_requests_total", route="live", model="mlp-small") == n
    assert metric(s, "router_requests_total", route="live", version="copy") == 0


def test_differing_shadow_metrics_match_a_local_comparison(start_daemon, store: Path):
    import torch

    d = start_daemon(models=[mlp(("2", 1.0))], **STEADY)
    live_m = torch.jit.load(str(store / "mlp-small" / "1" / "model.pt"))
    shadow_m = torch.jit.load(str(store / "mlp-small" / "2" / "model.pt"))
    xs = [inputs(n=1 + i % 3)["x"] for i in range(30)]
    agree = rows = 0
    abs_sum = rel_sum = 0.0
    with WireClient("127.0.0.1", d.wire_port) as c:
        for i, x in enumerate(xs):
            live = c.infer("mlp-small", {"x": x}, key=f"u{i}").outputs["y"].astype(np.float64)
            with torch.inference_mode():
                ours = shadow_m(torch.from_numpy(x)).numpy().astype(np.float64)
                np.testing.assert_allclose(live, live_m(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
            agree += int((live.argmax(1) == ours.argmax(1)).sum())
            rows += len(x)
            diff = np.abs(ours - live)
            abs_sum += diff.max()
            rel_sum += (diff / np.maximum(np.abs(ours), np.abs(live))).max()
    assert settled(d, "2", len(xs))["ok"] == len(xs)
    s = scrape(d)
    labels = {"version": "2", "output": "y"}
    assert 0 < agree < rows  # the data really tests both counters
    assert metric(s, "router_shadow_agreement_total", result="agree", **labels) == agree
    assert metric(s, "router_shadow_agreement_total", result="disagree", **labels) == rows - agree
    assert metric(s, "router_shadow_divergence_sum", measure="abs", **labels) == pytest.approx(abs_sum, rel=1e-4)
    assert metric(s, "router_shadow_divergence_sum", measure="rel", **labels) == pytest.approx(rel_sum, rel=1e-4)
    assert metric(s, "router_shadow_divergence_bucket", measure="abs", le="0.0", **labels) == 0


def test_mirrored_fraction_is_the_configured_one_and_keyed_copies_are_deterministic(start_daemon):
    f = 0.3
    d = start_daemon(models=[mlp(("copy", f), queue=100_000)], **BACKLOG)
    n = 20_000
    keys = [f"caller-{i}" for i in range(n)]
    x = inputs()["x"]
    with WireClient("127.0.0.1", d.wire_port) as c:
        results = c.infer_many(({"model": "mlp-small", "inputs": {"x": x}, "key": k} for k in keys), depth=32)
    assert all(not isinstance(r, Exception) for r in results)
    expected = sum(1 for k in keys if MirrorTable(("copy",), (f,)).pick(k))
    res = settled(d, "copy", expected)
    assert sum(res.values()) == expected and res["ok"] == expected
    assert abs(expected / n - f) <= 0.02 * f


def test_keyless_mirroring_is_random_at_the_configured_fraction(start_daemon):
    f = 0.5
    d = start_daemon(models=[mlp(("copy", f), queue=100_000, key=False)], **BACKLOG)
    n = 20_000
    x = inputs()["x"]
    with WireClient("127.0.0.1", d.wire_port) as c:
        results = c.infer_many(({"model": "mlp-small", "inputs": {"x": x}} for _ in range(n)), depth=32)
    assert all(not isinstance(r, Exception) for r in results)
    res = all_settled(d, "copy")
    assert res["ok"] == sum(res.values())
    assert abs(res["ok"] / n - f) <= 0.02


def test_slow_shadow_overflows_its_queue_and_never_holds_live_requests(start_daemon):
    d = start_daemon(models=[mlp(("slow", 1.0), queue=4)], **STEADY)
    n = 100
    peak = 0
    with WireClient("127.0.0.1", d.wire_port) as c:
        for i in range(n):
            assert c.infer("mlp-small", inputs(), key=f"k{i}").model_version == "1"
            if i % 10 == 0:
                peak = max(peak, metric(scrape(d), "router_shadow_queue", version="slow"))
    res = settled(d, "slow", n)
    # The requests went one at a time: had a live reply waited for its copy, no more than one copy
    # could ever have been queued, and none dropped. Copies were dropped because the queue was full.
    assert res["dropped"] > 0 and res["ok"] >= 4 and res["error"] == res["timeout"] == 0
    assert res["ok"] + res["dropped"] == n
    assert 0 < peak <= 4
    assert all_settled(d, "slow") == res


def test_failing_shadow_counts_errors_and_live_replies_succeed(start_daemon):
    d = start_daemon(models=[mlp(("faulty", 1.0))], **STEADY)
    with WireClient("127.0.0.1", d.wire_port) as c:
        for i in range(20):
            x = inputs(scale=5000.0 if i % 2 else 1.0)
            r = c.infer("mlp-small", x, key=f"k{i}")
            assert r.model_version == "1" and np.isfinite(r.outputs["y"]).all()
    res = settled(d, "faulty", 20)
    assert res == {"ok": 10, "error": 10, "dropped": 0, "timeout": 0}
    status, body = d.get("/admin/models")
    v = next(v for m in json.loads(body)["models"] for v in m["versions"] if v["version"] == "faulty")
    assert "input beyond +-1000" in v["shadow_queue"]["last_error"]


def test_killed_and_stopped_shadows_never_fail_live_requests(start_daemon):
    # Copies must time out while the shadow is stopped: a timeout of 1 s, not STEADY's 10.
    d = start_daemon(models=[mlp(("copy", 1.0))], shadow_priority="normal", request_timeout_ms=1000)
    pid = worker_pid(d, "copy")
    failures = 0
    with WireClient("127.0.0.1", d.wire_port) as c:
        def burst(n: int) -> None:
            nonlocal failures
            for i in range(n):
                try:
                    c.infer("mlp-small", inputs(), key=f"k{i}")
                except Exception:
                    failures += 1

        burst(20)
        os.kill(pid, signal.SIGSTOP)  # a hung shadow: its copies time out
        try:
            burst(30)
            res = wait_for(lambda: (r := shadow_results(d, "copy"))["timeout"] > 0 and r)
        finally:
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)  # a crashed shadow: restarted; meanwhile copies are dropped or fail
        burst(50)
        wait_for(lambda: worker_pid(d, "copy") not in (pid, None))
        # Readiness stays 200 while a shadow restarts (the model can serve): wait for the shadow itself.
        wait_for(lambda: worker(d, "copy")["live"] or None)
        before = shadow_results(d, "copy")["ok"]
        burst(10)
    assert failures == 0
    res = wait_for(lambda: (r := shadow_results(d, "copy"))["ok"] >= before + 10 and r)
    assert res["timeout"] > 0 and sum(res.values()) == 110
    s = scrape(d)
    assert metric(s, "router_requests_total", route="live", status="200") == 110
    assert metric(s, "router_requests_total", route="live") == 110


def test_pinned_requests_to_live_versions_are_mirrored_but_not_those_to_the_shadow(start_daemon):
    d = start_daemon(models=[mlp(("copy", 1.0))], **STEADY)
    with HttpClient(d.url) as c:
        c.infer("mlp-small", inputs(), version="1")
        c.infer("mlp-small", inputs(), version="copy")
        c.infer("mlp-small", inputs(), version="copy")
    assert all_settled(d, "copy") == {"ok": 1, "error": 0, "dropped": 0, "timeout": 0}


def test_shadow_fractions_change_live_are_validated_and_written_back(start_daemon):
    d = start_daemon(models=[mlp(("copy", 0.5))])
    d.config.write_text("# kept\n" + d.config.read_text())
    status, res = put(d, {"shadow": {"copy": 1}})
    assert status == 200 and res["shadow"] == {"copy": 1.0} and res["weights"]["1"] == 1
    for body, words in [
        ({"shadow": {"1": 0.5}}, ["version '1'", "no live traffic"]),
        ({"shadow": {"copy": 1.5}}, ["shadow.copy", "<= 1.0"]),
        ({"shadow": {"copy": -0.1}}, ["shadow.copy", ">= 0"]),
        ({"shadow": {"copy": "half"}}, ["shadow.copy", "must be a"]),
        ({"shadow": {"9": 0.5}}, ["shadow.9", "unknown version"]),
        ({"shadows": {"copy": 0.5}}, ["unknown field", "shadows"]),
        ({"weights": {"1": 0}, "shadow": {"copy": 0.5}}, ["at least one version"]),
    ]:
        status, res = put(d, body)
        assert status == 400, body
        assert all(w in res["error"] for w in words), (body, res)
    text = d.config.read_text()
    assert text.startswith("# kept\n")
    from router.config import load_config

    mc = load_config(d.config).model("mlp-small")
    assert mc.version("copy").shadow == 1.0 and mc.version("copy").weight == 0
    # A live version becomes a shadow (and back) atomically through one PUT.
    status, res = put(d, {"weights": {"1": 1, "copy": 0}, "shadow": {"copy": 0}})
    assert status == 200 and res["shadow"] == {} and res["live"] == ["1"]
    status, res = put(d, {"weights": {"copy": 1}})
    assert status == 200 and res["live"] == ["1", "copy"]
    status, res = put(d, {"weights": {"copy": 0}, "shadow": {"copy": 0.75}})
    assert status == 200 and res["shadow"] == {"copy": 0.75} and res["live"] == ["1"]
    assert load_config(d.config).model("mlp-small").version("copy").shadow == 0.75


def test_cli_shadow_sets_and_shows_fractions(start_daemon):
    d = start_daemon(models=[mlp(("copy", 0.5))])
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "router", "shadow", "mlp-small", *args, "--url", d.url],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)

    out = run("copy=0.2")
    assert out.returncode == 0, out.stderr
    assert "mlp-small vcopy: shadow, mirrors 20% of live traffic" in out.stdout
    assert "mlp-small v1: weight 1 (100.0%)" in out.stdout
    out = run("1=0.2")
    assert out.returncode == 1 and "400" in out.stderr and "no live traffic" in out.stderr
    out = run("copy")
    assert out.returncode == 2 and "VERSION=FRACTION" in out.stderr
    out = subprocess.run([sys.executable, "-m", "router", "status", "--url", d.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "shadow 20%" in out.stdout and "shadow queue 0/64" in out.stdout


def test_shadow_frames_carry_body_and_live_reply_untouched():
    from router.proto import link
    from router.proto.errors import FrameError

    body, reply = b'{"inputs": []}', b"HEADERbinary"
    head = link.pack_shadow_head(7, link.FMT_BINARY, 3, len(body), 6, len(reply))
    rid, code, hlen, payload = link.unpack((head + body + reply)[4:])
    assert (rid, code, hlen) == (7, link.FMT_BINARY | link.SHADOW, 3)
    req, rep, rhlen = link.split_shadow(payload)
    assert (bytes(req), bytes(rep), rhlen) == (body, reply, 6)
    for bad in (b"\0\0\0", b"\0\0\0\x09\0\0\0\0short", b"\0\0\0\0\0\0\0\x09short"):
        with pytest.raises(FrameError):
            link.split_shadow(bad)


def test_batcher_answers_a_shadow_copy_with_comparison_statistics(store: Path):
    import msgpack

    from router.proto.link import FMT_JSON
    from router.proto.meta import read_meta
    from runtime.batcher import Batcher
    from runtime.codecs import decode_reply, decode_request, encode_response
    from runtime.model import Model

    meta = read_meta(store / "mlp-small" / "1")
    model = Model(store / "mlp-small" / "1" / "model.pt", meta, "cpu")
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                   "data": [0.5, -1, 2, 0.25, 1, 1, 1, 1]}]}).encode()
    live_req = decode_request(FMT_JSON, body, 0, meta)
    live_out = model.forward(live_req.arrays)
    _, reply = encode_response(live_req, live_out, meta)
    b = Batcher(model.forward, meta, 32)
    same = decode_request(FMT_JSON, body, 0, meta)
    same.live = decode_reply(FMT_JSON, reply, 0)
    skewed = decode_request(FMT_JSON, body, 0, meta)
    skewed.live = {"y": live_out[0] + np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 0.0]], np.float32)}
    b.add(1, same)
    b.add(2, skewed)
    (r1, s1, _, p1), (r2, s2, _, p2) = b.run()
    assert (r1, s1, r2, s2) == (1, 200, 2, 200)
    assert msgpack.unpackb(p1) == [2, [["y", 0.0, 0.0, 2, 2]]]
    rows, [[name, max_abs, _max_rel, agree, n]] = msgpack.unpackb(p2)
    assert (rows, name, n) == (2, "y", 2) and max_abs == pytest.approx(0.5)
    expect_agree = 1 + int((live_out[0][0] + [0, 0, 0.5]).argmax() == live_out[0][0].argmax())
    assert agree == expect_agree


def test_shutdown_does_not_wait_for_shadow_copies(start_daemon):
    # Copies never expire here (60 s deadline) and the drain could wait 30 s: only not waiting passes.
    d = start_daemon(models=[mlp(("copy", 1.0))], drain_timeout_s=30.0, request_timeout_ms=60_000,
                     shadow_priority="normal")
    pid = worker_pid(d, "copy")
    os.kill(pid, signal.SIGSTOP)
    try:
        with WireClient("127.0.0.1", d.wire_port) as c:
            for i in range(20):
                c.infer("mlp-small", inputs(), key=f"k{i}")
        assert metric(scrape(d), "router_shadow_queue", version="copy") == 20
        d.send(signal.SIGTERM)
        wait_for(lambda: "drained; 20 shadow copies not waited for" in d.log or None)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert d.stop() == 0
    assert "drain timeout" not in d.log


def test_shadow_workers_yield_the_cpu_and_get_it_back_when_promoted(start_daemon):
    from router import priority

    d = start_daemon(models=[mlp(("copy", 1.0))])
    live, shadow = worker_pid(d, "1"), worker_pid(d, "copy")
    assert os.sched_getscheduler(live) == os.SCHED_OTHER
    if not priority.can_restore():  # unprivileged: shadows keep normal priority, and the log says why
        assert os.sched_getscheduler(shadow) == os.SCHED_OTHER
        assert "shadow workers run at normal CPU priority" in d.log
        return
    assert os.sched_getscheduler(shadow) == os.SCHED_IDLE
    assert put(d, {"weights": {"copy": 1}, "shadow": {"copy": 0}})[0] == 200
    assert os.sched_getscheduler(shadow) == os.SCHED_OTHER
    assert put(d, {"weights": {"copy": 0}, "shadow": {"copy": 0.5}})[0] == 200
    assert os.sched_getscheduler(shadow) == os.SCHED_IDLE
    os.kill(shadow, signal.SIGKILL)  # its replacement goes idle as soon as it is live
    wait_for(lambda: worker_pid(d, "copy") not in (shadow, None) or None)
    wait_for(lambda: worker(d, "copy")["live"] or None)
    assert os.sched_getscheduler(worker_pid(d, "copy")) == os.SCHED_IDLE
    assert os.sched_getscheduler(live) == os.SCHED_OTHER


def test_shadow_priority_normal_leaves_shadows_alone(start_daemon):
    d = start_daemon(models=[mlp(("copy", 1.0))], shadow_priority="normal")
    assert os.sched_getscheduler(worker_pid(d, "copy")) == os.SCHED_OTHER
