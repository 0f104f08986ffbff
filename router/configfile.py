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

import tomlkit

from .config import Config, parse_config
from .errors import ConfigError


def plain_number(v: float) -> int | float:
    # Keep integers looking like integers in the file: `weight = 80`, not `80.0`.
    return int(v) if float(v).is_integer() else float(v)


def write_weights(path: Path, model: str, weights: Mapping[str, float]) -> Config:
    """Set ``weight`` of the named versions of ``model`` in the file at ``path``.

    Returns:
        The configuration parsed from the new text.

    Raises:
        ConfigError: the file no longer parses, does not list the model or a
            version, or would become invalid; the file is left untouched.
    """
    text = path.read_text()
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    table = next((m for m in doc.get("models", []) if m.get("name") == model), None)
    if table is None:
        raise ConfigError(f"{path}: no [[models]] entry named {model!r}")
    for version, weight in weights.items():
        vt = next((v for v in table.get("versions", []) if str(v.get("version")) == version), None)
        if vt is None:
            raise ConfigError(f"{path}: model {model!r} has no version {version!r}")
        vt["weight"] = plain_number(weight)
    new = tomlkit.dumps(doc)
    config = parse_config(tomlkit.parse(new).unwrap(), path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new)
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
    return config
