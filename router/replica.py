"""Replica supervision: spawn a worker process, connect, hello, warm up, watch, restart with backoff, stop.

Each replica is one ``python -m runtime`` process joined to the router by a
``socketpair``. The worker asks the kernel to kill it when the router dies
(``PR_SET_PDEATHSIG``) and also exits on the socket's EOF, so no worker ever
outlives its router, even one killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .config import DriftConfig, VersionConfig
from .cork import Cork
from .proto.errors import ModelLoadFailed
from .proto.link import KIND_WARMUP
from .worker_link import CallbackCall, WorkerLink

log = logging.getLogger("router.replica")

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
_STABLE_S = 30.0  # a worker up this long resets the backoff


class ReplicaState(enum.Enum):
    """Where a replica is in its life. Transitions::

        NEW -> STARTING -> LIVE -> RESTARTING -> STARTING -> ...
                           LIVE -> HUNG -> LIVE (it answers again) or -> RESTARTING (killed)
        any -> STOPPED (stop(); final)
    """

    NEW = "new"
    STARTING = "starting"
    LIVE = "live"
    HUNG = "hung"  # owes answers and gave none for server.hang_timeout_s: out of routing
    RESTARTING = "restarting"
    STOPPED = "stopped"


class Replica:
    """One worker process of one model version, restarted whenever it dies.

    Args:
        model: model name.
        vc: the version's config.
        index: replica number within the version.
        model_dir: ``<store>/<model>/<version>``.
        max_frame: largest frame on the link.
        start_timeout: seconds to load the model and say hello.
        on_state: called with this replica whenever it becomes live or stops being live.
        cork: the router's write coalescing, shared by every link.
        nonfinite: the model's policy for NaN and infinities in inputs (``ModelConfig.nonfinite``);
            the worker applies it.
        drift: the model's drift monitoring (``ModelConfig.drift``); the worker applies it.
        on_load_failure: called with this replica and the reason (``ModelLoadFailed.reason``) each
            time a worker fails to become live: it refused its version, died, timed out or failed
            its warm-up. Not called for a worker stopped on purpose.
    """

    def __init__(self, model: str, vc: VersionConfig, index: int, model_dir: Path, max_frame: int,
                 start_timeout: float, on_state: Callable[[Replica], None], cork: Cork | None = None, *,
                 nonfinite: str = "reject", on_load_failure: Callable[[Replica, str], None] | None = None,
                 drift: DriftConfig | None = None) -> None:
        self.model = model
        self.drift = drift if drift is not None else DriftConfig()
        self.on_load_failure = on_load_failure
        self.nonfinite = nonfinite
        self.cork = cork
        self.vc = vc
        self.index = index
        self.model_dir = model_dir
        self.max_frame = max_frame
        self.start_timeout = start_timeout
        self.on_state = on_state
        self.name = f"{model}/{vc.version}#{index}"
        self.link: WorkerLink | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict = {}
        self.restarts = 0
        self.state = ReplicaState.NEW
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    @property
    def live(self) -> bool:
        """Serving: loaded, warmed up, and its process running."""
        return self.state is ReplicaState.LIVE

    def _enter(self, state: ReplicaState) -> None:
        was_live = self.live
        if self.state is not ReplicaState.STOPPED:  # stopped is final
            self.state = state
        if was_live != self.live:
            self.on_state(self)

    @property
    def outstanding(self) -> int:
        link = self.link
        return len(link.pending) if link is not None else 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> asyncio.Future[None]:
        """Start supervising; the returned future resolves when first live (or fails)."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._task = loop.create_task(self._supervise(), name=f"supervise {self.name}")
        return self._ready

    async def _supervise(self) -> None:
        backoff = _BACKOFF_MIN
        while self.state is not ReplicaState.STOPPED:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("%s: %s", self.name, exc)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(exc)
                    # The first start failing is fatal for serve(); no restart loop.
                    return
            if self.state is ReplicaState.STOPPED:
                break
            if time.monotonic() - started > _STABLE_S:
                backoff = _BACKOFF_MIN
            self.restarts += 1
            self._enter(ReplicaState.RESTARTING)
            log.warning("%s: worker died; restarting in %.1f s", self.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _run_once(self) -> None:
        """Spawn, say hello, warm up, serve until the process exits."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        vc = self.vc
        argv = [
            sys.executable, "-m", "runtime",
            "--fd", str(theirs.fileno()),
            "--parent-pid", str(os.getpid()),
            "--model-dir", str(self.model_dir),
            "--name", self.model, "--version", vc.version,
            "--device", vc.device,
            "--cpus", ",".join(map(str, vc.cpus)),
            "--threads", str(vc.effective_threads),
            "--max-batch-size", str(vc.max_batch_size),
            "--max-batch-delay-us", str(vc.max_batch_delay_us),
            "--max-frame", str(self.max_frame),
            "--nonfinite", self.nonfinite,
            "--drift", json.dumps(dataclasses.asdict(self.drift)),
        ]
        if not vc.optimize:
            argv.append("--no-optimize")
        self._enter(ReplicaState.STARTING)
        try:
            self.proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        lost = loop.create_future()

        def on_lost(_: WorkerLink) -> None:
            if self.state in (ReplicaState.LIVE, ReplicaState.HUNG):
                self._enter(ReplicaState.RESTARTING)
            if not lost.done():
                lost.set_result(None)

        try:
            _, link = await loop.create_unix_connection(
                lambda: WorkerLink(self.name, self.max_frame, on_lost, self.cork, self._resumed), sock=ours)
        except BaseException:
            ours.close()
            raise
        self.link = link
        try:
            try:
                self.info = await asyncio.wait_for(asyncio.shield(link.hello), self.start_timeout)
                await self._warm_up(link)
            except TimeoutError:
                raise ModelLoadFailed(f"{self.name}: not ready within {self.start_timeout:.0f} s", "timeout") from None
        except BaseException as exc:
            self._kill()
            await self._reap()
            if isinstance(exc, ModelLoadFailed) and self.on_load_failure and self.state is not ReplicaState.STOPPED:
                self.on_load_failure(self, exc.reason)
            raise
        self._enter(ReplicaState.LIVE)
        log.info("%s: live (pid %d, %s, cpus %s)", self.name, self.proc.pid, self.info.get("device"),
                 self.info.get("cpus"))
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        await lost
        code = await self._reap()
        if self.state is not ReplicaState.STOPPED:
            log.warning("%s: worker pid %s exited with %s", self.name, self.pid, code)

    def hang(self, silent_s: float) -> None:
        """The worker owes answers and has given none for ``silent_s`` (over ``server.hang_timeout_s``):
        take it out of routing."""
        if self.state is ReplicaState.LIVE:
            log.warning("%s: pid %s owes answers and has answered nothing for %.1f s; out of routing until it "
                        "answers", self.name, self.pid, silent_s)
            self._enter(ReplicaState.HUNG)

    def replace(self) -> None:
        """Still hung after ``server.hang_restart_s``: kill it; supervision starts a new one."""
        if self.state is ReplicaState.HUNG:
            log.error("%s: pid %s still hung; killing it for a new worker", self.name, self.pid)
            if self.link is not None:
                self.link.lost_reason = "worker hung and was killed"
            self._kill()

    def _resumed(self, _link: WorkerLink) -> None:
        if self.state is ReplicaState.HUNG:
            log.warning("%s: answers again; back in routing", self.name)
            self._enter(ReplicaState.LIVE)

    async def _warm_up(self, link: WorkerLink) -> None:
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, _hlen: int, payload: bytes) -> None:
            if not fut.done():
                fut.set_result((status, payload))

        link.send(KIND_WARMUP, 0, b"", CallbackCall(done, float("inf")))
        status, payload = await fut
        if status != 200:
            raise ModelLoadFailed(f"{self.name}: warm-up failed ({status}): {payload.decode(errors='replace')}",
                                  "warmup")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def _reap(self) -> int | None:
        if self.proc is None:
            return None
        code = await self.proc.wait()
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()
        return code

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: SIGTERM, wait up to ``timeout``, then SIGKILL."""
        self._enter(ReplicaState.STOPPED)
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("%s: pid %d ignored SIGTERM for %.0f s; killing", self.name, proc.pid, timeout)
                self._kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # already logged by _supervise; never swallowed silently
                log.debug("%s: supervisor ended with %s", self.name, exc)
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()
