"""Worker processes under supervision: pinning, deaths, deadlines, overload, shutdown, no orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FRAUD, ROOT, children_of, free_port, pid_alive, write_config
from test_shadow import metric, scrape, wait_for

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole.
pytestmark = pytest.mark.daemon

ROW = [1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0]
FRAUD_BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                     "data": ROW}]}).encode()
WIDE_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32",
                                    "data": [0.01] * 256}]}).encode()


def worker_pids(daemon) -> dict[str, int]:
    """version -> pid of the daemon's live worker processes."""
    out = {}
    for pid in children_of(daemon.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"runtime" in argv:
            out[argv[argv.index(b"--version") + 1].decode()] = pid
    return out


def proc_status(pid: int, field: str) -> str:
    """One field of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpus_allowed(pid: int) -> str:
    return proc_status(pid, "Cpus_allowed_list")


def voluntary_switches(pid: int) -> int:
    return int(proc_status(pid, "voluntary_ctxt_switches"))


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs to tell pinnings apart")
def test_workers_are_pinned_to_their_cpus(start_daemon):
    models = [{"name": "fraud", "versions": [{"version": "1", "cpus": [1], "weight": 1},
                                             {"version": "2", "cpus": [0], "weight": 1}]}]
    d = start_daemon(models)
    pids = worker_pids(d)
    assert set(pids) == {"1", "2"}
    assert cpus_allowed(pids["1"]) == "1"
    assert cpus_allowed(pids["2"]) == "0"
    # The router itself is not pinned by the config.
    assert cpus_allowed(d.proc.pid) != "1"


def sleeps_per_request(d, pid: int, n: int) -> float:
    """Voluntary context switches of ``pid`` per request over ``n`` requests sent one at a time."""
    before = voluntary_switches(pid)
    for _ in range(n):
        assert d.post("/v2/models/fraud/infer", FRAUD_BODY)[0] == 200
    return (voluntary_switches(pid) - before) / n


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs the worker on a CPU of its own")
def test_an_idle_worker_sleeps_once_per_request(start_daemon):
    # A worker blocked in recv() used to be woken for nothing each time the router read
    # its reply (the socket turning writable), and slept a second time per request, up to 2.0:
    # a race, won in some rounds and not others, so every round must stay clear of it. Sleeps
    # are counted, not timed: other programs only take some away (a worker preempted before it
    # sleeps finds the next request there), hence no lower bound. The figure itself: python -m
    # bench.idle.
    d = start_daemon([{"name": "fraud", "versions": [{"version": "1", "cpus": [1]}]}])
    pid = worker_pids(d)["1"]
    sleeps_per_request(d, pid, 20)  # warm up
    rounds = [sleeps_per_request(d, pid, 100) for _ in range(6)]
    assert max(rounds) <= 1.3, rounds


def test_router_process_never_imports_torch(shared_daemon):
    maps = Path(f"/proc/{shared_daemon.proc.pid}/maps").read_text()
    assert "libtorch" not in maps
    worker = next(iter(worker_pids(shared_daemon).values()))
    assert "libtorch" in Path(f"/proc/{worker}/maps").read_text()


def test_worker_resources_and_statistics_reach_metrics(shared_daemon):
    d = shared_daemon
    fraud = {"model": "fraud", "version": "1", "replica": "0", "pool": "blue"}
    before = metric(scrape(d), "router_worker_batch_size_count", **fraud)
    for _ in range(30):  # one at a time: one forward each
        assert d.post("/v2/models/fraud/versions/1/infer", FRAUD_BODY)[0] == 200
    # The worker reports at most once a second, and once more when it goes idle: the last forward is counted.
    wait_for(lambda: metric(scrape(d), "router_worker_batch_size_count", **fraud) == before + 30)
    s = scrape(d)
    assert metric(s, "router_worker_compute_seconds_count", **fraud) == before + 30
    assert metric(s, "router_worker_compute_seconds_sum", **fraud) > 0
    assert metric(s, "router_worker_queue_seconds_count", **fraud) == before + 30
    for version in ("1", "2"):
        labels = {**fraud, "version": version}
        assert metric(s, "router_worker_cpu_seconds_total", **labels) > 0
        assert metric(s, "router_worker_resident_memory_bytes", **labels) > 50 << 20  # torch is loaded
        assert metric(s, "router_worker_queue_depth", **labels) == 0
    assert metric(s, "router_worker_device_memory_bytes") == 0  # CPU workers report none


def test_sigkill_of_a_worker_under_load_gives_503s_never_a_hang_and_it_comes_back(start_daemon):
    d = start_daemon([{"name": "fraud", "versions": [{"version": "1"}]}])
    old = worker_pids(d)["1"]
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, _, raw = d.post("/v2/models/fraud/infer", FRAUD_BODY, timeout=5)
            statuses[status] += 1
            if status != 200:
                errors.append(json.loads(raw)["error"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: statuses[200] >= 20 or None)
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: (pid := worker_pids(d).get("1")) not in (old, None)
                   and d.get("/v2/health/ready")[0] == 200 and pid)
    served_before = statuses[200]
    wait_for(lambda: statuses[200] > served_before + 20 or None)
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a request hung"
    assert new and new != old, "the worker was not restarted"
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] >= 1, "in-flight and follow-up requests should have failed with 503"
    assert statuses[200] > served_before, "no request succeeded after the restart"
    assert all("worker" in e or "no live worker" in e for e in errors), set(errors)
    assert "restarting" in d.log
    _, metrics = d.get("/metrics")
    assert 'router_worker_restarts_total{model="fraud",pool="blue",replica="0",version="1"} 1.0' in metrics.decode()


def fraud_body(scale: float) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                   "data": [v * scale for v in ROW]}]}).encode()


def outputs(raw: bytes) -> list:
    return json.loads(raw)["outputs"][0]["data"]


class Stopped:
    """The worker ``pid`` stopped (SIGSTOP) inside the block: it holds every request sent meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def test_deadline_gives_504_and_the_late_reply_is_dropped(start_daemon):
    d = start_daemon([{"name": "fraud", "versions": [{"version": "1"}]}], request_timeout_ms=1000)
    late, other = fraud_body(1.0), fraud_body(-2.0)
    with Stopped(worker_pids(d)["1"]):  # nothing but the deadline can answer the request
        t0 = time.monotonic()
        status, _, raw = d.post("/v2/models/fraud/infer", late)
        took = time.monotonic() - t0
    assert status == 504 and "deadline" in json.loads(raw)["error"]
    assert took >= 1.0, took  # never before the deadline
    # The worker now answers the expired request. That reply comes back on the same socket ahead of
    # the next one's: the router must drop it, not hand it to the next caller.
    status, _, first = d.post("/v2/models/fraud/infer", other)
    assert status == 200
    assert outputs(first) == outputs(d.post("/v2/models/fraud/infer", other)[2])
    assert outputs(first) != outputs(d.post("/v2/models/fraud/infer", late)[2])
    assert d.get("/v2/health/ready")[0] == 200


def test_an_idle_router_barely_wakes_and_still_answers_504_on_time(start_daemon):
    # The deadline sweep looks every 5 ms only while calls are in flight (it used to wake 200
    # times a second); idle, once per half a timeout (here 0.5 s). A call sent meanwhile is
    # found with half its time or more left and switches the sweep to 5 ms, so its 504 comes
    # on time. Asserted here by counting the router's sleeps, not by timing them: a busy
    # machine only delays wake-ups, never adds any. How late a 504 is after its deadline, and
    # the idle wake-ups per second, are figures of python -m bench.idle.
    d = start_daemon([{"name": "fraud", "versions": [{"version": "1"}]}], request_timeout_ms=1000)
    router, worker = d.proc.pid, worker_pids(d)["1"]
    time.sleep(0.3)
    t0, before = time.monotonic(), voluntary_switches(router)
    time.sleep(1.5)
    idle_rate = (voluntary_switches(router) - before) / (time.monotonic() - t0)
    assert idle_rate < 20, idle_rate  # the 5 ms sweep: 200 a second
    with Stopped(worker):  # nothing but the deadline can answer the request
        t0, before = time.monotonic(), voluntary_switches(router)
        status, _, raw = d.post("/v2/models/fraud/infer", FRAUD_BODY)
        took, wakes = time.monotonic() - t0, voluntary_switches(router) - before
    assert status == 504 and "deadline" in json.loads(raw)["error"]
    assert took >= 1.0, took  # never before the deadline
    # At least the last half of the timeout swept every 5 ms: about 100 wake-ups where the idle
    # looks alone would give two or three (and a 504 up to half a timeout late).
    assert wakes >= 30, wakes
    assert d.post("/v2/models/fraud/infer", FRAUD_BODY)[0] == 200


def test_overload_gives_503(start_daemon):
    models = [{"name": "mlp-wide", "versions": [{"version": "1", "max_batch_size": 64,
                                                 "max_batch_delay_us": 300_000}]}]
    d = start_daemon(models, max_inflight_per_worker=2)
    with ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda _: d.post("/v2/models/mlp-wide/infer", WIDE_BODY), range(6)))
    statuses = Counter(r[0] for r in results)
    assert statuses[200] >= 2 and statuses[503] >= 1, statuses
    assert all("overloaded" in json.loads(r[2])["error"] for r in results if r[0] == 503)


