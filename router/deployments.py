"""Deployments: build pools, warm them, swap blue and green, roll back, retire the previous pool.

Each model has an active pool (:attr:`Routing.active <router.routing.Routing.active>`)
and, for ``keep_previous_s`` after a deploy, the previous one, warm for a
rollback. A deploy builds a standby pool, starts every worker in it, waits for
each warm-up, and only then makes it active with one assignment; requests
already sent finish on the pool that took them. A change of weights or shadows
only rebuilds the tables of the active pool: no worker restarts.

Nothing here runs per request; :mod:`router.routing` is the hot side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from time import monotonic, perf_counter
from typing import Protocol

from . import priority
from .config import Config, DriftConfig, ModelConfig, VersionConfig
from .metrics import Metrics
from .proto.errors import ConfigError, DeployFailed, NoPreviousPool
from .proto.meta import ModelMeta, model_file, read_meta
from .replica import Replica, ReplicaState
from .routing import Color, Pool, ReplicaSet, Routing
from .shadow import ShadowTarget

log = logging.getLogger("router.deployments")


class ReplicaFactory(Protocol):
    """Makes the (not yet started) replica ``index`` of a version: :class:`Replica` in the daemon,
    in-process fakes in tests. ``nonfinite`` and ``drift`` are the model's settings the workers apply."""

    def __call__(self, model: str, vc: VersionConfig, index: int, model_dir: Path,
                 on_state: Callable[[Replica], None], *, nonfinite: str, drift: DriftConfig) -> Replica: ...


def resolve_meta(store: Path, model: str, version: str, where: str) -> tuple[Path, ModelMeta]:
    """Find and validate ``<store>/<model>/<version>``.

    Raises:
        ConfigError: the directory, model file or meta.json is missing or invalid.
    """
    d = store / model / version
    try:
        model_file(d)  # model.pt or model.pt2; the worker checks the rest (sha256, names) before it loads
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc} (run `router demo-models` for the demo)") from None
    return d, read_meta(d)


