"""The daemon's wiring: builds the data plane and the control plane, starts them, owns shutdown.

Signal handlers only set state; :meth:`Server.run` owns the shutdown sequence:
readiness turns 503, listeners close, in-flight requests finish (bounded by
``server.drain_timeout_s``), workers stop, the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any

from aiohttp import web

from . import drift
from .admin import make_admin_app
from .app import FallbackHandler, make_app
from .audit import AuditTrail, actor
from .config import Address, Config
from .control import ControlPlane
from .cork import Cork
from .deployments import Deployments, ReplicaFactory
from .history import History
from .http import HttpProtocol
from .lifecycle import Lifecycle
from .limits import ConnectionMetrics, Listener, Timeouts, fit_caps, sweep
from .metrics import Metrics
from .oip import Answers
from .poll import BusyPoll
from .predlog import PredictionLog
from .proto.errors import ConfigError, DeployFailed, ReloadRefused
from .routing import Routing
from .sharedconfig import SharedConfig
from .state import ServerState
from .store import clean_staging
from .wire import WireProtocol

log = logging.getLogger("router.server")

_SWEEP_S = 0.005  # deadline resolution: 504s are sent within 5 ms of their deadline


class Server:
    """One router process: the data plane (routing, lifecycle, fronts) and the control plane over it.

    Args:
        config: the validated configuration.
        metrics: defaults to a fresh registry.
        admin_token: bearer token of the admin API (None: loopback callers only).
        replica_factory: makes the workers (default: processes; tests pass in-process fakes).
    """

    def __init__(self, config: Config, metrics: Metrics | None = None, admin_token: str | None = None,
                 replica_factory: ReplicaFactory | None = None) -> None:
        s = config.server
        self.admin_token = admin_token
        self.metrics = metrics or Metrics()
        self.state = ServerState()
        self.routing = Routing(s.request_timeout_ms / 1000, s.max_inflight_per_worker, Cork(),
                               BusyPoll(s.busy_poll_us / 1e6), s.hang_timeout_s, s.hang_restart_s)
        self.deployments = Deployments(config, self.routing, self.metrics, replica_factory)
        self.predlog = PredictionLog(config.predlog, config.store_path, 2 * s.max_body_bytes + 4096)
        self.metrics.predlog = self.predlog
        for m in config.models:  # every model's series from the start, at 0: rate() then sees the first drop
            self.predlog.counts[m.name]
        self.lifecycle = Lifecycle(self.routing, self.metrics, self.state, self.predlog)
        self.control = ControlPlane(self.deployments, self.routing, self.metrics, self.state)
        self.control.predlog_source = self.predlog
        audit_file = config.admin.audit_file or (config.source.parent / "audit.jsonl" if config.source else None)
        self.shared = SharedConfig(config.source, self.state.set_generation) if config.source is not None else None
        self.control.shared = self.shared
        self.control.audit = AuditTrail(audit_file, self.shared.locked if self.shared is not None else None)
        self.answers = Answers(self.state, self.routing)
        # Only the active pools' shadow queues are reported: a standby or retired pool's never are.
        self.metrics.shadow_queues = lambda: (t for p in self.routing.active.values() for t in p.active_shadows())
        self.metrics.workers = lambda: ((r, p.color) for p in self.routing.pools for r in p.replicas)
        self.metrics.drift_versions = lambda: ((m, v, s.replicas) for m, p in self.routing.active.items()
                                               for v, s in p.versions.items())
        self.history = History(self.metrics, self.metrics.workers, self._active_versions, s.history_interval_s,
                               s.history_s, self._drift_of)
        self.control.history_source = self.history
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._wire: asyncio.Server | None = None
        self._http: asyncio.Server | None = None
        #: Each listener's connection count and cap (router.limits): http, msgpack, admin_http.
        self.listeners: dict[str, Listener] = {}
        self.metrics.registry.register(ConnectionMetrics(self.listeners.values()))
        self._admin_http: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._idle_sweeper: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        """The configuration that serves now (changed by the control plane)."""
        return self.deployments.config

    def _reload_on_signal(self) -> None:
        async def run() -> None:
            actor.set("signal")  # SIGHUP: the audit trail's "who"
            try:
                await self.control.reload()
            except (ConfigError, ReloadRefused, DeployFailed):
                pass  # logged and counted by the control plane

        task = asyncio.get_running_loop().create_task(run(), name="reload on SIGHUP")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def request_stop(self) -> None:
        """Begin shutdown (safe from a signal handler: it only sets state): readiness turns 503 now; requests
        are refused once ``server.drain_delay_s`` has passed (:meth:`run`)."""
        self.state.stopping = True
        self._stop.set()

    async def start(self) -> None:
        """Start workers (waiting until each answered its warm-up), then the listeners."""
        t0 = time.monotonic()
        # Before any push can run: what a crash left in the store's staging area is never a version.
        await asyncio.to_thread(clean_staging, self.config.store_path)
        await self.control.audit.load()
        if self.shared is not None:
            self.shared.seen()  # the file as started: its generation is what replies say
        await self.control.scan_store()
        log.info("starting %d worker(s) for %d model(s)", len(self.deployments.replicas), len(self.routing.active))
        await self.deployments.start()
        log.info("all workers live in %.2f s", time.monotonic() - t0)
        if any(m.log_rate for m in self.config.models):
            self.predlog.ensure_started()  # else on the first sampled request, after a reload turns it on
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep(), name="deadline sweeper")
        self.history.start()
        if self.shared is not None:
            self.shared.watch(self.control.apply_file_change, self.config.server.config_poll_s)
        s = self.config.server
        timeouts = Timeouts.of(s)
        self._idle_sweeper = loop.create_task(sweep(self.state, timeouts), name="connection sweeper")
        wanted = {name: cap for name, address, cap in (("http", s.http, s.max_connections),
                                                       ("msgpack", s.msgpack, s.max_connections),
                                                       ("admin_http", s.admin_http, s.admin_max_connections))
                  if address is not None}
        for name, cap in fit_caps(wanted, s.fd_reserve).items():
            self.listeners[name] = Listener(name, cap)
        try:
            if s.http is not None or s.admin_http is not None:
                # aiohttp serves what the hot-path protocol hands it: admin API, chunked bodies, ...
                app = make_app(self.lifecycle, self.answers, self.metrics.registry, s.max_body_bytes, timeouts,
                               make_admin_app(self.control, self.admin_token, timeouts))
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                             keepalive_timeout=s.keepalive_timeout_s)
                await self._runner.setup()
            if s.http is not None:
                self._http = await self._serve_http("http", s.http, "HTTP (Open Inference Protocol v2)")
            if s.admin_http is not None:
                self._admin_http = await self._serve_http("admin_http", s.admin_http,
                                                          "HTTP for probes, metrics and the admin API")
            if s.msgpack is not None:
                wire = self.listeners["msgpack"]
                self._wire = await loop.create_server(lambda: WireProtocol(self.lifecycle, s.max_body_bytes, wire),
                                                      s.msgpack.host, s.msgpack.port, reuse_address=True)
                host, port = self._wire.sockets[0].getsockname()[:2]
                log.info("msgpack TCP on %s:%d (at most %d connections)", host, port, wire.cap)
        except OSError:
            await self.stop()
            raise
        self.state.started = True
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection no longer walks it (tail latency, not throughput).
        gc.freeze()
        self.routing.poll.bind(loop)
        if s.busy_poll_us:
            log.info("busy polling for %d us after each request", s.busy_poll_us)
        log.info("ready")

    async def _sweep(self) -> None:
        # Every 5 ms while calls are in flight. With none, one look per half a timeout
        # (at most 1 s): a request sent meanwhile is found with half its time or more
        # left, so its 504 still comes within 5 ms of its deadline, and an idle router
        # does not wake 200 times a second for nothing.
        routing = self.routing
        idle_s = max(_SWEEP_S, min(routing.timeout / 2, 1.0))
        busy = True
        while True:
            await asyncio.sleep(_SWEEP_S if busy else idle_s)
            busy = routing.expire(time.monotonic())

    async def _serve_http(self, name: str, address: Address, what: str) -> asyncio.Server:
        """An HTTP listener: the hot-path protocol, handing what it does not take to the aiohttp application."""
        assert self._runner is not None and self._runner.server is not None
        manager, s, loop = self._runner.server, self.config.server, asyncio.get_running_loop()
        listener = self.listeners[name]

        def fallback() -> FallbackHandler:  # takes over the connection and its place in the count
            return FallbackHandler(listener, manager, loop=loop, keepalive_timeout=s.keepalive_timeout_s)

        server = await loop.create_server(
            lambda: HttpProtocol(self.lifecycle, self.answers, self.metrics.registry, s.max_body_bytes, fallback,
                                 listener),
            address.host, address.port, reuse_address=True, backlog=1024)
        host, port = server.sockets[0].getsockname()[:2]
        log.info("%s on http://%s:%d (at most %d connections)", what, host, port, listener.cap)
        return server

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        try:
            await self.start()
            await self._stop.wait()
            delay = self.config.server.drain_delay_s
            if delay:
                # Load balancers see readiness fail and stop sending; what they still send is served.
                log.info("shutting down: not ready; serving for %.1f s more (server.drain_delay_s)", delay)
                await asyncio.sleep(delay)
            log.info("shutting down: draining")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _drift_of(self, model: str, version: str) -> dict[str, Any] | None:
        pool = self.routing.active.get(model)
        if pool is None or version not in pool.versions:
            return None
        return drift.of_replicas(pool.versions[version].replicas)

    def _active_versions(self) -> dict[str, tuple[list[str], set[str]]]:
        """Model -> the versions of its active pool, and which of them are shadows (for the history)."""
        return {m: ([v.version for v in p.config.versions], {v.version for v in p.config.versions if v.shadow})
                for m, p in self.routing.active.items()}

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, stop workers."""
        self.history.stop()
        if self.shared is not None:
            await self.shared.stop()
        self.state.draining = True
        routing = self.routing
        routing.poll.close()
        routing.stop_mirroring()
        for listening in (self._wire, self._http, self._admin_http):
            if listening is not None:
                listening.close()
        deadline = time.monotonic() + self.config.server.drain_timeout_s
        # Listeners close first; in-flight requests keep their connections.
        while routing.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        left = routing.in_flight
        if left:
            log.warning("drain timeout: %d request(s) still in flight are failed with 503", left)
        else:
            copies = routing.shadow_outstanding
            log.info("drained%s", f"; {copies} shadow cop{'y' if copies == 1 else 'ies'} not waited for"
                     if copies else "")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.state.close_connections()
        for listening in (self._wire, self._http, self._admin_http):
            if listening is not None:
                await listening.wait_closed()
        self._wire = self._http = self._admin_http = None
        for task in (self._sweeper, self._idle_sweeper, *self._reloads):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._sweeper = self._idle_sweeper = None
        await self.deployments.stop()
        await self.predlog.stop()  # after the workers: the last shadow answers are in
        log.info("stopped")
