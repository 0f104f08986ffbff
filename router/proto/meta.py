"""A model version's ``meta.json``: its tensor signature and example input.

Shared by the router (model metadata endpoints, never tensors) and the workers
(decoding and validation). Pure Python: the router must not import numpy-heavy
or torch code just to describe a model.

A version directory holds exactly one model file -- ``model.pt`` (TorchScript)
or ``model.pt2`` (a ``torch.export`` program, ``torch.export.save``) -- found
by :func:`model_file`, its ``meta.json``, and optionally ``sample.npz`` (a
reference sample of inputs). :func:`verify` is what every load checks first.

Layout of ``<store>/<model>/<version>/meta.json``::

    {"name": "fraud", "version": "1", "platform": "pytorch_torchscript",
     "inputs":  [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}],
     "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
     "example": {"features": [[0.1, ...]]},
     "sha256": "...", "size": 1234, "created": "2026-01-01T00:00:00Z"}

A ``-1`` dimension is variable. A model is batchable when every input and
output has a variable first dimension: requests are then concatenated along
dim 0.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, IntegrityError, shown

#: OIP datatype -> numpy dtype name (little-endian on the wire). BYTES and BF16
#: have no TorchScript tensor equivalent here, so they are not served.
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}

#: The proto3 JSON mapping of the floats JSON has no number for
#: (https://protobuf.dev/programming-guides/json/, "float, double").
JSON_NONFINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def nonfinite_floats(data: Any) -> Any:
    """JSON tensor ``data`` (flat or nested) with the strings of :data:`JSON_NONFINITE` as their floats.

    Shared by the worker's request decoder and the client's reply decoder.

    Raises:
        ValueError: it holds any other string (the message quotes it).
    """
    if type(data) is list:
        return [nonfinite_floats(v) for v in data]
    if type(data) is str:
        value = JSON_NONFINITE.get(data)
        if value is None:
            raise ValueError(f"{data!r} is not a number")
        return value
    return data


META_FILE = "meta.json"
#: ``meta.json``'s ``platform`` for each model file format.
PLATFORM_TORCHSCRIPT = "pytorch_torchscript"
PLATFORM_EXPORT = "pytorch_export"
#: A TorchScript archive (``torch.jit.save``); what the demo and fixture models are.
MODEL_FILE = "model.pt"
#: A ``torch.export`` program (``torch.export.save``).
EXPORT_FILE = "model.pt2"
#: Model file name -> the platform ``meta.json`` must declare for it.
MODEL_FILES: dict[str, str] = {MODEL_FILE: PLATFORM_TORCHSCRIPT, EXPORT_FILE: PLATFORM_EXPORT}
#: Optional reference sample of inputs (``.npz`` keyed by input name), for drift monitoring.
SAMPLE_FILE = "sample.npz"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of a model's signature."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What a model version declares about itself."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example: dict[str, Any]
    sha256: str = ""
    size: int = 0
    created: str = ""

    @property
    def batchable(self) -> bool:
        """True when every tensor's first dimension is variable."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs + self.outputs)


def _specs(raw: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: must be a non-empty list of tensors")
    out = []
    seen = set()
    for i, t in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(t, dict):
            raise ConfigError(f"{at}: must be a table")
        name, dt, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at}.name: must be a non-empty string")
        if name in seen:
            raise ConfigError(f"{at}.name: duplicate tensor name {name!r}")
        seen.add(name)
        if dt not in DATATYPES:
            raise ConfigError(f"{at}.datatype: {dt!r} is not one of {', '.join(DATATYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise ConfigError(f"{at}.shape: must be a list of ints >= -1")
        out.append(TensorSpec(name, dt, tuple(shape)))
    return tuple(out)


def parse_meta(raw: Any, where: str = "meta.json") -> ModelMeta:
    """Validate a decoded ``meta.json`` document.

    Raises:
        ConfigError: naming the field that is wrong.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    inputs = _specs(raw.get("inputs"), f"{where}: inputs")
    outputs = _specs(raw.get("outputs"), f"{where}: outputs")
    example = raw.get("example", {})
    if not isinstance(example, dict) or set(example) != {t.name for t in inputs}:
        raise ConfigError(f"{where}: example must give every input by name")
    return ModelMeta(
        name=str(raw.get("name", "")),
        version=str(raw.get("version", "")),
        platform=str(raw.get("platform", PLATFORM_TORCHSCRIPT)),
        inputs=inputs,
        outputs=outputs,
        example=example,
        sha256=str(raw.get("sha256", "")),
        size=int(raw.get("size", 0)),
        created=str(raw.get("created", "")),
    )


def read_meta(version_dir: str | Path) -> ModelMeta:
    """Read and validate ``<version_dir>/meta.json``.

    Raises:
        ConfigError: the file is missing, not JSON, or not a valid signature.
    """
    path = Path(version_dir) / META_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from None
    return parse_meta(raw, str(path))


def model_file(version_dir: str | Path) -> Path:
    """The one model file of a version directory: ``model.pt`` or ``model.pt2``.

    Raises:
        ConfigError: naming the directory, when it holds neither or both.
    """
    d = Path(version_dir)
    found = [d / name for name in MODEL_FILES if (d / name).is_file()]
    if not found:
        raise ConfigError(f"no model file in {d} ({' or '.join(MODEL_FILES)})")
    if len(found) > 1:
        raise ConfigError(f"two model files in {d} ({' and '.join(MODEL_FILES)}): a version has exactly one")
    return found[0]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents, read in ``chunk``-byte blocks (never whole in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(version_dir: str | Path, meta: ModelMeta, name: str | None = None, version: str | None = None, *,
           integrity: bool = True) -> Path:
    """What every load checks before it loads: returns the version's model file.

    ``meta`` (read from ``version_dir``) must name the model ``name`` and the version
    ``version`` of its directory (each checked when given), declare the platform of the
    model file it sits beside, and, with ``integrity``, record that file's sha256.
    The file is hashed in blocks: a load pays one read of it.

    Raises:
        IntegrityError: ``reason`` ``"identity"`` (another model or version) or
            ``"integrity"`` (no sha256, or another one); the message names both values.
        ConfigError: no model file or two, or a platform that is not the file's.
    """
    for what, declared, actual in (("model", meta.name, name), ("version", meta.version, version)):
        if actual is not None and declared != actual:
            raise IntegrityError(f"meta.json names {what} {shown(declared)} but the directory is {what} "
                                 f"{shown(actual)}", "identity")
    path = model_file(version_dir)
    platform = MODEL_FILES[path.name]
    if meta.platform != platform:
        raise ConfigError(f"meta.json declares platform {shown(meta.platform)} but the model file is {path.name} "
                          f"({platform})")
    if integrity:
        if not meta.sha256:
            raise IntegrityError(f"meta.json records no sha256 for {path.name}", "integrity")
        digest = sha256_file(path)
        if digest != meta.sha256:
            recorded = meta.sha256 if len(meta.sha256) <= 64 else f"{meta.sha256[:64]}..."
            raise IntegrityError(f"{path.name} sha256 {digest} does not match meta.json's {recorded}", "integrity")
    return path
