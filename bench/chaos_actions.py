"""The chaos soak's chaos (:mod:`bench.chaos`): three loops that kill and stop workers, change what
serves (reload, traffic, deploy, rollback) and open slow connections, counting what came of each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from .chaos_daemon import MODEL, SHADOW, SHADOW_FRACTION, Daemon, children, listed_workers, proc_stat, version_tables
from .chaos_load import HOST, SlowTally, idle, trickle
from .load import log
from .payloads import MLP_SMALL

PROCESS_ACTIONS = ("kill", "stop")
CONTROL_ACTIONS = ("reload", "traffic", "deploy", "rollback")
SLOW_ACTIONS = ("trickle", "idle")
ACTIONS = PROCESS_ACTIONS + CONTROL_ACTIONS + SLOW_ACTIONS


class Chaos:
    """The three chaos loops (processes, control, slow clients), what they did and what came of it."""

    def __init__(self, d: Daemon, rng: random.Random, quick: bool) -> None:
        self.d = d
        self.rng = rng
        self.quick = quick
        self.actions: Counter[str] = Counter()
        self.results: Counter[str] = Counter()  # "kind result" -> n
        self.log: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.stopped: dict[int, int] = {}  # pid -> starttime, SIGSTOPped now
        self.seen_workers: dict[int, int] = {}  # every worker pid met -> its starttime
        self.slow = SlowTally()
        self.batch = 32
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # SIGCONTs to come and slow clients
        self.t0 = time.monotonic()

    # helpers ------------------------------------------------------------------------------------------------

    def _record(self, kind: str, result: str, detail: str, started: float) -> None:
        """Count an action begun at ``started`` (monotonic) and what came of it."""
        self.actions[kind] += 1
        self.results[f"{kind} {result}"] += 1
        self.log.append({"t": round(started - self.t0, 2), "took_s": round(time.monotonic() - started, 2),
                         "action": kind, "result": result, "detail": detail})
        log(f"chaos {kind}: {result} {detail}")

    def _error(self, msg: str) -> None:
        self.errors.append(msg)
        log(f"error: {msg}")

    async def _admin(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """``(status, JSON)`` of an admin call; ``(0, why)`` when no answer came (the action reports it)."""
        try:
            return await asyncio.to_thread(self.d.request, method, path, body, timeout)
        except OSError as exc:
            return 0, f"no answer: {exc!r}"

    async def _sleep(self, lo: float, hi: float) -> bool:
        """Wait a random time in ``[lo, hi]``; False once the soak is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.rng.uniform(lo, hi))
        return not self._stop.is_set()

    async def _schedule(self, first: list[str], kinds: tuple[str, ...], weights: tuple[int, ...],
                        interval: tuple[float, float]) -> AsyncIterator[str]:
        """After a random pause each, the kinds of ``first`` in order, then weighted random picks until the
        soak stops. Once it is stopping, only a kind that has not run yet still runs (without a pause):
        every kind runs at least once even on a machine too slow to fit them into ``--duration``."""
        for kind in first:
            await self._sleep(*interval)
            if not self.actions[kind]:
                yield kind
        while await self._sleep(*interval):
            yield self.rng.choices(kinds, weights)[0]

    def workers(self) -> dict[int, int]:
        """The router's children now (pid -> starttime), living ones; remembered in :attr:`seen_workers`."""
        out = {}
        for pid in children(self.d.pid):
            st = proc_stat(pid)
            if st is not None and st[0] != "Z" and st[1] == self.d.pid:
                out[pid] = st[3]
        self.seen_workers.update(out)
        return out

    def _signal(self, pid: int, start: int, sig: int) -> bool:
        """Send ``sig`` to ``pid`` only if it is still the router's child started at ``start``."""
        st = proc_stat(pid)
        if st is None or st[1] != self.d.pid or st[3] != start:
            return False
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True

    # loops --------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._loops = [asyncio.create_task(self._process_loop(), name="process chaos"),
                       asyncio.create_task(self._control_loop(), name="control chaos"),
                       asyncio.create_task(self._slow_loop(), name="slow clients")]

    async def stop(self) -> None:
        """Stop the loops (an action under way finishes; a kind not run yet still runs), SIGCONT every
        stopped worker, and wait for the slow clients to end (each holds its connection a few seconds)."""
        self._stop.set()
        for task, r in zip(self._loops, await asyncio.gather(*self._loops, return_exceptions=True), strict=True):
            if isinstance(r, BaseException):
                self._error(f"chaos loop {task.get_name()} crashed: {r!r}")
        self.resume_all()
        for r in await asyncio.gather(*self._tasks, return_exceptions=True):
            if isinstance(r, BaseException):
                self._error(f"slow client or SIGCONT task crashed: {r!r}")

    def resume_all(self) -> None:
        for pid, start in list(self.stopped.items()):
            self._signal(pid, start, signal.SIGCONT)
            self.stopped.pop(pid, None)

    async def _process_loop(self) -> None:
        first = list(PROCESS_ACTIONS)
        self.rng.shuffle(first)
        interval = (1.0, 2.5) if self.quick else (2.0, 6.0)
        async for kind in self._schedule(first, PROCESS_ACTIONS, (1, 1), interval):
            t = time.monotonic()
            pool = {p: s for p, s in self.workers().items() if p not in self.stopped}
            # Mostly a serving worker; one time in five any child, a standby or retiring one included
            # (a deploy whose standby worker dies fails, answering 500: that is counted, not a failure).
            status, doc = await self._admin("GET", "/admin/models")
            serving = set(listed_workers(doc)) if status == 200 else set()
            anyone = self.rng.random() < 0.2 or not serving & pool.keys()
            pick = sorted(pool if anyone else serving & pool.keys())
            if not pick:
                self._record(kind, "no target", "every worker is stopped or gone", t)
                continue
            pid = self.rng.choice(pick)
            which = f"pid {pid} ({'serving' if pid in serving else 'standby or retiring'})"
            if kind == "kill":
                ok = self._signal(pid, pool[pid], signal.SIGKILL)
                self._record("kill", "sent" if ok else "gone", which, t)
            else:
                hold = self.rng.uniform(2.0, 5.0)
                if self._signal(pid, pool[pid], signal.SIGSTOP):
                    self.stopped[pid] = pool[pid]
                    task = asyncio.create_task(self._resume_later(pid, pool[pid], hold))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    self._record("stop", "sent", f"{which} for {hold:.1f} s", t)
                else:
                    self._record("stop", "gone", which, t)

    async def _resume_later(self, pid: int, start: int, hold: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), hold)
        if self.stopped.pop(pid, None) is not None:
            self._signal(pid, start, signal.SIGCONT)

    async def _control_loop(self) -> None:
        # Reload and traffic first: a deploy under a loaded machine can take a while. A rollback right
        # after the deploy, while its previous pool is warm.
        first = ["reload", "traffic"]
        self.rng.shuffle(first)
        interval = (0.5, 2.0) if self.quick else (5.0, 15.0)
        async for kind in self._schedule(first + ["deploy", "rollback"], CONTROL_ACTIONS, (3, 3, 2, 1), interval):
            t = time.monotonic()
            try:
                await getattr(self, f"_{kind}")()
            except (OSError, ValueError, KeyError) as exc:  # /metrics or the config file: reported, chaos goes on
                self._error(f"{kind}: {exc!r}")
                self._record(kind, "error", repr(exc), t)

    async def _slow_loop(self) -> None:
        first = list(SLOW_ACTIONS)
        self.rng.shuffle(first)
        interval = (1.0, 3.0) if self.quick else (3.0, 8.0)
        async for kind in self._schedule(first, SLOW_ACTIONS, (1, 1), interval):
            t = time.monotonic()
            hold = self.rng.uniform(2.0, 5.0) if self.quick else self.rng.uniform(3.0, 15.0)
            if kind == "trickle":
                proto = self.rng.choice(("http", "tcp"))
                if proto == "http":
                    port = self.d.http
                    data = (f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {HOST}\r\n"
                            "Content-Type: application/json\r\nContent-Length: 64\r\n\r\n").encode()
                else:
                    port, data = self.d.wire, MLP_SMALL.frame(1)
                coros = [trickle(port, data, hold, proto, self.slow)]
                detail = f"{proto}, {hold:.1f} s"
            else:
                n = self.rng.randint(3, 10)
                protos = [self.rng.choice(("http", "tcp")) for _ in range(n)]
                coros = [idle(self.d.http if p == "http" else self.d.wire, hold, p, self.slow) for p in protos]
                detail = f"{protos.count('http')} http + {protos.count('tcp')} tcp, {hold:.1f} s"
            for coro in coros:
                task = asyncio.create_task(coro)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._record(kind, "opened", detail, t)

    # control actions ----------------------------------------------------------------------------------------

    def _weights(self) -> dict[str, int]:
        w1 = self.rng.choice((0, 10, 30, 50, 70, 90, 100))
        return {"1": w1, "2": 100 - w1}

    async def _reload(self) -> None:
        import tomlkit

        t = time.monotonic()
        weights = self._weights()
        before = sum((await asyncio.to_thread(self.d.metrics))["router_reloads_total"].values())
        doc = tomlkit.parse(self.d.config.read_text())
        for table in doc["models"][0]["versions"]:
            if table["version"] in weights:
                table["weight"] = weights[table["version"]]
        tmp = self.d.config.with_suffix(".chaos-tmp")
        tmp.write_text(tomlkit.dumps(doc))
        os.replace(tmp, self.d.config)
        os.kill(self.d.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = (await asyncio.to_thread(self.d.metrics))["router_reloads_total"]
            if sum(counts.values()) > before:
                break
            await asyncio.sleep(0.1)
        else:
            self._error("reload: SIGHUP not answered by a counted reload within 60 s")
            self._record("reload", "hung", str(weights), t)
            return
        status, traffic = await self._admin("GET", f"/admin/models/{MODEL}/traffic")
        got = {v: traffic["weights"].get(v) for v in weights} if status == 200 else None
        if got != weights:
            self._error(f"reload: weights {weights} written and SIGHUP sent, the daemon has {got}")
        self._record("reload", "ok" if got == weights else "wrong", str(weights), t)

    async def _traffic(self) -> None:
        t = time.monotonic()
        body: dict[str, Any] = {"weights": self._weights()}
        if self.rng.random() < 0.5:
            body["shadow"] = {SHADOW: round(self.rng.uniform(0.2, 1.0), 2)}
        status, doc = await self._admin("PUT", f"/admin/models/{MODEL}/traffic", body)
        if status != 200:
            self._error(f"traffic {body}: {status} {doc}")
        self._record("traffic", "ok" if status == 200 else str(status), json.dumps(body), t)

    async def _deploy(self) -> None:
        t = time.monotonic()
        self.batch = 16 if self.batch == 32 else 32
        versions = version_tables(self._weights(), self.batch, SHADOW_FRACTION)
        status, doc = await self._admin("POST", f"/admin/models/{MODEL}/deploy", {"versions": versions}, 180)
        took = f"{time.monotonic() - t:.1f} s, max_batch_size {self.batch}"
        if status == 200:
            self._record("deploy", "ok", f"{took}, swap {doc.get('swap_us')} us", t)
        elif status == 500 and isinstance(doc, dict) and doc.get("error"):
            # A standby worker killed or stalled by the chaos fails the deploy; the active pool serves on.
            self._record("deploy", "failed", f"{took}: {doc['error'][:200]}", t)
        else:
            self._error(f"deploy: {status} {doc}")
            self._record("deploy", str(status), took, t)

    async def _rollback(self) -> None:
        t = time.monotonic()
        # A previous pool one of whose versions has no live worker (the chaos killed it, it is restarting)
        # is refused with 409 too: try again for a few seconds, while it is still kept.
        attempt = 1
        status, doc = await self._admin("POST", f"/admin/models/{MODEL}/rollback")
        while status == 409 and attempt < 4:
            await asyncio.sleep(1.0)
            attempt += 1
            status, doc = await self._admin("POST", f"/admin/models/{MODEL}/rollback")
        if status == 200:
            self._record("rollback", "ok", f"to pool {doc.get('active')}, swap {doc.get('swap_us')} us"
                         + (f" (attempt {attempt})" if attempt > 1 else ""), t)
        elif status == 409:
            self._record("rollback", "refused", str(doc.get("error") if isinstance(doc, dict) else doc)[:200], t)
        else:
            self._error(f"rollback: {status} {doc}")
            self._record("rollback", str(status), "", t)
