"""Worker processes: spawn, connect, warm up, watch, restart with backoff, stop.

Each replica is one ``python -m runtime`` process joined to the router by a
``socketpair``. The worker asks the kernel to kill it when the router dies
(``PR_SET_PDEATHSIG``) and also exits on the socket's EOF, so no worker ever
outlives its router, even one killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from time import monotonic

import msgpack

from .config import VersionConfig
from .cork import Cork, Holding
from .proto import link
from .proto.errors import FrameError, WorkerUnavailable
from .proto.framing import FrameScanner
from .proto.link import KIND_WARMUP, STATUS_HELLO

log = logging.getLogger("router.supervisor")

#: Called with (status, header_len, payload) when a request completes.
Done = Callable[[int, int, bytes], None]

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 5.0
_STABLE_S = 30.0  # a worker up this long resets the backoff


class Call:
    """One request in flight on a link; ``deadline`` is on the loop's clock."""

    __slots__ = ("done", "deadline")

    def __init__(self, done: Done, deadline: float) -> None:
        self.done = done
        self.deadline = deadline


class CopyCall(Call):
    """A shadow copy in flight: ``sent`` becomes the time it was actually written."""

    __slots__ = ("sent",)

    def __init__(self, done: Done, deadline: float, now: float) -> None:
        super().__init__(done, deadline)
        self.sent = now


#: Most copies held for one write.
_COPIES_PER_WRITE = 32


class WorkerLink(asyncio.Protocol, Holding):
    """The router's end of one worker socket: sends requests, matches replies by id."""

    def __init__(self, name: str, max_frame: int, on_lost: Callable[[WorkerLink], None],
                 copy_delay: float = 0.001, cork: Cork | None = None) -> None:
        self.name = name
        self.cork = cork if cork is not None else Cork()
        self._held: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, Call] = {}
        self.hello: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._scanner = FrameScanner(max_frame)
        self._next = 1
        self._on_lost = on_lost
        self._copy_delay = copy_delay
        self._copies: list[bytes] = []
        self._copy_calls: list[CopyCall] = []
        self._copy_timer: asyncio.TimerHandle | None = None
        self.lost_reason = ""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._scanner.feed(data)
        except FrameError as exc:
            self._corrupt(exc)
            return
        try:
            self.cork.run(self._replies, frames)  # a batch of replies: one write to each pipelined client
        except FrameError as exc:
            self._corrupt(exc)

    def _replies(self, frames: list[bytes]) -> None:
        pending = self.pending
        for body in frames:
            rid, status, hlen, payload = link.unpack(body)
            call = pending.pop(rid, None)
            if call is not None:
                call.done(status, hlen, payload)
            elif rid == 0 and status == STATUS_HELLO and not self.hello.done():
                self.hello.set_result(msgpack.unpackb(payload))
            # else: the reply of a request already answered 504: dropped.

    def _corrupt(self, exc: FrameError) -> None:
            log.error("%s: corrupt frame from worker (%s); dropping the link", self.name, exc)
            self.lost_reason = f"corrupt frame from worker: {exc}"
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._copy_timer is not None:
            self._copy_timer.cancel()
            self._copy_timer = None
        self._copies.clear()  # their calls are pending: fail_all answers them
        self._copy_calls.clear()
        reason = self.lost_reason or "worker exited"
        self.fail_all(503, f"{self.name}: {reason}")
        if not self.hello.done():
            self.hello.set_exception(WorkerUnavailable(f"{self.name}: {reason} before it was ready"))
            self.hello.exception()  # retrieved: nothing may warn about it later
        self._on_lost(self)

    # router side
    def send(self, kind: int, header_len: int, payload: bytes, call: Call) -> None:
        """Send one request; ``call.done`` runs exactly once, on reply, loss or deadline."""
        rid = self._next
        self._next = rid + 1 if rid < 0xFFFFFFFF else 1
        self.pending[rid] = call
        t = self.transport
        if t is None:
            del self.pending[rid]
            call.done(503, 0, f"{self.name}: worker not connected".encode())
            return
        if self.cork.depth:  # more requests of the same read follow: write them together
            if len(payload) < 65536:
                self.hold_frame(link.pack(rid, kind, header_len, payload))
            else:
                self.hold_frame(link.pack_head(rid, kind, header_len, len(payload)))
                self.hold_frame(payload)
        elif len(payload) < 65536:
            t.write(link.pack(rid, kind, header_len, payload))
        else:  # skip the copy of a large payload
            t.writelines((link.pack_head(rid, kind, header_len, len(payload)), payload))

    def send_shadow(self, fmt: int, header_len: int, body: bytes, reply_header_len: int, reply: bytes,
                    call: CopyCall) -> None:
        """Queue a shadow copy: the caller's body and the live reply, as they are (see :mod:`router.proto.link`).

        Copies are held up to ``copy_delay`` seconds (or until 32 wait) and written
        together: one write and one wake-up of the shadow, and one answer back,
        for several copies instead of each, which is most of what a copy costs
        the router. ``call.sent`` is set when the copy is written.
        """
        rid = self._next
        self._next = rid + 1 if rid < 0xFFFFFFFF else 1
        if self.transport is None:
            call.done(503, 0, f"{self.name}: worker not connected".encode())
            return
        self.pending[rid] = call
        out = self._copies
        out.append(link.pack_shadow_head(rid, fmt, header_len, len(body), reply_header_len, len(reply)))
        out.append(body)
        out.append(reply)
        self._copy_calls.append(call)
        if len(self._copy_calls) >= _COPIES_PER_WRITE:
            self.write_copies()
        elif self._copy_timer is None:
            self._copy_timer = asyncio.get_running_loop().call_later(self._copy_delay, self.write_copies)

    def write_copies(self) -> None:
        """Write the copies held so far."""
        if self._copy_timer is not None:
            self._copy_timer.cancel()
            self._copy_timer = None
        out, self._copies = self._copies, []
        calls, self._copy_calls = self._copy_calls, []
        t = self.transport
        if t is None or not out:
            return
        t.writelines(out)
        now = monotonic()
        for c in calls:
            c.sent = now

    def expire(self, now: float) -> int:
        """Answer 504 to every call past its deadline; returns how many.

        Calls are inserted in deadline order (one timeout per server), so only
        the head of the dict needs looking at.
        """
        pending = self.pending
        n = 0
        while pending:
            rid = next(iter(pending))
            call = pending[rid]
            if call.deadline > now:
                break
            del pending[rid]
            call.done(504, 0, b"deadline exceeded: no answer from the worker in time")
            n += 1
        return n

    def fail_all(self, status: int, reason: str) -> None:
        pending, self.pending = self.pending, {}
        msg = reason.encode()
        for call in pending.values():
            call.done(status, 0, msg)


