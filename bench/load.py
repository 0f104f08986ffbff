"""End-to-end load suite: the router (HTTP and msgpack TCP) against its references, on pinned cores.

``python -m bench.load [--duration S] [--runs N] [--quick] [--only REGEX] [--json OUT]``

Everything is started here, in a temporary directory: the demo store
(``build_demo_store(extra=True)``), a config, the daemon, the references.

Models (``bench/payloads.py``: one row per request, each version's ``meta.json``
example input): ``fraud`` (the demo model, pinned to version 1), ``mlp-small``
(4 -> 64 -> 3) and ``mlp-wide`` (256 -> 1024 -> 1024 -> 10), both routed to version 1.

Daemon and store: each benchmarked version directory is copied to a second
version named ``nobatch``. Every version has ``cpus = [server]``, ``threads = 1``;
the benchmarked versions ``1`` have ``max_batch_size = 32``,
``max_batch_delay_us = 0`` (batching on: what has already arrived is batched,
no waiting), the ``nobatch`` copies ``max_batch_size = 1`` (batching off) and
``weight = 0``, so they take only requests pinned to them
(``/v2/models/{m}/versions/nobatch/infer``). ``mlp-small`` also has its demo
version ``copy`` (version 1 bit for bit, ``weight = 0``), the shadow.
``request_timeout_ms`` is 10 s so a slow, noisy machine shows up in the
latencies instead of failing requests.

Cores:

* Server core (``--server-cpu``, default 0): ``router serve`` under ``taskset``,
  so the router and all its workers share that one core; the floor, the TCP
  echo server and the in-process reference run there too. Checked
  (``Cpus_allowed_list`` of every process) before any load.
* Client core (``--client-cpu``, default 1): every load generator (``wrk``,
  ``bench/client.py``) under ``taskset``, and this harness itself.

Scenarios (keys ``FORMAT/TARGET/MODEL/cN``; ``--only REGEX`` keeps the keys it matches):

* HTTP, formats ``json`` (OIP JSON), ``binary`` (OIP binary tensor extension,
  binary outputs) and ``msgpack`` (msgpack body over HTTP): ``wrk -t1 -c{1,32,256}
  --latency`` with ``bench/oip_post.lua`` POSTing the fixed body, for every
  model, to the router (target ``router``, batching on) and to the floor
  (``floor``, ``bench/floor.py``: the same model in a minimal aiohttp + uvloop
  handler, loaded as a worker loads it, one torch thread);
* ``json/nobatch``: OIP JSON at c=1, 32, 256 pinned to the ``nobatch`` version;
* ``tcp/router``: msgpack TCP with ``bench/client.py``: c=1 one request at a
  time, c=32 and c=256 pipelined on one connection (``--depth``), and for
  ``fraud`` and ``mlp-small`` also depth 64 (the throughput target);
* ``echo/echo``: ``bench/client.py --mode echo`` c=1 against ``bench/echo.py``,
  frames of the size of each model's msgpack request: one network hop;
* ``json/shadow`` c=1 and c=32 and ``tcp/shadow`` c=1 on ``mlp-small``: the
  same load while 100 % of it is mirrored to ``copy``
  (``PUT /admin/models/mlp-small/traffic {"shadow": {"copy": 1}}`` before the
  run, ``{"shadow": {"copy": 0}}`` after it); copies compared and dropped are
  counted from ``router_shadow_requests_total`` in ``/metrics``;
* ``tcp/poll`` c=1 and depth 64 (fraud, mlp-small) and ``json/poll`` c=1 and
  c=32 (mlp-small): a second daemon on the same core, serving the live versions
  of fraud and mlp-small with ``server.busy_poll_us = --busy-poll-us``
  (default 1000; 0 leaves it out). It sleeps while the other scenarios run:
  it polls only for that long after its own requests;
* ``inproc/inproc``: ``bench/inproc.py``: the model's forward called in a loop
  in one process on the server core, no serving at all: batch 1 for every
  model, and batch 32 for ``mlp-wide`` (per-row cost: what batching can buy);
* with CUDA (``torch.cuda.is_available()``): a ``cuda`` copy of ``mlp-wide``
  on ``cuda:0``: ``json/cuda`` c=1 and c=32, and in-process ``inproc-cuda``
  batch 1 and 32. Without it one line says the GPU scenarios were skipped.

Method (defaults: ``--runs 3``, ``--duration 3``; about 16 minutes in all on
two cores): 1 s of wrk warm-up per HTTP scenario, then ``--runs`` rounds; in
each round the in-process reference runs first (2 s per case), then every
scenario once for ``--duration`` seconds, in the same order (interleaved, so
slow drift hits every scenario alike). The msgpack client warms up 0.5 s in
each run, outside the measured window. A run that completes no request at
all (a machine stalled by other programs) is run again once. The median of
each figure over the runs is reported (p50 and p99 from wrk's latency
distribution or the client's nearest-rank percentiles; throughput; for the
in-process rows, p50/p99 per forward call and rows per second). Before any load, one request of each
kind (every model x format x target, TCP included, and one shadow copy) is
sent and checked in full: the router's and the floor's outputs must agree to
1e-5 (1e-4 for the CUDA version), and the three formats' outputs with each other.

Per run it also records how busy each core was (``/proc/stat``), the CPU time
per request of the router, the serving worker, the shadow worker and every
reference (``/proc/PID/task/*/schedstat``), and the CPU time on either core
that none of our processes used ("foreign": another program disturbing the
run; > 8 % is flagged).

Besides: router RSS (when ready, after the load and its peak), each worker's
and the floor's RSS; the full daemon's cold start (spawn -> first 200 from
``/v2/health/ready``), and the cold start of a separate daemon serving exactly
two workers (fraud/1 and mlp-small/1), started ``--runs`` times before the
main daemon, median reported.

Output: one table row per scenario (p50, p99, req/s; ratio of req/s to the
floor's and p50 minus the floor's p50 for the same model, format and
concurrency; p50 minus the echo's for msgpack TCP c=1; server core busy; CPU
µs per request per process), then batching, shadow and in-process summaries,
memory, cold starts and the targets, each MET or MISSED (``n/a`` when
``--only`` left its scenarios out):

* mlp-small, HTTP OIP JSON: c=32 router req/s >= 2x the floor's; c=1 router
  p50 <= floor p50 + 40 µs;
* mlp-wide, HTTP OIP JSON c=32 (batching on): router req/s >= 3x the floor's;
* msgpack TCP c=1: p50 <= 2x the TCP echo p50 (the spine's target) and
  <= TCP echo p50 + 50 µs, and pipelined depth 64 on one
  connection >= 60,000 inferences/s, for fraud and mlp-small (a forward of a
  few µs: these targets are about the serving path; mlp-wide's forward alone,
  about 200 µs, is in its in-process row); each for the default daemon and
  for the busy-polling one;
* router process RSS <= 120 MiB (its peak, VmHWM, after the load);
* two workers ready <= 3 s after spawn (the separate two-worker daemon, median).

``--json`` writes every run, the medians, the analysis, the targets, the
settings and the machine. Exits 1 when any request
failed, any output did not parse, or a process misbehaved. ``--quick`` (1 run
of 1 s, no wrk warm-up) is the CI smoke run: it checks that everything works,
its figures mean little.
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

from .payloads import HCL, HTTP_FORMATS, PAYLOADS, Payload

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "oip_post.lua"
HOST = "127.0.0.1"

MODELS = ("fraud", "mlp-small", "mlp-wide")
#: Models whose forward takes a few µs: the serving-overhead targets are about them
#: (mlp-wide's forward alone takes longer than the echo allowance).
SMALL_MODELS = ("fraud", "mlp-small")
CONCS = (1, 32, 256)
TARGET_DEPTH = 64
NOBATCH = "nobatch"
SHADOW_MODEL, SHADOW_VERSION = "mlp-small", "copy"
SHADOW_LOADS = (("json", 1), ("json", 32), ("tcp", 1))
CUDA_VERSION, CUDA_DEVICE = "cuda", "cuda:0"
#: Scenarios of the second daemon, the same models behind ``server.busy_poll_us``.
POLL_LOADS = (("tcp", "fraud", 1), ("tcp", "mlp-small", 1), ("tcp", "fraud", TARGET_DEPTH),
              ("tcp", "mlp-small", TARGET_DEPTH), ("json", "mlp-small", 1), ("json", "mlp-small", 32))
CUDA_CONCS = (1, 32)
INPROC_BATCH = 32
#: The versions of the separate daemon whose cold start is a target.
COLD_START_VERSIONS = ("fraud/1", "mlp-small/1")
REQUEST_TIMEOUT_MS = 10_000

# Targets of the issue.
TARGET_SMALL_RATIO = 2.0  # mlp-small, HTTP OIP JSON c=32: router req/s >= 2.0 x the floor's
TARGET_SMALL_P50_US = 40.0  # mlp-small, HTTP OIP JSON c=1: router p50 <= floor p50 + 40 µs
TARGET_WIDE_RATIO = 3.0  # mlp-wide, HTTP OIP JSON c=32 (batching on): router req/s >= 3 x the floor's
TARGET_ECHO_US = 50.0  # msgpack TCP c=1: p50 <= TCP echo p50 + 50 µs
TARGET_ECHO_RATIO = 2.0  # msgpack TCP c=1: p50 <= 2 x TCP echo p50 (the spine's target)
TARGET_PIPE_RPS = 60_000.0  # msgpack TCP, depth 64 on one connection: inferences/s
TARGET_RSS_MIB = 120.0  # router process RSS (its peak)
TARGET_TWO_READY_S = 3.0  # a daemon serving two workers: spawn -> /v2/health/ready 200
FOREIGN_WARN_PCT = 8.0  # a run where other programs took more of a core is flagged


def shadow_requests(port: int) -> dict[str, float]:
    """The daemon's ``router_shadow_requests_total``, summed as ``{"VERSION.RESULT": count}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "router_shadow_requests_total":
                k = f"{s.labels['version']}.{s.labels['result']}"
                out[k] = out.get(k, 0.0) + s.value
    return out


