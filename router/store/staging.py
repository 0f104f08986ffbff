"""Receiving a push body into the store's staging area, and cleaning what a crash left there.

A push is received into ``<store>/.staging/<random>/upload``, on the store's filesystem so that
its version can later be renamed into place. Its size is capped and its sha256 computed while it
streams; it is never held whole in memory.

From the event loop, the file writes and the hashing run in a thread. :meth:`Upload.write`
gathers the chunks the loop reads (``request.content``: 64 KiB or less each) into a block of up to
``FLUSH_BYTES`` and hands each block to the default executor, awaiting it before it takes the
next chunk: the loop never waits on the disk or spends a millisecond hashing a block
(``hashlib`` releases the GIL for large buffers), one executor call per MiB rather than per chunk
keeps the hand-off cost (tens of microseconds) small against the write, one block in flight at a
time keeps the writes in order, and since the handler reads no more of the request while a block
is written, a slow disk slows the client down through TCP instead of filling memory (at most one
block and one chunk per push).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from router.proto.errors import UploadTooLarge

from .layout import CHUNK, DEFAULT_LIMITS, STAGING_DIR, TRASH_DIR, StoreLimits, check_name, remove_tree

__all__ = ["FLUSH_BYTES", "UPLOAD_FILE", "Upload", "clean_staging", "new_staging_dir", "receive"]

log = logging.getLogger("router.store")

#: The received body inside its staging directory.
UPLOAD_FILE = "upload"
#: Bytes gathered in the loop before one threaded write.
FLUSH_BYTES = CHUNK


def new_staging_dir(store: Path) -> Path:
    """A new, empty, private directory under ``<store>/.staging/`` (created with the store if needed).

    Blocks (mkdir): call it in a thread from async code.
    """
    staging = Path(store) / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=staging))


def clean_staging(store: Path) -> int:
    """Remove what interrupted pushes and removals left in ``.staging/`` and ``.trash/``; returns
    how many entries went. Call it at start-up, before any push can run (it would remove a push
    in progress). Blocks: call it in a thread from async code.

    A leftover is never a version: a version appears in ``<store>/<model>/`` only by the rename
    that completes it. What cannot be removed is logged and left for the next start.
    """
    removed = 0
    for sub in (STAGING_DIR, TRASH_DIR):
        try:
            entries = list(os.scandir(Path(store) / sub))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                removed += remove_tree(Path(e.path))
                continue
            try:
                os.unlink(e.path)
                removed += 1
            except OSError as exc:
                log.warning("cannot remove store leftover %s: %s", e.path, exc)
    if removed:
        log.info("removed %d leftover(s) of interrupted pushes or removals from %s", removed, store)
    return removed


class Upload:
    """One push body being received into ``<store>/.staging/<random>/upload``.

    Made by :meth:`open`; fed by :meth:`write` (from the event loop) or :meth:`write_sync` (in a
    thread), then :meth:`finish` / :meth:`finish_sync`; :meth:`discard` removes it on any error.
    Not for concurrent use: await each ``write`` before the next.

    Attributes:
        store, model, version: where the push goes (names already checked).
        root: its staging directory; ``path`` the body's file in it.
        size: bytes received so far; ``sha256`` the body's digest once finished.
    """

    def __init__(self, store: Path, model: str, version: str, root: Path, limits: StoreLimits) -> None:
        self.store = store
        self.model = model
        self.version = version
        self.root = root
        self.path = root / UPLOAD_FILE
        self.limits = limits
        self.size = 0
        self.sha256 = ""
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._busy = False

    @classmethod
    def open(cls, store: str | Path, model: str, version: str, limits: StoreLimits = DEFAULT_LIMITS) -> Upload:
        """Check the names and open a new staging directory for the push of ``model``/``version``.

        Blocks (mkdir, open): from async code, ``await asyncio.to_thread(Upload.open, ...)``.

        Raises:
            BadArchive: an invalid model or version name (before any byte is read).
        """
        check_name("model", model)
        check_name("version", version)
        store = Path(store)
        root = new_staging_dir(store)
        try:
            return cls(store, model, version, root, limits)
        except BaseException:
            remove_tree(root)
            raise

    def _admit(self, n: int) -> None:
        if self._fd < 0:
            raise RuntimeError("write after finish or discard")
        if self.size + n > self.limits.max_upload_bytes:
            raise UploadTooLarge(f"the upload is larger than {self.limits.max_upload_bytes} bytes")
        self.size += n

    def _write_block(self, block: bytes | bytearray | memoryview) -> None:
        self._hash.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(self._fd, view):]

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take one chunk of the body, in the event loop; a full block is written in a thread.

        Raises:
            UploadTooLarge: the body passed ``limits.max_upload_bytes`` (checked before the
                chunk is kept; the caller then calls :meth:`discard`).
            OSError: the write failed (a full disk).
        """
        if self._busy:
            raise RuntimeError("Upload.write called again before the previous call finished")
        self._admit(len(chunk))
        self._buf += chunk
        if len(self._buf) >= FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        block, self._buf = self._buf, bytearray()
        self._busy = True
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write_block, block)
        finally:
            self._busy = False

    async def finish(self) -> None:
        """Write what is left (in a thread) and close the file; ``sha256`` is then set."""
        if self._buf:
            await self._flush()
        await asyncio.get_running_loop().run_in_executor(None, self.finish_sync)

    def write_sync(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take and write one chunk (blocks: for a thread, or code with no loop).

        Raises:
            UploadTooLarge, OSError: as :meth:`write`.
        """
        self._admit(len(chunk))
        self._write_block(chunk)

    def finish_sync(self) -> None:
        """Write what is left and close the file; ``sha256`` is then set (blocks)."""
        if self._buf:
            block, self._buf = self._buf, bytearray()
            self._write_block(block)
        os.close(self._fd)
        self._fd = -1
        self.sha256 = self._hash.hexdigest()

    def discard(self) -> None:
        """Remove the staging directory and all in it; safe to call twice (blocks: a thread)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove_tree(self.root)


def receive(store: str | Path, model: str, version: str, src: BinaryIO,
            limits: StoreLimits = DEFAULT_LIMITS) -> Upload:
    """Receive a whole push body from a file-like object (blocks: a thread, or the CLI).

    Raises:
        BadArchive: an invalid model or version name.
        UploadTooLarge: the body is over ``limits.max_upload_bytes`` (nothing is left behind).
    """
    upload = Upload.open(store, model, version, limits)
    try:
        while block := src.read(CHUNK):
            upload.write_sync(block)
        upload.finish_sync()
    except BaseException:
        upload.discard()
        raise
    return upload
