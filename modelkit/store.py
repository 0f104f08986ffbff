"""Writing model versions into a model store, atomically and immutably, and checking them.

A store is a directory tree ``<store>/<model>/<version>/`` holding
``model.pt`` (a TorchScript archive) and ``meta.json`` (see :mod:`router.proto.meta`).
A version is written into a hidden temporary directory next to its final place
and renamed into place only once complete and validated, so a reader never sees
a half-written version. Versions are immutable: an existing one is never
overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from router.proto.errors import ConfigError
from router.proto.meta import META_FILE, MODEL_FILE, parse_meta, read_meta, sha256_file

__all__ = ["PLATFORM", "TMP_PREFIX", "check_version", "sha256_file", "utc_now_iso", "write_version"]

PLATFORM = "pytorch_torchscript"
#: Prefix of the temporary directories a write uses (hidden, so scanners skip them).
TMP_PREFIX = ".tmp-"

_CORE_KEYS = frozenset(
    {
        "name",
        "version",
        "platform",
        "inputs",
        "outputs",
        "example",
        "sha256",
        "size",
        "created",
        "description",
    }
)


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with a ``Z`` suffix, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_component(kind: str, value: str) -> None:
    """Reject names that are not a single, visible path component."""
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or value.startswith(".")
        or "/" in value
        or "\\" in value
        or "\0" in value
    ):
        raise ValueError(f"invalid {kind} name {value!r}: must be one path component not starting with '.'")


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry to disk (best effort: not every platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_version(
    store: Path,
    model: str,
    version: str,
    scripted: torch.jit.ScriptModule,
    inputs: list[dict],
    outputs: list[dict],
    example: dict[str, list],
    description: str = "",
    extra: dict | None = None,
) -> Path:
    """Write ``<store>/<model>/<version>/{model.pt,meta.json}`` atomically.

    The files are written into a hidden temporary directory inside
    ``<store>/<model>/``, the meta document is validated with
    :func:`router.proto.meta.parse_meta`, and the directory is then renamed into place.

    Args:
        store: root of the model store (created if missing).
        model: model name, one path component.
        version: version name, one path component.
        scripted: the TorchScript module to save (``torch.jit.save``).
        inputs: input tensor specs, ``[{"name", "datatype", "shape"}, ...]``.
        outputs: output tensor specs, same layout.
        example: one example input per input name (nested lists).
        description: free text stored in ``meta.json``.
        extra: additional top-level ``meta.json`` keys; may not replace a core key.

    Returns:
        The final version directory.

    Raises:
        FileExistsError: the version already exists (versions are immutable).
        ValueError: a bad model/version name, or ``extra`` clashes with a core key.
        ConfigError: the meta document would not be valid.
    """
    _check_component("model", model)
    _check_component("version", version)
    clash = sorted(_CORE_KEYS & set(extra or {}))
    if clash:
        raise ValueError(f"extra meta keys may not replace core keys: {', '.join(clash)}")
    store = Path(store)
    model_dir = store / model
    target = model_dir / version
    if target.exists():
        raise FileExistsError(f"model {model!r} version {version!r} already exists at {target}")
    model_dir.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=model_dir))
    try:
        model_path = tmp / MODEL_FILE
        torch.jit.save(scripted, str(model_path))
        with open(model_path, "rb") as f:
            os.fsync(f.fileno())
        meta: dict[str, Any] = {
            "name": model,
            "version": version,
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
            "example": example,
            "sha256": sha256_file(model_path),
            "size": model_path.stat().st_size,
            "created": utc_now_iso(),
            "description": description,
        }
        meta.update(extra or {})
        text = json.dumps(meta, indent=2) + "\n"
        # Validate what a reader will see: the document after a JSON round trip.
        parse_meta(json.loads(text), f"{model}/{version}/{META_FILE}")
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a finished version is world-readable
        if target.exists():
            raise FileExistsError(f"model {model!r} version {version!r} already exists at {target}")
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if target.exists():
                raise FileExistsError(
                    f"model {model!r} version {version!r} already exists at {target}"
                ) from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(model_dir)
    return target


def check_version(version_dir: Path) -> None:
    """Check a stored version: valid ``meta.json`` and a ``model.pt`` matching its size and sha256.

    Raises:
        ConfigError: naming what is wrong.
    """
    meta = read_meta(version_dir)
    model_path = version_dir / MODEL_FILE
    if not model_path.is_file():
        raise ConfigError(f"{model_path}: missing")
    size = model_path.stat().st_size
    if size != meta.size:
        raise ConfigError(f"{model_path}: size {size} does not match meta.json size {meta.size}")
    if sha256_file(model_path) != meta.sha256:
        raise ConfigError(f"{model_path}: sha256 does not match meta.json")
