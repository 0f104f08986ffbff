"""Idle and deadline figures: what the daemon tests assert by order and count, measured.

``python -m bench.idle [--calls N] [--requests N] [--quick] [--json OUT]``

The tests (``tests/test_workers.py``, ``tests/test_poll.py``) check causes that hold
on a machine other programs keep busy: a 504 never comes before its deadline, the
router sweeps finely only while a call is in flight, a worker does not sleep twice
per request, polling stops by itself. How well each is done is a figure of the
machine and its load, measured here:

* **idle wake-ups**: the router's voluntary context switches per second while
  nothing happens. Idle, the deadline sweep looks once per half a timeout (at most
  once a second); the 5 ms sweep alone would be 200 a second.
* **504 lateness**: with the worker stopped (SIGSTOP), ``--calls`` calls sent at
  random moments of the idle sweep's period, each answered 504 at its deadline; how
  long after the deadline the caller had it (a persistent HTTP connection: the round
  trip is in it). And the router's wake-ups per second while such a call waits.
* **worker sleeps per request**: the worker's voluntary context switches per
  request sent one at a time, in rounds of ``--requests``; 1.0 when the worker
  sleeps only for the next request (2.0 when the router's read of each reply
  woke it for nothing).
* **busy polling**: a second daemon with ``server.busy_poll_us``: the router's CPU
  share (CPU seconds per second) in the window after a request, and once it has
  passed.

One daemon at a time; the router on ``--server-cpu``, its worker pinned to
``--worker-cpu``, this harness on ``--client-cpu``. The demo store is built in a
temporary directory (fraud/1 only).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .load import (
    HOST,
    BenchError,
    Proc,
    cpu_ns,
    daemon_workers,
    free_port,
    interrupt_on_sigterm,
    log,
    machine,
    status_field,
    wait_http_ready,
)

TIMEOUT_MS = 400  # request_timeout_ms: the idle sweep looks every 200 ms
POLL_US = 200_000  # busy_poll_us of the polling daemon
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0]}]}).encode()
PATH = "/v2/models/fraud/infer"

TARGET_IDLE_WAKES = 10.0  # router wake-ups per idle second
TARGET_LATE_MS = 5.0  # p50 of a 504 after its deadline (the sweep's resolution)
TARGET_SLEEPS = 1.1  # worker sleeps per request (the worst round: the old double wake was a race)
TARGET_IDLE_CPU = 0.01  # router CPU share once the polling window has passed


def write_config(path: Path, store: Path, worker_cpu: int, busy_poll_us: int) -> None:
    path.write_text(
        f"[server]\nrequest_timeout_ms = {TIMEOUT_MS}\nbusy_poll_us = {busy_poll_us}\n\n"
        f"[store]\npath = {json.dumps(str(store))}\n\n"
        f'[[models]]\nname = "fraud"\n[[models.versions]]\nversion = "1"\ncpus = [{worker_cpu}]\nthreads = 1\n'
    )


def sleeps(pid: int) -> int:
    """Voluntary context switches of ``pid`` (its main thread) so far."""
    return int(status_field(pid, "voluntary_ctxt_switches"))


class Daemon:
    """``router serve`` on ``server_cpu`` serving fraud/1, with one persistent HTTP connection to it."""

    def __init__(self, name: str, a: argparse.Namespace, tmp: Path, store: Path, busy_poll_us: int) -> None:
        self.http = free_port()
        cfg = tmp / f"{name}.toml"
        write_config(cfg, store, a.worker_cpu, busy_poll_us)
        self.proc = Proc(name, [sys.executable, "-m", "router", "serve", "--config", str(cfg),
                                "--http", f"{HOST}:{self.http}", "--msgpack", ""], a.server_cpu, tmp)
        self.conn = http.client.HTTPConnection(HOST, self.http, timeout=30)
        self.worker = 0

    def start(self) -> None:
        wait_http_ready(self.proc, self.http, 120)
        self.worker = daemon_workers(self.http)["fraud/1"]

    def infer(self) -> tuple[int, bytes]:
        self.conn.request("POST", PATH, BODY, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        return r.status, r.read()

    def stop(self) -> None:
        self.conn.close()
        code = self.proc.stop()
        if code != 0:
            raise BenchError(f"{self.proc.name} exited with {code}:\n{self.proc.log[-2000:]}")


def idle_and_deadlines(d: Daemon, a: argparse.Namespace) -> dict[str, Any]:
    router = d.proc.pid
    for _ in range(20):  # warm up
        d.infer()
    time.sleep(0.5)
    t0, s0 = time.monotonic(), sleeps(router)
    time.sleep(a.idle_s)
    idle = (sleeps(router) - s0) / (time.monotonic() - t0)
    late_ms, busy = [], []
    rng = random.Random(7)
    os.kill(d.worker, signal.SIGSTOP)
    try:
        for _ in range(a.calls):
            time.sleep(rng.uniform(0, TIMEOUT_MS / 2000))  # any moment of the idle sweep's period
            t0, s0 = time.monotonic(), sleeps(router)
            status, body = d.infer()
            took, woke = time.monotonic() - t0, sleeps(router) - s0
            if status != 504:
                raise BenchError(f"a call to a stopped worker answered {status}: {body[:200]!r}")
            late_ms.append(1e3 * took - TIMEOUT_MS)
            busy.append(woke / took)
    finally:
        os.kill(d.worker, signal.SIGCONT)
    late_ms.sort()
    return {"idle_wakeups_per_s": idle, "in_flight_wakeups_per_s": statistics.median(busy),
            "late_ms_p50": statistics.median(late_ms), "late_ms_p90": late_ms[int(0.9 * (len(late_ms) - 1))],
            "late_ms_max": late_ms[-1], "calls": len(late_ms)}


def worker_sleeps(d: Daemon, a: argparse.Namespace) -> dict[str, Any]:
    for _ in range(50):
        d.infer()
    rounds = []
    for _ in range(a.rounds):
        s0 = sleeps(d.worker)
        for _ in range(a.requests):
            status, body = d.infer()
            if status != 200:
                raise BenchError(f"inference answered {status}: {body[:200]!r}")
        rounds.append((sleeps(d.worker) - s0) / a.requests)
    return {"worker_sleeps_per_request": statistics.median(rounds), "worker_sleeps_worst_round": max(rounds),
            "rounds": rounds}


def polling(d: Daemon, a: argparse.Namespace) -> dict[str, Any]:
    window = POLL_US / 1e6
    during, after = [], []
    for _ in range(a.poll_rounds):
        time.sleep(2 * window)  # well past the last window
        c0, t0 = cpu_ns(d.proc.pid), time.monotonic()
        d.infer()
        time.sleep(window)
        c1, t1 = cpu_ns(d.proc.pid), time.monotonic()
        time.sleep(0.2 * window)
        c2, t2 = cpu_ns(d.proc.pid), time.monotonic()
        time.sleep(window)
        c3, t3 = cpu_ns(d.proc.pid), time.monotonic()
        during.append((c1 - c0) / 1e9 / (t1 - t0))
        after.append((c3 - c2) / 1e9 / (t3 - t2))
    return {"poll_window_us": POLL_US, "cpu_share_polling": statistics.median(during),
            "cpu_share_after": statistics.median(after)}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    def t(name: str, value: str, met: bool) -> dict[str, Any]:
        return {"target": name, "value": value, "met": met}

    return [
        t(f"idle router wakes <= {TARGET_IDLE_WAKES:.0f} times a second", f"{r['idle_wakeups_per_s']:.1f}",
          r["idle_wakeups_per_s"] <= TARGET_IDLE_WAKES),
        t(f"504 p50 within {TARGET_LATE_MS:.0f} ms of the deadline", f"{r['late_ms_p50']:+.2f} ms",
          r["late_ms_p50"] <= TARGET_LATE_MS),
        t(f"worker sleeps <= {TARGET_SLEEPS} times per request (worst round)",
          f"{r['worker_sleeps_worst_round']:.2f}", r["worker_sleeps_worst_round"] <= TARGET_SLEEPS),
        t(f"router CPU after the polling window <= {100 * TARGET_IDLE_CPU:.0f} %",
          f"{100 * r['cpu_share_after']:.2f} %", r["cpu_share_after"] <= TARGET_IDLE_CPU),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40, help="504s measured")
    p.add_argument("--requests", type=int, default=500, help="requests per round of the worker-sleep count")
    p.add_argument("--quick", action="store_true", help="fewer of everything (CI)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every result here")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--worker-cpu", type=int, default=None, help="default: the client's CPU when there are two")
    p.add_argument("--client-cpu", type=int, default=1)
    a = p.parse_args(argv)
    a.idle_s, a.rounds, a.poll_rounds = 5.0, 5, 10
    if a.quick:
        a.calls, a.requests, a.idle_s, a.rounds, a.poll_rounds = 10, 100, 2.0, 3, 3
    if a.worker_cpu is None:
        spare = sorted(os.sched_getaffinity(0) - {a.server_cpu, a.client_cpu})
        a.worker_cpu = spare[0] if spare else a.client_cpu
    if shutil.which("taskset") is None:
        p.error("`taskset` is not installed")
    interrupt_on_sigterm()
    os.sched_setaffinity(0, {a.client_cpu})
    results: dict[str, Any] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        from modelkit.demo import build_demo_store  # torch: imported only when benchmarking

        store = Path(tmp) / "store"
        build_demo_store(store)
        for name, poll, steps in (("router", 0, (idle_and_deadlines, worker_sleeps)),
                                  ("router-poll", POLL_US, (polling,))):
            d = None
            try:
                d = Daemon(name, a, Path(tmp), store, poll)
                d.start()
                for step in steps:
                    results.update(step(d, a))
                    log(f"{name}: {step.__name__} done")
            except BenchError as exc:
                errors.append(f"{name}: {exc}")
            finally:
                if d is not None:
                    try:
                        d.stop()
                    except BenchError as exc:
                        errors.append(str(exc))
    for key, value in results.items():
        print(f"{key:28s} {value if isinstance(value, (int, list)) else f'{value:.3f}'}")
    met = targets(results) if not errors else []
    for t in met:
        print(f"target {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "machine": machine(), "settings": {"request_timeout_ms": TIMEOUT_MS, "calls": a.calls,
                                               "requests": a.requests, "quick": a.quick,
                                               "server_cpu": a.server_cpu, "worker_cpu": a.worker_cpu,
                                               "client_cpu": a.client_cpu},
            "results": results, "targets": met, "errors": errors}, indent=2) + "\n")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
