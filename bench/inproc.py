"""The in-process reference: the model's forward called in a loop, no serving at all.

``python -m bench.inproc --store DIR --duration S fraud/1,1 mlp-wide/1,32 [mlp-wide/1,1,cuda:0]``

Each case is ``MODEL/VERSION,ROWS[,DEVICE]``. The module is loaded the way a
worker loads it (:func:`load_module`: ``torch.jit.load``, ``eval``,
``torch.jit.optimize_for_inference`` with the worker's fallback), torch runs on
one intra-op and one inter-op thread (a worker with ``threads = 1``), and the
whole loop runs under one ``torch.inference_mode`` (the worker enters it once
for its life). The input is the version's ``meta.json`` example row, repeated
``ROWS`` times: ``ROWS = 1`` is what one unbatched request costs, ``ROWS = 32``
what a full batch costs per row (what dynamic batching can buy at best).

Each case: 20 untimed calls (past TorchScript's profiling runs), then calls
timed one by one with ``perf_counter_ns`` for ``--duration`` seconds. Prints
one JSON object on stdout: per case p50/p99 per call, calls/s, rows/s, CPU
µs per row (``process_time``), plus the process's CPU affinity and its whole
CPU time (for the harness's foreign-CPU check). The harness runs it under
``taskset`` on the server core, while the daemon and the floor sit idle.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

WARMUP_CALLS = 20


def load_module(path: Path, device: str = "cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript file as a worker does with ``optimize = true`` (the default).

    ``torch.jit.load`` onto ``device``, ``eval()``, then
    ``torch.jit.optimize_for_inference`` (freezing, constant folding, prepacked
    ops); a module that cannot be frozen is used as loaded, as the worker does.
    """
    module = torch.jit.load(str(path), map_location=device)
    module.eval()
    try:
        return torch.jit.optimize_for_inference(module)
    except Exception as exc:  # the worker's fallback: serve it unoptimised
        logging.warning("optimize_for_inference failed for %s (%s); using it unoptimised", path, exc)
        module = torch.jit.load(str(path), map_location=device)
        module.eval()
        return module


def example_batch(version_dir: Path, rows: int, device: str) -> torch.Tensor:
    """The version's first input's example row, repeated ``rows`` times, as FP32 on ``device``."""
    meta = json.loads((version_dir / "meta.json").read_text())
    name = meta["inputs"][0]["name"]
    row = torch.tensor(meta["example"][name], dtype=torch.float32).reshape(1, -1)
    return row.repeat(rows, 1).contiguous().to(device)


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of already sorted values (as wrk and ``bench.client`` report them)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def measure(module: torch.jit.ScriptModule, x: torch.Tensor, duration: float, cuda: bool) -> dict[str, Any]:
    """Call ``module.forward(x)`` for ``duration`` seconds, each call timed; inference mode must be on."""
    forward = module.forward  # as the worker does: no nn.Module hook dispatch per call
    sync = torch.cuda.synchronize if cuda else None
    for _ in range(WARMUP_CALLS):
        forward(x)
    if sync:
        sync()
    ns = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    cpu0 = time.process_time_ns()
    t_start = ns()
    t_end = t_start + int(duration * 1e9)
    now = t_start
    while now < t_end:
        t0 = ns()
        y = forward(x)
        if sync:
            y = y.cpu()  # the worker copies every output back to the host
        now = ns()
        append(now - t0)
    cpu = time.process_time_ns() - cpu0
    elapsed = (now - t_start) / 1e9
    rows = x.shape[0]
    lat.sort()
    return {
        "rows": rows, "calls": len(lat), "seconds": round(elapsed, 4),
        "p50_us": percentile(lat, 50) / 1e3, "p90_us": percentile(lat, 90) / 1e3,
        "p99_us": percentile(lat, 99) / 1e3,
        "calls_per_s": len(lat) / elapsed, "rows_per_s": len(lat) * rows / elapsed,
        "p50_us_per_row": percentile(lat, 50) / 1e3 / rows,
        "cpu_us_per_row": cpu / 1e3 / (len(lat) * rows),
        "out_shape": list(y.shape),
    }


def parse_case(spec: str) -> tuple[str, str, int, str]:
    """``MODEL/VERSION,ROWS[,DEVICE]`` -> ``(model, version, rows, device)``."""
    parts = spec.split(",")
    if len(parts) not in (2, 3) or parts[0].count("/") != 1:
        raise ValueError(f"case {spec!r}: expected MODEL/VERSION,ROWS[,DEVICE]")
    model, version = parts[0].split("/")
    rows = int(parts[1])
    if rows < 1:
        raise ValueError(f"case {spec!r}: ROWS must be >= 1")
    return model, version, rows, parts[2] if len(parts) == 3 else "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--duration", type=float, default=2.0, help="seconds timed per case")
    p.add_argument("cases", nargs="+", metavar="MODEL/VERSION,ROWS[,DEVICE]")
    a = p.parse_args(argv)
    try:
        cases = [parse_case(c) for c in a.cases]
    except ValueError as exc:
        p.error(str(exc))
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        for model, version, rows, device in cases:
            d = a.store / model / version
            module = load_module(d / "model.pt", device)
            res = measure(module, example_batch(d, rows, device), a.duration, device.startswith("cuda"))
            out.append({"model": model, "version": version, "device": device, **res})
    ru = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"cases": out, "affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
               "cpu_s": ru.ru_utime + ru.ru_stime, "max_rss_kib": ru.ru_maxrss}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