def test_sigterm_drains_in_flight_requests_then_exits_0(start_daemon):
    # A batching window of 1 s (the most allowed): the eight requests are still in it when SIGTERM comes.
    models = [{"name": "mlp-wide", "versions": [{"version": "1", "max_batch_size": 64,
                                                 "max_batch_delay_us": 1_000_000}]}]
    d = start_daemon(models, drain_timeout_s=30, request_timeout_ms=30_000)
    import http.client
    keepalive = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)

    def ready() -> tuple[int, bytes]:
        keepalive.request("GET", "/v2/health/ready")
        r = keepalive.getresponse()
        return r.status, r.read()

    assert ready() == (200, b"")
    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(d.post, "/v2/models/mlp-wide/infer", WIDE_BODY, None, 30) for _ in range(8)]
        wait_for(lambda: metric(scrape(d), "router_requests_in_flight", model="mlp-wide") == 8 or None)
        d.send(signal.SIGTERM)
        # Readiness turns 503 on a connection already open (the listeners are closed) once the signal is handled.
        status, body = wait_for(lambda: (r := ready())[0] != 200 and r)
        assert status == 503 and "shutting down" in json.loads(body)["error"]
        results = [f.result(timeout=30) for f in futs]
    assert [r[0] for r in results] == [200] * 8
    assert d.stop() == 0
    assert "shutting down" in d.log and "stopped" in d.log


