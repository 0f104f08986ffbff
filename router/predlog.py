"""The prediction log, router side: sample requests, hand their bytes to the writer process, count.

Each model samples its requests at ``log_rate`` (0 to 1, live in a reload). A sampled request becomes
one record of raw bytes (the caller's body, the reply, status, latency, a routing key: layout in
:mod:`runtime.predlog.records`), written to the writer process's socket without waiting: when more
than ``[predlog] queue_bytes`` wait unread, or the writer is not running, the record is dropped and
counted. The writer (``python -m runtime.predlog``) decodes and writes Parquet, and reports what it
wrote and what it could not; it is restarted when it dies, like a worker.

A sampled request that is also mirrored asks its shadows for their outputs besides the comparison,
and each answer becomes a ``shadow`` record with the live reply beside it: the same request id
joins the two (:meth:`PredictionLog.shadow`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import msgpack

from .config import PredlogConfig
from .proto.errors import FrameError
from .proto.framing import FrameScanner, pack_header


class Answered(Protocol):
    """What the log reads of an answered request (:class:`router.lifecycle.Exchange`; named here, not
    imported: the lifecycle calls the log, never the other way)."""

    model: str
    answered: str
    protocol: str
    key: str | bytes | None
    fmt: int
    header_len: int
    body: bytes
    t0: float


log = logging.getLogger("router.predlog")

#: Why a record was not written (``router_predlog_dropped_total{reason}``): the writer was behind
#: (queue_full), not running or died before writing it (writer_down), or could not write it
#: (write_failed: an unwritable folder, a full disk).
DROP_REASONS = ("queue_full", "writer_down", "write_failed")
_BACKOFF_MIN = 0.5
_BACKOFF_MAX = 30.0
_STABLE_S = 30.0


class Sampled:
    """A sampled live request, kept with its shadow copies until they answer (:meth:`PredictionLog.shadow`):
    its exchange (one per request, never reused) and its reply."""

    __slots__ = ("log", "request_id", "time", "ex", "reply_header_len", "reply")

    def __init__(self, plog: PredictionLog, request_id: str, when: float, ex: Answered, reply_header_len: int,
                 reply: bytes) -> None:
        self.log = plog
        self.request_id = request_id
        self.time = when
        self.ex = ex
        self.reply_header_len = reply_header_len
        self.reply = reply


class Counts:
    """One model's prediction log numbers (``router_predlog_*``)."""

    __slots__ = ("sampled", "handed", "dropped", "written", "failed", "bytes", "files")

    def __init__(self) -> None:
        self.sampled = 0
        #: Records handed to the running writer (what it does not report when it dies is lost: writer_down).
        self.handed = 0
        #: ``DROP_REASONS[:2]`` -> records the router could not hand over.
        self.dropped = [0, 0]
        #: Reported by the writer (running totals, kept over its restarts).
        self.written = 0
        self.failed = 0
        self.bytes = 0
        self.files = 0


