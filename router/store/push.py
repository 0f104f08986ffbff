"""Turning a received upload into a stored version: unpack, complete ``meta.json``, compare, commit.

In three steps, so that the validation (someone else's: a worker loads the staged version)
can run between them, awaited in the event loop::

    staged = await asyncio.to_thread(prepare, upload)     # unpack, meta.json, early 200/409
    extra = None if staged.same else await validate(staged)  # reads staged.path
    result = await asyncio.to_thread(commit, staged, extra)  # fsync, rename: 201, 200 or 409

(:func:`push` runs the three in one call for synchronous callers.) On any error call
``staged.discard()``; :func:`commit` cleans up after itself.

**Atomic.** A version is staged whole in ``<store>/.staging/<random>/version/``, its files and
directory flushed to disk, then renamed to ``<store>/<model>/<version>``: a reader sees no
version or all of it, and a crash leaves only staging leftovers (:func:`clean_staging`).

**Immutable, idempotent.** A version that exists is never replaced. ``rename(2)`` of a
directory onto a non-empty one fails, so of concurrent pushes of one version exactly one
creates it; the others, like a later push, are compared with what is stored: *the same* (the
caller answers 200 with the stored ``meta.json``) when the model file has the same sha256, the
``sample.npz`` is the same (or absent from both), and every ``meta.json`` field the push gives
(but ``created``) equals the stored one; otherwise :class:`VersionExists` (409). Not the
upload's own bytes: a re-packed archive (other tar mtimes, gzip header, JSON spacing, zip
instead of tar) of the same content is the same version, and the fields the store and the
validation filled in (``created``, a signature) do not make a retry differ.

These functions block (disk, hashing): run them in a thread from async code.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.proto.errors import BadArchive, ConfigError, VersionExists, shown
from router.proto.meta import META_FILE, MODEL_FILES, SAMPLE_FILE, parse_meta, sha256_file

from .archive import Unpacked, sniff, unpack
from .layout import fsync_path, remove_tree
from .staging import Upload

__all__ = ["VERSION_DIR", "PushResult", "Staged", "commit", "prepare", "push"]

log = logging.getLogger("router.store")

#: The version being built, inside its staging directory.
VERSION_DIR = "version"
#: Fields the store sets from the push itself: a validation may not change them.
_IDENTITY = ("name", "version", "platform", "sha256", "size", "created")


@dataclass(frozen=True, slots=True)
class PushResult:
    """The outcome of a push: ``created`` (201) or the same version already stored (200)."""

    model: str
    version: str
    meta: dict[str, Any]  #: the stored ``meta.json``
    created: bool
    path: Path  #: ``<store>/<model>/<version>``


@dataclass(slots=True)
class Staged:
    """A push unpacked into ``path`` (a complete candidate version directory) and not yet committed.

    Attributes:
        meta: ``meta.json`` as staged: the archive's, with name, version, platform, sha256,
            size and created filled in (a bare model file has no signature: the validation
            may supply it, see :func:`commit`).
        given: the fields the push's own ``meta.json`` gave (normalised), what a later push
            is compared on.
        existing: the stored ``meta.json`` when this version already exists with the same
            contents (``same``); nothing is then left to commit.
    """

    store: Path
    model: str
    version: str
    root: Path
    path: Path
    meta: dict[str, Any]
    given: dict[str, Any]
    sample_sha256: str | None
    existing: dict[str, Any] | None = None

    @property
    def same(self) -> bool:
        return self.existing is not None

    @property
    def target(self) -> Path:
        return self.store / self.model / self.version

    def discard(self) -> None:
        """Remove the staging directory (blocks; safe to call twice)."""
        remove_tree(self.root)


def prepare(upload: Upload) -> Staged:
    """Unpack a finished upload, complete its ``meta.json``, and compare with a stored version.

    Raises:
        BadArchive: the upload (naming the entry), or its ``meta.json`` disagrees with the push
            (name, version, platform, sha256, size) or is invalid.
        UploadTooLarge: it unpacks to more than the limits.
        VersionExists: the version exists with other contents.
    """
    if not upload.sha256:
        raise RuntimeError("prepare() needs a finished upload")
    limits = upload.limits
    vdir = upload.root / VERSION_DIR
    try:
        os.mkdir(vdir)
        os.chmod(vdir, 0o755)  # not the umask's
        fmt = sniff(upload.path, limits)
        if fmt in MODEL_FILES:
            os.rename(upload.path, vdir / fmt)
            os.chmod(vdir / fmt, 0o644)
            unpacked = Unpacked(fmt, upload.sha256, upload.size, None, None)
        else:
            unpacked = unpack(upload.path, fmt, vdir, limits)
            os.unlink(upload.path)  # the space is the version's now
        given, meta = _complete(unpacked, upload.model, upload.version)
        staged = Staged(upload.store, upload.model, upload.version, upload.root, vdir, meta, given,
                        unpacked.sample_sha256)
        if os.path.lexists(staged.target):
            staged.existing = _compare(staged)
            staged.discard()
            return staged
        if "inputs" in given or "outputs" in given:
            _parse(meta, given)  # a signature given is checked before validation costs a worker
        _write_meta(vdir, meta)
    except BaseException:
        remove_tree(upload.root)
        raise
    return staged


def commit(staged: Staged, extra: Mapping[str, Any] | None = None) -> PushResult:
    """Store a staged version: add ``extra`` to ``meta.json``, flush, rename into place.

    Args:
        staged: from :func:`prepare`; its staging directory is removed whatever happens.
        extra: fields the validation adds to ``meta.json`` (e.g. a signature it read from the
            model); it may not change a field the push gave nor those the store set.

    Raises:
        BadArchive: the final ``meta.json`` is not a valid version's (a bare model file and no
            validation to give its signature).
        VersionExists: a concurrent push stored other contents under this version first.
        ValueError: ``extra`` changes a given or store-set field (a bug of the validation).
    """
    target = staged.target
    if staged.existing is not None:
        return PushResult(staged.model, staged.version, staged.existing, False, target)
    try:
        meta = dict(staged.meta)
        for k, v in (extra or {}).items():
            if k in _IDENTITY or (k in staged.given and staged.given[k] != v):
                raise ValueError(f"validation may add fields to meta.json, not change {k!r}")
            meta[k] = v
        _parse(meta, staged.given)
        if extra:
            _write_meta(staged.path, meta)
        for entry in os.scandir(staged.path):
            fsync_path(Path(entry.path))
        fsync_path(staged.path)
        model_dir = target.parent
        try:
            os.mkdir(model_dir, 0o755)
            fsync_path(staged.store)
        except FileExistsError:
            pass
        try:
            os.rename(staged.path, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return PushResult(staged.model, staged.version, _compare(staged), False, target)  # lost the race
        fsync_path(model_dir)
    finally:
        staged.discard()
    log.info("stored model %s version %s: %s, %d bytes, sha256 %s", staged.model, staged.version,
             _model_file(meta), meta["size"], meta["sha256"])
    return PushResult(staged.model, staged.version, meta, True, target)


def push(upload: Upload, validate: Callable[[Staged], Mapping[str, Any] | None] | None = None) -> PushResult:
    """:func:`prepare`, ``validate`` (unless the same version is stored) and :func:`commit`, in one
    blocking call; the staging directory is removed whatever happens.

    Raises:
        whatever the three raise.
    """
    staged = prepare(upload)
    try:
        extra = None if staged.same or validate is None else validate(staged)
        return commit(staged, extra)
    except BaseException:
        staged.discard()
        raise


def _model_file(meta: Mapping[str, Any]) -> str:
    return next(name for name, platform in MODEL_FILES.items() if platform == meta["platform"])


def _complete(unpacked: Unpacked, model: str, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fields the push's ``meta.json`` gave, normalised; the staged ``meta.json``)."""
    raw = unpacked.meta or {}
    platform = MODEL_FILES[unpacked.model_file]
    given = {k: v for k, v in raw.items() if k != "created"}  # the store's: when the version was pushed

    def refuse(field: str, value: object, actual: object, of: str) -> BadArchive:
        return BadArchive(f"meta.json gives {field} {shown(value)} but {of} is {shown(actual)}")

    if "name" in given and given["name"] != model:
        raise refuse("name", given["name"], model, "the model pushed")
    if "version" in given:
        v = given["version"]
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)  # as in config.toml: version 3 names the directory "3"
        if v != version:
            raise refuse("version", given["version"], version, "the version pushed")
        given["version"] = version
    if "platform" in given and given["platform"] != platform:
        raise refuse("platform", given["platform"], platform, f"the model file's ({unpacked.model_file})")
    if "sha256" in given:
        if not isinstance(given["sha256"], str) or given["sha256"].lower() != unpacked.sha256:
            raise refuse("sha256", given["sha256"], unpacked.sha256, "the model file's")
        given["sha256"] = unpacked.sha256
    if "size" in given:
        s = given["size"]
        if not isinstance(s, int) or isinstance(s, bool) or s != unpacked.size:
            raise refuse("size", s, unpacked.size, "the model file's")
    if "description" in given and not isinstance(given["description"], str):
        raise BadArchive(f"meta.json description must be a string, not {shown(given['description'])}")
    meta: dict[str, Any] = {"name": model, "version": version, "platform": platform}
    meta.update((k, v) for k, v in given.items() if k not in meta)
    meta.update(sha256=unpacked.sha256, size=unpacked.size,
                created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return given, meta


def _parse(meta: dict[str, Any], given: Mapping[str, Any]) -> None:
    try:
        parse_meta(meta, META_FILE)
    except ConfigError as exc:
        hint = "" if given else " (the push has no meta.json giving the model's signature: push an archive " \
                                "holding one, as modelkit.package writes)"
        raise BadArchive(f"{exc}{hint}") from None


def _write_meta(vdir: Path, meta: Mapping[str, Any]) -> None:
    tmp = vdir / f".{META_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, vdir / META_FILE)


def _compare(staged: Staged) -> dict[str, Any]:
    """The stored ``meta.json`` when the stored version has the staged contents, else VersionExists."""
    target = staged.target
    where = f"model {shown(staged.model)} version {shown(staged.version)}"
    try:
        stored = json.loads((target / META_FILE).read_text(encoding="utf-8"))
        stored_sample = sha256_file(target / SAMPLE_FILE) if (target / SAMPLE_FILE).exists() else None
    except (OSError, ValueError) as exc:
        raise VersionExists(f"{where} already exists (and its meta.json is unreadable: {exc})") from None
    if not isinstance(stored, dict):
        raise VersionExists(f"{where} already exists (and its meta.json is not an object)")
    differ = []
    if stored.get("sha256") != staged.meta["sha256"]:
        differ.append("model file")
    if stored_sample != staged.sample_sha256:
        differ.append(SAMPLE_FILE)
    differ += [f"meta.json {shown(k)}" for k, v in staged.given.items() if k != "sha256" and stored.get(k) != v]
    if differ:
        raise VersionExists(f"{where} already exists with another {', '.join(differ)}: versions are "
                            "immutable, push under a new version")
    return stored