def test_sigkill_of_the_router_leaves_no_worker_behind(start_daemon):
    d = start_daemon()
    workers = list(worker_pids(d).values())
    assert len(workers) == 2 and all(pid_alive(p) for p in workers)
    d.stop(signal.SIGKILL)  # asserts every worker is gone


def test_sigint_stops_cleanly(start_daemon):
    d = start_daemon()
    assert d.stop(signal.SIGINT) == 0


def run_serve(tmp_path: Path, store: Path, models: list[dict]) -> subprocess.CompletedProcess:
    cfg = write_config(tmp_path / "c.toml", store, models)
    return subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--http", f"127.0.0.1:{free_port()}",
         "--msgpack", f"127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.daemon
def test_missing_model_version_is_a_clear_startup_error(tmp_path, store):
    models = [{"name": "fraud", "versions": [{"version": "1"}, {"version": "7"}]}]
    r = run_serve(tmp_path, store, models)
    assert r.returncode != 0
    assert "models[0].versions[1]: no model file" in r.stderr


@pytest.mark.daemon
def test_a_model_that_cannot_load_fails_startup_and_leaves_nothing(tmp_path, store):
    import shutil
    bad_store = tmp_path / "store"
    shutil.copytree(store / "fraud", bad_store / "fraud")
    (bad_store / "fraud" / "2" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    before = set(children_of(os.getpid()))
    r = run_serve(tmp_path, bad_store, [FRAUD])
    assert r.returncode == 1
    assert "fraud/2#0" in r.stderr and "before it was ready" in r.stderr
    assert set(children_of(os.getpid())) == before
