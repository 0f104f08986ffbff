"""What the prediction log costs serving: throughput at ``log_rate`` 0, 0.01 and 1.

``python -m bench.predlog [--duration S] [--rounds N] [--quick] [--json OUT]``

Three daemons on the server core (``--server-cpu``: the router, its worker and the log's writer),
alike but for ``fraud``'s ``log_rate``, one worker, batching on. The same wrk command (OIP JSON,
``-c32``, on ``--client-cpu``) runs against each in turn, the order rotating each round, ``--rounds``
times; the report gives each daemon's median requests per second, its ratio to ``log_rate = 0``,
and what its log sampled, wrote and dropped (at 1, every request: the writer shares the core and
may fall behind, and then drops, counted, rather than slow serving). No speed assertion: the
figures go to the log and the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .drift import wrk
from .load import HOST, BenchError, Proc, free_port, log, metric_totals, round_options, start_rounds, wait_http_ready

RATES = (0.0, 0.01, 1.0)
MODEL = "fraud"


def write_config(path: Path, store: Path, cpu: int, rate: float) -> None:
    path.write_text(f"[server]\nrequest_timeout_ms = 5000\n\n[store]\npath = {json.dumps(str(store))}\n\n"
                    f"[predlog]\npath = {json.dumps(str(path.parent / path.stem))}\nfile_s = 5\n\n"
                    f'[[models]]\nname = "{MODEL}"\nlog_rate = {rate}\n'
                    f'  [[models.versions]]\n  version = "1"\n  cpus = [{cpu}]\n  threads = 1\n'
                    '  max_batch_size = 32\n')


def counts(port: int) -> dict[str, float]:
    names = ("router_predlog_sampled_total", "router_predlog_written_total", "router_predlog_dropped_total")
    totals = metric_totals(port, names, model=MODEL)
    return {n.removeprefix("router_predlog_").removesuffix("_total"): v for n, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.predlog", description=__doc__.splitlines()[0])
    round_options(p, "runs per daemon, the order rotating")
    a = p.parse_args(argv)
    start_rounds(p, a)
    result: dict[str, Any] = {"duration_s": a.duration, "rounds": a.rounds, "rates": {}}
    with tempfile.TemporaryDirectory(prefix="bench-predlog-") as tmp:
        from modelkit.demo import build_demo_store

        store = Path(tmp) / "store"
        build_demo_store(store)
        daemons: dict[float, tuple[Proc, int]] = {}
        try:
            for rate in RATES:
                cfg = Path(tmp) / f"log-{rate:g}.toml"
                write_config(cfg, store, a.server_cpu, rate)
                port = free_port()
                proc = Proc(f"router-predlog-{rate:g}", [sys.executable, "-m", "router", "serve", "--config",
                                                         str(cfg), "--http", f"{HOST}:{port}", "--msgpack", ""],
                            a.server_cpu, Path(tmp))
                daemons[rate] = (proc, port)
            for proc, port in daemons.values():
                wait_http_ready(proc, port, 120)
            rps: dict[float, list[float]] = {rate: [] for rate in RATES}
            for rate in RATES:
                wrk(a, daemons[rate][1], MODEL, 2)  # warm-up
            for r in range(a.rounds):
                order = RATES[r % len(RATES):] + RATES[:r % len(RATES)]
                for rate in order:
                    rps[rate].append(wrk(a, daemons[rate][1], MODEL, a.duration)["rps"])
            time.sleep(6)  # the writers close their files (file_s = 5) and report
            base = statistics.median(rps[0.0])
            for rate in RATES:
                median = statistics.median(rps[rate])
                c = counts(daemons[rate][1])
                if rate and not c["sampled"]:
                    raise BenchError(f"log_rate {rate:g}: nothing was sampled")
                files = sorted((Path(tmp) / f"log-{rate:g}").rglob("[!.]*.parquet"))
                result["rates"][f"{rate:g}"] = {"rps": rps[rate], "median": median, "ratio": median / base,
                                                **c, "files": len(files)}
                log(f"log_rate {rate:g}: {median:.0f} req/s, ratio {median / base:.3f} to no log; sampled "
                    f"{c['sampled']:.0f}, written {c['written']:.0f}, dropped {c['dropped']:.0f}, "
                    f"{len(files)} file(s)")
        finally:
            for proc, _ in daemons.values():
                proc.stop()
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
