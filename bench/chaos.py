"""Chaos soak: mixed load on both protocols while workers die, stall, reload, deploy and roll back.

``python -m bench.chaos [--duration S] [--quick] [--json FILE] [--seed N] [--rate R] [--log FILE]``

Everything runs on loopback, in a temporary directory, and is bounded in time
(default 300 s of chaos; ``--quick``: 20 s, the CI run, about 40 s in all on two
quiet cores).

The daemon: one ``router serve`` (HTTP and msgpack TCP on free loopback ports,
``ROUTER_WORKER_PRELOAD=modelkit.fixture_ops`` as the tests and benchmarks set
it, its own session so its whole process group can be checked) serving one
model, ``mlp-small`` (4 -> 64 -> 3, routing key ``x-user-id``), written into the
store here: version ``1`` (weight 70, 2 replicas), version ``2`` (other weights,
weight 30, 2 replicas) and version ``3``, a shadow (``shadow = 0.5``, 1 replica)
whose model raises on any input beyond +-1000 (``modelkit.fixtures.faulty_mlp_small``).
``request_timeout_ms = 1000``, ``drain_timeout_s = 5``, ``keepalive_timeout_s = 5``
(idle HTTP connections are closed by the server: the slow clients meet it),
``keep_previous_s`` 5 s (quick) or 30 s, every worker one torch thread, no CPU
pinning. Only keys that have long existed are set: the soak runs against the
daemon as it is, with or without newer limits and hang detection.

The load (:mod:`bench.chaos_load`): 4 HTTP connections (one request at a time
each, bodies in OIP JSON, binary and msgpack at random) and 2 msgpack TCP
connections with 4 requests in flight each, paced to ``--rate`` requests/s in
all (default 300: the machine has two cores); 20 % of the requests carry rows
beyond +-1000 (the live versions answer them, the shadow raises on its copy)
and half carry a routing key. Each request has a 10 s client timeout (the
server's deadline is 1 s). Every request must be answered: 200 (a well-formed
reply from version 1 or 2), or 503/504 with a reason; anything else is a
failure (another status, an error without a reason, an unparsable reply, a
connection closed or reset with the request outstanding, no reply in 10 s).
A connection the server closes while it has nothing outstanding is reopened.

Warm-up (10 s, quick 2 s) before any measurement: the load, one traffic change
and (not in the quick run) one deploy and rollback, then the wait for the
replaced pool to retire: their one-time costs stay out of the RSS comparison.

Chaos, at random intervals from a seeded RNG (``--seed``), three loops at once.
Each loop first runs every kind of its own once (shuffled; reload and traffic
before deploy, a rollback right after the deploy); a kind that has not run when
the time is up still runs then, so even a slow quick run has every kind:

* processes: ``kill`` (SIGKILL) or ``stop`` (SIGSTOP for 2-5 s, then SIGCONT) a
  random worker: one of the active pool's, or one time in five any child of the
  router (read from ``/proc/PID/task/*/children``: a standby or retiring one too).
  A pid is signalled only while it is still the router's child with the same start time;
* control: ``reload`` (rewrite the weights in config.toml, SIGHUP, wait until the
  reload is counted and the weights serve), ``traffic`` (``PUT
  /admin/models/mlp-small/traffic``, weights and now and then the shadow fraction),
  ``deploy`` (``POST /admin/models/mlp-small/deploy``, the same versions with new
  weights and ``max_batch_size`` 32 <-> 16: a blue-green deploy of 5 workers),
  ``rollback`` (``POST /admin/models/mlp-small/rollback``, tried up to 4 times a
  second apart while it answers 409). A deploy whose standby worker was killed
  answers 500 with the reason and a rollback with no warm pool 409: counted, not
  failures; any other answer of the admin API is an error;
* slow clients: ``trickle`` (connect and send a request head, or a msgpack frame,
  one byte per second for 2-5 s, 3-15 s in the full run) or ``idle`` (3-10
  connections that send nothing as long). The server may answer (408) or close
  them: each outcome is counted, none is a failure.

Checks, after stopping the chaos and the load: no failed request; every worker
live again, no previous pool left, and the router's children are exactly the
workers ``GET /admin/models`` lists (as many as the config's replicas); 1 s of
load on both protocols is all 200; the router's ``router_requests_total{route="live"}``
equals what the clients saw, by protocol and status; its open file descriptors
back within ``FD_SLACK`` of the level before the load (measured the same way: no
client connected, every worker live); its RSS grown by at most ``RSS_SLACK_MIB``
since the warm-up; the shadow's errors counted; no "exception was never
retrieved" or "Exception in callback" in its log; then SIGTERM: exit status 0
within the drain time plus the workers' stop time, and no process of its group
(nor any worker pid seen during the run) left.

Output: a summary (requests by protocol and outcome, 503/504 reasons, p50/p99
latency, chaos actions by kind and result, slow clients, router counters,
descriptors, RSS, threads and processes before, at peak and after, the 1-minute
load average, each check PASS or FAIL); ``--json`` writes all of it, with the
action log and samples every 5 s. Exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .chaos_actions import ACTIONS, Chaos
from .chaos_daemon import (
    DRAIN_TIMEOUT_S,
    LIVE,
    MODEL,
    REPLICAS,
    REQUEST_TIMEOUT_MS,
    SHADOW,
    SHADOW_FRACTION,
    WEIGHTS,
    Daemon,
    SoakError,
    build_store,
    children,
    fd_count,
    group_members,
    listed_workers,
    loadavg,
    proc_stat,
    rss_kib,
    thread_count,
    write_config,
)
from .chaos_load import Load, Mix, Tally
from .load import interrupt_on_sigterm, log
from .payloads import MLP_SMALL, Payload

CLIENT_TIMEOUT_S = 10.0
WORKER_STOP_S = 5  # the router's SIGTERM -> SIGKILL wait per worker (router/replica.py)
#: The failing shadow raises on rows beyond +-1000 (modelkit.fixtures.FaultyMLP); the live versions answer them.
BIG = Payload(MODEL, None, "x", (-5000.0, -1500.0, 1500.0, 5000.0), "y", 3)

#: Descriptors the router may hold beyond its level before the load once everything is idle again: the
#: harness's own last admin and /metrics connections, closed by the client a moment before the count and
#: possibly not yet seen closed by the router (one each), plus two spare. A leak of one per request, per
#: worker restart or per slow client would exceed it many times over.
FD_SLACK = 4
#: RSS growth allowed over the soak, measured from the end of the warm-up (every request path and a traffic
#: change already taken; in the full run a deploy and a rollback too). What remains is the allocator keeping
#: the high-water mark of bursts (pymalloc arenas and glibc do not give everything back): +0.4 to +1.3 MiB
#: in our quick and full runs, so 3x that. A leak of 60 bytes per request would exceed it in a full run
#: (75,000 requests); the quick run (6,000) catches only leaks ten times larger.
RSS_SLACK_MIB = 4.0


# -- the soak ----------------------------------------------------------------------------------------------


def percentile(values: list[int], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return float(s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))])


class Soak:
    """One daemon, its load and chaos, the measurements and the checks."""

    def __init__(self, a: argparse.Namespace, tmp: Path) -> None:
        self.a = a
        self.tmp = tmp
        self.keep_previous_s = 5.0 if a.quick else 30.0
        self.checks: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.d: Daemon | None = None
        self.tally = Tally()
        self.chaos: Chaos | None = None
        self.samples: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, value: str) -> None:
        self.checks.append({"check": name, "ok": bool(ok), "value": value})
        log(f"check {'PASS' if ok else 'FAIL'} {name}: {value}")

    def mix(self) -> Mix:
        return Mix(MLP_SMALL, BIG, 0.2, 0.5, frozenset(LIVE), "y", 3)

    def load(self, tally: Tally, rate: float | None = None, lanes: tuple[int, int, int] = (4, 2, 4)) -> Load:
        assert self.d is not None
        return Load(self.d.http, self.d.wire, self.mix(), rate or self.a.rate, *lanes, CLIENT_TIMEOUT_S,
                    self.a.seed, tally)

    def snapshot(self) -> dict[str, Any]:
        assert self.d is not None
        pid = self.d.pid
        return {"fds": fd_count(pid), "rss_kib": rss_kib(pid), "threads": thread_count(pid),
                "children": len(children(pid))}

    async def settle(self, timeout: float) -> dict[str, Any]:
        """Wait until every worker is live, the daemon ready and no previous pool is kept; the status."""
        assert self.d is not None
        deadline = time.monotonic() + timeout
        doc: Any = None
        while time.monotonic() < deadline:
            self.d.check_alive()
            status, doc = await asyncio.to_thread(self.d.request, "GET", "/admin/models")
            # ... and the router's children are those workers (a retired pool's processes have been reaped).
            if status == 200 and doc["ready"] and all(
                    m["previous"] is None and all(w["live"] for v in m["versions"] for w in v["workers"])
                    for m in doc["models"]) and children(self.d.pid) == listed_workers(doc):
                return dict(doc)
            await asyncio.sleep(0.25)
        raise SoakError(f"not settled within {timeout:.0f} s (every worker live, no previous pool, no other "
                        f"child): children {children(self.d.pid)}, status {doc}")

    async def idle_fds(self, limit: int | None, timeout: float = 10.0) -> int:
        """The router's descriptor count once it stops falling (or is within ``limit``)."""
        assert self.d is not None
        deadline = time.monotonic() + timeout
        last = fd_count(self.d.pid)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = fd_count(self.d.pid)
            if (limit is not None and now <= limit) or (limit is None and now == last):
                return now
            last = now
        return last

    async def sample(self) -> None:
        """Router descriptors, RSS, threads and children every second (every 5 s kept in the report)."""
        assert self.d is not None
        t0 = time.monotonic()
        n = 0
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError):
                if self.chaos is not None:
                    self.chaos.workers()  # remember every worker pid, to check none outlives the router
                s = {"t": round(time.monotonic() - t0, 1), **self.snapshot(), "loadavg": loadavg()}
                self.info.setdefault("peak", {})
                for k in ("fds", "rss_kib", "threads", "children", "loadavg"):
                    self.info["peak"][k] = max(self.info["peak"].get(k, 0), s[k])
                if n % 5 == 0:
                    self.samples.append(s)
                n += 1

    async def run(self) -> None:
        a = self.a
        cfg = self.tmp / "config.toml"
        t0 = time.monotonic()
        await asyncio.to_thread(build_store, self.tmp / "store")
        write_config(cfg, self.keep_previous_s)
        self.d = d = Daemon(cfg, self.tmp)
        ready = await asyncio.to_thread(d.wait_ready, 120)
        self.info["router_ready_s"] = round(ready, 2)
        phases = self.info["phases_s"] = {"setup": round(time.monotonic() - t0, 1)}
        t0 = time.monotonic()
        log(f"router pid {d.pid} ready in {ready:.2f} s ({sum(REPLICAS.values())} workers)")
        rng = random.Random(a.seed)
        chaos = self.chaos = Chaos(d, rng, a.quick)
        chaos.workers()

        # Warm-up: every request path, then one traffic change, deploy and rollback (their one-time costs).
        warm = self.load(Tally())
        warm.start()
        await asyncio.sleep(a.warmup)
        warm_chaos = Chaos(d, random.Random(a.seed + 1), a.quick)
        await warm_chaos._traffic()
        if not a.quick:  # the quick run has no time for a deploy and the wait for its pool to retire
            await warm_chaos._deploy()
            await warm_chaos._rollback()
        await warm.stop()
        chaos.errors += [f"warm-up: {e}" for e in warm_chaos.errors]
        if warm.tally.failed:
            raise SoakError(f"{warm.tally.failed} request(s) failed during the warm-up, before any chaos: "
                            + "; ".join(warm.tally.failures[:5]))
        await asyncio.to_thread(d.request, "PUT", f"/admin/models/{MODEL}/traffic",
                                {"weights": WEIGHTS, "shadow": {SHADOW: SHADOW_FRACTION}})
        await self.settle(self.keep_previous_s + 60)
        start = self.snapshot()
        start["fds"] = await self.idle_fds(None)
        self.info["start"] = start
        metrics0 = await asyncio.to_thread(d.metrics)
        phases["warm-up"] = round(time.monotonic() - t0, 1)
        log(f"warm-up done: {warm.tally.counts.total() // 2} requests; router {start}")

        sampler = asyncio.create_task(self.sample())
        load = self.load(self.tally)
        t_load = time.monotonic()
        chaos.t0 = t_load
        load.start()
        chaos.start()
        try:
            while time.monotonic() - t_load < a.duration:
                await asyncio.sleep(min(1.0, a.duration - (time.monotonic() - t_load)))
                d.check_alive()
        finally:
            await chaos.stop()
            await load.stop()
        phases["load and chaos"] = round(time.monotonic() - t_load, 1)
        t0 = time.monotonic()
        log(f"load stopped after {phases['load and chaos']} s; settling")

        status = await self.settle(self.keep_previous_s + 60)
        phases["settle"] = round(time.monotonic() - t0, 1)
        probe = Tally()
        pl = self.load(probe, rate=50, lanes=(1, 1, 1))
        pl.start()
        await asyncio.sleep(1.0)
        await pl.stop()
        n200 = {p: probe.counts[f"{p} 200"] for p in ("http", "tcp")}
        n = {p: len(probe.answered_ns[p]) + probe.counts[f"{p} failed"] for p in ("http", "tcp")}
        self.check("the router still answers: 1 s of load after the soak, every request 200 on both protocols",
                   all(n200.values()) and n200 == n, f"HTTP {n200['http']} of {n['http']}, "
                   f"TCP {n200['tcp']} of {n['tcp']}")
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        self.info["metrics"] = {k: {lab: v - metrics0[k].get(lab, 0.0) for lab, v in vals.items()
                                    if v - metrics0[k].get(lab, 0.0)}
                                for k, vals in (await asyncio.to_thread(d.metrics)).items()}
        # The router's own count of live requests answered, by protocol and status, against the clients'.
        router = {k.split(" ", 1)[1]: int(v) for k, v in self.info["metrics"]["router_requests_total"].items()
                  if k.startswith("live ")}
        clients = Counter({f"{'msgpack' if k.startswith('tcp') else 'http'} {k.split(' ', 1)[1]}": n
                           for k, n in (self.tally.counts + probe.counts).items()
                           if k.split(" ", 1)[1] in ("200", "503", "504")})
        self.check("the router counted the live requests the clients saw answered (router_requests_total)",
                   router == dict(clients), f"router {dict(sorted(router.items()))}"
                   + ("" if router == dict(clients) else f", clients {dict(sorted(clients.items()))}"))
        end = self.snapshot()
        end["fds"] = await self.idle_fds(start["fds"] + FD_SLACK)
        self.info["end"] = end

        workers = listed_workers(status)
        expected = sum(REPLICAS.values())
        kids = children(d.pid)
        self.check("no leaked process: the router's children are exactly its live workers, as many as configured",
                   kids == workers and len(kids) == expected,
                   f"{len(kids)} children, {len(workers)} workers listed, {expected} configured"
                   + ("" if kids == workers else f" (children {kids}, workers {workers})"))
        self.check(f"no leaked descriptor: router fds after <= before + {FD_SLACK}",
                   end["fds"] <= start["fds"] + FD_SLACK, f"{start['fds']} -> {end['fds']} "
                   f"(peak {self.info.get('peak', {}).get('fds', '?')} during the soak)")
        growth = (end["rss_kib"] - start["rss_kib"]) / 1024
        self.check(f"no memory growth: router RSS after - before <= {RSS_SLACK_MIB:g} MiB",
                   growth <= RSS_SLACK_MIB, f"{start['rss_kib'] / 1024:.1f} -> {end['rss_kib'] / 1024:.1f} MiB "
                   f"({growth:+.1f}; peak {self.info.get('peak', {}).get('rss_kib', 0) / 1024:.1f})")

    def shutdown(self) -> None:
        """SIGTERM the router; check its exit and that nothing of its group, nor any worker seen, is left."""
        d = self.d
        if d is None:
            return
        if self.chaos is not None:
            self.chaos.resume_all()
        limit = DRAIN_TIMEOUT_S + WORKER_STOP_S + 10
        code, took = d.stop(limit)
        self.info["shutdown"] = {"exit_status": code, "seconds": round(took, 2)}
        self.check(f"SIGTERM: the router exits 0 within {limit} s (drain {DRAIN_TIMEOUT_S} s + worker stop "
                   f"{WORKER_STOP_S} s + 10)", code == 0, f"status {code} after {took:.2f} s")
        deadline = time.monotonic() + 5
        seen = self.chaos.seen_workers if self.chaos is not None else {}
        while True:
            group = group_members(d.pid)
            alive = [p for p, s in seen.items() if (st := proc_stat(p)) is not None and st[3] == s and st[0] != "Z"]
            if not (group or alive) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.check("after SIGTERM no process of the router's group, nor any worker it ran, remains",
                   not group and not alive, f"group {group}, workers {alive} ({len(seen)} worker pids seen)")
        text = d.log
        if self.a.log:
            self.a.log.parent.mkdir(parents=True, exist_ok=True)
            self.a.log.write_text(text)
        # asyncio's own reports of an exception nothing handled: a bug, whatever the requests saw.
        unhandled = [line for line in text.splitlines() if any(m in line for m in (
            "Task exception was never retrieved", "Exception in callback", "exception was never retrieved",
            "Unhandled exception"))]
        self.check("the router's log has no unhandled exception (asyncio's 'never retrieved', 'Exception in "
                   "callback')", not unhandled, f"{len(unhandled)}: {unhandled[:3]}" if unhandled else "none; "
                   f"{text.count('Traceback')} traceback(s), {text.count(' ERROR ')} ERROR line(s) in the log")