class BenchError(Exception):
    """A request failed, an output did not parse or a process misbehaved."""


class NoRequests(Exception):
    """A run in which no request completed: nothing failed, but nothing was measured either."""


# -- small /proc helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on ``HOST``."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def status_field(pid: int, key: str) -> str:
    """One field of ``/proc/PID/status``, e.g. ``VmRSS``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise BenchError(f"/proc/{pid}/status has no {key}")


def kib(value: str) -> int:
    return int(value.split()[0])


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: exact, not in ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended between listdir and read
    return total


def rusage_ns() -> tuple[int, int]:
    """CPU time so far, in ns, of this process and of its waited-for children (and theirs, once reaped).

    The children are the load generators (client core) or, around a cold start or
    the in-process reference, the daemon with its workers or that reference (server core).
    """
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((me.ru_utime + me.ru_stime) * 1e9), int((kids.ru_utime + kids.ru_stime) * 1e9)


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
    """A server subprocess pinned with taskset, its output in a log file; ``env`` adds to the environment."""

    def __init__(self, name: str, argv: list[str], cpu: int, log_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.pid = self.proc.pid  # taskset execs the command: same pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise BenchError with the end of its log if the process has exited."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log[-4000:]}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (SIGKILL after ``timeout``); returns the exit status."""
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
    """The status of ``GET path``."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def http_json(port: int, path: str, method: str = "GET", body: Any = None, timeout: float = 10.0) -> Any:
    """A JSON request to the daemon's admin API; its decoded JSON answer (BenchError unless 200)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise BenchError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None


def http_post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
              timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """``POST path``: ``(status, response headers, body)``."""
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method="POST",
                                 headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


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
    """Wait until ``port`` accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.check_alive()
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.01)
    raise BenchError(f"{p.name} not listening within {timeout:.0f} s:\n{p.log[-4000:]}")


def daemon_workers(port: int) -> dict[str, int]:
    """``"model/version" -> pid`` of every worker, from ``GET /admin/models`` (first replica: there is one)."""
    doc = http_json(port, "/admin/models")
    return {f"{m['model']}/{v['version']}": w["pid"] for m in doc["models"] for v in m["versions"]
            for w in v["workers"]}


# -- store and config --------------------------------------------------------------------------------------


def prepare_store(store: Path, gpu: bool) -> None:
    """The demo store plus a ``nobatch`` copy of every benchmarked version (and a ``cuda`` one of mlp-wide)."""
    from modelkit.demo import build_demo_store  # torch: imported only when benchmarking

    build_demo_store(store, extra=True)
    copies = [(m, NOBATCH) for m in MODELS] + ([("mlp-wide", CUDA_VERSION)] if gpu else [])
    for model, version in copies:
        src = store / model / PAYLOADS[model].answering_version
        dst = store / model / version
        shutil.copytree(src, dst)
        # The reply body names meta.json's version: make the copy say its own name.
        meta = json.loads((dst / "meta.json").read_text())
        meta["version"] = version
        (dst / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def version_block(version: str, cpu: int, weight: float, max_batch_size: int, max_batch_delay_us: int,
                  device: str = "cpu") -> str:
    """One ``[[models.versions]]`` table, pinned to ``cpu`` with one torch thread."""
    return (f'[[models.versions]]\nversion = "{version}"\nweight = {weight}\ndevice = "{device}"\n'
            f"cpus = [{cpu}]\nthreads = 1\nmax_batch_size = {max_batch_size}\n"
            f"max_batch_delay_us = {max_batch_delay_us}\n")


def write_config(path: Path, store: Path, cpu: int, max_batch_size: int, max_batch_delay_us: int,
                 gpu: bool) -> list[str]:
    """The suite's daemon config; returns the ``model/version`` of every worker it starts."""
    parts = [f"[server]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\n\n[store]\npath = {json.dumps(str(store))}\n"]
    workers = []
    for model in MODELS:
        live = PAYLOADS[model].answering_version
        blocks = [(live, 1, max_batch_size, "cpu"), (NOBATCH, 0, 1, "cpu")]
        if model == SHADOW_MODEL:
            blocks.append((SHADOW_VERSION, 0, max_batch_size, "cpu"))
        if model == "mlp-wide" and gpu:
            blocks.append((CUDA_VERSION, 0, max_batch_size, CUDA_DEVICE))
        parts.append(f'\n[[models]]\nname = "{model}"\n' + "".join(
            version_block(v, cpu, w, mbs, max_batch_delay_us, dev) for v, w, mbs, dev in blocks))
        workers += [f"{model}/{v}" for v, *_ in blocks]
    path.write_text("".join(parts))
    return workers


def write_poll_config(path: Path, store: Path, cpu: int, max_batch_size: int, max_batch_delay_us: int,
                      busy_poll_us: int) -> None:
    """The busy-polling daemon: the live version of each of ``SMALL_MODELS``, pinned to ``cpu``."""
    parts = [f"[server]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\nbusy_poll_us = {busy_poll_us}\n\n"
             f"[store]\npath = {json.dumps(str(store))}\n"]
    for model in SMALL_MODELS:
        parts.append(f'\n[[models]]\nname = "{model}"\n' + version_block(
            PAYLOADS[model].answering_version, cpu, 1, max_batch_size, max_batch_delay_us))
    path.write_text("".join(parts))


def write_cold_config(path: Path, store: Path, cpu: int) -> None:
    """A daemon serving exactly the two ``COLD_START_VERSIONS`` (one worker each), pinned to ``cpu``."""
    parts = [f"[server]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\n\n[store]\npath = {json.dumps(str(store))}\n"]
    for spec in COLD_START_VERSIONS:
        model, version = spec.split("/")
        parts.append(f'\n[[models]]\nname = "{model}"\n' + version_block(version, cpu, 1, 32, 0))
    path.write_text("".join(parts))


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


# -- replies -----------------------------------------------------------------------------------------------


