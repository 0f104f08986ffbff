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

from aiohttp import web

from .admin import make_admin_app
from .app import make_app
from .config import Config
from .control import ControlPlane
from .cork import Cork
from .deployments import Deployments, ReplicaFactory
from .http import HttpProtocol
from .lifecycle import Lifecycle
from .metrics import Metrics
from .oip import Answers
from .poll import BusyPoll
from .proto.errors import ConfigError, DeployFailed, ReloadRefused
from .routing import Routing
from .state import ServerState
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
                               BusyPoll(s.busy_poll_us / 1e6))
        self.deployments = Deployments(config, self.routing, self.metrics, replica_factory)
        self.lifecycle = Lifecycle(self.routing, self.metrics, self.state)
        self.control = ControlPlane(self.deployments, self.routing, self.metrics, self.state)
        self.answers = Answers(self.state, self.routing)
        # Only the active pools' shadow queues are reported: a standby or retired pool's never are.
        self.metrics.shadow_queues = lambda: (t for p in self.routing.active.values() for t in p.active_shadows())
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._wire: asyncio.Server | None = None
        self._http: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._idle_sweeper: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        """The configuration that serves now (changed by the control plane)."""
        return self.deployments.config

    def _reload_on_signal(self) -> None:
        async def run() -> None:
            try:
                await self.control.reload()
            except (ConfigError, ReloadRefused, DeployFailed):
                pass  # logged and counted by the control plane

        task = asyncio.get_running_loop().create_task(run(), name="reload on SIGHUP")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    def request_stop(self) -> None:
        """Begin shutdown (safe from a signal handler: it only sets state)."""
        self.state.draining = True
        self._stop.set()

    async def start(self) -> None:
        """Start workers (waiting until each answered its warm-up), then the listeners."""
        t0 = time.monotonic()
        log.info("starting %d worker(s) for %d model(s)", len(self.deployments.replicas), len(self.routing.active))
        await self.deployments.start()
        log.info("all workers live in %.2f s", time.monotonic() - t0)
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep(), name="deadline sweeper")
        s = self.config.server
        if s.keepalive_timeout_s > 0:
            self._idle_sweeper = loop.create_task(self._sweep_idle(), name="idle connection sweeper")
        registry = self.metrics.registry
        try:
            if s.http is not None:
                # aiohttp serves what the hot-path protocol hands it: admin API, chunked bodies, ...
                app = make_app(self.lifecycle, self.answers, registry, s.max_body_bytes,
                               make_admin_app(self.control, self.admin_token))
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                             keepalive_timeout=s.keepalive_timeout_s)
                await self._runner.setup()
                fallback = self._runner.server
                assert fallback is not None
                self._http = await loop.create_server(
                    lambda: HttpProtocol(self.lifecycle, self.answers, registry, s.max_body_bytes, fallback),
                    s.http.host, s.http.port, reuse_address=True, backlog=1024)
                host, port = self._http.sockets[0].getsockname()[:2]
                log.info("HTTP (Open Inference Protocol v2) on http://%s:%d", host, port)
            if s.msgpack is not None:
                self._wire = await loop.create_server(lambda: WireProtocol(self.lifecycle, s.max_body_bytes),
                                                      s.msgpack.host, s.msgpack.port, reuse_address=True)
                host, port = self._wire.sockets[0].getsockname()[:2]
                log.info("msgpack TCP on %s:%d", host, port)
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

    async def _sweep_idle(self) -> None:
        """Close HTTP connections idle for ``keepalive_timeout_s`` (handed-off ones: aiohttp does it)."""
        timeout = self.config.server.keepalive_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            stale = time.monotonic() - timeout
            for conn in list(self.state.connections):
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
        self.state.draining = True
        routing = self.routing
        routing.poll.close()
        routing.stop_mirroring()
        if self._wire is not None:
            self._wire.close()
        if self._http is not None:
            self._http.close()
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
        for listener in (self._wire, self._http):
            if listener is not None:
                await listener.wait_closed()
        self._wire = self._http = None
        for task in (self._sweeper, self._idle_sweeper, *self._reloads):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._sweeper = self._idle_sweeper = None
        await self.deployments.stop()
        log.info("stopped")