# -- report ------------------------------------------------------------------------------------------------


def figures(s: Soak) -> dict[str, Any]:
    t = s.tally
    out: dict[str, Any] = {"requests": {}, "latency_ms": {}}
    for proto in ("http", "tcp"):
        counts = {k.split(" ", 1)[1]: v for k, v in t.counts.items() if k.startswith(proto + " ")}
        counts["total"] = sum(v for k, v in counts.items() if ":" not in k)
        out["requests"][proto] = counts
        ok, ans = t.latency_ns[proto], t.answered_ns[proto]
        out["latency_ms"][proto] = {"p50_2xx": percentile(ok, 50) / 1e6, "p99_2xx": percentile(ok, 99) / 1e6,
                                    "p50_answered": percentile(ans, 50) / 1e6,
                                    "p99_answered": percentile(ans, 99) / 1e6,
                                    "max_answered": (max(ans) / 1e6) if ans else math.nan}
    out["failed"] = t.failed
    out["failure_samples"] = t.failures
    out["reasons"] = dict(t.reasons.most_common())
    out["reconnects"] = dict(t.reconnects)
    out["versions"] = dict(t.versions)
    if s.chaos is not None:
        out["actions"] = {k: s.chaos.actions.get(k, 0) for k in ACTIONS}
        out["action_results"] = dict(sorted(s.chaos.results.items()))
        out["slow_clients"] = dict(sorted(s.chaos.slow.counts.items()))
        out["worker_pids_seen"] = len(s.chaos.seen_workers)
    return out


