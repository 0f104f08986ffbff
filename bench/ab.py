"""Interleaved A/B of the load harness between two checkouts.

``python -m bench.ab --before DIR --after DIR --rounds N --only REGEX [--duration S] [--out DIR] [LOAD OPTIONS]``

Compares two versions of the project on the same machine, for example the
commit before a refactor (checked out with ``git worktree add --detach DIR
COMMIT`` and built with ``python setup.py build_ext --inplace`` there) against
the working tree. Each round runs ``python -m bench.load --runs 1 --duration S
--only REGEX --json OUT`` once in each tree, before first, then after; ``N``
rounds alternate the two (before, after, before, after, ...), so slow drift of
the machine hits both sides alike. Every run starts its own daemon, store and
references from that tree: the working directory and ``PYTHONPATH`` are the
tree, so ``router``, ``runtime`` and ``bench`` (and every process the harness
spawns) come from it; this is checked before any load. Options this script
does not know (``--server-cpu``, ``--max-batch-delay-us``, ...) go to every
``bench.load`` run unchanged.

Output: one row per scenario key, the median over the rounds of p50, p99 and
req/s on each side, and the after/before ratios of p50 and req/s (below 1 is
faster for p50, above 1 is faster for req/s). Every run's JSON and log stay in
``--out`` (a new temporary directory by default). Exits 1 when any run failed.

Example, the main scenarios of ``bench/load.py``'s targets (9 scenarios, about 37 s of load
and 20-30 s of set-up per run: about 10-12 minutes on an idle two-core machine)::

    python -m bench.ab --before ../before --after . --rounds 5 --duration 3 \\
        --only '^(json/router/(fraud|mlp-small)/c(1|32)|tcp/router/(fraud|mlp-small)/c(1|64)|json/router/mlp-wide/c32)$'
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
from pathlib import Path
from typing import Any

SIDES = ("before", "after")
#: Options fixed by this script, not passed through to ``bench.load``.
OWN_LOAD_OPTIONS = ("--runs", "--duration", "--only", "--json", "--quick")
#: The figures compared, from each scenario's ``median`` in ``bench.load --json``.
FIELDS = ("p50_us", "p99_us", "rps")


def log(msg: str) -> None:
    print(f"[ab] {msg}", file=sys.stderr, flush=True)


def tree_env(tree: Path) -> dict[str, str]:
    """The environment of a run in ``tree``: its own packages first, whatever else is installed."""
    return {**os.environ, "PYTHONPATH": str(tree)}


#: Imported in each tree before any load: everything the daemon, a worker and the harness load up front.
CHECK_IMPORTS = ("router.cli", "router.server", "runtime.worker", "bench.load")
CHECK_CODE = f"""
import importlib, json, sys
for m in {CHECK_IMPORTS!r}:
    importlib.import_module(m)
print(json.dumps({{n: m.__file__ for n, m in sys.modules.items()
                  if n.split(".")[0] in ("router", "runtime", "bench", "modelkit") and getattr(m, "__file__", None)}}))
"""


def check_tree(tree: Path) -> str:
    """An error message unless the project's modules import from ``tree`` there (else ``""``); logs what loaded."""
    r = subprocess.run([sys.executable, "-c", CHECK_CODE], cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    if r.returncode != 0:
        return f"{tree}: the packages do not import:\n{r.stderr[-2000:]}"
    files: dict[str, str] = json.loads(r.stdout)
    stray = {n: f for n, f in files.items() if not Path(f).resolve().is_relative_to(tree)}
    if stray:
        return f"{tree}: modules from elsewhere: {stray}"
    compiled = sorted(n for n, f in files.items() if not f.endswith(".py"))
    log(f"{tree}: {len(files)} modules from the tree; compiled: {', '.join(compiled) or 'none'}"
        + (f"; warnings:\n{r.stderr.strip()}" if r.stderr.strip() else ""))
    return ""


def run_load(tree: Path, out: Path, name: str, a: argparse.Namespace, extra: list[str]) -> dict[str, Any] | None:
    """One ``bench.load`` run in ``tree``; its JSON, or None when it failed (the log says why)."""
    json_path, log_path = out / f"{name}.json", out / f"{name}.log"
    json_path.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "bench.load", "--runs", "1", "--duration", str(a.duration),
            "--only", a.only, "--json", str(json_path), *extra]
    t0 = time.monotonic()
    with open(log_path, "wb") as f:
        code = subprocess.run(argv, cwd=tree, env=tree_env(tree), stdout=f, stderr=subprocess.STDOUT).returncode
    took = time.monotonic() - t0
    result = json.loads(json_path.read_text()) if json_path.exists() else None
    if code != 0 or result is None:
        tail = log_path.read_text(errors="replace")[-3000:]
        log(f"{name}: bench.load exited with {code} after {took:.0f} s; end of {log_path}:\n{tail}")
        return None
    log(f"{name}: done in {took:.0f} s")
    return result


