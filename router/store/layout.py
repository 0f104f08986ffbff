"""The store's directory layout, its names and its limits: what every ``router.store`` module shares.

``<store>/<model>/<version>/`` holds one model file (``model.pt`` or ``model.pt2``),
``meta.json`` and optionally ``sample.npz`` (:mod:`router.proto.meta`). Beside the models,
two hidden directories on the same filesystem: ``.staging/`` (pushes being received and
unpacked) and ``.trash/`` (versions being deleted). A model or version name never starts
with ``.``, so neither can be mistaken for a model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from router.proto.errors import BadArchive, shown

log = logging.getLogger("router.store")

#: Pushes being received: ``<store>/.staging/<random>/``.
STAGING_DIR = ".staging"
#: Versions being removed: renamed here, then deleted.
TRASH_DIR = ".trash"
#: File and block size for streaming copies (upload writes, member extraction, hashing).
CHUNK = 1 << 20
#: Longest name a filesystem takes for one path component (Linux NAME_MAX), in bytes.
NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """What one push may cost; each limit is checked while streaming, before it is passed.

    Args:
        max_upload_bytes: the pushed body (an archive, or a bare model file); 413 past it.
        max_unpacked_bytes: all files of an archive together, as unpacked; 413 past it.
        max_entries: entries (files and directories) in a push archive.
        max_ratio: how many times its compressed size a zip member may unpack to (once past
            ``ratio_free_bytes``): a zip bomb is refused long before the unpacked cap.
        ratio_free_bytes: a member unpacks this much before ``max_ratio`` applies (a small
            ``meta.json`` of repeated text compresses very well and is harmless).
        max_meta_bytes: the ``meta.json`` of an archive (it is read into memory).
        max_zip_directory_bytes: the central directory of any zip read (a push archive, a model
            file: TorchScript keeps an entry per tensor, ~150 bytes each), bounded before
            :mod:`zipfile` turns each entry into an object.
    """

    max_upload_bytes: int = 2 << 30
    max_unpacked_bytes: int = 4 << 30
    max_entries: int = 16
    max_ratio: int = 100
    ratio_free_bytes: int = 1 << 20
    max_meta_bytes: int = 1 << 20
    max_zip_directory_bytes: int = 16 << 20


DEFAULT_LIMITS = StoreLimits()


def check_name(kind: str, value: object) -> str:
    """``value`` if it is a valid model or version name, one visible path component.

    The rule of ``modelkit.store`` (non-empty, not starting with ``.``, no ``/``, ``\\``
    or NUL), plus what the filesystem needs: at most ``NAME_MAX`` bytes of UTF-8.

    Raises:
        BadArchive: naming ``kind`` ("model" or "version") and the value (cut by ``shown``).
    """
    if isinstance(value, str) and _valid_name(value):
        return value
    raise BadArchive(f"invalid {kind} name {shown(value)}: must be one path component of at most "
                     f"{NAME_MAX} bytes, not starting with '.'")


def _valid_name(value: str) -> bool:
    if not value or value.startswith(".") or any(c in value for c in "/\\\0"):
        return False
    try:
        return len(value.encode("utf-8")) <= NAME_MAX
    except UnicodeEncodeError:  # lone surrogates: no file can be named so
        return False


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``"2"`` before ``"10"`` and ``"v2"`` before ``"v10"``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk.

    Raises:
        OSError: the path cannot be opened or flushed (a push must not report a version
            stored that a power cut could lose).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (apparent sizes; links are not followed)."""
    total = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
    return total


def remove_tree(path: Path) -> bool:
    """Delete a directory tree; what cannot be deleted is logged (``clean_staging`` retries at the
    next start). Returns True when nothing is left."""
    failed: list[str] = []

    def onexc(func: object, where: str, exc: BaseException) -> None:
        if not isinstance(exc, FileNotFoundError):  # gone already: what was wanted
            failed.append(where)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onexc)
    else:
        shutil.rmtree(path, onerror=lambda func, where, info: onexc(func, where, info[1]))
    if failed:
        log.warning("could not delete %s (%d paths, first %s): left for the next start", path, len(failed), failed[0])
    return not failed
