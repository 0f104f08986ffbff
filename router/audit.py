"""The audit trail: every change the control plane is asked for — who, what, when, and how it ended.

The admin API sets :data:`actor` for each request it serves (the caller's ``X-Router-User`` header,
which the CLI and the UI send, and its address); a reload on SIGHUP runs as ``signal``. Each change
is recorded once it has ended, ``ok``, ``refused`` (the request was wrong or not allowed now:
nothing changed) or ``failed`` (it was tried and did not work: a deploy's standby failed, a
validation refused the model), in memory (the newest :data:`KEEP`) and appended to a JSON-lines
file that a restart reads back. ``GET /admin/audit`` and ``router audit`` read it. Routers that share
the file (on one volume) append under the config file's lock and read the file itself, so each
shows every router's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from .proto.errors import DeployFailed, RouterError, ValidationFailed

log = logging.getLogger("router.audit")

#: Who asks for the changes made in this context (set per admin request).
actor: ContextVar[str] = ContextVar("actor", default="daemon")
#: Entries kept in memory (and read back from the file at start).
KEEP = 1000
#: The file is renamed to ``<name>.1`` (one generation kept) once it is this large.
ROTATE_BYTES = 8 << 20
RESULTS = ("ok", "refused", "failed")


class AuditTrail:
    """The recent changes, newest last, and the file they are appended to.

    Args:
        path: the JSON-lines file; None keeps the trail in memory only.
        lock: the lock the routers sharing ``path`` append under (:meth:`router.sharedconfig.SharedConfig.locked`).
    """

    def __init__(self, path: Path | None,
                 lock: Callable[[], contextlib.AbstractAsyncContextManager[None]] | None = None) -> None:
        self.path = path
        self.lock = lock
        self._entries: deque[dict[str, Any]] = deque(maxlen=KEEP)

    async def load(self) -> None:
        """Read the newest entries back from the file (at start); a damaged line is skipped."""
        if self.path is not None:
            self._entries.extend(await asyncio.to_thread(_read, self.path))

    async def read(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first, every router's that shares the file (read in a
        thread); only ``model``'s when given."""
        if self.path is not None:
            self._entries = deque(await asyncio.to_thread(_read, self.path), maxlen=KEEP)
        return self.entries(model, limit)

    def entries(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` entries this router knows of, newest first; only ``model``'s when given."""
        out = []
        for e in reversed(self._entries):
            if model is None or e["model"] == model:
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    @contextlib.asynccontextmanager
    async def change(self, action: str, model: str | None = None, version: str | None = None,
                     detail: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Record the change made in the ``async with`` body once it ends; the body may add to ``detail``
        (the yielded dict). An exception is recorded (refused or failed, with its message) and raised on."""
        entry: dict[str, Any] = {"time": time.time(), "who": actor.get(), "action": action, "model": model,
                                 "version": version, "detail": dict(detail or {}), "result": "ok", "error": None}
        try:
            yield entry["detail"]
        except BaseException as exc:
            entry["result"] = outcome(exc)
            entry["error"] = str(exc) or type(exc).__name__
            await self._record(entry)
            raise
        await self._record(entry)

    async def _record(self, entry: dict[str, Any]) -> None:
        self._entries.append(entry)
        if self.path is None:
            return
        try:
            async with self.lock() if self.lock is not None else contextlib.nullcontext():
                await asyncio.to_thread(_append, self.path, json.dumps(entry, default=str))
        except OSError as exc:  # the change itself stands: the file is the record's copy, not the change
            log.error("audit trail: could not append to %s: %s", self.path, exc)


def outcome(exc: BaseException) -> str:
    """``failed`` for what was tried and did not work, ``refused`` for a request that changed nothing."""
    if isinstance(exc, (DeployFailed, ValidationFailed)):
        return "failed"
    if isinstance(exc, RouterError) and exc.status < 500:
        return "refused"
    return "failed"


def _append(path: Path, line: str) -> None:
    try:
        if path.stat().st_size >= ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            lines = deque(f, maxlen=KEEP)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("audit trail: could not read %s: %s", path, exc)
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("result") in RESULTS:
            out.append(e)
    return out


P = ParamSpec("P")
R = TypeVar("R")


def audited(action: str, *params: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Record each call of a control plane change in its ``audit`` trail: the ``model`` and ``version``
    arguments, and the arguments named in ``params`` (those given) as the detail."""

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            a = sig.bind(*args, **kwargs).arguments
            detail = {p: a[p] for p in params if a.get(p) is not None}
            async with a["self"].audit.change(action, a.get("model"), a.get("version"), detail):
                return await fn(*args, **kwargs)

        return run

    return wrap