def medians(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{key: {field: median over the runs}}`` from each run's per-scenario medians."""
    values: dict[str, dict[str, list[float]]] = {}
    for res in results:
        for sc in res["scenarios"]:
            for k in FIELDS:
                if k in sc["median"]:
                    values.setdefault(sc["key"], {}).setdefault(k, []).append(sc["median"][k])
    return {key: {k: statistics.median(v) for k, v in figs.items()} for key, figs in values.items()}


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def table(keys: list[str], med: dict[str, dict[str, dict[str, float]]]) -> str:
    """One Markdown row per scenario key."""
    head = ["scenario", "p50 µs before", "p50 µs after", "p50 after/before", "p99 µs before", "p99 µs after",
            "req/s before", "req/s after", "req/s after/before"]
    rows = [head]
    for key in keys:
        b, a = med["before"].get(key, {}), med["after"].get(key, {})

        def ratio(k: str, b: dict[str, float] = b, a: dict[str, float] = a) -> str:
            return f"{a[k] / b[k]:.3f}" if b.get(k) and k in a else "-"

        rows.append([key, fmt(b.get("p50_us"), ".1f"), fmt(a.get("p50_us"), ".1f"), ratio("p50_us"),
                     fmt(b.get("p99_us")), fmt(a.get("p99_us")), fmt(b.get("rps")), fmt(a.get("rps")), ratio("rps")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0],
                                epilog="Other options go to every bench.load run.")
    p.add_argument("--before", type=Path, required=True, metavar="DIR", help="checkout of the baseline")
    p.add_argument("--after", type=Path, required=True, metavar="DIR", help="checkout compared with it")
    p.add_argument("--rounds", type=int, required=True, metavar="N", help="runs on each side, interleaved")
    p.add_argument("--only", required=True, metavar="REGEX", help="scenario keys, as bench.load --only")
    p.add_argument("--duration", type=float, default=3.0, metavar="S", help="seconds per scenario run")
    p.add_argument("--out", type=Path, metavar="DIR", help="where each run's JSON and log go (default: a temp dir)")
    a, extra = p.parse_known_args(argv)
    if a.rounds < 1 or a.duration <= 0:
        p.error("--rounds and --duration must be positive")
    fixed = [x for x in extra if x.split("=", 1)[0] in OWN_LOAD_OPTIONS]
    if fixed:
        p.error(f"{fixed} is set by this script, not passed through")
    a.before, a.after = a.before.resolve(), a.after.resolve()
    for tree in (a.before, a.after):
        if not (tree / "bench" / "load.py").is_file():
            p.error(f"{tree} has no bench/load.py")
    return a, extra


def main(argv: list[str] | None = None) -> int:
    a, extra = parse_args(argv)
    trees = {"before": a.before, "after": a.after}
    for tree in trees.values():
        if err := check_tree(tree):
            log(err)
            return 1
    out = a.out or Path(tempfile.mkdtemp(prefix="bench-ab-"))
    out.mkdir(parents=True, exist_ok=True)
    log(f"{a.rounds} round(s), before {a.before}, after {a.after}; runs go to {out}")
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    failed: list[str] = []
    t0 = time.monotonic()
    for i in range(1, a.rounds + 1):
        for side in SIDES:
            name = f"{side}-{i}"
            res = run_load(trees[side], out, name, a, extra)
            if res is None:
                failed.append(name)
            else:
                results[side].append(res)
        per_round = (time.monotonic() - t0) / i
        log(f"round {i}/{a.rounds} done; about {per_round * (a.rounds - i) / 60:.1f} min left")
    keys = list(dict.fromkeys(sc["key"] for side in SIDES for res in results[side] for sc in res["scenarios"]))
    if keys:
        med = {side: medians(results[side]) for side in SIDES}
        print(f"median over rounds (before: {len(results['before'])} run(s), after: {len(results['after'])})")
        print(table(keys, med))
    for side in SIDES:
        disturbed = sum(len(res.get("disturbed_runs", [])) for res in results[side])
        if disturbed:
            print(f"{side}: {disturbed} measurement(s) shared a core with other programs (> 8% foreign CPU; "
                  "see the logs)")
    print(f"runs: {out}")
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