def decode_reply(fmt: str, headers: dict[str, str], body: bytes) -> tuple[str, str, list[int], list[float]]:
    """``(model_version, output name, shape, values)`` of a 200 inference reply in body format ``fmt``.

    The client's decoder reads the body (the format from its headers); on top, the reply must
    hold one FP32 output, sent as binary data exactly when ``fmt`` is ``binary``.

    Raises:
        ValueError, KeyError, IndexError, TypeError: the reply is malformed.
    """
    import numpy as np

    from router.client._oip import decode_infer

    lower = {k.lower(): v for k, v in headers.items()}
    result = decode_infer(200, lambda name: lower.get(name.lower()), body)
    ((name, arr),) = result.outputs.items()
    if arr.dtype != np.float32:
        raise ValueError(f"{fmt} reply: output {name!r} is {arr.dtype}, not FP32")
    if fmt == "binary":
        hlen = int(lower[HCL.lower()])
        if hlen + arr.nbytes != len(body):
            raise ValueError(f"binary reply: header {hlen} + data {arr.nbytes} bytes != body {len(body)} bytes")
    return result.model_version, name, list(arr.shape), arr.reshape(-1).tolist()


def close_enough(a: list[float], b: list[float], tol: float) -> bool:
    """Element-wise ``|a - b| <= tol * max(1, |b|)``, same lengths."""
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b, strict=True))


# -- scenarios ---------------------------------------------------------------------------------------------

_FORMAT_LABELS = {"json": "HTTP JSON", "binary": "HTTP binary", "msgpack": "HTTP msgpack", "tcp": "msgpack TCP",
                  "echo": "TCP echo", "inproc": "in-process forward"}
_TARGET_LABELS = {"router": "router", "poll": "router, busy poll", "nobatch": "router, batching off",
                  "shadow": "router, shadow 100%",
                  "cuda": f"router, {CUDA_DEVICE}", "floor": "floor", "echo": "", "inproc": "",
                  "inproc-cuda": CUDA_DEVICE}


@dataclass
class Scenario:
    """One load (or reference) measured ``--runs`` times."""

    proto: str  # "json", "binary", "msgpack" (HTTP bodies), "tcp" (msgpack TCP), "echo" or "inproc"
    target: str  # "router", "poll", "nobatch", "shadow", "cuda", "floor", "echo", "inproc" or "inproc-cuda"
    model: str
    conc: int  # HTTP connections, TCP requests in flight, or rows per call (in-process)
    runs: list[dict[str, Any]] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.proto}/{self.target}/{self.model}/{'b' if self.inproc else 'c'}{self.conc}"

    @property
    def http(self) -> bool:
        return self.proto in HTTP_FORMATS

    @property
    def inproc(self) -> bool:
        return self.proto == "inproc"

    @property
    def on_router(self) -> bool:
        return self.target in ("router", "poll", "nobatch", "shadow", "cuda")

    @property
    def payload(self) -> Payload:
        """The request sent, pinned to the version this scenario measures."""
        p = PAYLOADS[self.model]
        pin = {"nobatch": NOBATCH, "cuda": CUDA_VERSION}.get(self.target)
        return p.pinned(pin) if pin else p

    @property
    def label(self) -> str:
        return f"{_FORMAT_LABELS[self.proto]} {_TARGET_LABELS[self.target]}".strip()

    @property
    def conc_label(self) -> str:
        if self.inproc:
            return f"batch {self.conc}"
        if self.proto == "tcp" and self.conc > 1:
            return f"{self.conc} (pipelined)"
        return str(self.conc)


