"""What the store holds: models, their versions with metadata and bytes on disk; removing a version.

Whether a version may be removed (it serves, or is pinned by the configuration) is the control
plane's decision, not this module's. These functions block (directory scans): run them in a
thread from async code.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.proto.errors import BadArchive, NotFound, shown
from router.proto.meta import META_FILE

from .layout import TRASH_DIR, check_name, fsync_path, natural_key, remove_tree, tree_bytes

__all__ = ["StoredVersion", "list_models", "list_versions", "model_bytes", "remove", "stored_version"]

log = logging.getLogger("router.store")


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version in the store.

    Attributes:
        meta: its ``meta.json``, decoded (None when it is missing or unreadable: see ``problem``).
        bytes: bytes of its files (apparent sizes).
        problem: why ``meta`` is None, else None.
    """

    model: str
    version: str
    path: Path
    meta: dict[str, Any] | None
    bytes: int
    problem: str | None = None


def _read(model: str, version: str, path: Path) -> StoredVersion:
    meta: dict[str, Any] | None = None
    problem = None
    try:
        raw = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problem = f"{META_FILE}: {exc}"
    else:
        if isinstance(raw, dict):
            meta = raw
        else:
            problem = f"{META_FILE}: not a JSON object"
    return StoredVersion(model, version, path, meta, tree_bytes(path), problem)


def _names(path: Path) -> list[str]:
    """Visible subdirectories of ``path`` (hidden ones are staging, trash, or not the store's), in natural order."""
    try:
        with os.scandir(path) as it:
            found = [e.name for e in it if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return sorted(found, key=natural_key)


def list_models(store: str | Path) -> list[str]:
    """The models that have a directory in the store (possibly with no version left)."""
    return _names(Path(store))


def list_versions(store: str | Path, model: str) -> list[StoredVersion]:
    """A model's stored versions, in natural order of their names (``2`` before ``10``).

    Raises:
        NotFound: the model has no directory in the store (or its name is not a valid one).
    """
    d = _model_dir(store, model)
    out = []
    for v in _names(d):
        try:
            out.append(_read(model, v, d / v))
        except FileNotFoundError:
            continue  # removed meanwhile
    return out


def model_bytes(store: str | Path, model: str) -> int:
    """Bytes of all of a model's stored versions together.

    Raises:
        NotFound: as :func:`list_versions`.
    """
    return sum(v.bytes for v in list_versions(store, model))


def stored_version(store: str | Path, model: str, version: str) -> StoredVersion:
    """One stored version.

    Raises:
        NotFound: no such model or version.
    """
    d = _model_dir(store, model)
    _check(model, version)
    path = d / version
    if not path.is_dir() or path.is_symlink():
        raise NotFound(f"model {shown(model)} has no version {shown(version)} in the store")
    return _read(model, version, path)


def remove(store: str | Path, model: str, version: str) -> StoredVersion:
    """Remove a stored version: renamed into ``<store>/.trash/`` (it disappears at once and whole),
    then deleted. Returns what was removed (measured after the rename).

    A deletion that fails half-way leaves the rest in ``.trash/``, logged; :func:`clean_staging`
    removes it at the next start. The model's directory stays.

    Raises:
        NotFound: no such model or version.
    """
    store = Path(store)
    _check(model, version)
    trash_root = store / TRASH_DIR
    trash = trash_root / secrets.token_hex(8)
    try:
        trash_root.mkdir(exist_ok=True)
        os.rename(store / model / version, trash)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"model {shown(model)} has no version {shown(version)} in the store") from None
    fsync_path(store / model)
    removed = _read(model, version, trash)
    remove_tree(trash)
    log.info("removed model %s version %s from the store (%d bytes)", model, version, removed.bytes)
    return StoredVersion(model, version, store / model / version, removed.meta, removed.bytes, removed.problem)


def _check(model: str, version: str) -> None:
    """A name that cannot be stored names nothing stored: NotFound (404), not BadArchive."""
    try:
        check_name("model", model)
        check_name("version", version)
    except BadArchive as exc:
        raise NotFound(str(exc)) from None


def _model_dir(store: str | Path, model: str) -> Path:
    try:
        check_name("model", model)
    except BadArchive as exc:
        raise NotFound(str(exc)) from None
    d = Path(store) / model
    if not d.is_dir() or d.is_symlink():
        raise NotFound(f"model {shown(model)} is not in the store")
    return d
