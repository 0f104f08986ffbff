"""Worker pools per model version, the routing table, and request dispatch.

The routing table of a model lists only versions that have a live replica,
so a version whose workers are all down stops receiving traffic at once and
gets it back when a replica is live again. It is rebuilt (one assignment) on
every replica state change, never per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from pathlib import Path
from time import monotonic, perf_counter

from . import priority
from .config import Config, ModelConfig, VersionConfig
from .cork import Cork
from .metrics import Metrics
from .poll import BusyPoll
from .proto.errors import ConfigError, DeployFailed, NoPreviousPool, NotFound, WorkerUnavailable
from .proto.meta import MODEL_FILE, ModelMeta, read_meta
from .shadow import ShadowTarget
from .splitter import MirrorTable, WeightTable
from .supervisor import Call, Replica

log = logging.getLogger("router.pool")

Done = Callable[[int, int, bytes], None]


class VersionPool:
    """The replicas of one version; picks the least loaded of two random live ones."""

    def __init__(self, model: str, vc: VersionConfig, meta: ModelMeta, replicas: list[Replica]) -> None:
        self.model = model
        self.vc = vc
        self.version = vc.version
        self.meta = meta
        self.replicas = replicas
        self.live: list[Replica] = []

    def refresh(self) -> None:
        self.live = [r for r in self.replicas if r.live]

    def pick(self) -> Replica | None:
        live = self.live
        n = len(live)
        if n == 0:
            return None
        if n == 1:
            return live[0]
        # Power of two choices: near-optimal balance without scanning every replica.
        a, b = random.sample(live, 2)
        return a if a.outstanding <= b.outstanding else b


class ModelRoute:
    """One model's versions, its live weight table and its shadow mirror table.

    ``mirror`` is None when the model has no shadow (the fronts test just that
    on the hot path); otherwise it picks, per request, the shadow versions that
    get a copy, by routing key when there is one.
    """

    def __init__(self, mc: ModelConfig, pools: dict[str, VersionPool], shadows: dict[str, ShadowTarget],
                 pool: str = "blue") -> None:
        self.config = mc
        self.name = mc.name
        #: "blue" or "green": which of the model's two worker pools this is.
        self.pool = pool
        self.replicas = [r for p in pools.values() for r in p.replicas]
        self.routing_key = mc.routing_key
        self.versions = pools
        self.shadows = shadows
        self.table = WeightTable((), ())
        self.mirror: MirrorTable | None = None
        self._mirroring = True
        self._build_mirror()

    def _build_mirror(self) -> None:
        pairs = [(p.version, p.vc.shadow) for p in self.versions.values() if p.vc.shadow > 0]
        self.mirror = MirrorTable(tuple(v for v, _ in pairs), tuple(f for _, f in pairs)) \
            if pairs and self._mirroring else None

    def stop_mirroring(self) -> None:
        """No more copies (shutdown): live requests in flight finish without them."""
        self._mirroring = False
        self.mirror = None

    def mirror_copy(self, answered: str | None, key: str | bytes | None, protocol: str, fmt: int,
                    header_len: int, body: bytes, reply_header_len: int, reply: bytes) -> None:
        """Offer copies of one answered live request to the shadows its key picks.

        Call only after the live reply is written. A request answered by a
        shadow version itself (called pinned) is not mirrored.
        """
        mirror = self.mirror
        if mirror is None or answered is None:
            return
        pool = self.versions.get(answered)
        if pool is None or pool.vc.shadow > 0:
            return
        picked = mirror.pick(key)
        if picked:
            now = monotonic()
            shadows = self.shadows
            for v in picked:
                shadows[v].offer(protocol, fmt, header_len, body, reply_header_len, reply, now)

    def rebuild(self) -> None:
        """Swap in a new table of live versions with weight > 0 (one assignment)."""
        live = [(p.version, p.vc.weight) for p in self.versions.values() if p.live and p.vc.weight > 0]
        self.table = WeightTable(tuple(v for v, _ in live), tuple(w for _, w in live))

    def apply(self, mc: ModelConfig) -> None:
        """Take new weights/shadows for the same versions; workers are untouched.

        Requests see either the old table or the new one: ``rebuild`` swaps it
        with one assignment, and nothing awaits in between.
        """
        for vc in mc.versions:
            self.versions[vc.version].vc = vc
        self.config = mc
        self.routing_key = mc.routing_key
        self.rebuild()
        self._build_mirror()

    @property
    def ready(self) -> bool:
        return all(p.live for p in self.versions.values())


def resolve_meta(store: Path, model: str, version: str, where: str) -> tuple[Path, ModelMeta]:
    """Find and validate ``<store>/<model>/<version>``.

    Raises:
        ConfigError: the directory, model file or meta.json is missing or invalid.
    """
    d = store / model / version
    if not (d / MODEL_FILE).is_file():
        raise ConfigError(f"{where}: no model file at {d / MODEL_FILE} (run `router demo-models` for the demo)")
    return d, read_meta(d)


class Pools:
    """All models' worker pools: started, dispatched to, swapped (blue-green) and stopped.

    Each model has an active pool (``models[name]``) and, for
    ``models.keep_previous_s`` after a deploy, the previous one, warm for a
    rollback. A deploy builds a standby pool, starts every worker in it, waits
    for each warm-up, and only then makes it active with one assignment;
    requests already sent finish on the pool that took them.

    Args:
        config: the validated configuration.
        metrics: where worker up/down, restarts and deploys are counted.
    """

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.timeout = config.server.request_timeout_ms / 1000
        self.max_inflight = config.server.max_inflight_per_worker
        #: Write coalescing shared by every link and the msgpack front (router.cork).
        self.cork = Cork()
        #: Busy polling after each request (router.poll); idle forever when off.
        self.poll = BusyPoll(config.server.busy_poll_us / 1e6)
        self.models: dict[str, ModelRoute] = {}
        #: model -> the pool it replaced, kept warm for a rollback.
        self.previous: dict[str, ModelRoute] = {}
        self._routes: list[ModelRoute] = []  # every pool with workers: active, previous, standby
        self._route_of: dict[int, ModelRoute] = {}
        self._retire_timers: dict[str, asyncio.TimerHandle] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.idle_shadows = config.server.shadow_priority == "idle" and priority.can_restore()
        if config.server.shadow_priority == "idle" and not self.idle_shadows:
            log.info("shadow workers run at normal CPU priority: moving a promoted shadow back out of "
                     "SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE >= 20")
        for i, mc in enumerate(config.models):
            route = self._build(mc, f"models[{i}]", "blue")
            self.models[mc.name] = route
            metrics.active_pool.labels(mc.name, "blue").set(1)
            metrics.active_pool.labels(mc.name, "green").set(0)
            metrics.previous_warm.labels(mc.name).set(0)

    def _build(self, mc: ModelConfig, where: str, pool: str) -> ModelRoute:
        """A pool of new (not yet started) workers for ``mc``.

        Raises:
            ConfigError: a version's model file or meta.json is missing or invalid.
        """
        config = self.config
        max_frame = config.server.max_body_bytes + 4096
        pools = {}
        for j, vc in enumerate(mc.versions):
            d, meta = resolve_meta(config.store_path, mc.name, vc.version, f"{where}.versions[{j}]")
            reps = [
                Replica(mc.name, vc, k, d, max_frame, config.server.worker_start_timeout_s, self._on_state,
                        config.server.shadow_flush_us / 1e6, self.cork)
                for k in range(vc.replicas)
            ]
            pools[vc.version] = VersionPool(mc.name, vc, meta, reps)
        # Every version gets a target: any weight-0 version may become a shadow at runtime.
        shadows = {v: ShadowTarget(mc.name, p, self.timeout, self.max_inflight, self.metrics)
                   for v, p in pools.items()}
        route = ModelRoute(mc, pools, shadows, pool)
        for r in route.replicas:
            self._route_of[id(r)] = route
        self._routes.append(route)
        return route

    @property
    def replicas(self) -> list[Replica]:
        """Every worker of every pool (active, previous, standby)."""
        return [r for route in self._routes for r in route.replicas]

    def _on_state(self, replica: Replica) -> None:
        if replica.live and self.idle_shadows and replica.vc.shadow > 0 and replica.pid is not None:
            priority.set_idle(replica.pid, True)  # a new process starts at the router's (normal) policy
        route = self._route_of.get(id(replica))
        if route is None:  # its pool was stopped
            return
        route.versions[replica.vc.version].refresh()
        route.rebuild()
        labels = (replica.model, replica.vc.version, str(replica.index), route.pool)
        self.metrics.worker_up.labels(*labels).set(1 if replica.live else 0)
        if replica.restarts and replica.live:
            self.metrics.worker_restarts.labels(*labels).inc()

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    async def start(self) -> None:
        """Start every worker; returns when all are live.

        Raises:
            WorkerUnavailable: a worker failed to load or warm up (all are stopped).
        """
        futs = [r.start() for r in self.replicas]
        try:
            await asyncio.gather(*futs)
        except BaseException:
            for f in futs:  # the other failures are superseded by the first
                if f.done() and not f.cancelled():
                    f.exception()
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every worker of every pool (SIGTERM, then SIGKILL after a timeout)."""
        for t in self._retire_timers.values():
            t.cancel()
        self._retire_timers.clear()
        await self._stop_replicas(self.replicas)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    @staticmethod
    async def _stop_replicas(replicas: list[Replica]) -> None:
        results = await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        for r, res in zip(replicas, results, strict=True):
            if isinstance(res, BaseException):
                log.error("%s: error while stopping: %r", r.name, res)

    async def _stop_route(self, route: ModelRoute) -> None:
        """Stop a pool that takes no new requests; its in-flight ones finish or fail first (bounded)."""
        deadline = monotonic() + self.timeout
        while any(r.outstanding for r in route.replicas) and monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._stop_replicas(route.replicas)
        if route in self._routes:
            self._routes.remove(route)
        for r in route.replicas:
            self._route_of.pop(id(r), None)
            try:
                self.metrics.worker_up.remove(r.model, r.vc.version, str(r.index), route.pool)
            except KeyError:
                pass

    def _stop_later(self, route: ModelRoute) -> None:
        task = asyncio.get_running_loop().create_task(self._stop_route(route), name=f"stop {route.name} {route.pool}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def deploy(self, mc: ModelConfig, where: str = "models") -> float:
        """Blue-green: start ``mc`` in a standby pool, warm every worker, then make it active.

        The model's current pool becomes the previous one, warm for a rollback
        for ``keep_previous_s``. Returns the swap's duration in seconds.

        Raises:
            ConfigError: a version's model file or meta.json is missing or invalid.
            DeployFailed: a worker of the standby pool failed to start or warm
                up; the standby pool is stopped and the active one untouched.
        """
        old = self.models[mc.name]
        # Built first: a missing model file fails here, before anything is touched.
        standby = self._build(mc, where, "green" if old.pool == "blue" else "blue")
        stale = self.previous.pop(mc.name, None)
        if stale is not None:  # it would stop being the rollback target anyway; free its name and cores
            timer = self._retire_timers.pop(mc.name, None)
            if timer is not None:
                timer.cancel()
            self.metrics.previous_warm.labels(mc.name).set(0)
            await self._stop_route(stale)
        log.info("deploy %s: starting %d worker(s) in the %s pool", mc.name, len(standby.replicas), standby.pool)
        futs = [r.start() for r in standby.replicas]
        try:
            await asyncio.gather(*futs)
        except BaseException as exc:
            for f in futs:
                if f.done() and not f.cancelled():
                    f.exception()
            await self._stop_route(standby)
            self.metrics.deploys.labels(mc.name, "failed").inc()
            raise DeployFailed(f"deploy of {mc.name!r} aborted, the {old.pool} pool keeps serving: {exc}") from None
        swap = self._activate(mc.name, standby)
        self.metrics.deploys.labels(mc.name, "ok").inc()
        return swap

    def rollback(self, name: str) -> float:
        """Make the previous pool of ``name`` active again; returns the swap's duration in seconds.

        Raises:
            NoPreviousPool: none is kept (never deployed, or kept past ``keep_previous_s``).
        """
        prev = self.previous.get(name)
        if prev is None or not prev.ready:
            raise NoPreviousPool(f"model {name!r} has no previous pool kept warm to roll back to")
        del self.previous[name]
        timer = self._retire_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        return self._activate(name, prev)

    def _activate(self, name: str, route: ModelRoute) -> float:
        old = self.models[name]
        route.apply(route.config)  # fresh routing and mirror tables
        t0 = perf_counter()
        self.models[name] = route
        swap = perf_counter() - t0
        self.config = dataclasses.replace(self.config, models=tuple(
            route.config if m.name == name else m for m in self.config.models))
        m = self.metrics
        m.swap_seconds.labels(name).set(swap)
        m.active_pool.labels(name, route.pool).set(1)
        m.active_pool.labels(name, old.pool).set(0)
        keep = route.config.keep_previous_s
        log.info("%s: the %s pool is active (swap %.1f us); the %s pool stays warm for %.0f s", name, route.pool,
                 swap * 1e6, old.pool, keep)
        stale = self.previous.pop(name, None)
        if stale is not None and stale is not route:
            self._stop_later(stale)
        self.previous[name] = old
        m.previous_warm.labels(name).set(1)
        timer = self._retire_timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._retire_timers[name] = asyncio.get_running_loop().call_later(keep, self._retire, name)
        return swap

    def _retire(self, name: str) -> None:
        self._retire_timers.pop(name, None)
        old = self.previous.pop(name, None)
        if old is not None:
            log.info("%s: stopping the previous (%s) pool", name, old.pool)
            self.metrics.previous_warm.labels(name).set(0)
            self._stop_later(old)

    def apply_traffic(self, config: Config) -> None:
        """Apply ``config``'s weights and shadows (same models and versions) to the routing tables."""
        for mc in config.models:
            route = self.models[mc.name]
            was = {v: p.vc.shadow > 0 for v, p in route.versions.items()}
            route.apply(mc)
            if self.idle_shadows:
                for v, p in route.versions.items():
                    if (p.vc.shadow > 0) != was[v]:
                        for r in p.replicas:
                            if r.live and r.pid is not None:
                                priority.set_idle(r.pid, p.vc.shadow > 0)
        self.config = config

    @property
    def shadow_outstanding(self) -> int:
        """Shadow copies sent to workers and not yet answered."""
        return sum(t.outstanding for m in self._routes for t in m.shadows.values())

    @property
    def in_flight(self) -> int:
        """Live requests sent to workers and not yet answered (shadow copies not counted)."""
        return sum(r.outstanding for r in self.replicas) - self.shadow_outstanding

    def stop_mirroring(self) -> None:
        for m in self._routes:
            m.stop_mirroring()

    def expire(self, now: float) -> bool:
        """Answer 504 to the calls past their deadline; True while any call, live or copy, is in flight."""
        busy = False
        for route in self._routes:  # every 5 ms under load: no list built for it
            for r in route.replicas:
                link = r.link
                if link is not None and link.pending:
                    link.expire(now)
                    busy = busy or bool(link.pending)
        return busy

    def route(self, model: str) -> ModelRoute:
        """The model's route.

        Raises:
            NotFound: unknown model.
        """
        route = self.models.get(model)
        if route is None:
            raise NotFound(f"unknown model {model!r}")
        return route

    def submit(self, route: ModelRoute, version: str | None, key: str | bytes | None, kind: int, header_len: int,
               payload: bytes, done: Done, now: float) -> str:
        """Send a request to a worker of the right version of ``route``'s model; returns that version.

        ``done(status, header_len, payload)`` runs exactly once: on the worker's
        reply, on the worker's death (503), or at the deadline (504).

        Raises:
            NotFound: unknown version.
            WorkerUnavailable: no live worker, or every live one is full.
        """
        model = route.name
        if version is None:
            v = route.table.choose(key)
            if v is None:
                raise WorkerUnavailable(f"model {model!r} has no live worker")
            pool = route.versions[v]
        else:
            p = route.versions.get(version)
            if p is None:
                raise NotFound(f"unknown version {version!r} of model {model!r}")
            pool = p
        replica = pool.pick()
        if replica is None:
            raise WorkerUnavailable(f"version {pool.version!r} of model {model!r} has no live worker")
        link = replica.link
        if link is None or len(link.pending) >= self.max_inflight:
            raise WorkerUnavailable(
                f"{replica.name} is overloaded ({self.max_inflight} requests in flight)")
        link.send(kind, header_len, payload, Call(done, now + self.timeout))
        poll = self.poll
        poll.count += 1
        if poll.idle:
            poll.start()
        return pool.version