def grid(gpu: bool, poll: bool) -> list[Scenario]:
    """Every scenario of the suite, in table order (``poll``: with the busy-polling daemon's)."""
    out: list[Scenario] = []
    for model in MODELS:
        for fmt in HTTP_FORMATS:
            for c in CONCS:
                out += [Scenario(fmt, "router", model, c), Scenario(fmt, "floor", model, c)]
        out += [Scenario("json", "nobatch", model, c) for c in CONCS]
        depths = CONCS + ((TARGET_DEPTH,) if model in SMALL_MODELS else ())
        out += [Scenario("tcp", "router", model, c) for c in sorted(depths)]
        out.append(Scenario("echo", "echo", model, 1))
        out.append(Scenario("inproc", "inproc", model, 1))
        if model == "mlp-wide":
            out.append(Scenario("inproc", "inproc", model, INPROC_BATCH))
    out += [Scenario(proto, "shadow", SHADOW_MODEL, c) for proto, c in SHADOW_LOADS]
    if poll:
        out += [Scenario(proto, "poll", model, c) for proto, model, c in POLL_LOADS]
    if gpu:
        out += [Scenario("json", "cuda", "mlp-wide", c) for c in CUDA_CONCS]
        out += [Scenario("inproc", "inproc-cuda", "mlp-wide", b) for b in (1, INPROC_BATCH)]
    return out


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median of every figure over ``runs`` (nested groups flattened to ``group.key``)."""
    med: dict[str, float] = {}
    for k in ("p50_us", "p90_us", "p99_us", "rps", "requests", "p50_us_per_row", "cpu_us_per_row"):
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        if vals:
            med[k] = statistics.median(vals)
    for group in ("cpu_us_per_req", "core_busy_pct", "foreign_pct", "shadow"):
        keys = sorted({k for r in runs for k in r.get(group, {})})
        for k in keys:
            med[f"{group}.{k}"] = statistics.median(r.get(group, {}).get(k, 0.0) for r in runs)
    return med


# -- the suite ---------------------------------------------------------------------------------------------


class Bench:
    """The daemon, the references, and the measurements taken against them."""

    def __init__(self, args: argparse.Namespace, tmp: Path, gpu: bool) -> None:
        self.a = args
        self.tmp = tmp
        self.gpu = gpu
        self.duration = max(1, round(args.duration))
        self.store = tmp / "store"
        self.bodies = tmp / "bodies"
        self.errors: list[str] = []
        self.disturbed: list[str] = []
        self.procs: list[Proc] = []
        self.info: dict[str, Any] = {}
        self.ports = {"http": free_port(), "msgpack": free_port(), "floor": free_port(), "echo": free_port(),
                      "poll_http": free_port(), "poll_msgpack": free_port()}
        self.router: Proc | None = None
        self.poll: Proc | None = None  # the busy-polling daemon (--busy-poll-us)
        self.poll_workers: dict[str, int] = {}
        self.floor: Proc | None = None
        self.echo: Proc | None = None
        self.expected: list[str] = []
        self.workers: dict[str, int] = {}  # "model/version" -> pid

    # setup ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Store, the two-worker cold starts, the daemon, the references; check pinning; probe."""
        a = self.a
        t0 = time.monotonic()
        prepare_store(self.store, self.gpu)
        log(f"demo store built in {time.monotonic() - t0:.1f} s")
        self._write_bodies()
        self.cold_starts(a.cold_starts)
        cfg = self.tmp / "config.toml"
        self.expected = write_config(cfg, self.store, a.server_cpu, a.max_batch_size, a.max_batch_delay_us, self.gpu)
        py = sys.executable
        self.router = self._spawn("router", [py, "-m", "router", "serve", "--config", str(cfg),
                                             "--http", f"{HOST}:{self.ports['http']}",
                                             "--msgpack", f"{HOST}:{self.ports['msgpack']}"])
        ready_s = wait_http_ready(self.router, self.ports["http"], 300)
        self.info["router_ready_s"] = ready_s
        self.info["router_workers"] = len(self.expected)
        log(f"router ready {ready_s:.2f} s after spawn ({len(self.expected)} workers)")
        self.workers = daemon_workers(self.ports["http"])
        self.info["router_rss_ready_kib"] = kib(status_field(self.router.pid, "VmRSS"))
        self.info["compiled_extensions"] = "compiled extensions:" in self.router.log
        if a.poll_daemon:
            cfg = self.tmp / "config-poll.toml"
            write_poll_config(cfg, self.store, a.server_cpu, a.max_batch_size, a.max_batch_delay_us, a.busy_poll_us)
            self.poll = self._spawn("poll", [py, "-m", "router", "serve", "--config", str(cfg),
                                             "--http", f"{HOST}:{self.ports['poll_http']}",
                                             "--msgpack", f"{HOST}:{self.ports['poll_msgpack']}"])
            wait_http_ready(self.poll, self.ports["poll_http"], 300)
            self.poll_workers = daemon_workers(self.ports["poll_http"])
            log(f"busy-polling daemon ready (server.busy_poll_us = {a.busy_poll_us})")
        self.floor = self._spawn("floor", [py, "-m", "bench.floor", "--store", str(self.store),
                                           "--port", str(self.ports["floor"]),
                                           *(f"{m}/{PAYLOADS[m].answering_version}" for m in MODELS)])
        wait_http_ready(self.floor, self.ports["floor"], 120)
        self.echo = self._spawn("echo", [py, "-m", "bench.echo", "--port", str(self.ports["echo"])])
        wait_tcp_ready(self.echo, self.ports["echo"], 60)
        self._check_pinning()
        self._probe()

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, self.a.server_cpu, self.tmp)
        self.procs.append(p)
        return p

    def _write_bodies(self) -> None:
        """Every HTTP body into a file for wrk (binary bodies hold NUL bytes: no environment variable)."""
        self.bodies.mkdir()
        for model, p in PAYLOADS.items():
            for fmt in HTTP_FORMATS:
                body, _ = p.http_request(fmt)
                (self.bodies / f"{model}.{fmt}").write_bytes(body)

    def cold_starts(self, n: int) -> None:
        """Start a daemon serving exactly two workers ``n`` times: spawn -> /v2/health/ready 200."""
        cfg = self.tmp / "config-cold.toml"
        write_cold_config(cfg, self.store, self.a.server_cpu)
        times = []
        cpus = (self.a.server_cpu, self.a.client_cpu)
        for i in range(n):
            http = free_port()
            j0, w0, u0 = cpu_jiffies(cpus), time.monotonic_ns(), rusage_ns()
            p = Proc(f"router-cold-{i + 1}", [sys.executable, "-m", "router", "serve", "--config", str(cfg),
                                              "--http", f"{HOST}:{http}", "--msgpack", f"{HOST}:{free_port()}"],
                     self.a.server_cpu, self.tmp)
            try:
                times.append(wait_http_ready(p, http, 120))
                workers = daemon_workers(http)
                if sorted(workers) != sorted(COLD_START_VERSIONS):
                    raise BenchError(f"cold-start daemon runs {sorted(workers)}, expected {COLD_START_VERSIONS}")
            finally:
                code = p.stop()
            u1, w1, j1 = rusage_ns(), time.monotonic_ns(), cpu_jiffies(cpus)
            if code != 0:
                self.errors.append(f"cold-start daemon exited with {code} on SIGTERM:\n{p.log[-2000:]}")
            # The daemon reaps its workers and this harness reaps the daemon: their CPU
            # is the children's, from spawn to exit.
            res: dict[str, Any] = {}
            self._core_figures(res, j0, j1, w1 - w0, (u1[1] - u0[1]) / 1e9, (u1[0] - u0[0]) / 1e9)
            log(f"cold start {i + 1}/{n}: two workers ready {times[-1]:.2f} s after spawn; foreign CPU: "
                f"server {res['foreign_pct']['server']:4.1f}%, client {res['foreign_pct']['client']:4.1f}%")
            if max(res["foreign_pct"].values()) > FOREIGN_WARN_PCT:
                self.disturbed.append(f"cold start {i + 1}: other programs used {res['foreign_pct']['server']:.0f}% "
                                      f"of the server core, {res['foreign_pct']['client']:.0f}% of the client core")
                log(f"warning: {self.disturbed[-1]}")
        self.info["two_workers_ready_s"] = times
        self.info["two_workers_ready_median_s"] = statistics.median(times)

    def _check_pinning(self) -> None:
        want = str(self.a.server_cpu)
        assert self.router and self.floor and self.echo
        if sorted(self.workers) != sorted(self.expected):
            raise BenchError(f"expected workers {sorted(self.expected)}, the daemon runs {sorted(self.workers)}")
        pids = {"router": self.router.pid, "floor": self.floor.pid, "echo": self.echo.pid}
        pids.update({f"worker {k}": v for k, v in self.workers.items()})
        if self.poll is not None:
            pids["busy-polling router"] = self.poll.pid
            pids.update({f"busy-polling worker {k}": v for k, v in self.poll_workers.items()})
        for name, pid in pids.items():
            got = status_field(pid, "Cpus_allowed_list")
            if got != want:
                raise BenchError(f"{name} (pid {pid}) may run on CPUs {got}, expected only {want}")
        self.info["pinning"] = {"server_cpu": self.a.server_cpu, "client_cpu": self.a.client_cpu,
                                "checked": sorted(pids)}

    # probes ---------------------------------------------------------------------------------------------

    def _probe(self) -> None:
        """One request of each kind, checked in full, before any load: the references must agree."""
        for model in MODELS:
            p = PAYLOADS[model]
            want = self._probe_http(p, "floor", p.floor_path, p.answering_version)
            pins = [NOBATCH] + ([CUDA_VERSION] if self.gpu and model == "mlp-wide" else [])
            for q in [p] + [p.pinned(v) for v in pins]:
                tol = 1e-4 if q.version == CUDA_VERSION else 1e-5  # another device: another summation order
                got = self._probe_http(q, "router", q.http_path, q.answering_version)
                for fmt in HTTP_FORMATS:
                    if not close_enough(got[fmt], want["json"], tol):
                        raise BenchError(f"{model}: the floor answers {want['json'][:10]}, the router "
                                         f"({q.answering_version}, {fmt}) {got[fmt][:10]}")
            self._probe_tcp(p, want["json"], self.ports["msgpack"])
            if self.poll is not None and model in SMALL_MODELS:
                got = self._probe_http(p, "poll", p.http_path, p.answering_version)
                if not close_enough(got["json"], want["json"], 1e-5):
                    raise BenchError(f"{model}: the floor answers {want['json'][:10]}, the busy-polling "
                                     f"router {got['json'][:10]}")
                self._probe_tcp(p, want["json"], self.ports["poll_msgpack"])
        self._probe_shadow()

    def _probe_http(self, p: Payload, target: str, path: str, version: str) -> dict[str, list[float]]:
        """Every HTTP format against ``target``: status 200, a well-formed reply, the same values."""
        port = self.ports[{"router": "http", "poll": "poll_http"}.get(target, "floor")]
        got: dict[str, list[float]] = {}
        for fmt in HTTP_FORMATS:
            body, headers = p.http_request(fmt)
            status, rh, reply = http_post(port, path, body, headers)
            what = f"{target} HTTP {fmt} {p.model}/{version}"
            if status != 200:
                raise BenchError(f"{what}: status {status}: {reply[:500]!r}")
            try:
                v, name, shape, data = decode_reply(fmt, rh, reply)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise BenchError(f"{what}: unparsable reply ({exc!r}): {reply[:500]!r}") from None
            if (v, name, shape, len(data)) != (version, p.output, [1, p.out_width], p.out_width):
                raise BenchError(f"{what}: unexpected reply {(v, name, shape, len(data))}: {reply[:500]!r}")
            got[fmt] = data
        for fmt in HTTP_FORMATS[1:]:
            if not close_enough(got[fmt], got["json"], 1e-6):
                raise BenchError(f"{what}: {fmt} answers {got[fmt][:10]}, JSON {got['json'][:10]}")
        return got

    def _probe_tcp(self, p: Payload, expect: list[float], port: int) -> None:
        import msgpack

        from router.client._tensors import msgpack_outputs

        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(p.frame(42))
            buf = b""
            while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                chunk = s.recv(65536)
                if not chunk:
                    raise BenchError("msgpack probe: connection closed")
                buf += chunk
        rid, status, version, result = msgpack.unpackb(buf[4:])[:4]  # then the generation
        if (rid, status, version) != (42, 200, p.answering_version):
            raise BenchError(f"msgpack probe {p.model}: reply {(rid, status, version, result)!r}")
        data = msgpack_outputs(result["outputs"])[p.output].reshape(-1).tolist()
        if not close_enough(data, expect, 1e-5):
            raise BenchError(f"msgpack probe {p.model}: {data} differs from the HTTP answer {expect}")

    def _probe_shadow(self) -> None:
        """Shadow on, one request, its copy must be compared (``ok``) within 5 s; shadow off."""
        p = PAYLOADS[SHADOW_MODEL]
        before = self.shadow_counts()
        self.set_shadow(1.0)
        try:
            status, _, reply = http_post(self.ports["http"], p.http_path, p.oip_json())
            if status != 200:
                raise BenchError(f"shadow probe: status {status}: {reply[:500]!r}")
            deadline = time.monotonic() + 5
            while self.shadow_counts().get("ok", 0.0) <= before.get("ok", 0.0):
                if time.monotonic() > deadline:
                    raise BenchError(f"shadow probe: no copy compared within 5 s: {self.shadow_counts()}")
                time.sleep(0.02)
        finally:
            self.set_shadow(0.0)

    # shadow ---------------------------------------------------------------------------------------------

    def set_shadow(self, fraction: float) -> None:
        """Mirror ``fraction`` of mlp-small's live traffic to its ``copy`` version (admin API)."""
        doc = http_json(self.ports["http"], f"/admin/models/{SHADOW_MODEL}/traffic", "PUT",
                        {"shadow": {SHADOW_VERSION: fraction}})
        got = doc.get("shadow", {}).get(SHADOW_VERSION, 0.0)
        if got != fraction:
            raise BenchError(f"setting the shadow to {fraction}: the daemon answers {doc}")

    def shadow_counts(self) -> dict[str, float]:
        """``router_shadow_requests_total`` of the shadow version, by result (ok, error, dropped, timeout)."""
        counts = shadow_requests(self.ports["http"])
        return {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith(SHADOW_VERSION + ".")}

    # measuring ------------------------------------------------------------------------------------------

    def _server_pids(self, sc: Scenario) -> dict[str, int]:
        assert self.router and self.floor and self.echo
        if sc.target == "poll":
            assert self.poll
            return {"router": self.poll.pid, "worker": self.poll_workers[f"{sc.model}/{sc.payload.answering_version}"]}
        if sc.on_router:
            pids = {"router": self.router.pid,
                    "worker": self.workers[f"{sc.model}/{sc.payload.answering_version}"]}
            if sc.target == "shadow":
                pids["shadow worker"] = self.workers[f"{SHADOW_MODEL}/{SHADOW_VERSION}"]
            return pids
        return {sc.target: (self.floor if sc.target == "floor" else self.echo).pid}

    def _all_server_pids(self) -> list[int]:
        assert self.router and self.floor and self.echo
        polling = [self.poll.pid, *self.poll_workers.values()] if self.poll else []
        return [self.router.pid, *self.workers.values(), *polling, self.floor.pid, self.echo.pid]

    def _client_argv(self, sc: Scenario, duration: int) -> tuple[list[str], dict[str, str]]:
        cpu = ["taskset", "-c", str(self.a.client_cpu)]
        p = sc.payload
        env = dict(os.environ)
        if sc.http:
            port, path = ((self.ports["poll_http" if sc.target == "poll" else "http"], p.http_path) if sc.on_router
                          else (self.ports["floor"], p.floor_path))
            _, headers = p.http_request(sc.proto)
            env.pop("BENCH_BODY", None)
            env["BENCH_BODY_FILE"] = str(self.bodies / f"{sc.model}.{sc.proto}")
            env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
            return cpu + ["wrk", "-t1", f"-c{sc.conc}", f"-d{duration}s", "--timeout", "10s", "--latency",
                          "-s", str(LUA), f"http://{HOST}:{port}{path}"], env
        port = self.ports["echo" if sc.proto == "echo" else "poll_msgpack" if sc.target == "poll" else "msgpack"]
        argv = cpu + [sys.executable, "-m", "bench.client", "--port", str(port), "--mode",
                      "echo" if sc.proto == "echo" else "msgpack", "--model", sc.model,
                      "--depth", str(sc.conc), "--duration", str(duration),
                      "--warmup", str(self.a.client_warmup)]
        if p.version is not None:
            argv += ["--version", p.version]
        return argv, env

    def _parse_client(self, sc: Scenario, r: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
        """The load generator's result; failed requests recorded in ``self.errors`` under ``what``."""
        if sc.http:
            if r.returncode != 0:
                raise BenchError(f"{what}: wrk exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
            res = parse_wrk(r.stdout)
            res["raw"] = r.stdout
            if res["non2xx"] + res["socket_errors"]:
                self.errors.append(f"{what}: {res['non2xx']} non-2xx responses, "
                                   f"{res['socket_errors']} socket errors")
            return res
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"{what}: client printed no result (exit {r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}") from None
        if res["errors"] or r.returncode != 0:
            self.errors.append(f"{what}: {res['errors']} failed request(s): {res['error_messages']}")
        return res

    def run_once(self, sc: Scenario, duration: int, record: bool = True) -> dict[str, Any] | None:
        """One run of the load generator of ``sc``; its result with the CPU figures (None unless ``record``).

        Raises:
            NoRequests: the run completed no request (and none failed).
        """
        shadow0: dict[str, float] = {}
        shadow1: dict[str, float] = {}
        if sc.target == "shadow":
            self.set_shadow(1.0)
            shadow0 = self.shadow_counts()
        try:
            argv, env = self._client_argv(sc, duration)
            pids = self._server_pids(sc)
            others = [w for w in self.workers.values() if w not in pids.values()]
            cpus = (self.a.server_cpu, self.a.client_cpu)
            every = self._all_server_pids()
            j0, w0, u0 = cpu_jiffies(cpus), time.monotonic_ns(), rusage_ns()
            a0 = sum(cpu_ns(v) for v in every)
            c0 = {k: cpu_ns(v) for k, v in pids.items()}
            o0 = sum(cpu_ns(w) for w in others)
            limit = duration + self.a.client_warmup + 60
            try:
                r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{sc.key}: load generator still running after {limit:.0f} s") from None
            c1 = {k: cpu_ns(v) for k, v in pids.items()}
            o1 = sum(cpu_ns(w) for w in others)
            a1 = sum(cpu_ns(v) for v in every)
            u1, w1, j1 = rusage_ns(), time.monotonic_ns(), cpu_jiffies(cpus)
            if sc.target == "shadow":
                time.sleep(0.1)  # let the last copies land before counting them
                shadow1 = self.shadow_counts()
        finally:
            if sc.target == "shadow":
                self.set_shadow(0.0)
        res = self._parse_client(sc, r, sc.key if record else f"{sc.key} (warm-up)")  # its failures count too
        if not record:
            return None
        if not res["requests"]:
            raise NoRequests(sc.key)
        # CPU time is sampled around the whole client run (its warm-up included), so
        # divide by the requests of that whole window: rps x (measured + warm-up) for
        # the msgpack client, the request count for wrk (no warm-up).
        n_all = res["requests"] if sc.http else res["requests"] + res["rps"] * self.a.client_warmup
        res["cpu_us_per_req"] = {k: (c1[k] - c0[k]) / 1e3 / n_all for k in c0}
        if sc.on_router:
            res["cpu_us_per_req"]["other workers"] = (o1 - o0) / 1e3 / n_all
        if sc.target == "shadow":
            res["shadow"] = {k: shadow1.get(k, 0.0) - shadow0.get(k, 0.0) for k in shadow1}
        self._core_figures(res, j0, j1, w1 - w0, (a1 - a0) / 1e9, (sum(u1) - sum(u0)) / 1e9)
        sc.runs.append(res)
        return res

    def _core_figures(self, res: dict[str, Any], j0: dict[int, tuple[int, int]], j1: dict[int, tuple[int, int]],
                      wall_ns: int, server_s: float, client_s: float) -> None:
        """Busy % per core, and the CPU on each that none of our processes used (foreign)."""
        res["core_busy_pct"] = {
            ("server" if cpu == self.a.server_cpu else "client"): 100.0 * (j1[cpu][0] - j0[cpu][0])
            / max(1, j1[cpu][1] - j0[cpu][1]) for cpu in j0
        }
        # /proc/stat counts in ticks: +-2 % is noise.
        wall = max(1e-9, wall_ns / 1e9)
        busy = res["core_busy_pct"]
        res["foreign_pct"] = {"server": busy["server"] - 100.0 * server_s / wall,
                              "client": busy["client"] - 100.0 * client_s / wall}

    def run_inproc(self, scs: list[Scenario]) -> None:
        """One run of the in-process reference: every case of ``scs`` in one process on the server core."""
        if not scs:
            return
        cases = [f"{sc.model}/{PAYLOADS[sc.model].answering_version},{sc.conc}"
                 + (f",{CUDA_DEVICE}" if sc.target == "inproc-cuda" else "") for sc in scs]
        argv = ["taskset", "-c", str(self.a.server_cpu), sys.executable, "-m", "bench.inproc",
                "--store", str(self.store), "--duration", str(self.a.inproc_duration), *cases]
        cpus = (self.a.server_cpu, self.a.client_cpu)
        every = self._all_server_pids()
        j0, w0, u0, a0 = cpu_jiffies(cpus), time.monotonic_ns(), rusage_ns(), sum(cpu_ns(v) for v in every)
        limit = 60 + 2 * len(cases) * self.a.inproc_duration
        try:
            r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise BenchError(f"in-process reference still running after {limit:.0f} s") from None
        a1, u1, w1, j1 = sum(cpu_ns(v) for v in every), rusage_ns(), time.monotonic_ns(), cpu_jiffies(cpus)
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1])
            results = out["cases"]
        except (ValueError, IndexError, KeyError):
            raise BenchError(f"in-process reference printed no result (exit {r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}") from None
        if r.returncode != 0 or out["affinity"] != [self.a.server_cpu] or out["torch_threads"] != 1:
            raise BenchError(f"in-process reference: exit {r.returncode}, CPUs {out['affinity']}, "
                             f"{out['torch_threads']} torch threads:\n{r.stderr}")
        inproc_s = (u1[1] - u0[1]) / 1e9  # its whole life: the only child waited for meanwhile
        for sc, res in zip(scs, results, strict=True):
            if res["out_shape"] != [sc.conc, PAYLOADS[sc.model].out_width] or not res["calls"]:
                self.errors.append(f"{sc.key}: output shape {res['out_shape']}, {res['calls']} calls")
                continue
            res["rps"] = res["rows_per_s"]  # inferences/s, comparable with the servers' req/s
            res["requests"] = res["calls"] * res["rows"]
            self._core_figures(res, j0, j1, w1 - w0, (a1 - a0) / 1e9 + inproc_s, (u1[0] - u0[0]) / 1e9)
            sc.runs.append(res)

    def measure(self, scenarios: list[Scenario]) -> None:
        """Warm-up, then ``--runs`` interleaved rounds; medians into each scenario."""
        a = self.a
        inproc = [sc for sc in scenarios if sc.inproc]
        loads = [sc for sc in scenarios if not sc.inproc]
        if a.wrk_warmup > 0:
            log(f"warm-up: {a.wrk_warmup} s of wrk per HTTP scenario")
            for sc in loads:
                if sc.http:
                    self.run_once(sc, a.wrk_warmup, record=False)
        for i in range(a.runs):
            for p in self.procs:
                p.check_alive()
            self.run_inproc(inproc)
            for sc in inproc:
                if sc.runs:
                    self._log_run(i, sc, sc.runs[-1])
            for sc in loads:
                for p in self.procs:
                    p.check_alive()
                res = self._run_retrying(sc)
                if res is not None:
                    self._log_run(i, sc, res)
        for sc in scenarios:
            if sc.runs:
                sc.median = median_of(sc.runs)

    def _run_retrying(self, sc: Scenario) -> dict[str, Any] | None:
        """``run_once``, run again once if no request completed; a second empty run is an error.

        A run can complete nothing when other programs stall the machine (seen with
        1 s runs on a busy two-core machine): that says nothing about the router.
        """
        for attempt in (1, 2):
            try:
                return self.run_once(sc, self.duration)
            except NoRequests:
                if attempt == 1:
                    log(f"warning: {sc.key}: no request completed in {self.duration} s; running it again")
        self.errors.append(f"{sc.key}: no request completed, twice")
        return None

    def _log_run(self, i: int, sc: Scenario, res: dict[str, Any]) -> None:
        f = res["foreign_pct"]
        log(f"run {i + 1}/{self.a.runs} {sc.key:34s} p50 {res['p50_us']:8.1f} us  p99 "
            f"{res['p99_us']:8.1f} us  {res['rps']:9.1f} req/s  server core "
            f"{res['core_busy_pct']['server']:5.1f}% busy; foreign CPU: server "
            f"{f['server']:4.1f}%, client {f['client']:4.1f}%"
            + (f"; shadow copies {res['shadow']}" if "shadow" in res else ""))
        if max(f.values()) > FOREIGN_WARN_PCT:
            self.disturbed.append(f"{sc.key} run {i + 1}: other programs used "
                                  f"{f['server']:.0f}% of the server core, {f['client']:.0f}% of the client core")
            log(f"warning: {self.disturbed[-1]}")

    def finish(self) -> None:
        """Check nothing restarted; record memory."""
        assert self.router and self.floor
        for p in self.procs:
            p.check_alive()
        now = daemon_workers(self.ports["http"])
        if now != self.workers:
            self.errors.append(f"workers changed during the benchmark (a restart?): {self.workers} -> {now}")
        if self.poll is not None and daemon_workers(self.ports["poll_http"]) != self.poll_workers:
            self.errors.append("the busy-polling daemon's workers changed during the benchmark (a restart?)")
        self.info["router_rss_kib"] = kib(status_field(self.router.pid, "VmRSS"))
        self.info["router_hwm_kib"] = kib(status_field(self.router.pid, "VmHWM"))
        self.info["worker_rss_kib"] = {k: kib(status_field(v, "VmRSS")) for k, v in self.workers.items()}
        self.info["floor_rss_kib"] = kib(status_field(self.floor.pid, "VmRSS"))

    def stop(self) -> None:
        """Stop every process started here; a router that does not exit 0 on SIGTERM is an error."""
        for p in reversed(self.procs):
            code = p.stop()
            if p in (self.router, self.poll) and code != 0:
                self.errors.append(f"router exited with {code} on SIGTERM:\n{p.log[-2000:]}")


