"""A version's reference sample: ``sample.npz``, pushed with the model, read by :func:`load_sample`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router.proto.errors import ConfigError
from router.proto.meta import SAMPLE_FILE, TensorSpec

__all__ = ["load_sample"]


def load_sample(version_dir: str | Path, inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray] | None:
    """Read ``sample.npz`` of a version directory: reference rows of each input, keyed by input name.

    Each array holds rows along dim 0, shaped like the input after its first
    dimension (any size where the input's is -1; a 0-d input's sample is 1-D).
    Keys that name no input are ignored.

    Returns:
        The arrays of ``inputs`` by name, or None when there is no ``sample.npz``.

    Raises:
        ConfigError: the file cannot be read, an input is missing, or an array's shape,
            datatype or row count does not fit (the message names the key).
    """
    path = Path(version_dir) / SAMPLE_FILE
    if not path.is_file():
        return None
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for spec in inputs:
                if spec.name not in npz.files:
                    raise ConfigError(f"{SAMPLE_FILE}: no array for input {spec.name!r} (has {sorted(npz.files)})")
                out[spec.name] = npz[spec.name]
    except ConfigError:
        raise
    except Exception as exc:  # not a zip, a pickled array, a truncated member: all mean the same
        raise ConfigError(f"{SAMPLE_FILE}: cannot read it: {type(exc).__name__}: {exc}") from exc
    rows = None
    for spec in inputs:
        a = out[spec.name]
        want = spec.shape[1:] if spec.shape else ()
        if a.ndim != len(want) + 1 or any(w not in (-1, d) for w, d in zip(want, a.shape[1:], strict=True)):
            shape = ["rows", *want]
            raise ConfigError(f"{SAMPLE_FILE}[{spec.name!r}]: shape {list(a.shape)} does not fit {shape}")
        if a.dtype.kind not in "biuf":
            raise ConfigError(f"{SAMPLE_FILE}[{spec.name!r}]: datatype {a.dtype} is not numeric")
        if rows is None:
            rows = a.shape[0]
        elif a.shape[0] != rows:
            raise ConfigError(f"{SAMPLE_FILE}[{spec.name!r}]: {a.shape[0]} rows, the inputs before it have {rows}")
    if not rows:
        raise ConfigError(f"{SAMPLE_FILE}: no rows")
    return out