class Replica:
    """One worker process of one model version, restarted whenever it dies.

    Args:
        model: model name.
        vc: the version's config.
        index: replica number within the version.
        model_dir: ``<store>/<model>/<version>``.
        max_frame: largest frame on the link.
        on_state: called with this replica whenever it becomes live or stops being live.
        copy_delay: longest a shadow copy is held to be written with others.
        cork: the router's write coalescing, shared by every link.
    """

    def __init__(self, model: str, vc: VersionConfig, index: int, model_dir: Path, max_frame: int,
                 start_timeout: float, on_state: Callable[[Replica], None], copy_delay: float = 0.001,
                 cork: Cork | None = None) -> None:
        self.model = model
        self.cork = cork
        self.vc = vc
        self.index = index
        self.model_dir = model_dir
        self.max_frame = max_frame
        self.start_timeout = start_timeout
        self.on_state = on_state
        self.copy_delay = copy_delay
        self.name = f"{model}/{vc.version}#{index}"
        self.link: WorkerLink | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.live = False
        self.info: dict = {}
        self.restarts = 0
        self.state = "new"
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

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
        while not self._stopping:
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
            if self._stopping:
                break
            if time.monotonic() - started > _STABLE_S:
                backoff = _BACKOFF_MIN
            self.restarts += 1
            self.state = "restarting"
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
        ]
        if not vc.optimize:
            argv.append("--no-optimize")
        self.state = "starting"
        try:
            self.proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        lost = loop.create_future()

        def on_lost(_: WorkerLink) -> None:
            if self.live:
                self.live = False
                self.on_state(self)
            if not lost.done():
                lost.set_result(None)

        try:
            _, link = await loop.create_unix_connection(
                lambda: WorkerLink(self.name, self.max_frame, on_lost, self.copy_delay, self.cork), sock=ours)
        except BaseException:
            ours.close()
            raise
        self.link = link
        try:
            self.info = await asyncio.wait_for(asyncio.shield(link.hello), self.start_timeout)
            await self._warm_up(link)
        except TimeoutError:
            self._kill()
            await self._reap()
            raise WorkerUnavailable(f"{self.name}: not ready within {self.start_timeout:.0f} s") from None
        except BaseException:
            self._kill()
            await self._reap()
            raise
        self.live = True
        self.state = "live"
        log.info("%s: live (pid %d, %s, cpus %s)", self.name, self.proc.pid, self.info.get("device"),
                 self.info.get("cpus"))
        self.on_state(self)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        await lost
        code = await self._reap()
        if not self._stopping:
            log.warning("%s: worker pid %s exited with %s", self.name, self.pid, code)

    async def _warm_up(self, link: WorkerLink) -> None:
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, _hlen: int, payload: bytes) -> None:
            if not fut.done():
                fut.set_result((status, payload))

        link.send(KIND_WARMUP, 0, b"", Call(done, float("inf")))
        status, payload = await fut
        if status != 200:
            raise WorkerUnavailable(f"{self.name}: warm-up failed ({status}): {payload.decode(errors='replace')}")

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
        self._stopping = True
        if self.live:
            self.live = False
            self.on_state(self)
        self.state = "stopped"
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