# -- analysis ----------------------------------------------------------------------------------------------


def analyse(scs: list[Scenario], info: dict[str, Any]) -> dict[str, Any]:
    """Ratios to the references, batching and shadow effects, and the targets."""
    by = {sc.key: sc.median for sc in scs if sc.median}
    out: dict[str, Any] = {"vs_floor": {}, "vs_echo": {}, "batching": {}, "shadow": {}, "inproc": {},
                           "inproc_batch_gain": {}}
    for sc in scs:
        m = by.get(sc.key)
        if not m:
            continue
        if sc.http and sc.on_router:
            f = by.get(f"{sc.proto}/floor/{sc.model}/c{sc.conc}")
            if f:
                out["vs_floor"][sc.key] = {"rps_ratio": m["rps"] / f["rps"], "p50_ratio": m["p50_us"] / f["p50_us"],
                                           "p50_minus_floor_us": m["p50_us"] - f["p50_us"]}
        if sc.proto == "tcp" and sc.conc == 1:
            e = by.get(f"echo/echo/{sc.model}/c1")
            if e:
                out["vs_echo"][sc.key] = {"p50_minus_echo_us": m["p50_us"] - e["p50_us"],
                                          "p50_over_echo": m["p50_us"] / e["p50_us"]}
        if sc.target == "nobatch":
            on = by.get(f"{sc.proto}/router/{sc.model}/c{sc.conc}")
            if on:
                out["batching"][f"{sc.model}/c{sc.conc}"] = {"rps_on_over_off": on["rps"] / m["rps"],
                                                             "p50_on_minus_off_us": on["p50_us"] - m["p50_us"]}
        if sc.target == "shadow":
            base = by.get(f"{sc.proto}/router/{sc.model}/c{sc.conc}")
            out["shadow"][sc.key] = {
                "compared": m.get("shadow.ok", 0.0), "dropped": m.get("shadow.dropped", 0.0),
                "errors": m.get("shadow.error", 0.0) + m.get("shadow.timeout", 0.0),
                **({"p50_minus_none_us": m["p50_us"] - base["p50_us"],
                    "p99_minus_none_us": m["p99_us"] - base["p99_us"],
                    "rps_over_none": m["rps"] / base["rps"]} if base else {})}
        if sc.inproc:
            out["inproc"][sc.key] = {"p50_us": m["p50_us"], "p50_us_per_row": m["p50_us_per_row"],
                                     "rows_per_s": m["rps"]}
    for model in MODELS:
        one, full = out["inproc"].get(f"inproc/inproc/{model}/b1"), out["inproc"].get(
            f"inproc/inproc/{model}/b{INPROC_BATCH}")
        if one and full:  # per-row cost of batch 1 over that of a full batch
            out["inproc_batch_gain"][model] = one["p50_us_per_row"] / full["p50_us_per_row"]
    out["targets"] = targets(by, out, info)
    return out


