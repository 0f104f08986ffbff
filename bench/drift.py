"""What drift monitoring costs the workers: throughput with ``[models.drift]`` on and off.

``python -m bench.drift [--duration S] [--rounds N] [--quick] [--json OUT]``

Two daemons on the server core (``--server-cpu``, router and workers), alike but for
``[models.drift] enabled``, serve ``fraud`` (8 inputs, 2 outputs) and ``mlp-wide`` (256 inputs, of
which the monitor keeps the first 64 columns, 10 outputs), one worker each, batching on. For each
model the same wrk command (OIP JSON, ``-c32``, on ``--client-cpu``) runs against one daemon then the
other, in alternating order, ``--rounds`` times; the report gives each side's median requests per
second and their ratio (the target: drift costs under 2 %, a ratio above 0.98), and checks that the
monitoring daemon did monitor (``router_drift_window_rows`` > 0). No speed assertion: the figures go
to the log and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .load import (
    HOST,
    LUA,
    ROOT,
    BenchError,
    Proc,
    free_port,
    log,
    metric_totals,
    parse_wrk,
    round_options,
    start_rounds,
    wait_http_ready,
)
from .payloads import PAYLOADS

MODELS = ("fraud", "mlp-wide")
TARGET_RATIO = 0.98


def write_config(path: Path, store: Path, cpu: int, drift: bool) -> None:
    text = f"[server]\nrequest_timeout_ms = 5000\n\n[store]\npath = {json.dumps(str(store))}\n\n"
    for model in MODELS:
        text += (f'[[models]]\nname = "{model}"\n  [models.drift]\n  enabled = {"true" if drift else "false"}\n'
                 f'  [[models.versions]]\n  version = "1"\n  cpus = [{cpu}]\n  threads = 1\n  max_batch_size = 32\n')
    path.write_text(text)


def wrk(a: argparse.Namespace, port: int, model: str, duration: int) -> dict[str, Any]:
    p = PAYLOADS[model]
    env = dict(os.environ, BENCH_BODY=p.oip_json().decode())
    r = subprocess.run(["taskset", "-c", str(a.client_cpu), "wrk", "-t1", "-c32", f"-d{duration}s", "--latency",
                        "-s", str(LUA), f"http://{HOST}:{port}{p.http_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=duration + 60)
    if r.returncode != 0:
        raise BenchError(f"wrk exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
    out = parse_wrk(r.stdout)
    if out["non2xx"] or out["socket_errors"]:
        raise BenchError(f"{model}: {out['non2xx']} non-2xx answers, {out['socket_errors']} socket errors")
    return out


def window_rows(port: int, model: str) -> float:
    return metric_totals(port, ("router_drift_window_rows",), model=model)["router_drift_window_rows"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.splitlines()[0])
    round_options(p, "runs per model and side, alternating")
    a = p.parse_args(argv)
    start_rounds(p, a)
    result: dict[str, Any] = {"duration_s": a.duration, "rounds": a.rounds, "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        from modelkit.demo import build_demo_store

        store = Path(tmp) / "store"
        build_demo_store(store, extra=True)
        daemons: dict[str, tuple[Proc, int]] = {}
        try:
            for side in ("on", "off"):
                cfg = Path(tmp) / f"config-{side}.toml"
                write_config(cfg, store, a.server_cpu, side == "on")
                port = free_port()
                proc = Proc(f"router-drift-{side}", [sys.executable, "-m", "router", "serve", "--config", str(cfg),
                                                     "--http", f"{HOST}:{port}", "--msgpack", ""],
                            a.server_cpu, Path(tmp))
                daemons[side] = (proc, port)
            for proc, port in daemons.values():
                wait_http_ready(proc, port, 120)
            for model in MODELS:
                rps: dict[str, list[float]] = {"on": [], "off": []}
                for side in ("on", "off"):
                    wrk(a, daemons[side][1], model, 2)  # warm-up (and the drift reference's first rows)
                for r in range(a.rounds):
                    for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
                        rps[side].append(wrk(a, daemons[side][1], model, a.duration)["rps"])
                on, off = statistics.median(rps["on"]), statistics.median(rps["off"])
                rows = window_rows(daemons["on"][1], model)
                if rows <= 0:
                    raise BenchError(f"{model}: the monitoring daemon reports no drift window: nothing was monitored")
                result["models"][model] = {"rps_on": rps["on"], "rps_off": rps["off"], "median_on": on,
                                           "median_off": off, "ratio": on / off, "window_rows": rows}
                log(f"{model}: drift on {on:.0f} req/s, off {off:.0f} req/s: ratio {on / off:.3f} "
                    f"(target > {TARGET_RATIO}); window {rows:.0f} rows")
        finally:
            for proc, _ in daemons.values():
                proc.stop()
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