class Deployments:
    """Every model's pools: built, started, swapped (blue-green), rolled back and stopped.

    Args:
        config: the validated configuration; its models get a blue pool each (not started).
        routing: the hot side, whose active pools and pool list this keeps.
        metrics: where worker up/down, restarts, pools and deploys are counted.
        replica_factory: makes replicas (default: worker processes).
    """

    def __init__(self, config: Config, routing: Routing, metrics: Metrics,
                 replica_factory: ReplicaFactory | None = None) -> None:
        self.config = config
        self.routing = routing
        self.metrics = metrics
        self._factory = replica_factory or self._process_replica
        #: model -> the pool it replaced, kept warm for a rollback.
        self.previous: dict[str, Pool] = {}
        self._pool_of: dict[int, Pool] = {}
        self._retire_timers: dict[str, asyncio.TimerHandle] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        #: Pools whose workers are being stopped (still in ``routing.pools`` until they are).
        self.stopping: set[Pool] = set()
        self.idle_shadows = config.server.shadow_priority == "idle" and priority.can_restore()
        if config.server.shadow_priority == "idle" and not self.idle_shadows:
            log.info("shadow workers run at normal CPU priority: moving a promoted shadow back out of "
                     "SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE >= 20")
        for i, mc in enumerate(config.models):
            routing.active[mc.name] = self._build(mc, f"models[{i}]", "blue")
            metrics.active_pool.labels(mc.name, "blue").set(1)
            metrics.active_pool.labels(mc.name, "green").set(0)
            metrics.previous_warm.labels(mc.name).set(0)
            metrics.register_model(mc.name)

    def _process_replica(self, model: str, vc: VersionConfig, index: int, model_dir: Path,
                         on_state: Callable[[Replica], None], *, nonfinite: str, drift: DriftConfig) -> Replica:
        s = self.config.server
        return Replica(model, vc, index, model_dir, s.max_body_bytes + 4096, s.worker_start_timeout_s, on_state,
                       self.routing.cork, nonfinite=nonfinite, on_load_failure=self._on_load_failure, drift=drift)

    def _on_load_failure(self, replica: Replica, reason: str) -> None:
        # Label values: the model and version come from the config, the reason from the kernel's list.
        self.metrics.load_failures.labels(replica.model, replica.vc.version, reason).inc()

    def _build(self, mc: ModelConfig, where: str, color: Color) -> Pool:
        """A pool of new (not yet started) workers for ``mc``, registered with the routing.

        Raises:
            ConfigError: a version's model file or meta.json is missing or invalid.
        """
        config = self.config
        sets = {}
        for j, vc in enumerate(mc.versions):
            d, meta = resolve_meta(config.store_path, mc.name, vc.version, f"{where}.versions[{j}]")
            reps = [self._factory(mc.name, vc, k, d, self._on_state, nonfinite=mc.nonfinite, drift=mc.drift)
                    for k in range(vc.replicas)]
            sets[vc.version] = ReplicaSet(mc.name, vc, meta, reps)
        # Every version gets a target: any weight-0 version may become a shadow at runtime.
        r = self.routing
        flush_s = config.server.shadow_flush_us / 1e6
        shadows = {v: ShadowTarget(mc.name, s, r.timeout, r.max_inflight, self.metrics, flush_s)
                   for v, s in sets.items()}
        pool = Pool(mc, sets, shadows, color)
        for rep in pool.replicas:
            self._pool_of[id(rep)] = pool
        r.pools.append(pool)
        return pool

    @property
    def replicas(self) -> list[Replica]:
        """Every worker of every pool (active, previous, standby)."""
        return [r for pool in self.routing.pools for r in pool.replicas]

    def _on_state(self, replica: Replica) -> None:
        if replica.live and self.idle_shadows and replica.vc.shadow > 0 and replica.pid is not None:
            priority.set_idle(replica.pid, True)  # a new process starts at the router's (normal) policy
        pool = self._pool_of.get(id(replica))
        if pool is None:  # its pool was stopped
            return
        pool.versions[replica.vc.version].refresh()
        pool.rebuild()
        labels = (replica.model, replica.vc.version, str(replica.index), pool.color)
        self.metrics.worker_up.labels(*labels).set(1 if replica.live else 0)
        if replica.restarts and replica.live:
            self.metrics.worker_restarts.labels(*labels).inc()
        if replica.state is ReplicaState.HUNG:
            self.metrics.worker_hangs.labels(*labels).inc()

    # -- start and stop ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker; returns when all are live.

        Raises:
            WorkerUnavailable: a worker failed to load or warm up (all are stopped).
        """
        await self._start_all(self.replicas, self.stop)

    @staticmethod
    async def _start_all(replicas: list[Replica], undo: Callable[[], object]) -> None:
        futs = [r.start() for r in replicas]
        try:
            await asyncio.gather(*futs)
        except BaseException:
            for f in futs:  # the other failures are superseded by the first
                if f.done() and not f.cancelled():
                    f.exception()
            result = undo()
            if asyncio.iscoroutine(result):
                await result
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

    async def _stop_pool(self, pool: Pool) -> None:
        """Stop a pool that takes no new requests; its in-flight ones finish or fail first (bounded)."""
        self.stopping.add(pool)
        try:
            deadline = monotonic() + self.routing.timeout
            while any(r.outstanding for r in pool.replicas) and monotonic() < deadline:
                await asyncio.sleep(0.01)
            await self._stop_replicas(pool.replicas)
        finally:
            self.stopping.discard(pool)
        if pool in self.routing.pools:
            self.routing.pools.remove(pool)
        for r in pool.replicas:
            self._pool_of.pop(id(r), None)
            try:
                self.metrics.worker_up.remove(r.model, r.vc.version, str(r.index), pool.color)
            except KeyError:
                pass

    def _stop_later(self, pool: Pool) -> None:
        task = asyncio.get_running_loop().create_task(self._stop_pool(pool), name=f"stop {pool.name} {pool.color}")
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # -- blue-green ----------------------------------------------------------------------------------------

    async def deploy(self, mc: ModelConfig, where: str = "models") -> float:
        """Blue-green: start ``mc`` in a standby pool, warm every worker, then make it active.

        The model's current pool becomes the previous one, warm for a rollback
        for ``keep_previous_s``. Returns the swap's duration in seconds.

        Raises:
            ConfigError: a version's model file or meta.json is missing or invalid.
            DeployFailed: a worker of the standby pool failed to start or warm
                up; the standby pool is stopped and the active one untouched.
        """
        old = self.routing.active[mc.name]
        # Built first: a missing model file fails here, before anything is touched.
        standby = self._build(mc, where, "green" if old.color == "blue" else "blue")
        stale = self.previous.pop(mc.name, None)
        if stale is not None:  # it would stop being the rollback target anyway; free its name and cores
            self._cancel_retire(mc.name)
            self.metrics.previous_warm.labels(mc.name).set(0)
            await self._stop_pool(stale)
        log.info("deploy %s: starting %d worker(s) in the %s pool", mc.name, len(standby.replicas), standby.color)
        try:
            await self._start_all(standby.replicas, lambda: self._stop_pool(standby))
        except BaseException as exc:
            self.metrics.deploys.labels(mc.name, "failed").inc()
            raise DeployFailed(f"deploy of {mc.name!r} aborted, the {old.color} pool keeps serving: {exc}") from None
        swap = self._activate(mc.name, standby)
        self.metrics.deploys.labels(mc.name, "ok").inc()
        return swap

    async def add(self, mc: ModelConfig, where: str = "models") -> None:
        """Start a model the daemon does not serve yet: its first (blue) pool, every worker warm,
        then one assignment puts it in the routing. Requests for it were 404 until then.

        Raises:
            ConfigError: the model exists already, or a version's model file or meta.json is
                missing or invalid.
            DeployFailed: a worker failed to start or warm up; its pool is stopped and nothing changed.
        """
        if mc.name in self.routing.active:
            raise ConfigError(f"{where}: model {mc.name!r} is served already")
        pool = self._build(mc, where, "blue")
        log.info("new model %s: starting %d worker(s)", mc.name, len(pool.replicas))
        try:
            await self._start_all(pool.replicas, lambda: self._stop_pool(pool))
        except BaseException as exc:
            self.metrics.deploys.labels(mc.name, "failed").inc()
            raise DeployFailed(f"model {mc.name!r} not added, nothing changed: {exc}") from None
        pool.apply(mc)
        m = self.metrics
        m.register_model(mc.name)  # before the first request can name it
        m.active_pool.labels(mc.name, "blue").set(1)
        m.active_pool.labels(mc.name, "green").set(0)
        m.previous_warm.labels(mc.name).set(0)
        self.routing.active[mc.name] = pool
        self.config = dataclasses.replace(self.config, models=(*self.config.models, mc))
        m.deploys.labels(mc.name, "ok").inc()
        log.info("%s: serving versions %s from the blue pool", mc.name, ", ".join(v.version for v in mc.versions))

    def rollback(self, name: str) -> float:
        """Make the previous pool of ``name`` active again; returns the swap's duration in seconds.

        Raises:
            NoPreviousPool: none is kept (never deployed, or kept past ``keep_previous_s``).
        """
        prev = self.previous.get(name)
        if prev is None:
            raise NoPreviousPool(f"model {name!r} has no previous pool kept warm to roll back to")
        if not len(prev.table):  # a restarting shadow or replica does not stop it; nothing to route to does
            raise NoPreviousPool(f"the previous ({prev.color}) pool of model {name!r} has no live worker to route "
                                 "to right now; not rolled back")
        del self.previous[name]
        self._cancel_retire(name)
        return self._activate(name, prev)

    def _activate(self, name: str, pool: Pool) -> float:
        active = self.routing.active
        old = active[name]
        pool.apply(pool.config)  # fresh routing and mirror tables
        t0 = perf_counter()
        active[name] = pool
        swap = perf_counter() - t0
        self.config = dataclasses.replace(self.config, models=tuple(
            pool.config if m.name == name else m for m in self.config.models))
        m = self.metrics
        m.swap_seconds.labels(name).set(swap)
        m.active_pool.labels(name, pool.color).set(1)
        m.active_pool.labels(name, old.color).set(0)
        keep = pool.config.keep_previous_s
        log.info("%s: the %s pool is active (swap %.1f us); the %s pool stays warm for %.0f s", name, pool.color,
                 swap * 1e6, old.color, keep)
        stale = self.previous.pop(name, None)
        if stale is not None and stale is not pool:
            self._stop_later(stale)
        self.previous[name] = old
        m.previous_warm.labels(name).set(1)
        self._cancel_retire(name)
        self._retire_timers[name] = asyncio.get_running_loop().call_later(keep, self._retire, name)
        return swap

    def retire_in(self, name: str) -> float | None:
        """Seconds until the model's previous pool is stopped, or None when none is kept."""
        timer = self._retire_timers.get(name)
        return None if timer is None else max(0.0, timer.when() - asyncio.get_running_loop().time())

    def release(self, name: str) -> Pool:
        """Stop the model's previous pool now, instead of after ``keep_previous_s``; returns it.

        Raises:
            NoPreviousPool: none is kept.
        """
        prev = self.previous.get(name)
        if prev is None:
            raise NoPreviousPool(f"model {name!r} has no previous pool kept warm to release")
        self._cancel_retire(name)
        self._retire(name)
        return prev

    def _cancel_retire(self, name: str) -> None:
        timer = self._retire_timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _retire(self, name: str) -> None:
        self._retire_timers.pop(name, None)
        old = self.previous.pop(name, None)
        if old is not None:
            log.info("%s: stopping the previous (%s) pool", name, old.color)
            self.metrics.previous_warm.labels(name).set(0)
            self._stop_later(old)

    # -- traffic -------------------------------------------------------------------------------------------

    def apply_traffic(self, config: Config) -> None:
        """Apply ``config``'s weights and shadows (same models and versions) to the active pools' tables."""
        for mc in config.models:
            pool = self.routing.active[mc.name]
            was = {v: s.vc.shadow > 0 for v, s in pool.versions.items()}
            pool.apply(mc)
            if self.idle_shadows:
                for v, s in pool.versions.items():
                    if (s.vc.shadow > 0) != was[v]:
                        for r in s.replicas:
                            if r.live and r.pid is not None:
                                priority.set_idle(r.pid, s.vc.shadow > 0)
        self.config = config
