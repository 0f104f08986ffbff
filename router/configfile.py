"""Writing changes made through the admin API back into ``config.toml``.

The file stays the single source of truth: a restart or reload never undoes
a change. tomlkit edits the document in place, so comments, ordering and
layout survive; the new text is validated with the same parser as at start-up
and replaces the old file atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit

from .config import Config, parse_config
from .proto.errors import ConfigError


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
            if shadows[version] > 0 or "shadow" in vt:
                vt["shadow"] = plain_number(shadows[version])
            if "weight" not in vt:
                vt["weight"] = 0
    new = tomlkit.dumps(doc)
    config = parse_config(tomlkit.parse(new).unwrap(), path)
    replace_text(path, new)
    return config


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
    """Replace the ``[[models.versions]]`` of ``model`` in the file at ``path`` (a deploy).

    Comments and layout elsewhere in the file are kept; the replaced versions
    are written as given.

    Returns:
        The configuration parsed from the new text.

    Raises:
        ConfigError: the file no longer parses, does not list the model, or
            would become invalid; the file is left untouched.
    """
    doc, table = _model_table(path, model)
    aot = tomlkit.aot()
    for v in versions:
        t = tomlkit.table()
        for k, val in v.items():
            t[k] = plain_number(val) if isinstance(val, float) else val
        aot.append(t)
    table["versions"] = aot
    new = tomlkit.dumps(doc)
    config = parse_config(tomlkit.parse(new).unwrap(), path)
    replace_text(path, new)
    return config


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