def _target(name: str, met: bool | None, value: str) -> dict[str, Any]:
    return {"target": name, "met": met, "value": value}


def targets(by: dict[str, dict[str, float]], ana: dict[str, Any], info: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each MET, MISSED or not measured (``met`` None: its scenarios did not run)."""
    out = []

    def ratio(key: str, goal: float, name: str) -> None:
        v = ana["vs_floor"].get(key)
        floor = key.replace("/router/", "/floor/")
        out.append(_target(name, None, "not measured") if v is None else _target(
            name, v["rps_ratio"] >= goal,
            f"{v['rps_ratio']:.2f}x ({by[key]['rps']:.0f} vs {by[floor]['rps']:.0f} req/s)"))

    ratio("json/router/mlp-small/c32", TARGET_SMALL_RATIO,
          f"HTTP OIP JSON c=32 throughput >= {TARGET_SMALL_RATIO:g}x floor (mlp-small)")
    v = ana["vs_floor"].get("json/router/mlp-small/c1")
    name = f"HTTP OIP JSON c=1 p50 <= floor p50 + {TARGET_SMALL_P50_US:.0f} µs (mlp-small)"
    out.append(_target(name, None, "not measured") if v is None else _target(
        name, v["p50_minus_floor_us"] <= TARGET_SMALL_P50_US,
        f"{v['p50_minus_floor_us']:+.0f} µs ({by['json/router/mlp-small/c1']['p50_us']:.0f} vs "
        f"{by['json/floor/mlp-small/c1']['p50_us']:.0f} µs)"))
    ratio("json/router/mlp-wide/c32", TARGET_WIDE_RATIO,
          f"HTTP OIP JSON c=32 throughput >= {TARGET_WIDE_RATIO:g}x floor, batching on (mlp-wide)")
    # Each TCP target for the default daemon and, when it ran, the busy-polling one.
    for target, how in (("router", ""), ("poll", ", busy poll")):
        for model in SMALL_MODELS:
            key = f"tcp/{target}/{model}/c1"
            v = ana["vs_echo"].get(key)
            if v is None and target == "poll":
                continue
            name = f"msgpack TCP c=1 p50 <= TCP echo p50 + {TARGET_ECHO_US:.0f} µs ({model}{how})"
            echo = f"vs {by[f'echo/echo/{model}/c1']['p50_us']:.0f} µs echo" if v else ""
            out.append(_target(name, None, "not measured") if v is None else _target(
                name, v["p50_minus_echo_us"] <= TARGET_ECHO_US,
                f"{v['p50_minus_echo_us']:+.0f} µs ({by[key]['p50_us']:.0f} {echo})"))
            name = f"msgpack TCP c=1 p50 <= {TARGET_ECHO_RATIO:g}x TCP echo p50 ({model}{how})"
            out.append(_target(name, None, "not measured") if v is None else _target(
                name, v["p50_over_echo"] <= TARGET_ECHO_RATIO,
                f"{v['p50_over_echo']:.2f}x ({by[key]['p50_us']:.0f} {echo})"))
        for model in SMALL_MODELS:
            m = by.get(f"tcp/{target}/{model}/c{TARGET_DEPTH}")
            if m is None and target == "poll":
                continue
            name = (f"msgpack TCP pipelined depth {TARGET_DEPTH}, one connection >= {TARGET_PIPE_RPS:,.0f} "
                    f"inferences/s ({model}{how})")
            out.append(_target(name, None, "not measured") if m is None else _target(
                name, m["rps"] >= TARGET_PIPE_RPS, f"{m['rps']:,.0f}/s"))
    name = f"router process RSS <= {TARGET_RSS_MIB:.0f} MiB"
    if "router_hwm_kib" in info:
        peak = info["router_hwm_kib"] / 1024
        out.append(_target(name, peak <= TARGET_RSS_MIB, f"peak {peak:.1f} MiB ({info['router_rss_kib'] / 1024:.1f} "
                                                         f"MiB after the load, {info['router_workers']} workers)"))
    else:
        out.append(_target(name, None, "not measured"))
    name = f"two workers ready <= {TARGET_TWO_READY_S:g} s after spawn"
    if "two_workers_ready_median_s" in info:
        t, n = info["two_workers_ready_median_s"], len(info["two_workers_ready_s"])
        out.append(_target(name, t <= TARGET_TWO_READY_S, f"{t:.2f} s (median of {n} start(s); "
                                                          f"{' + '.join(COLD_START_VERSIONS)})"))
    else:
        out.append(_target(name, None, "not measured"))
    return out


# -- report ------------------------------------------------------------------------------------------------


def _cpu_cell(sc: Scenario, m: dict[str, float]) -> str:
    cpu = {k.split(".", 1)[1]: v for k, v in m.items() if k.startswith("cpu_us_per_req.")}
    if sc.inproc:
        return f"{m['cpu_us_per_row']:.1f} per row"
    if sc.on_router:
        s = f"{cpu['router']:.0f} router + {cpu['worker']:.0f} worker"
        return s + (f" + {cpu['shadow worker']:.0f} shadow" if "shadow worker" in cpu else "")
    return f"{sum(cpu.values()):.0f}"


def table(scs: list[Scenario], ana: dict[str, Any]) -> str:
    """One row per scenario: medians, ratios to the references, where the server core's time went."""
    head = ["scenario", "model", "c", "p50 µs", "p99 µs", "req/s", "vs floor req/s", "p50 - floor µs",
            "p50 - echo µs", "server core", "server CPU µs/req"]
    rows = [head]
    for sc in scs:
        m = sc.median
        if not m:
            rows.append([sc.label, sc.model, sc.conc_label, "failed"] + [""] * (len(head) - 4))
            continue
        vf = ana["vs_floor"].get(sc.key)
        ve = ana["vs_echo"].get(sc.key)
        rows.append([sc.label, sc.model, sc.conc_label, f"{m['p50_us']:.0f}" if m["p50_us"] >= 10 else
                     f"{m['p50_us']:.1f}", f"{m['p99_us']:.0f}", f"{m['rps']:.0f}",
                     f"{vf['rps_ratio']:.2f}x" if vf else "", f"{vf['p50_minus_floor_us']:+.0f}" if vf else "",
                     f"{ve['p50_minus_echo_us']:+.0f}" if ve else "",
                     "" if sc.inproc else f"{m['core_busy_pct.server']:.0f}%", _cpu_cell(sc, m)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _inproc_label(key: str) -> str:
    """``inproc/inproc-cuda/mlp-wide/b32`` -> ``mlp-wide cuda:0 batch 32``."""
    _, target, model, rows = key.split("/")
    return f"{model}{' ' + CUDA_DEVICE if target == 'inproc-cuda' else ''} batch {rows[1:]}"


def summary(ana: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """Batching, shadow, in-process, memory and cold-start lines."""
    lines = []
    if ana["batching"]:
        lines.append("dynamic batching, HTTP JSON req/s on / off: " + ", ".join(
            f"{k.replace('/c', ' c=')} {v['rps_on_over_off']:.2f}x" for k, v in ana["batching"].items()))
    for key, v in ana["shadow"].items():
        rel = (f": p50 {v['p50_minus_none_us']:+.0f} µs, p99 {v['p99_minus_none_us']:+.0f} µs, req/s "
               f"{v['rps_over_none']:.2f}x vs no shadow" if "rps_over_none" in v else "")
        lines.append(f"shadow 100% to {SHADOW_MODEL}/{SHADOW_VERSION}, {key}{rel}; copies compared "
                     f"{v['compared']:.0f}, dropped {v['dropped']:.0f}, failed {v['errors']:.0f}")
    if ana["inproc"]:
        gains = [f"; {model} batch {INPROC_BATCH} costs {v:.1f}x less per row than batch 1"
                 for model, v in ana["inproc_batch_gain"].items()]
        lines.append("in-process forward (1 torch thread, p50 per call): " + ", ".join(
            f"{_inproc_label(k)} {v['p50_us']:.1f} µs ({v['p50_us_per_row']:.2f} µs/row)"
            for k, v in ana["inproc"].items()) + "".join(gains))
    if "router_rss_kib" in info:
        lines.append(f"router process RSS {info['router_rss_kib'] / 1024:.1f} MiB after the load "
                     f"(peak {info['router_hwm_kib'] / 1024:.1f} MiB, {info['router_rss_ready_kib'] / 1024:.1f} MiB "
                     "when ready); workers " + ", ".join(f"{k} {v / 1024:.0f} MiB"
                                                        for k, v in info["worker_rss_kib"].items())
                     + f"; floor {info['floor_rss_kib'] / 1024:.0f} MiB")
    if "router_ready_s" in info:
        lines.append(f"router spawn -> /v2/health/ready 200: {info['router_ready_s']:.2f} s "
                     f"({info['router_workers']} workers on one core; compiled extensions: "
                     f"{'yes' if info['compiled_extensions'] else 'no'})")
    if "two_workers_ready_s" in info:
        lines.append(f"two-worker daemon spawn -> /v2/health/ready 200: "
                     f"{info['two_workers_ready_median_s']:.2f} s median of "
                     + ", ".join(f"{t:.2f}" for t in info["two_workers_ready_s"]) + " s")
    return lines


def machine() -> dict[str, Any]:
    """CPU, kernel and library versions of this run."""
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


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def require_tools(parser: argparse.ArgumentParser) -> None:
    """Exit through ``parser`` naming the first load tool missing (``wrk``, ``taskset``)."""
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"`{tool}` is not installed")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def estimate_s(scs: list[Scenario], a: argparse.Namespace) -> float:
    """Rough wall time of the measurements (set-up excluded), for the log."""
    loads = [sc for sc in scs if not sc.inproc]
    n_http = sum(sc.http for sc in loads)
    per_round = (sum(max(1, round(a.duration)) + (0.3 if sc.http else a.client_warmup + 0.4) for sc in loads)
                 + (2 + a.inproc_duration * sum(sc.inproc for sc in scs) if any(sc.inproc for sc in scs) else 0))
    return n_http * a.wrk_warmup + a.runs * per_round


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=3.0, help="seconds per scenario run (whole seconds)")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario; the median is reported")
    p.add_argument("--quick", action="store_true", help="1 s per scenario, 1 run, no wrk warm-up (CI)")
    p.add_argument("--only", default="", metavar="REGEX",
                   help="run only the scenarios whose key (e.g. json/router/mlp-small/c32) matches")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every result here")
    p.add_argument("--server-cpu", type=int, default=0, help="core of the router, its workers and references")
    p.add_argument("--client-cpu", type=int, default=1, help="core of the load generators and this harness")
    p.add_argument("--max-batch-size", type=int, default=32, help="of the batching-on versions")
    p.add_argument("--max-batch-delay-us", type=int, default=0)
    p.add_argument("--busy-poll-us", type=int, default=1000, metavar="US",
                   help="server.busy_poll_us of the second daemon behind the 'poll' scenarios (0: no such daemon)")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.runs = 1.0, 1
    a.wrk_warmup = 0 if a.quick else 1
    a.client_warmup = 0.2 if a.quick else 0.5
    a.inproc_duration = 0.5 if a.quick else 2.0
    a.cold_starts = 1 if a.quick else a.runs
    if a.runs < 1 or a.duration <= 0:
        p.error("--runs and --duration must be positive")
    if not 0 <= a.busy_poll_us <= 1_000_000:
        p.error("--busy-poll-us must be in 0..1000000")
    if a.server_cpu == a.client_cpu:
        p.error("--server-cpu and --client-cpu must differ")
    try:
        a.only_re = re.compile(a.only)
    except re.error as exc:
        p.error(f"--only: {exc}")
    avail = os.sched_getaffinity(0)
    for cpu in (a.server_cpu, a.client_cpu):
        if cpu not in avail:
            p.error(f"CPU {cpu} is not available to this process (it may use {sorted(avail)})")
    require_tools(p)
    return a


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Let SIGTERM stop a harness the way Ctrl-C does: through its ``finally``, which stops what it started."""
    signal.signal(signal.SIGTERM, _raise_interrupt)



def round_options(p: argparse.ArgumentParser, rounds_help: str) -> None:
    """The options of a benchmark that compares daemons in rounds of wrk runs (bench.drift, bench.predlog)."""
    p.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    p.add_argument("--rounds", type=int, default=5, help=rounds_help)
    p.add_argument("--quick", action="store_true", help="two 3 s rounds (CI)")
    p.add_argument("--json", type=Path, metavar="OUT")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)


def start_rounds(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """What such a benchmark does before its first run: SIGTERM handling, ``--quick``, the tools, and the
    harness kept on the client core."""
    interrupt_on_sigterm()
    if a.quick:
        a.duration, a.rounds = 3, 2
    require_tools(p)
    os.sched_setaffinity(0, {a.client_cpu})


def metric_totals(port: int, names: tuple[str, ...], **labels: str) -> dict[str, float]:
    """Per metric name (as exposed, ``_total`` included), the sum of a daemon's samples whose labels
    include ``labels``: one scrape of its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = dict.fromkeys(names, 0.0)
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name in out and all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.name] += s.value
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    interrupt_on_sigterm()
    os.sched_setaffinity(0, {a.client_cpu})  # the harness stays off the server core
    t_start = time.monotonic()
    gpu = cuda_available()
    gpu_note = (f"GPU scenarios on {CUDA_DEVICE}" if gpu else "GPU scenarios skipped: no CUDA device")
    log(gpu_note)
    result: dict[str, Any] = {"machine": machine(), "gpu": {"available": gpu, "note": gpu_note}, "settings": {
        "duration_s": max(1, round(a.duration)), "runs": a.runs, "quick": a.quick, "only": a.only,
        "server_cpu": a.server_cpu, "client_cpu": a.client_cpu, "max_batch_size": a.max_batch_size,
        "max_batch_delay_us": a.max_batch_delay_us, "wrk_warmup_s": a.wrk_warmup,
        "client_warmup_s": a.client_warmup, "inproc_duration_s": a.inproc_duration, "cold_starts": a.cold_starts,
        "request_timeout_ms": REQUEST_TIMEOUT_MS, "busy_poll_us": a.busy_poll_us}}
    scs = [sc for sc in grid(gpu, a.busy_poll_us > 0) if a.only_re.search(sc.key)]
    a.poll_daemon = any(sc.target == "poll" for sc in scs)
    if not scs:
        log(f"no scenario matches --only {a.only!r}; keys look like json/router/mlp-small/c32")
        return 2
    log(f"{len(scs)} scenarios x {a.runs} run(s): about {estimate_s(scs, a) / 60:.1f} min of load after set-up")
    failure = ""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        b = Bench(a, Path(tmp), gpu)
        try:
            b.start()
            b.measure(scs)
            b.finish()
        except BenchError as exc:
            failure = str(exc)
        except KeyboardInterrupt:
            failure = "interrupted"
        finally:
            b.stop()
        errors = b.errors + ([failure] if failure else [])
        info = result["info"] = b.info
        result["disturbed_runs"] = b.disturbed
    ana = analyse(scs, info)
    result["scenarios"] = [{"key": sc.key, "proto": sc.proto, "target": sc.target, "model": sc.model,
                            "concurrency": sc.conc, "median": sc.median,
                            "runs": [{k: v for k, v in r.items() if k != "raw"} for r in sc.runs]}
                           for sc in scs]
    result["analysis"] = ana
    result["targets"] = ana["targets"]
    result["errors"] = errors
    result["wall_s"] = time.monotonic() - t_start
    if any(sc.runs for sc in scs):
        print(table(scs, ana))
        print()
        print(gpu_note)
        for line in summary(ana, info):
            print(line)
        if result["disturbed_runs"]:
            print(f"{len(result['disturbed_runs'])} run(s) shared a core with other programs "
                  f"(> {FOREIGN_WARN_PCT:.0f}% foreign CPU): " + "; ".join(result["disturbed_runs"]))
        else:
            print(f"no run shared a core with other programs (foreign CPU <= {FOREIGN_WARN_PCT:.0f}% "
                  f"on both cores in every run)")
        for t in ana["targets"]:
            verdict = {True: "MET   ", False: "MISSED", None: "n/a   "}[t["met"]]
            print(f"target {verdict} {t['target']}: {t['value']}")
        print(f"suite wall time {result['wall_s'] / 60:.1f} min")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
