"""Writing changes made through the admin API back into ``config.toml``.

The file stays the single source of truth: a restart or reload never undoes
a change. tomlkit edits the document in place, so comments, ordering and
layout survive; the new text is validated with the same parser as at start-up
and replaces the old file atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit

from .config import Config, VersionConfig, parse_config
from .proto.errors import ConfigError
from .sharedconfig import generation_of


def plain_number(v: float) -> int | float:
    # Keep integers looking like integers in the file: `weight = 80`, not `80.0`.
    return int(v) if float(v).is_integer() else float(v)


def write_traffic(path: Path, model: str, weights: Mapping[str, float],
                  shadows: Mapping[str, float] | None = None) -> Config:
    """Set ``weight`` (and ``shadow``) of the named versions of ``model`` in the file at ``path``.

    ``weight`` is always written for a named version: its default depends on
    ``shadow``, so leaving it implicit could change its meaning.

    Returns:
        The configuration parsed from the new text.

    Raises:
        ConfigError: the file no longer parses, does not list the model or a
            version, or would become invalid; the file is left untouched.
    """
    doc, table = _model_table(path, model)
    shadows = shadows or {}
    for version in {**weights, **shadows}:
        vt = next((v for v in table.get("versions", []) if str(v.get("version")) == version), None)
        if vt is None:
            raise ConfigError(f"{path}: model {model!r} has no version {version!r}")
        if version in weights:
            vt["weight"] = plain_number(weights[version])
        if version in shadows:
            if shadows[version] > 0:
                vt["shadow"] = plain_number(shadows[version])
            elif "shadow" in vt:
                del vt["shadow"]  # 0 is the default: a version no longer mirrored reads as any other
            if "weight" not in vt:
                vt["weight"] = 0
    return _write(path, doc)


def _model_table(path: Path, model: str) -> tuple[tomlkit.TOMLDocument, Any]:
    try:
        doc = tomlkit.parse(path.read_bytes().decode())  # TOML is UTF-8 whatever the locale says
    except Exception as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    table = next((m for m in doc.get("models", []) if m.get("name") == model), None)
    if table is None:
        raise ConfigError(f"{path}: no [[models]] entry named {model!r}")
    return doc, table


def write_versions(path: Path, model: str, versions: list[dict[str, Any]]) -> Config:
    """Make the ``[[models.versions]]`` of ``model`` in the file at ``path`` the given set (a deploy).

    The tables are edited in place: a version still in the set keeps its table, with its comments and
    every key whose value still holds (a key left out of ``versions[i]`` is removed only where the
    file gives it another value than its default); a version left out loses its table; a new one is
    appended. Comments and layout elsewhere in the file are kept.

    Returns:
        The configuration parsed from the new text.

    Raises:
        ConfigError: the file no longer parses, does not list the model, or
            would become invalid; the file is left untouched.
    """
    doc, table = _model_table(path, model)
    given = [str(v.get("version")) for v in versions]
    aot = table.get("versions")
    kept = [str(t.get("version")) for t in aot or [] if str(t.get("version")) in given]
    if aot is None or given[:len(kept)] != kept:  # a new order: the versions' tables are rewritten
        aot = table["versions"] = tomlkit.aot()
    for i in reversed(range(len(aot))):
        if str(aot[i].get("version")) not in given:
            del aot[i]
    old = {str(t.get("version")): t for t in aot}
    # A new table is indented as its neighbours are.
    indent = len(aot[0].trivia.indent) if len(aot) else len(table.trivia.indent)
    for v in versions:
        t = old.get(str(v.get("version")))
        if t is None:
            t = tomlkit.table()
            _separate(aot[-1] if len(aot) else None)
            aot.append(t)
        else:
            for key in [k for k in t if k not in v and not _is_default(k, t[k])]:
                del t[key]
        for key, value in v.items():
            value = plain_number(value) if isinstance(value, float) else value
            if key not in t or _plain(t[key]) != value:
                t[key] = value
        if str(v.get("version")) not in old and indent:
            t.indent(indent)
    return _write(path, doc)


def add_model(path: Path, model: dict[str, Any]) -> Config:
    """Append a ``[[models]]`` table (``model`` as the loader reads it, its versions as a list of tables)
    to the file at ``path``. Comments and layout of the rest are kept.

    Raises:
        ConfigError: the file no longer parses, already lists the model, or would become invalid;
            the file is left untouched.
    """
    try:
        doc = tomlkit.parse(path.read_bytes().decode())
    except Exception as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    if any(m.get("name") == model.get("name") for m in doc.get("models", [])):
        raise ConfigError(f"{path}: already has a [[models]] entry named {model.get('name')!r}")
    t = tomlkit.table()
    for key, value in model.items():
        if key != "versions":
            t[key] = plain_number(value) if isinstance(value, float) else value
    versions = tomlkit.aot()
    for v in model.get("versions", []):
        vt = tomlkit.table()
        for key, value in v.items():
            vt[key] = plain_number(value) if isinstance(value, float) else value
        versions.append(vt)
    t["versions"] = versions
    if "models" not in doc:
        doc["models"] = tomlkit.aot()
    models = doc["models"]
    if len(models):
        last = models[-1]
        _separate(last["versions"][-1] if len(last.get("versions", [])) else last)
    models.append(t)
    return _write(path, doc)


def _separate(table: Any) -> None:
    """End ``table`` (the one a new table will follow) with a blank line, if it has none."""
    if table is not None and not tomlkit.dumps(table).endswith("\n\n"):
        table.add(tomlkit.nl())


def _plain(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _is_default(key: str, item: Any) -> bool:
    """Whether a ``[[models.versions]]`` key's value in the file is the key's default (so dropping it
    changes nothing)."""
    f = _VERSION_FIELDS.get(key)
    if f is None or f.default is dataclasses.MISSING or f.metadata["setting"].default_from is not None:
        return False  # unknown, required, or a default that depends on other keys
    default = list(f.default) if isinstance(f.default, tuple) else f.default
    return bool(_plain(item) == default)


_VERSION_FIELDS = {f.name: f for f in dataclasses.fields(VersionConfig)}


def _write(path: Path, doc: tomlkit.TOMLDocument) -> Config:
    """Validate ``doc`` as at start-up, then replace the file with it, one generation on from the file's;
    the parsed configuration."""
    new = _bumped(doc, path)
    config = parse_config(tomlkit.parse(new).unwrap(), path)
    replace_text(path, new)
    return config


def restore_text(path: Path, text: str) -> None:
    """Put ``text`` back as the file (a change undone), one generation on from the file's now: a
    generation never goes back, so every router sees the undo as a change of its own."""
    replace_text(path, _bumped(tomlkit.parse(text), path))


def _bumped(doc: tomlkit.TOMLDocument, path: Path) -> str:
    """The document's text with its top-level ``generation`` set to the file's plus one."""
    try:
        current = generation_of(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        current = 0
    if "generation" in doc:
        doc["generation"] = current + 1
        return tomlkit.dumps(doc)
    # A first generation: after the file's opening comments, before any table (TOML wants it there).
    lines = tomlkit.dumps(doc).splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), len(lines))
    key = f"generation = {current + 1}   # bumped by every change the admin API writes; replies carry it\n\n"
    return "".join([*lines[:at], key, *lines[at:]])


def replace_text(path: Path, text: str) -> None:
    """Replace the file's contents atomically (temp file, fsync, ``os.replace``), keeping its mode."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
