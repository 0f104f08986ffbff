"""Blue-green deploy benchmark: the swap's duration, and live throughput while deploys run.

``python -m bench.deploy [--duration S] [--deploys N] [--quick] [--json OUT]``

One daemon (router and workers on ``--server-cpu``) serves fraud versions 1 and
2 as shipped. The same wrk command (OIP JSON, c=32, on ``--client-cpu``) runs
twice in one go: once in steady state, once while the harness deploys the model
back and forth (``max_batch_size`` 32 <-> 31 in config.toml, then
``POST /admin/reload``: each deploy starts two new workers on the server core,
warms them, swaps, and the old pool stays warm). It reports each deploy's swap
(``router_pool_swap_seconds``: from "standby ready" to "active") and its whole
duration, the throughput of both runs, and every non-2xx (there must be none).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
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
    free_port,
    interrupt_on_sigterm,
    log,
    parse_wrk,
    require_tools,
    wait_http_ready,
)
from .payloads import PAYLOADS

TARGET_SWAP_S = 1e-3


def write_config(path: Path, store: Path, cpu: int, batch: int) -> None:
    version = f"cpus = [{cpu}]\nthreads = 1\nmax_batch_size = {batch}\n"
    path.write_text(
        "[server]\nrequest_timeout_ms = 5000\n\n"
        f"[store]\npath = {json.dumps(str(store))}\n\n"
        '[[models]]\nname = "fraud"\nrouting_key = "x-user-id"\nkeep_previous_s = 2\n'
        f'[[models.versions]]\nversion = "1"\nweight = 90\n{version}'
        f'[[models.versions]]\nversion = "2"\nweight = 10\n{version}'
    )


def swap_seconds(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "router_pool_swap_seconds" and s.labels.get("model") == "fraud":
                return s.value
    raise BenchError("no router_pool_swap_seconds for fraud")


def wrk(a: argparse.Namespace, port: int) -> dict[str, Any]:
    p = PAYLOADS["fraud"]
    env = dict(os.environ, BENCH_BODY=p.oip_json().decode())
    r = subprocess.run(["taskset", "-c", str(a.client_cpu), "wrk", "-t1", "-c32", f"-d{a.duration}s", "--latency",
                        "-s", str(LUA), f"http://{HOST}:{port}{p.http_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=a.duration + 60)
    if r.returncode != 0:
        raise BenchError(f"wrk exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return parse_wrk(r.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=20, help="seconds of each wrk run")
    p.add_argument("--quick", action="store_true", help="6 s runs (CI)")
    p.add_argument("--json", type=Path, metavar="OUT")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    a = p.parse_args(argv)
    interrupt_on_sigterm()
    if a.quick:
        a.duration = 6
    require_tools(p)
    os.sched_setaffinity(0, {a.client_cpu})
    errors: list[str] = []
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        from modelkit.demo import build_demo_store

        store = Path(tmp) / "store"
        build_demo_store(store)
        cfg = Path(tmp) / "config.toml"
        write_config(cfg, store, a.server_cpu, 32)
        port = free_port()
        router = Proc("router", [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--http",
                                 f"{HOST}:{port}", "--msgpack", ""], a.server_cpu, Path(tmp))
        try:
            wait_http_ready(router, port, 120)
            wrk(argparse.Namespace(**{**vars(a), "duration": 2}), port)  # warm-up
            steady = wrk(a, port)
            log(f"steady: {steady['rps']:.0f} req/s, p99 {steady['p99_us']:.0f} us")
            deploys: list[dict[str, float]] = []
            stop = threading.Event()

            def deploy_loop() -> None:
                batch = 32
                time.sleep(0.5)
                while not stop.is_set():
                    batch = 31 if batch == 32 else 32
                    write_config(cfg, store, a.server_cpu, batch)
                    t0 = time.monotonic()
                    req = urllib.request.Request(f"http://{HOST}:{port}/admin/reload", data=b"{}", method="POST",
                                                 headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(req, timeout=120) as r:
                            ok = r.status == 200 and json.loads(r.read())["deployed"]
                    except OSError as exc:
                        errors.append(f"deploy failed: {exc}")
                        return
                    if not ok:
                        errors.append("a reload deployed nothing")
                        return
                    deploys.append({"total_s": time.monotonic() - t0, "swap_s": swap_seconds(port)})
                    log(f"deploy {len(deploys)}: {deploys[-1]['total_s']:.2f} s, swap "
                        f"{deploys[-1]['swap_s'] * 1e6:.1f} us")

            t = threading.Thread(target=deploy_loop)
            t.start()
            during = wrk(a, port)
            stop.set()
            t.join(180)
            log(f"during deploys: {during['rps']:.0f} req/s, p99 {during['p99_us']:.0f} us")
            router.check_alive()
        except BenchError as exc:
            errors.append(str(exc))
            steady, during, deploys = {}, {}, []
        finally:
            if router.stop() != 0:
                errors.append(f"router exited badly:\n{router.log[-2000:]}")
    for name, run in (("steady", steady), ("during deploys", during)):
        if run and run["non2xx"] + run["socket_errors"]:
            errors.append(f"{name}: {run['non2xx']} non-2xx, {run['socket_errors']} socket errors")
    if deploys:
        swaps = [d["swap_s"] for d in deploys]
        result = {
            "deploys": len(deploys), "swap_us_median": statistics.median(swaps) * 1e6,
            "swap_us_max": max(swaps) * 1e6,
            "deploy_s_median": statistics.median(d["total_s"] for d in deploys),
            "steady_rps": steady["rps"], "during_rps": during["rps"], "ratio": during["rps"] / steady["rps"],
            "steady_p99_us": steady["p99_us"], "during_p99_us": during["p99_us"],
            "non2xx": steady["non2xx"] + during["non2xx"],
        }
        print(f"{len(deploys)} deploys in {a.duration} s of load: swap median {result['swap_us_median']:.1f} us, "
              f"max {result['swap_us_max']:.1f} us; a whole deploy (start + warm-up + swap) median "
              f"{result['deploy_s_median']:.2f} s")
        print(f"HTTP c=32 throughput: steady {steady['rps']:.0f} req/s, during deploys {during['rps']:.0f} req/s "
              f"({result['ratio']:.2f}x); p99 {steady['p99_us']:.0f} vs {during['p99_us']:.0f} us; "
              f"non-2xx: {result['non2xx']}")
        met = result["swap_us_max"] < TARGET_SWAP_S * 1e6
        print(f"target {'MET   ' if met else 'MISSED'} swap < 1 ms: max {result['swap_us_max']:.1f} us")
    elif not errors:
        errors.append("no deploy completed during the load")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"result": result, "deploys": deploys, "errors": errors}, indent=2) + "\n")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
