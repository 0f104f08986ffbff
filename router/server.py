"""The daemon: starts workers and fronts, sweeps deadlines, owns shutdown.

Signal handlers only set an event; :meth:`Server.run` owns the shutdown
sequence: readiness turns 503, listeners close, in-flight requests finish
(bounded by ``server.drain_timeout_s``), workers stop, the process exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import time
from typing import Any

from aiohttp import web

from . import configfile, reload
from .app import make_app
from .config import Config, parse_model
from .http import HttpProtocol
from .metrics import Metrics
from .pool import Pools
from .proto.errors import ConfigError, DeployFailed, ReloadRefused
from .wire import WireProtocol

log = logging.getLogger("router.server")

_SWEEP_S = 0.005  # deadline resolution: 504s are sent within 5 ms of their deadline


class Server:
    """One router process.

    Args:
        config: the validated configuration.
        metrics: defaults to a fresh registry.
        admin_token: bearer token of the admin API (None: loopback callers only).
    """

    def __init__(self, config: Config, metrics: Metrics | None = None, admin_token: str | None = None) -> None:
        self.config = config
        self.admin_token = admin_token
        self.metrics = metrics or Metrics()
        self.pools = Pools(config, self.metrics)
        self.draining = False
        self.started = False
        #: Open msgpack and (not handed-off) HTTP connections: closed once drained.
        self.connections: set[WireProtocol | HttpProtocol] = set()
        #: One change of configuration at a time (traffic PUT, reload).
        self.change_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._wire: asyncio.Server | None = None
        self._http: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._idle_sweeper: asyncio.Task[None] | None = None

    def set_config(self, config: Config) -> None:
        """Adopt a configuration whose workers are already the running ones (traffic changes only)."""
        self.pools.apply_traffic(config)
        self.config = config

    async def reload(self) -> reload.Plan:
        """Re-read the config file and apply what changed: traffic live, workers blue-green.

        Raises:
            ConfigError: the file is invalid (the message names the key path); nothing changed.
            ReloadRefused: it changes what needs a restart; nothing changed.
            DeployFailed: a model's standby pool failed; that model keeps its
                active pool, every other change was applied.
        """
        async with self.change_lock:
            source = self.config.source
            if source is None:
                raise ConfigError("this daemon was not started from a config file: nothing to reload")
            try:
                new, digests = await asyncio.get_running_loop().run_in_executor(
                    None, reload.read, source, self.config)
            except ConfigError as exc:
                self.metrics.reloads.labels("invalid").inc()
                msg = str(exc)
                log.error("reload: %s; nothing changed", msg if msg.startswith(str(source)) else f"{source}: {msg}")
                raise
            running = {(m, v): p.meta.sha256 for m, r in self.pools.models.items() for v, p in r.versions.items()}
            p = reload.plan(self.config, new, digests, running)
            if p.refused:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload of %s refused, nothing changed: %s", source, "; ".join(p.refused))
                raise ReloadRefused("; ".join(p.refused))
            failed: list[str] = []
            for i, mc in enumerate(new.models):
                if mc.name in p.deploy:
                    log.info("reload: deploying %s (%s)", mc.name, "; ".join(p.deploy[mc.name]))
                    try:
                        await self.pools.deploy(mc, f"models[{i}]")
                    except (ConfigError, DeployFailed) as exc:
                        log.error("reload: %s", exc)
                        failed.append(str(exc))
            # A deployed model runs the file's config; one whose deploy failed keeps what it ran.
            new = dataclasses.replace(new, models=tuple(
                self.pools.models[m.name].config if m.name in p.deploy else m for m in new.models))
            self.set_config(new)
            self.metrics.reloads.labels("failed" if failed else "ok").inc()
            log.info("reloaded %s: %s", source, "; ".join([*p.live, *(f"deployed {m}" for m in p.deploy)])
                     if p.live or p.deploy else "no change")
            if failed:
                raise DeployFailed("; ".join(failed))
            return p

    async def deploy(self, model: str, versions: list[Any]) -> float:
        """Deploy a new version set of ``model`` blue-green and write it into the config file.

        The file is written first and put back if the deploy fails, so it always
        says what serves. Returns the swap's duration in seconds.

        Raises:
            ConfigError: the versions are invalid, a model file is missing, or the
                file cannot take them; nothing changed.
            DeployFailed: the standby pool failed; nothing changed.
        """
        async with self.change_lock:
            old = self.pools.models[model].config
            raw: dict[str, Any] = {"name": model, "versions": versions, "keep_previous_s": old.keep_previous_s}
            if old.routing_key is not None:
                raw["routing_key"] = old.routing_key
            mc = parse_model(raw, "deploy")
            loop = asyncio.get_running_loop()
            source = self.config.source
            before = None
            if source is not None:
                before = await loop.run_in_executor(None, source.read_text)
                await loop.run_in_executor(None, configfile.write_versions, source, model, versions)
            try:
                swap = await self.pools.deploy(mc, "deploy")
            except BaseException:
                if source is not None and before is not None:
                    await loop.run_in_executor(None, configfile.replace_text, source, before)
                raise
            self.config = self.pools.config
            return swap

    async def rollback(self, model: str) -> float:
        """Make the model's previous pool active again; returns the swap's duration in seconds.

        Raises:
            NoPreviousPool: none is kept warm.
        """
        async with self.change_lock:
            swap = self.pools.rollback(model)
            self.config = self.pools.config
            source = self.config.source
            if source is not None:  # the file says what serves
                versions = [v.to_table() for v in self.pools.models[model].config.versions]
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, configfile.write_versions, source, model, versions)
                except (ConfigError, OSError) as exc:
                    log.error("rolled back %s, but %s was not updated: %s", model, source, exc)
            return swap

    def _reload_on_signal(self) -> None:
        async def run() -> None:
            try:
                await self.reload()
            except (ConfigError, ReloadRefused, DeployFailed):
                pass  # logged and counted by reload()

        asyncio.get_running_loop().create_task(run(), name="reload on SIGHUP")

    def request_stop(self) -> None:
        """Begin shutdown (safe from a signal handler: it only sets state)."""
        self.draining = True
        self._stop.set()

    async def start(self) -> None:
        """Start workers (waiting until each answered its warm-up), then the listeners."""
        t0 = time.monotonic()
        log.info("starting %d worker(s) for %d model(s)", len(self.pools.replicas), len(self.pools.models))
        await self.pools.start()
        log.info("all workers live in %.2f s", time.monotonic() - t0)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep(), name="deadline sweeper")
        if self.config.server.keepalive_timeout_s > 0:
            self._idle_sweeper = loop.create_task(self._sweep_idle(), name="idle connection sweeper")
        s = self.config.server
        try:
            if s.http is not None:
                # aiohttp serves what the hot-path protocol hands it: admin API, chunked bodies, ...
                self._runner = web.AppRunner(make_app(self), access_log=None, handle_signals=False,
                                             keepalive_timeout=s.keepalive_timeout_s)
                await self._runner.setup()
                fallback = self._runner.server
                assert fallback is not None
                self._http = await loop.create_server(lambda: HttpProtocol(self, fallback), s.http.host, s.http.port,
                                                      reuse_address=True, backlog=1024)
                host, port = self._http.sockets[0].getsockname()[:2]
                log.info("HTTP (Open Inference Protocol v2) on http://%s:%d", host, port)
            if s.msgpack is not None:
                self._wire = await loop.create_server(lambda: WireProtocol(self), s.msgpack.host, s.msgpack.port,
                                                      reuse_address=True)
                host, port = self._wire.sockets[0].getsockname()[:2]
                log.info("msgpack TCP on %s:%d", host, port)
        except OSError:
            await self.stop()
            raise
        self.started = True
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (tail latency, not throughput).
        gc.freeze()
        self.pools.poll.bind(loop)
        if s.busy_poll_us:
            log.info("busy polling for %d us after each request", s.busy_poll_us)
        log.info("ready")

    async def _sweep(self) -> None:
        # Every 5 ms while calls are in flight. With none, one look per half a timeout
        # (at most 1 s): a request sent meanwhile is found with half its time or more
        # left, so its 504 still comes within 5 ms of its deadline, and an idle router
        # does not wake 200 times a second for nothing.
        pools = self.pools
        idle_s = max(_SWEEP_S, min(pools.timeout / 2, 1.0))
        busy = True
        while True:
            await asyncio.sleep(_SWEEP_S if busy else idle_s)
            busy = pools.expire(time.monotonic())

    async def _sweep_idle(self) -> None:
        """Close HTTP connections idle for ``keepalive_timeout_s`` (handed-off ones: aiohttp does it)."""
        timeout = self.config.server.keepalive_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            stale = time.monotonic() - timeout
            for conn in list(self.connections):
                if isinstance(conn, HttpProtocol) and conn.idle and conn.last_seen < stale \
                        and conn.transport is not None:
                    conn.transport.close()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        try:
            await self.start()
            await self._stop.wait()
            log.info("shutting down: draining")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, stop workers."""
        self.draining = True
        self.pools.poll.close()
        self.pools.stop_mirroring()
        if self._wire is not None:
            self._wire.close()
        if self._http is not None:
            self._http.close()
        deadline = time.monotonic() + self.config.server.drain_timeout_s
        # Listeners close first; in-flight requests keep their connections.
        while self.pools.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = self.pools.in_flight
        if left:
            log.warning("drain timeout: %d request(s) still in flight are failed with 503", left)
        else:
            copies = self.pools.shadow_outstanding
            log.info("drained%s", f"; {copies} shadow cop{'y' if copies == 1 else 'ies'} not waited for"
                     if copies else "")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for listener in (self._wire, self._http):
            if listener is not None:
                await listener.wait_closed()
        self._wire = self._http = None
        for task in (self._sweeper, self._idle_sweeper):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._sweeper = self._idle_sweeper = None
        await self.pools.stop()
        log.info("stopped")
