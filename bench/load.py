"""End-to-end load benchmark: the router (HTTP and msgpack TCP) against its references, on pinned cores.

``python -m bench.load [--duration S] [--runs N] [--quick] [--json OUT]``

Everything is started here, in a temporary directory: the demo store
(``build_demo_store(extra=True)``), a config, the daemon, the references.

* Server core (``--server-cpu``, default 0): ``router serve`` under ``taskset``
  with ``cpus = [server]`` and ``threads = 1`` for every version, so the router
  and all its workers share that one core; the floor (``bench/floor.py``) and the
  TCP echo server (``bench/echo.py``) run there too.
* Client core (``--client-cpu``, default 1): every load generator (``wrk``,
  ``bench/client.py``) under ``taskset``, and this harness itself.

Scenarios (each run ``--runs`` times, interleaved round by round so slow drift
hits every scenario alike; the median of each figure is reported):

* ``http``: ``wrk -t1 -c{1,32} -d{S}s --latency`` with ``bench/oip_post.lua``
  POSTing a fixed OIP JSON body, to the router (``fraud`` pinned to version 1,
  ``mlp-small``) and to the floor (same models, same wrk command);
* ``msgpack``: ``bench/client.py`` one request at a time (c=1) and 32 pipelined
  on one connection (depth 32), same models;
* ``echo``: ``bench/client.py --mode echo``, c=1, frames of each msgpack request's size.

Besides latency and throughput it records, per run, how busy each core was
(``/proc/stat``) and the CPU time each server process used per request
(``/proc/PID/task/*/schedstat``): where the server core's time goes. Exits 1
when any request failed, any output did not parse, or a process misbehaved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .payloads import PAYLOADS, Payload

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "oip_post.lua"
HOST = "127.0.0.1"
MODELS = ("fraud", "mlp-small")
FLOOR_MODELS = ("fraud/1", "mlp-small/1")
HTTP_CONC = (1, 32)
PIPE_DEPTH = 32

# Targets of the issue.
TARGET_HTTP_RATIO = 1.2  # router HTTP c=32 throughput >= 1.2 x the floor's
TARGET_ECHO_MULT = 2.0  # msgpack c=1 p50 <= 2 x the TCP echo round trip's p50
FOREIGN_WARN_PCT = 8.0  # a run where other programs took more of a core is flagged


class BenchError(Exception):
    """A request failed, an output did not parse or a process misbehaved."""


# -- small /proc helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise BenchError(f"/proc/{pid}/status has no {key}")


def kib(value: str) -> int:
    return int(value.split()[0])


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: exact, not in ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended between listdir and read
    return total


def rusage_ns() -> int:
    """CPU time of this process and its waited-for children (the load generators), in ns."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * 1e9)