class _WriterLink(asyncio.Protocol):
    """The router's end of the writer's socket: reads its reports."""

    def __init__(self, owner: PredictionLog) -> None:
        self.owner = owner
        self.transport: asyncio.WriteTransport | None = None
        self.scanner = FrameScanner(1 << 20)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self.scanner.feed(data):
                self.owner._reported(msgpack.unpackb(frame))
        except (FrameError, ValueError, TypeError) as exc:
            log.error("prediction log: unreadable report from the writer: %r", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(None)


class PredictionLog:
    """Sampling, the hand-over to the writer process, and its supervision.

    Args:
        config: ``[predlog]``.
        store: the model store (the writer reads each version's signature there).
        max_frame: the largest record (bodies are at most ``server.max_body_bytes``).
    """

    def __init__(self, config: PredlogConfig, store: Path, max_frame: int) -> None:
        self.config = config
        self.store = store
        self.max_frame = max_frame
        self.counts: defaultdict[str, Counts] = defaultdict(Counts)
        self._link: _WriterLink | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Totals of writers that have exited, added to the running one's reports.
        self._base: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._prefix = uuid.uuid4().hex[:12]
        self._seq = 0

    @property
    def running(self) -> bool:
        link = self._link
        return link is not None and link.transport is not None

    # -- the hot side: called for sampled requests only -------------------------------------------------

    def live(self, ex: Answered, status: int, header_len: int, payload: bytes) -> Sampled:
        """Record a sampled request that has been answered; returns it for its shadow copies."""
        self._seq += 1
        s = Sampled(self, f"{self._prefix}-{self._seq:x}", time.time(), ex, header_len, payload)
        self._send(ex.model, ["live", s.request_id, s.time, ex.model, ex.answered, ex.protocol, ex.key, status,
                              time.monotonic() - ex.t0, ex.fmt, ex.header_len, ex.body, header_len, payload, None,
                              None])
        return s

    def shadow(self, s: Sampled, version: str, status: int, seconds: float, payload: bytes | None) -> None:
        """Record a sampled request's shadow answer: ``payload`` is the shadow's outputs (a msgpack reply)
        on 200, else its error message."""
        ex = s.ex
        self._send(ex.model, ["shadow", s.request_id, s.time, ex.model, version, ex.protocol, ex.key, status, seconds,
                              ex.fmt, ex.header_len, ex.body, s.reply_header_len, s.reply, ex.answered, payload])

    def _send(self, model: str, record: list[Any]) -> None:
        counts = self.counts[model]
        counts.sampled += 1
        link = self._link
        t = link.transport if link is not None else None
        if t is None:
            counts.dropped[1] += 1
            self.ensure_started()
            return
        frame = msgpack.packb(record)
        if t.get_write_buffer_size() + len(frame) > self.config.queue_bytes:
            counts.dropped[0] += 1
            return
        t.writelines((pack_header(len(frame)), frame))
        counts.handed += 1

    # -- what the writer reports ------------------------------------------------------------------------

    def _reported(self, report: dict[str, dict[str, int]]) -> None:
        for model, n in report.get("written", {}).items():
            self.counts[model].written = self._base[model][0] + n
        for model, n in report.get("failed", {}).items():
            self.counts[model].failed = self._base[model][1] + n
        for model, n in report.get("bytes", {}).items():
            self.counts[model].bytes = n
        for model, n in report.get("files", {}).items():
            self.counts[model].files = n

    def dropped(self, model: str) -> dict[str, int]:
        """The model's records not written, by reason (:data:`DROP_REASONS`)."""
        c = self.counts[model]
        return dict(zip(DROP_REASONS, (*c.dropped, c.failed), strict=True))

    def series(self) -> Iterator[tuple[str, Counts]]:
        """(model, counts) for the metrics."""
        return iter(list(self.counts.items()))

    # -- the writer process -----------------------------------------------------------------------------

    def ensure_started(self) -> None:
        """Start the writer (and its supervision) unless it is already: called at start when a model
        samples, and on the first sampled record after a reload turned sampling on."""
        if self._task is None and not self._stopping:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="prediction log writer")

    async def _supervise(self) -> None:
        backoff = _BACKOFF_MIN
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a writer that cannot start is retried, never fatal
                log.error("prediction log writer: %s", exc)
            if self._stopping:
                break
            if time.monotonic() - started > _STABLE_S:
                backoff = _BACKOFF_MIN
            log.warning("prediction log writer exited; restarting in %.1f s (records are dropped meanwhile)",
                        backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _run_once(self) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "runtime.predlog", "--fd", str(theirs.fileno()),
                "--parent-pid", str(os.getpid()), "--path", str(c.path), "--store", str(self.store),
                "--file-bytes", str(c.file_bytes), "--file-s", str(c.file_s), "--retain-s", str(c.retain_s),
                "--retain-bytes", str(c.retain_bytes), "--max-frame", str(self.max_frame)]
        try:
            self._proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        try:
            _, link = await loop.create_unix_connection(lambda: _WriterLink(self), sock=ours)
        except BaseException:
            ours.close()
            raise
        self._link = link
        log.info("prediction log writer started (pid %d), writing to %s", self._proc.pid, c.path)
        await link.lost
        await self._proc.wait()
        # Its totals carry on in the next writer's; what it was handed and never reported is lost.
        for model, counts in self.counts.items():
            written, failed = self._base[model]
            counts.dropped[1] += max(0, counts.handed - (counts.written - written) - (counts.failed - failed))
            counts.handed = 0
            self._base[model] = [counts.written, counts.failed]

    async def stop(self, timeout: float = 10.0) -> None:
        """Close the writer's socket: it writes what it holds, closes its files and exits."""
        self._stopping = True
        link, proc = self._link, self._proc
        if link is not None and link.transport is not None:
            link.transport.close()
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("prediction log writer (pid %d) did not exit in %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def describe(self, model: str, rate: float) -> dict[str, Any]:
        """The model's log: where it is, its files (newest first, at most 100), and its numbers."""
        root = self.config.path / model
        files = await asyncio.to_thread(_files, root)
        c = self.counts[model]
        return {"model": model, "rate": rate, "path": str(root), "format": "parquet",
                "files": files[:100], "file_count": len(files), "bytes": sum(f["bytes"] for f in files),
                "sampled": c.sampled, "written": c.written, "dropped": sum(self.dropped(model).values()),
                "dropped_by_reason": self.dropped(model), "writer": "running" if self.running else "stopped"}


def _files(root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in root.glob("*/date=*/[!.]*.parquet"):  # not the files being written
        try:
            st = p.stat()
        except OSError:
            continue
        out.append({"name": str(p.relative_to(root)), "bytes": st.st_size, "modified": st.st_mtime})
    out.sort(key=lambda f: f["modified"], reverse=True)
    return out
