"""How soon a change made on one router is served by another sharing its config.toml.

``python -m bench.propagation [--changes N] [--quick] [--json OUT]``

Two routers serve one config file (as two pods share a volume). ``--changes`` times, a traffic change
is made through router A's admin API, then router B's traffic is read every 10 ms until it shows the
change: the time from A's answer to B serving it, and the generation B's replies then carry. The
report gives the median and the largest (the target: within 2 s; ``server.config_poll_s`` is 0.5 s).
No speed assertion: the figures go to the log and the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .load import HOST, Proc, free_port, interrupt_on_sigterm, log, wait_http_ready


def call(port: int, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__.splitlines()[0])
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="5 changes (CI)")
    p.add_argument("--json", type=Path, metavar="OUT")
    a = p.parse_args(argv)
    interrupt_on_sigterm()
    if a.quick:
        a.changes = 5
    result: dict[str, Any] = {"changes": a.changes}
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        from modelkit.demo import build_demo_store

        store = Path(tmp) / "store"
        build_demo_store(store)
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(f"[store]\npath = {json.dumps(str(store))}\n\n"
                       '[[models]]\nname = "fraud"\n  [[models.versions]]\n  version = "1"\n  weight = 50\n'
                       '  [[models.versions]]\n  version = "2"\n  weight = 50\n')
        routers = []
        try:
            for cpu, name in enumerate(("a", "b")):
                port = free_port()
                proc = Proc(f"router-{name}", [sys.executable, "-m", "router", "serve", "--config", str(cfg),
                                               "--http", f"{HOST}:{port}", "--msgpack", ""], cpu, Path(tmp))
                routers.append((proc, port))
            for proc, port in routers:
                wait_http_ready(proc, port, 120)
            (_, pa), (_, pb) = routers
            seconds = []
            for i in range(a.changes):
                want = {"1": 10 + i, "2": 90 - i}
                call(pa, "PUT", "/admin/models/fraud/traffic", {"weights": want})
                t0 = time.monotonic()
                while call(pb, "GET", "/admin/models/fraud/traffic")["weights"] != want:
                    time.sleep(0.01)
                seconds.append(time.monotonic() - t0)
                time.sleep(0.1)
            with urllib.request.urlopen(f"http://{HOST}:{pb}/v2/health/ready", timeout=10) as r:
                generation = int(r.headers["Router-Config-Generation"])
            result.update(seconds=seconds, median_s=statistics.median(seconds), max_s=max(seconds),
                          generation=generation)
            log(f"a change on router A served by router B after {statistics.median(seconds) * 1000:.0f} ms "
                f"(median of {a.changes}; largest {max(seconds) * 1000:.0f} ms; target 2000 ms); "
                f"B's replies carry generation {generation}")
        finally:
            for proc, _ in routers:
                proc.stop()
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