def cpu_jiffies(cpus: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    """``cpu -> (busy, total)`` jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            total = sum(v)
            out[int(name[3:])] = (total - v[3] - v[4], total)  # minus idle and iowait
    return out


# -- processes ---------------------------------------------------------------------------------------------


class Proc:
    """A server subprocess pinned with taskset, its output in a log file."""

    def __init__(self, name: str, argv: list[str], cpu: int, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=dict(os.environ))
        self.pid = self.proc.pid  # taskset execs the command: same pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log[-4000:]}")

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def http_get(port: int, path: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def http_post(port: int, path: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http_ready(p: Proc, port: int, timeout: float) -> float:
    """Poll ``/v2/health/ready`` every 10 ms; returns seconds from spawn to the first 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.check_alive()
        try:
            if http_get(port, "/v2/health/ready") == 200:
                return time.monotonic() - p.spawned
        except OSError:
            pass
        time.sleep(0.01)
    raise BenchError(f"{p.name} not ready within {timeout:.0f} s:\n{p.log[-4000:]}")


def wait_tcp_ready(p: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.check_alive()
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise BenchError(f"{p.name} not listening within {timeout:.0f} s:\n{p.log[-4000:]}")


# -- config ------------------------------------------------------------------------------------------------


def write_config(path: Path, store: Path, cpu: int, max_batch_size: int, max_batch_delay_us: int) -> None:
    """fraud (versions 1 and 2, as shipped) and mlp-small; every worker on ``cpu``, one thread."""
    version = (f'cpus = [{cpu}]\nthreads = 1\nmax_batch_size = {max_batch_size}\n'
               f'max_batch_delay_us = {max_batch_delay_us}\n')
    path.write_text(
        "[server]\n"
        "request_timeout_ms = 1000\n\n"
        f"[store]\npath = {json.dumps(str(store))}\n\n"
        '[[models]]\nname = "fraud"\nrouting_key = "x-user-id"\n'
        f'[[models.versions]]\nversion = "1"\nweight = 90\n{version}'
        f'[[models.versions]]\nversion = "2"\nweight = 10\n{version}\n'
        '[[models]]\nname = "mlp-small"\n'
        f'[[models.versions]]\nversion = "1"\n{version}'
    )


# -- wrk ---------------------------------------------------------------------------------------------------

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_PCT = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(text: str) -> dict[str, Any]:
    """p50/p99 (µs) from wrk's ``Latency Distribution``, ``Requests/sec``, and its error counts.

    Raises:
        BenchError: a figure is missing (wrong wrk, script error, ...).
    """
    if "Latency Distribution" not in text:
        raise BenchError(f"wrk printed no latency distribution (was --latency given?):\n{text}")
    pct = {int(m.group(1)): float(m.group(2)) * _UNITS[m.group(3)] for m in _PCT.finditer(text)}
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if 50 not in pct or 99 not in pct or rps is None or total is None:
        raise BenchError(f"cannot parse wrk's output:\n{text}")
    non2xx = _NON2XX.search(text)
    sock = _SOCKERR.search(text)
    return {
        "p50_us": pct[50], "p90_us": pct.get(90, math.nan), "p99_us": pct[99],
        "rps": float(rps.group(1)), "requests": int(total.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


# -- scenarios ---------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    proto: str  # "http", "msgpack" or "echo"
    target: str  # "router", "floor" or "echo"
    model: str
    conc: int
    runs: list[dict[str, Any]] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.proto}/{self.target}/{self.model}/c{self.conc}"


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.a = args
        self.tmp = tmp
        self.duration = max(1, round(args.duration))
        self.errors: list[str] = []
        self.disturbed: list[str] = []
        self.procs: list[Proc] = []
        self.info: dict[str, Any] = {}
        self.ports = {"http": free_port(), "msgpack": free_port(), "floor": free_port(), "echo": free_port()}
        self.router: Proc | None = None
        self.floor: Proc | None = None
        self.echo: Proc | None = None
        self.workers: dict[str, int] = {}  # "model/version" -> pid

    # setup ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        from runtime.demo import build_demo_store  # torch: imported only when benchmarking

        a = self.a
        store = self.tmp / "store"
        t0 = time.monotonic()
        build_demo_store(store, extra=True)
        log(f"demo store built in {time.monotonic() - t0:.1f} s")
        cfg = self.tmp / "config.toml"
        write_config(cfg, store, a.server_cpu, a.max_batch_size, a.max_batch_delay_us)
        py = sys.executable
        self.router = self._spawn("router", [py, "-m", "router", "serve", "--config", str(cfg),
                                             "--http", f"{HOST}:{self.ports['http']}",
                                             "--msgpack", f"{HOST}:{self.ports['msgpack']}"])
        ready_s = wait_http_ready(self.router, self.ports["http"], 120)
        self.info["router_ready_s"] = ready_s
        log(f"router ready {ready_s:.2f} s after spawn")
        for pid in children_of(self.router.pid):
            argv = cmdline(pid)
            if "runtime" in argv:
                self.workers[f"{argv[argv.index('--name') + 1]}/{argv[argv.index('--version') + 1]}"] = pid
        self.info["router_rss_ready_kib"] = kib(status_field(self.router.pid, "VmRSS"))
        self.info["compiled_extensions"] = "compiled extensions: framing, splitter" in self.router.log
        self.floor = self._spawn("floor", [py, "-m", "bench.floor", "--store", str(store),
                                           "--port", str(self.ports["floor"]), *FLOOR_MODELS])
        wait_http_ready(self.floor, self.ports["floor"], 120)
        self.echo = self._spawn("echo", [py, "-m", "bench.echo", "--port", str(self.ports["echo"])])
        wait_tcp_ready(self.echo, self.ports["echo"], 60)
        self._check_pinning()
        self._probe()

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, self.a.server_cpu, self.tmp)
        self.procs.append(p)
        return p

    def _check_pinning(self) -> None:
        want = str(self.a.server_cpu)
        pids = {"router": self.router.pid, "floor": self.floor.pid, "echo": self.echo.pid}
        pids.update({f"worker {k}": v for k, v in self.workers.items()})
        if len(self.workers) != 3:
            raise BenchError(f"expected 3 workers (fraud/1, fraud/2, mlp-small/1), found {sorted(self.workers)}")
        for name, pid in pids.items():
            got = status_field(pid, "Cpus_allowed_list")
            if got != want:
                raise BenchError(f"{name} (pid {pid}) may run on CPUs {got}, expected only {want}")
        self.info["pinning"] = {"server_cpu": self.a.server_cpu, "client_cpu": self.a.client_cpu,
                                "checked": sorted(pids)}

    def _probe(self) -> None:
        """One request of each kind, checked in full, before any load: the references must agree."""
        for model in MODELS:
            p = PAYLOADS[model]
            got = {}
            for target, port, path in (("router", self.ports["http"], p.http_path),
                                       ("floor", self.ports["floor"], p.floor_path)):
                status, body = http_post(port, path, p.oip_json())
                if status != 200:
                    raise BenchError(f"{target} HTTP {model}: status {status}: {body[:500]!r}")
                try:
                    reply = json.loads(body)
                    out = reply["outputs"][0]
                    assert out["name"] == p.output and out["shape"] == [1, p.out_width]
                    assert len(out["data"]) == p.out_width and reply["model_version"] == (p.version or "1")
                except (ValueError, KeyError, IndexError, TypeError, AssertionError):
                    raise BenchError(f"{target} HTTP {model}: unexpected reply {body[:500]!r}") from None
                got[target] = out["data"]
            if any(abs(x - y) > 1e-5 for x, y in zip(got["router"], got["floor"], strict=True)):
                raise BenchError(f"{model}: the floor answers {got['floor']}, the router {got['router']}")
            self._probe_msgpack(p, got["router"])

    def _probe_msgpack(self, p: Payload, expect: list[float]) -> None:
        import struct

        import msgpack

        with socket.create_connection((HOST, self.ports["msgpack"]), timeout=10) as s:
            s.sendall(p.frame(42))
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    raise BenchError("msgpack probe: connection closed")
                buf += chunk
        rid, status, version, result = msgpack.unpackb(buf[4:])
        if (rid, status, version) != (42, 200, p.version or "1"):
            raise BenchError(f"msgpack probe {p.model}: reply {(rid, status, version, result)!r}")
        data = struct.unpack(f"<{p.out_width}f", result["outputs"][p.output]["data"])
        if any(abs(x - y) > 1e-5 for x, y in zip(data, expect, strict=True)):
            raise BenchError(f"msgpack probe {p.model}: {data} differs from the HTTP answer {expect}")

    # measuring ------------------------------------------------------------------------------------------

    def scenarios(self) -> list[Scenario]:
        out = []
        for model in MODELS:
            for c in HTTP_CONC:
                out.append(Scenario("http", "router", model, c))
                out.append(Scenario("http", "floor", model, c))
            out.append(Scenario("msgpack", "router", model, 1))
            out.append(Scenario("msgpack", "router", model, PIPE_DEPTH))
            out.append(Scenario("echo", "echo", model, 1))
        return out

    def _server_pids(self, sc: Scenario) -> dict[str, int]:
        if sc.target == "router":
            p = PAYLOADS[sc.model]
            return {"router": self.router.pid, "worker": self.workers[f"{sc.model}/{p.version or '1'}"]}
        return {sc.target: (self.floor if sc.target == "floor" else self.echo).pid}

    def _client_argv(self, sc: Scenario, duration: int) -> tuple[list[str], dict[str, str]]:
        cpu = ["taskset", "-c", str(self.a.client_cpu)]
        p = PAYLOADS[sc.model]
        env = dict(os.environ)
        if sc.proto == "http":
            port, path = ((self.ports["http"], p.http_path) if sc.target == "router"
                          else (self.ports["floor"], p.floor_path))
            env["BENCH_BODY"] = p.oip_json().decode()
            return cpu + ["wrk", "-t1", f"-c{sc.conc}", f"-d{duration}s", "--latency", "-s", str(LUA),
                          f"http://{HOST}:{port}{path}"], env
        port = self.ports["msgpack"] if sc.proto == "msgpack" else self.ports["echo"]
        return cpu + [sys.executable, "-m", "bench.client", "--port", str(port), "--mode",
                      "echo" if sc.proto == "echo" else "msgpack", "--model", sc.model,
                      "--depth", str(sc.conc), "--duration", str(duration),
                      "--warmup", str(self.a.client_warmup)], env

    def run_once(self, sc: Scenario, duration: int, record: bool = True) -> dict[str, Any] | None:
        argv, env = self._client_argv(sc, duration)
        pids = self._server_pids(sc)
        others = [w for k, w in self.workers.items() if w != pids.get("worker")]
        cpus = (self.a.server_cpu, self.a.client_cpu)
        every = self._all_server_pids()
        j0 = cpu_jiffies(cpus)
        w0 = time.monotonic_ns()
        u0 = rusage_ns()
        a0 = sum(cpu_ns(v) for v in every)
        c0 = {k: cpu_ns(v) for k, v in pids.items()}
        o0 = sum(cpu_ns(w) for w in others) if sc.target == "router" else 0
        limit = duration + self.a.client_warmup + 60
        try:
            r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{sc.key}: load generator still running after {limit:.0f} s") from None
        c1 = {k: cpu_ns(v) for k, v in pids.items()}
        o1 = sum(cpu_ns(w) for w in others) if sc.target == "router" else 0
        a1 = sum(cpu_ns(v) for v in every)
        u1 = rusage_ns()
        w1 = time.monotonic_ns()
        j1 = cpu_jiffies(cpus)
        if not record:
            return None
        if sc.proto == "http":
            if r.returncode != 0:
                raise BenchError(f"{sc.key}: wrk exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
            res = parse_wrk(r.stdout)
            res["raw"] = r.stdout
            bad = res["non2xx"] + res["socket_errors"]
            if bad:
                self.errors.append(f"{sc.key}: {res['non2xx']} non-2xx responses, "
                                   f"{res['socket_errors']} socket errors")
        else:
            try:
                res = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise BenchError(f"{sc.key}: client printed no result (exit {r.returncode}):\n"
                                 f"{r.stdout}\n{r.stderr}") from None
            if res["errors"] or r.returncode != 0:
                self.errors.append(f"{sc.key}: {res['errors']} failed request(s): {res['error_messages']}")
        if not res["requests"]:
            self.errors.append(f"{sc.key}: no request completed")
            return None
        n = res["requests"]
        # CPU time is sampled around the whole client run (its warm-up included), so
        # divide by the requests of that whole window: rps x (measured + warm-up) for
        # the msgpack client, the request count for wrk (no warm-up).
        n_all = n if sc.proto == "http" else n + res["rps"] * self.a.client_warmup
        res["cpu_us_per_req"] = {k: (c1[k] - c0[k]) / 1e3 / n_all for k in c0}
        if sc.target == "router":
            res["cpu_us_per_req"]["other workers"] = (o1 - o0) / 1e3 / n_all
        res["core_busy_pct"] = {
            ("server" if cpu == self.a.server_cpu else "client"): 100.0 * (j1[cpu][0] - j0[cpu][0])
            / max(1, j1[cpu][1] - j0[cpu][1]) for cpu in cpus
        }
        # CPU time on each core that none of our processes used: another program
        # disturbing the measurement. /proc/stat counts in ticks: +-2 % is noise.
        wall = max(1, w1 - w0)
        busy = res["core_busy_pct"]
        res["foreign_pct"] = {"server": busy["server"] - 100.0 * (a1 - a0) / wall,
                              "client": busy["client"] - 100.0 * (u1 - u0) / wall}
        sc.runs.append(res)
        return res

    def _all_server_pids(self) -> list[int]:
        return [self.router.pid, *self.workers.values(), self.floor.pid, self.echo.pid]

    def measure(self, scenarios: list[Scenario]) -> None:
        a = self.a
        if a.wrk_warmup > 0:
            log(f"warm-up: {a.wrk_warmup} s of wrk per HTTP scenario")
            for sc in scenarios:
                if sc.proto == "http":
                    self.run_once(sc, a.wrk_warmup, record=False)
        for i in range(a.runs):
            for sc in scenarios:
                for p in self.procs:
                    p.check_alive()
                res = self.run_once(sc, self.duration)
                if res is not None:
                    f = res["foreign_pct"]
                    log(f"run {i + 1}/{a.runs} {sc.key:32s} p50 {res['p50_us']:8.1f} us  p99 "
                        f"{res['p99_us']:8.1f} us  {res['rps']:9.1f} req/s  server core "
                        f"{res['core_busy_pct']['server']:5.1f}% busy; foreign CPU: server "
                        f"{f['server']:4.1f}%, client {f['client']:4.1f}%")
                    if max(f.values()) > FOREIGN_WARN_PCT:
                        self.disturbed.append(f"{sc.key} run {i + 1}: other programs used "
                                              f"{f['server']:.0f}% of the server core, "
                                              f"{f['client']:.0f}% of the client core")
                        log(f"warning: {self.disturbed[-1]}")
        for sc in scenarios:
            if sc.runs:
                sc.median = median_of(sc.runs)

    def finish(self) -> None:
        """Check nothing restarted; record memory."""
        for p in self.procs:
            p.check_alive()
        now = {}
        for pid in children_of(self.router.pid):
            argv = cmdline(pid)
            if "runtime" in argv:
                now[f"{argv[argv.index('--name') + 1]}/{argv[argv.index('--version') + 1]}"] = pid
        if now != self.workers:
            self.errors.append(f"workers changed during the benchmark (a restart?): {self.workers} -> {now}")
        self.info["router_rss_kib"] = kib(status_field(self.router.pid, "VmRSS"))
        self.info["router_hwm_kib"] = kib(status_field(self.router.pid, "VmHWM"))
        self.info["worker_rss_kib"] = {k: kib(status_field(v, "VmRSS")) for k, v in self.workers.items()}
        self.info["floor_rss_kib"] = kib(status_field(self.floor.pid, "VmRSS"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            code = p.stop()
            if p is self.router and code != 0:
                self.errors.append(f"router exited with {code} on SIGTERM:\n{p.log[-2000:]}")


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    med: dict[str, float] = {}
    for k in ("p50_us", "p90_us", "p99_us", "rps", "requests"):
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        if vals:
            med[k] = statistics.median(vals)
    for group in ("cpu_us_per_req", "core_busy_pct", "foreign_pct"):
        for k in runs[0].get(group, {}):
            med[f"{group}.{k}"] = statistics.median(r[group][k] for r in runs)
    return med


# -- report ------------------------------------------------------------------------------------------------


def analyse(scs: list[Scenario]) -> dict[str, Any]:
    by = {sc.key: sc.median for sc in scs if sc.median}
    out: dict[str, Any] = {"http_vs_floor": {}, "msgpack_vs_echo": {}, "targets": []}
    for model in MODELS:
        for c in HTTP_CONC:
            r, f = by.get(f"http/router/{model}/c{c}"), by.get(f"http/floor/{model}/c{c}")
            if r and f:
                out["http_vs_floor"][f"{model}/c{c}"] = {
                    "rps_ratio": r["rps"] / f["rps"], "p50_ratio": r["p50_us"] / f["p50_us"]}
        m, e = by.get(f"msgpack/router/{model}/c1"), by.get(f"echo/echo/{model}/c1")
        if m and e:
            out["msgpack_vs_echo"][model] = {"p50_minus_echo_us": m["p50_us"] - e["p50_us"],
                                             "p50_over_echo": m["p50_us"] / e["p50_us"]}
    for model in MODELS:
        hv = out["http_vs_floor"].get(f"{model}/c32")
        if hv:
            out["targets"].append({
                "target": f"HTTP c=32 throughput >= {TARGET_HTTP_RATIO}x floor ({model})",
                "value": f"{hv['rps_ratio']:.2f}x ({by[f'http/router/{model}/c32']['rps']:.0f} vs "
                         f"{by[f'http/floor/{model}/c32']['rps']:.0f} req/s)",
                "met": hv["rps_ratio"] >= TARGET_HTTP_RATIO})
        mv = out["msgpack_vs_echo"].get(model)
        if mv:
            out["targets"].append({
                "target": f"msgpack c=1 p50 <= {TARGET_ECHO_MULT}x echo round trip ({model})",
                "value": f"{mv['p50_over_echo']:.2f}x ({by[f'msgpack/router/{model}/c1']['p50_us']:.0f} vs "
                         f"{by[f'echo/echo/{model}/c1']['p50_us']:.0f} us p50)",
                "met": mv["p50_over_echo"] <= TARGET_ECHO_MULT})
    return out


def table(scs: list[Scenario], ana: dict[str, Any]) -> str:
    head = ["scenario", "model", "c", "p50 µs", "p99 µs", "req/s", "vs floor req/s", "p50 - echo µs",
            "server core", "server CPU µs/req"]
    rows = [head]
    for sc in scs:
        m = sc.median
        if not m:
            rows.append([f"{sc.proto} {sc.target}", sc.model, str(sc.conc), "failed", "", "", "", "", "", ""])
            continue
        ratio = ""
        if sc.proto == "http" and sc.target == "router":
            v = ana["http_vs_floor"].get(f"{sc.model}/c{sc.conc}")
            ratio = f"{v['rps_ratio']:.2f}x" if v else ""
        minus = ""
        if sc.proto == "msgpack" and sc.conc == 1:
            v = ana["msgpack_vs_echo"].get(sc.model)
            minus = f"{v['p50_minus_echo_us']:+.0f}" if v else ""
        cpu = {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("cpu_us_per_req.")}
        if sc.target == "router":
            cpu_s = f"{cpu['router']:.0f} router + {cpu['worker']:.0f} worker"
        else:
            cpu_s = f"{sum(cpu.values()):.0f}"
        label = {"http": "HTTP", "msgpack": "msgpack", "echo": "TCP echo"}[sc.proto]
        conc = f"{sc.conc}" if sc.proto != "msgpack" or sc.conc == 1 else f"{sc.conc} (pipelined)"
        rows.append([f"{label} {sc.target}" if sc.proto != "echo" else label, sc.model, conc,
                     f"{m['p50_us']:.0f}", f"{m['p99_us']:.0f}", f"{m['rps']:.0f}", ratio, minus,
                     f"{m['core_busy_pct.server']:.0f}%", cpu_s])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    import msgpack
    import numpy
    import torch
    import uvloop

    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
        "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
        "msgpack": ".".join(map(str, msgpack.version)), "wrk": wrk[0].strip() if wrk else "",
    }


def require_tools(parser: argparse.ArgumentParser) -> None:
    """Exit through ``parser`` naming the first load tool missing (``wrk``, ``taskset``)."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"`{tool}` is not installed")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per scenario run (whole seconds)")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario; the median is reported")
    p.add_argument("--quick", action="store_true", help="2 s per scenario, 1 run, short warm-ups (CI)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every result here")
    p.add_argument("--server-cpu", type=int, default=0, help="core of the router, its workers and references")
    p.add_argument("--client-cpu", type=int, default=1, help="core of the load generators and this harness")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-delay-us", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated protocols to run: http, msgpack, echo (default all)")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.runs = 2.0, 1
    a.wrk_warmup = 1 if a.quick else 2
    a.client_warmup = 0.2 if a.quick else 0.5
    if a.runs < 1 or a.duration <= 0:
        p.error("--runs and --duration must be positive")
    if a.server_cpu == a.client_cpu:
        p.error("--server-cpu and --client-cpu must differ")
    avail = os.sched_getaffinity(0)
    for cpu in (a.server_cpu, a.client_cpu):
        if cpu not in avail:
            p.error(f"CPU {cpu} is not available to this process (it may use {sorted(avail)})")
    require_tools(p)
    os.sched_setaffinity(0, {a.client_cpu})  # the harness stays off the server core

    result: dict[str, Any] = {"machine": machine(), "settings": {
        "duration_s": max(1, round(a.duration)), "runs": a.runs, "quick": a.quick,
        "server_cpu": a.server_cpu, "client_cpu": a.client_cpu, "max_batch_size": a.max_batch_size,
        "max_batch_delay_us": a.max_batch_delay_us, "wrk_warmup_s": a.wrk_warmup,
        "client_warmup_s": a.client_warmup, "pipeline_depth": PIPE_DEPTH}}
    scs: list[Scenario] = []
    failure = ""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        b = Bench(a, Path(tmp))
        try:
            b.start()
            scs = b.scenarios()
            if a.only:
                keep = set(a.only.split(","))
                scs = [sc for sc in scs if sc.proto in keep]
            b.measure(scs)
            b.finish()
        except BenchError as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            failure = "interrupted"
        finally:
            b.stop()
        errors = b.errors + ([failure] if failure else [])
        result["info"] = b.info
        result["disturbed_runs"] = b.disturbed
    ana = analyse(scs)
    result["scenarios"] = [{"key": sc.key, "proto": sc.proto, "target": sc.target, "model": sc.model,
                            "concurrency": sc.conc, "median": sc.median,
                            "runs": [{k: v for k, v in r.items() if k != "raw"} for r in sc.runs]}
                           for sc in scs]
    result["analysis"] = ana
    result["errors"] = errors
    if scs:
        print(table(scs, ana))
        print()
        info = result["info"]
        if "router_rss_kib" in info:
            print(f"router process RSS {info['router_rss_kib'] / 1024:.1f} MiB after the load "
                  f"(peak {info['router_hwm_kib'] / 1024:.1f} MiB, {info['router_rss_ready_kib'] / 1024:.1f} MiB "
                  f"when ready); workers " + ", ".join(f"{k} {v / 1024:.0f} MiB"
                                                      for k, v in info["worker_rss_kib"].items())
                  + f"; floor {info['floor_rss_kib'] / 1024:.0f} MiB")
        if "router_ready_s" in info:
            print(f"router spawn -> /v2/health/ready 200: {info['router_ready_s']:.2f} s "
                  f"(3 workers on one core; compiled extensions: {'yes' if info['compiled_extensions'] else 'no'})")
        if result["disturbed_runs"]:
            print(f"{len(result['disturbed_runs'])} run(s) shared a core with other programs "
                  f"(> {FOREIGN_WARN_PCT:.0f}% foreign CPU): " + "; ".join(result["disturbed_runs"]))
        else:
            print(f"no run shared a core with other programs (foreign CPU <= {FOREIGN_WARN_PCT:.0f}% "
                  f"on both cores in every run)")
        for t in ana["targets"]:
            print(f"target {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