def summary(s: Soak, fig: dict[str, Any]) -> list[str]:
    lines = []
    for proto, name in (("http", "HTTP"), ("tcp", "msgpack TCP")):
        c, lat = fig["requests"][proto], fig["latency_ms"][proto]
        lines.append(f"{name}: {c['total']} requests: {c.get('200', 0)} x 200, {c.get('503', 0)} x 503, "
                     f"{c.get('504', 0)} x 504, {c.get('failed', 0)} failed; 200 p50 {lat['p50_2xx']:.2f} ms, "
                     f"p99 {lat['p99_2xx']:.2f} ms; all answers p99 {lat['p99_answered']:.1f} ms, "
                     f"max {lat['max_answered']:.1f} ms")
    for reason, n in list(fig["reasons"].items())[:8]:
        lines.append(f"  {n:6d} x {reason}")
    if fig["failure_samples"]:
        lines.append("failures:")
        lines += [f"  {f}" for f in fig["failure_samples"]]
    if "actions" in fig:
        lines.append("chaos: " + ", ".join(f"{k} {v}" for k, v in fig["actions"].items()))
        lines.append("  results: " + ", ".join(f"{k} {v}" for k, v in fig["action_results"].items()))
        lines.append("  slow clients: " + ", ".join(f"{k} {v}" for k, v in fig["slow_clients"].items()))
    lines.append(f"reconnects after an idle close: {fig['reconnects'] or 'none'}; 200s by version "
                 f"{dict(sorted(fig['versions'].items()))}")
    m = s.info.get("metrics", {})
    if m:
        live = {k.split(" ", 1)[1]: int(v) for k, v in sorted(m["router_requests_total"].items())
                if k.startswith("live ")}
        lines.append(f"router counters over the soak (and the 1 s probe): live requests {live}; worker restarts "
                     f"{m['router_worker_restarts_total'].get('all', 0):.0f}; shadow copies "
                     f"{ {k: int(v) for k, v in m['router_shadow_requests_total'].items()} }; reloads "
                     f"{m['router_reloads_total']}; deploys {m['router_deploys_total']}")
    for when in ("start", "end"):
        if when in s.info:
            v = s.info[when]
            lines.append(f"router {when:5s}: {v['fds']} fds, RSS {v['rss_kib'] / 1024:.1f} MiB, "
                         f"{v['threads']} threads, {v['children']} children")
    if "peak" in s.info:
        p = s.info["peak"]
        lines.append(f"router peak during the soak: {p['fds']} fds, RSS {p['rss_kib'] / 1024:.1f} MiB, "
                     f"{p['threads']} threads, {p['children']} children")
    if "phases_s" in s.info:
        lines.append("phases: " + ", ".join(f"{k} {v:.0f} s" for k, v in s.info["phases_s"].items())
                     + f"; 1-min load average at most {s.info.get('peak', {}).get('loadavg', 0):.1f} (2 cores)")
    if "shutdown" in s.info:
        lines.append(f"shutdown: exit status {s.info['shutdown']['exit_status']} after "
                     f"{s.info['shutdown']['seconds']} s")
    for c in s.checks:
        lines.append(f"check {'PASS' if c['ok'] else 'FAIL'} {c['check']}: {c['value']}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load and chaos (default 300)")
    p.add_argument("--quick", action="store_true", help="20 s of load and chaos, shorter intervals (CI)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    p.add_argument("--seed", type=int, default=1, help="seed of the chaos and the load")
    p.add_argument("--rate", type=float, default=300.0, help="requests/s of the load, both protocols together")
    p.add_argument("--log", type=Path, metavar="FILE", help="keep the router's log (and its workers') here")
    a = p.parse_args(argv)
    if a.quick and "--duration" not in " ".join(argv if argv is not None else sys.argv):
        a.duration = 20.0
    a.warmup = 2.0 if a.quick else 10.0
    if a.duration <= 0 or a.rate <= 0:
        p.error("--duration and --rate must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    interrupt_on_sigterm()
    t0 = time.monotonic()
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        s = Soak(a, Path(tmp))
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(s.run())
        except SoakError as exc:
            errors.append(str(exc))
        except KeyboardInterrupt:
            errors.append("interrupted")
        finally:
            try:
                s.shutdown()
            except Exception as exc:  # never leave the daemon behind; say why the check could not run
                errors.append(f"shutdown: {exc!r}")
    fig = figures(s)
    if s.chaos is not None:
        errors += s.chaos.errors
    s.check("every request answered: 2xx, or 503/504 with a reason (none lost, none hung)", not fig["failed"],
            f"{fig['failed']} failed of {sum(fig['requests'][p]['total'] for p in ('http', 'tcp'))}")
    missing = [k for k in ACTIONS if not fig.get("actions", {}).get(k)]
    s.check("every chaos action ran at least once", not missing, "missing: " + ", ".join(missing) if missing
            else ", ".join(f"{k} {v}" for k, v in fig["actions"].items()))
    shadow_errors = s.info.get("metrics", {}).get("router_shadow_requests_total", {}).get(f"{SHADOW} error", 0)
    s.check("the shadow failed (its errors counted) without touching live replies", shadow_errors > 0,
            f"{shadow_errors:.0f} shadow copies answered an error")
    wall = time.monotonic() - t0
    for line in summary(s, fig):
        print(line)
    print(f"wall time {wall:.0f} s")
    errors += [f"check failed: {c['check']}: {c['value']}" for c in s.checks if not c["ok"]]
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "settings": {"duration_s": a.duration, "quick": a.quick, "seed": a.seed, "rate": a.rate,
                         "warmup_s": a.warmup, "request_timeout_ms": REQUEST_TIMEOUT_MS,
                         "client_timeout_s": CLIENT_TIMEOUT_S, "replicas": REPLICAS, "weights": WEIGHTS,
                         "shadow_fraction": SHADOW_FRACTION, "keep_previous_s": s.keep_previous_s,
                         "fd_slack": FD_SLACK, "rss_slack_mib": RSS_SLACK_MIB},
            "machine": {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            **fig, "router": {k: s.info.get(k) for k in ("start", "end", "peak", "shutdown", "router_ready_s")},
            "phases_s": s.info.get("phases_s"),
            "metrics": s.info.get("metrics", {}), "samples": s.samples,
            "action_log": s.chaos.log if s.chaos is not None else [], "checks": s.checks, "errors": errors,
            "ok": not errors, "wall_s": round(wall, 1)}, indent=2, default=str) + "\n")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def _loop_factory() -> Any:
    """uvloop, the router's own loop, when it is installed: the harness keeps up with less CPU."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
