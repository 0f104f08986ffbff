"""The chaos soak's daemon (:mod:`bench.chaos`): what it serves, its config, its process, and /proc.

One ``router serve`` in a session of its own, serving ``mlp-small`` versions 1
and 2 (live) and 3 (a shadow that raises on inputs beyond +-1000), written into
a store of its own; helpers that read the router's children, descriptors, RSS
and process group from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .chaos_load import HOST
from .load import ROOT, free_port
from .payloads import MLP_SMALL

MODEL = "mlp-small"
LIVE = ("1", "2")
SHADOW = "3"
REPLICAS = {"1": 2, "2": 2, SHADOW: 1}
WEIGHTS = {"1": 70, "2": 30}
SHADOW_FRACTION = 0.5
REQUEST_TIMEOUT_MS = 1000
DRAIN_TIMEOUT_S = 5
KEEPALIVE_S = 5
WORKER_PRELOAD = {"ROUTER_WORKER_PRELOAD": "modelkit.fixture_ops"}


class SoakError(Exception):
    """The daemon or the harness could not go on (the soak fails with this reason)."""


# -- /proc ------------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """``(state, ppid, pgrp, starttime)`` of ``pid`` from /proc/PID/stat, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text.rsplit(")", 1)[1].split()  # the command may hold spaces and parentheses
    return f[0], int(f[1]), int(f[2]), int(f[19])


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (living or zombie), from /proc/PID/task/*/children."""
    out: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out.update(int(c) for c in path.read_text().split())
    return sorted(out)


def group_members(pgid: int) -> list[int]:
    """Every living process whose process group is ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[2] == pgid and st[0] != "Z":
                out.append(int(entry))
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SoakError(f"/proc/{pid}/status has no VmRSS")


def loadavg() -> float:
    """The 1-minute load average: other programs on this machine show up here (two cores: above 2 is a queue)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def listed_workers(status: dict[str, Any]) -> list[int]:
    """The worker pids of every active pool in a ``GET /admin/models`` answer, sorted."""
    return sorted(w["pid"] for m in status["models"] for v in m["versions"] for w in v["workers"]
                  if w["pid"] is not None)


# -- store, config, daemon ---------------------------------------------------------------------------------


def build_store(store: Path) -> None:
    """``mlp-small`` versions 1 (seed 11), 2 (seed 13) and 3 (version 1 that raises beyond +-1000)."""
    from modelkit.fixtures import faulty_mlp_small
    from modelkit.nets import mlp_small
    from modelkit.store import write_version

    spec_in = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    spec_out = [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]
    example = {"x": [list(MLP_SMALL.row)]}
    for version, module, what in (("1", mlp_small(), "mlp-small, seed 11"), ("2", mlp_small(seed=13), "seed 13"),
                                  (SHADOW, faulty_mlp_small(), "mlp-small 1 raising on inputs beyond +-1000")):
        write_version(store, MODEL, version, module, spec_in, spec_out, example, f"chaos soak: {what}")


def version_tables(weights: dict[str, int], batch: int, shadow: float) -> list[dict[str, Any]]:
    """The model's version set, keys as in config.toml (also the body of a deploy)."""
    out: list[dict[str, Any]] = [{"version": v, "weight": weights[v], "replicas": REPLICAS[v], "threads": 1,
                                  "max_batch_size": batch} for v in LIVE]
    out.append({"version": SHADOW, "weight": 0, "shadow": shadow, "replicas": REPLICAS[SHADOW], "threads": 1,
                "max_batch_size": batch})
    return out


def write_config(path: Path, keep_previous_s: float) -> None:
    lines = [f"[server]\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\ndrain_timeout_s = {DRAIN_TIMEOUT_S}\n"
             f"keepalive_timeout_s = {KEEPALIVE_S}\n\n[store]\npath = \"store\"\n\n"
             f'[[models]]\nname = "{MODEL}"\nrouting_key = "x-user-id"\nkeep_previous_s = {keep_previous_s}\n']
    for table in version_tables(WEIGHTS, 32, SHADOW_FRACTION):
        lines.append("\n[[models.versions]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    path.write_text("".join(lines))


class Daemon:
    """``router serve`` in a session of its own (its process group is its pid), output to a log file."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.config = config
        self.http = free_port()
        self.wire = free_port()
        self.log_path = tmp / "router.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(config),
             "--http", f"{HOST}:{self.http}", "--msgpack", f"{HOST}:{self.wire}"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **WORKER_PRELOAD})
        self.pid = self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SoakError(f"router exited with {self.proc.returncode}:\n{self.log[-3000:]}")

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """An HTTP request with a JSON body; ``(status, decoded JSON or text)``."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.http}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            with contextlib.suppress(OSError):
                if self.request("GET", "/v2/health/ready", timeout=2)[0] == 200:
                    return time.monotonic() - t0
            time.sleep(0.05)
        raise SoakError(f"router not ready within {timeout:.0f} s:\n{self.log[-3000:]}")

    def metrics(self) -> dict[str, dict[str, float]]:
        """The counters the soak reports, summed by the labels that matter."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{HOST}:{self.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        keys = {"router_worker_restarts_total": (), "router_reloads_total": ("result",),
                "router_deploys_total": ("result",), "router_shadow_requests_total": ("version", "result"),
                "router_requests_total": ("route", "protocol", "status")}
        out: dict[str, dict[str, float]] = {k: {} for k in keys}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name in keys:
                    label = " ".join(s.labels.get(k, "") for k in keys[s.name]) or "all"
                    out[s.name][label] = out[s.name].get(label, 0.0) + s.value
        return out

    def stop(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM; ``(exit status, seconds)``, or ``(None, timeout)`` after a SIGKILL to the group."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)  # its own group: only what it started
                self.proc.wait()
                self._log.close()
                return None, timeout
        self._log.close()
        return self.proc.returncode, time.monotonic() - t0
