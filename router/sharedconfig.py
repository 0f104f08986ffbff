"""``config.toml`` shared by several routers (pods on one volume): a file lock for changes, a watch for
everyone else's, and the generation replies carry.

No coordinator: the file is the state. A change takes an exclusive POSIX lock on ``.<name>.lock``
beside the file (``fcntl.lockf``: byte-range locks, which NFS v4, EFS, Filestore and CephFS carry
between hosts), first applies what the file says if another router changed it since (so no change is
made on a stale picture, and none is lost), then writes. Every router polls the file's ``stat``
(twice a second: ``server.config_poll_s``) and reloads when it changed: polling, not inotify, because
inotify sees nothing another host writes on a network file system, and a ConfigMap's ``..data``
symlink swap is seen the same way (``stat`` follows the link to the new file).

The generation is the file's top-level ``generation`` key, bumped by every write the control plane
makes (:mod:`router.configfile`); each reply carries the generation its router applied, so a
rollout's mixed period across routers is visible to callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

log = logging.getLogger("router.sharedconfig")


Stat = tuple[int, int, int, int]


def stat_of(path: Path) -> Stat | None:
    """What tells one version of the file from another: device, inode, mtime (ns), size."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def generation_of(text: str) -> int:
    """The ``generation`` of a config text (0 when it has none or does not parse)."""
    try:
        g = tomllib.loads(text).get("generation", 0)
    except tomllib.TOMLDecodeError:
        return 0
    return g if isinstance(g, int) and not isinstance(g, bool) and g >= 0 else 0


class SharedConfig:
    """The config file as this router last applied it.

    Args:
        path: ``config.toml``.
        on_generation: called with the generation of each version of the file applied.
    """

    def __init__(self, path: Path, on_generation: Callable[[int], None]) -> None:
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")
        self.on_generation = on_generation
        self._seen: Stat | None = None
        # POSIX locks belong to the process, not the task: one holder here at a time, or one task closing
        # its descriptor would drop the lock another task of this router believes it holds.
        self._here = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None

    def changed(self) -> bool:
        """Whether the file is another than the one last applied (or written) here."""
        return stat_of(self.path) != self._seen

    def mark(self) -> None:
        """The file as it is now has been looked at here (applied, or refused: it is not tried again until
        it changes)."""
        self._seen = stat_of(self.path)

    def seen(self) -> None:
        """The file as it is now is what serves here (applied or written): mark it and publish its generation."""
        self.mark()
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        self.on_generation(generation_of(text))

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the exclusive lock every router takes to change the file. Tried without blocking, again
        every 20 ms: the loop never waits on it, and a cancelled wait leaves no lock behind."""
        async with self._here:
            async with self._locked_file():
                yield

    @contextlib.asynccontextmanager
    async def _locked_file(self) -> AsyncIterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except (BlockingIOError, PermissionError):  # held by another router (EAGAIN or EACCES)
                    await asyncio.sleep(0.02)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def watch(self, apply: Callable[[], Awaitable[None]], every_s: float) -> None:
        """Call ``apply`` (under the control plane's lock, it re-reads the file) whenever the file changes,
        looking every ``every_s`` seconds (``server.config_poll_s``; 0: never)."""
        if every_s > 0:
            self._watch = asyncio.get_running_loop().create_task(self._poll(apply, every_s), name="config watch")

    async def _poll(self, apply: Callable[[], Awaitable[None]], every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            if self.changed():
                try:
                    await apply()
                except Exception as exc:  # noqa: BLE001 - logged by the reload; the next change is tried again
                    log.debug("applying the changed config file: %r", exc)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

