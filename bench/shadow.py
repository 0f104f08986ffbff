"""Shadow-mode benchmark: what mirroring costs live traffic.

``python -m bench.shadow [--duration S] [--runs N] [--quick] [--json OUT]``

One daemon per layout serves ``mlp-small`` version 1 (live) plus two shadow
candidates from the demo store: ``copy`` (version 1 bit for bit) and ``slow``
(version 1 behind a 20 ms sleep). Shadow fractions are switched through the
admin API between scenarios (no restart), so every setting runs against the
same processes:

* ``none``: no shadow; ``copy``: 100 % mirrored to ``copy``; ``slow``: 100 %
  mirrored to ``slow`` (its queue, 64, overflows: most copies are dropped).

Layouts (the load generators run on ``--client-cpu``):

* ``shared``: router, live worker and shadow workers on ``--server-cpu``;
* ``apart``: router and live worker on ``--server-cpu``, the shadow workers on
  ``--shadow-cpu``: by default a third core when the machine has one, else the
  client core (on two cores the nearest to "a core of its own": the shadow then
  competes with the load generator, not with the live path, and its bursts show
  up in the client's latencies).

Per setting: HTTP OIP JSON with ``wrk`` at c=1 (p50/p99) and c=32
(throughput), and msgpack TCP c=1 with ``bench/client.py``. Settings are
interleaved round by round; medians are reported with the ratio to ``none``
of the same layout, plus how many copies were compared and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .load import (
    HOST,
    LUA,
    ROOT,
    BenchError,
    Proc,
    cpu_ns,
    free_port,
    interrupt_on_sigterm,
    log,
    machine,
    parse_wrk,
    require_tools,
    shadow_requests,
    wait_http_ready,
)
from .payloads import PAYLOADS

#: The ``slow`` shadow calls an operator its worker imports only when told to.
WORKER_PRELOAD = {"ROUTER_WORKER_PRELOAD": "modelkit.fixture_ops"}

SETTINGS = ("none", "copy", "slow")
SHADOWS = ("copy", "slow")
LOADS = (("http", 1), ("http", 32), ("msgpack", 1))
TARGET_P99_PCT = 5.0  # live p99 with a shadow within 5 % of none, shadow on its own core


def write_config(path: Path, store: Path, live_cpu: int, shadow_cpu: int, shadow_priority: str) -> None:
    def version(name: str, cpu: int, extra: str = "") -> str:
        return (f'[[models.versions]]\nversion = "{name}"\n{extra}cpus = [{cpu}]\nthreads = 1\n'
                f"max_batch_size = 32\n")

    path.write_text(
        f'[server]\nrequest_timeout_ms = 1000\nshadow_priority = "{shadow_priority}"\n\n'
        f"[store]\npath = {json.dumps(str(store))}\n\n"
        '[[models]]\nname = "mlp-small"\nrouting_key = "x-user-id"\n'
        + version("1", live_cpu, "weight = 1\n")
        + "".join(version(s, shadow_cpu, "weight = 0\n") for s in SHADOWS)
    )


class Layout:
    """One daemon and the measurements taken against it."""

    def __init__(self, name: str, args: argparse.Namespace, tmp: Path, store: Path) -> None:
        self.name = name
        self.a = args
        self.http = free_port()
        self.wire = free_port()
        shadow_cpu = args.server_cpu if name == "shared" else args.shadow_cpu
        self.own_core = shadow_cpu not in (args.server_cpu, args.client_cpu)
        cfg = tmp / f"config-{name}.toml"
        write_config(cfg, store, args.server_cpu, shadow_cpu, args.shadow_priority)
        self.proc = Proc(f"router-{name}", [sys.executable, "-m", "router", "serve", "--config", str(cfg),
                                            "--http", f"{HOST}:{self.http}", "--msgpack", f"{HOST}:{self.wire}"],
                         args.server_cpu, tmp, env=WORKER_PRELOAD)
        self.results: dict[str, list[dict[str, Any]]] = {}

    def start(self) -> None:
        ready = wait_http_ready(self.proc, self.http, 120)
        log(f"{self.name}: router ready in {ready:.2f} s")
        with urllib.request.urlopen(f"http://{HOST}:{self.http}/admin/models", timeout=10) as r:
            model = json.loads(r.read())["models"][0]
        self.pids = {"router": self.proc.pid}
        self.pids.update({f"worker {v['version']}": v["workers"][0]["pid"] for v in model["versions"]})

    def set_shadow(self, setting: str) -> None:
        body = json.dumps({"shadow": {s: (1.0 if s == setting else 0.0) for s in SHADOWS}}).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.http}/admin/models/mlp-small/traffic", data=body,
                                     method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                raise BenchError(f"setting shadow {setting}: {r.status}")

    def shadow_counts(self) -> dict[str, float]:
        return shadow_requests(self.http)

    def run(self, setting: str, proto: str, conc: int) -> dict[str, Any]:
        a = self.a
        p = PAYLOADS["mlp-small"]
        cpu = ["taskset", "-c", str(a.client_cpu)]
        env = dict(os.environ)
        if proto == "http":
            env["BENCH_BODY"] = p.oip_json().decode()
            argv = cpu + ["wrk", "-t1", f"-c{conc}", f"-d{a.duration}s", "--latency", "-s", str(LUA),
                          f"http://{HOST}:{self.http}{p.http_path}"]
        else:
            argv = cpu + [sys.executable, "-m", "bench.client", "--port", str(self.wire), "--mode", "msgpack",
                          "--model", "mlp-small", "--depth", str(conc), "--duration", str(a.duration),
                          "--warmup", str(a.client_warmup)]
        before = self.shadow_counts()
        c0 = {k: cpu_ns(v) for k, v in self.pids.items()}
        r = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=a.duration + 90)
        c1 = {k: cpu_ns(v) for k, v in self.pids.items()}
        self.proc.check_alive()
        if proto == "http":
            if r.returncode != 0:
                raise BenchError(f"wrk exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
            res = parse_wrk(r.stdout)
            bad = res["non2xx"] + res["socket_errors"]
        else:
            try:
                res = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise BenchError(f"client printed no result:\n{r.stdout}\n{r.stderr}") from None
            bad = res["errors"]
        if bad or not res["requests"]:
            raise BenchError(f"{self.name}/{setting}/{proto} c={conc}: {bad} failed request(s), "
                             f"{res['requests']} done")
        time.sleep(0.05)  # let the last copies land before counting them
        after = self.shadow_counts()
        res["shadow"] = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after
                         if after.get(k, 0.0) != before.get(k, 0.0)}
        # CPU time over the client's whole run (warm-up included): per request of that window.
        n_all = res["requests"] if proto == "http" else res["requests"] + res["rps"] * a.client_warmup
        res["cpu_us_per_req"] = {k: (c1[k] - c0[k]) / 1e3 / n_all for k in c0}
        copies = res["shadow"].get(f"{setting}.ok", 0.0)
        if setting != "none" and copies:
            res["shadow_worker_cpu_us_per_copy"] = (c1[f"worker {setting}"] - c0[f"worker {setting}"]) / 1e3 / copies
        self.results.setdefault(f"{setting}/{proto}/c{conc}", []).append(res)
        return res


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in ("p50_us", "p99_us", "rps")}
    out["router_cpu_us"] = statistics.median(r["cpu_us_per_req"]["router"] for r in runs)
    out["live_worker_cpu_us"] = statistics.median(r["cpu_us_per_req"]["worker 1"] for r in runs)
    per_copy = [r["shadow_worker_cpu_us_per_copy"] for r in runs if "shadow_worker_cpu_us_per_copy" in r]
    if per_copy:
        out["shadow_worker_cpu_us_per_copy"] = statistics.median(per_copy)
    keys = {k for r in runs for k in r["shadow"]}
    out["shadow"] = {k: statistics.median(r["shadow"].get(k, 0.0) for r in runs) for k in sorted(keys)}
    return out


def report(layouts: list[Layout]) -> tuple[str, list[dict[str, Any]]]:
    rows = [["layout", "shadow", "load", "p50 µs", "p99 µs", "req/s", "p99 vs none", "req/s vs none",
             "copies compared / dropped", "router CPU µs/req", "live worker CPU µs/req", "shadow CPU µs/copy"]]
    targets = []
    for lay in layouts:
        med = {k: median(v) for k, v in lay.results.items()}
        for proto, conc in LOADS:
            base = med.get(f"none/{proto}/c{conc}")
            for setting in SETTINGS:
                m = med.get(f"{setting}/{proto}/c{conc}")
                if m is None or base is None:
                    continue
                p99 = 100.0 * (m["p99_us"] / base["p99_us"] - 1.0)
                rps = 100.0 * (m["rps"] / base["rps"] - 1.0)
                sh = m["shadow"]
                copies = (f"{sh.get(f'{setting}.ok', 0):.0f} / {sh.get(f'{setting}.dropped', 0):.0f}"
                          if setting != "none" else "")
                rows.append([lay.name, setting, f"{proto} c={conc}", f"{m['p50_us']:.0f}", f"{m['p99_us']:.0f}",
                             f"{m['rps']:.0f}", f"{p99:+.1f}%" if setting != "none" else "",
                             f"{rps:+.1f}%" if setting != "none" else "", copies, f"{m['router_cpu_us']:.1f}",
                             f"{m['live_worker_cpu_us']:.1f}",
                             f"{m['shadow_worker_cpu_us_per_copy']:.0f}" if "shadow_worker_cpu_us_per_copy" in m
                             else ""])
                if lay.name == "apart" and setting != "none" and conc == 1 and lay.own_core:
                    targets.append({"target": f"live p99 within {TARGET_P99_PCT:.0f}% of no shadow "
                                              f"({setting}, {proto} c=1, shadow off the live core)",
                                    "value": f"{p99:+.1f}% ({m['p99_us']:.0f} vs {base['p99_us']:.0f} µs)",
                                    "met": p99 <= TARGET_P99_PCT})
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines), targets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=5, help="seconds per scenario run")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario; the median is reported")
    p.add_argument("--quick", action="store_true", help="2 s per scenario, 1 run (CI)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write every result here")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--shadow-cpu", type=int, default=None,
                   help="core of the shadow workers in the apart layout (default: a third core, else the client's)")
    p.add_argument("--layouts", default="apart,shared", help="comma-separated: apart, shared")
    p.add_argument("--shadow-priority", choices=("idle", "normal"), default="idle",
                   help="server.shadow_priority of the daemon (idle needs CAP_SYS_NICE, else it is normal)")
    a = p.parse_args(argv)
    interrupt_on_sigterm()
    if a.shadow_cpu is None:
        spare = sorted(os.sched_getaffinity(0) - {a.server_cpu, a.client_cpu})
        a.shadow_cpu = spare[0] if spare else a.client_cpu
    log(f"apart layout: shadow workers on CPU {a.shadow_cpu}"
        + (" (the client's: this machine has no third core)" if a.shadow_cpu == a.client_cpu else ""))
    if a.quick:
        a.duration, a.runs = 2, 1
    a.client_warmup = 0.2 if a.quick else 0.5
    if a.server_cpu == a.client_cpu:
        p.error("--server-cpu and --client-cpu must differ")
    require_tools(p)
    os.sched_setaffinity(0, {a.client_cpu})
    errors: list[str] = []
    layouts: list[Layout] = []
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        from modelkit.demo import build_demo_store

        store = Path(tmp) / "store"
        build_demo_store(store, extra=True)
        for name in a.layouts.split(","):
            lay = Layout(name, a, Path(tmp), store)
            layouts.append(lay)
            try:
                lay.start()
                for i in range(a.runs):
                    for setting in SETTINGS:
                        lay.set_shadow(setting)
                        for proto, conc in LOADS:
                            res = lay.run(setting, proto, conc)
                            log(f"{name} run {i + 1}/{a.runs} shadow={setting:5s} {proto} c={conc:<3d} "
                                f"p50 {res['p50_us']:7.1f} us  p99 {res['p99_us']:8.1f} us  "
                                f"{res['rps']:8.0f} req/s  copies {res['shadow']}")
            except BenchError as exc:
                errors.append(f"{name}: {exc}")
            finally:
                code = lay.proc.stop()
                if code != 0:
                    errors.append(f"{name}: router exited with {code}:\n{lay.proc.log[-2000:]}")
    text, targets = report(layouts)
    print(text)
    print()
    if a.shadow_cpu == a.client_cpu and "apart" in a.layouts:
        print(f"target not measured: live p99 within {TARGET_P99_PCT:.0f}% of no shadow needs the shadow on a core "
              "of its own; this machine has none to spare (pass --shadow-cpu on a machine with a third core)")
    for t in targets:
        print(f"target {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "machine": machine(), "settings": {"duration_s": a.duration, "runs": a.runs, "quick": a.quick,
                                               "server_cpu": a.server_cpu, "client_cpu": a.client_cpu,
                                               "shadow_cpu": a.shadow_cpu,
                                               "shadow_priority": a.shadow_priority},
            "layouts": {lay.name: {k: {"median": median(v), "runs": v} for k, v in lay.results.items()}
                        for lay in layouts},
            "targets": targets, "errors": errors}, indent=2, default=str) + "\n")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
