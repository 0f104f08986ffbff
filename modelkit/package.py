"""Package a model for the router: one archive holding the model file and its ``meta.json``.

A data scientist hands over one compressed file; the router's push endpoint takes it
as it is. From a notebook::

    import numpy as np
    from modelkit.package import package

    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    package(model, x, "fraud.tar.gz", name="fraud", description="MLP trained on May's transactions",
            output_names=["probabilities"], reference_sample=x_holdout[:1000])
    # fraud.tar.gz: model.pt (TorchScript), meta.json, sample.npz

    package(model, {"ids": ids, "mask": mask}, "ranker.tar.gz", method="export")  # model.pt2

A file saved earlier (``torch.jit.save``, ``torch.export.save``) and an ``.npz`` of
example inputs (:func:`package_file`, also ``router package MODEL_FILE --example X.npz -o OUT.tar.gz``)::

    package_file("model.pt2", "example.npz", "ranker.tar.gz", name="ranker")

The archive (``.tar.gz``, ``.tgz`` or ``.zip``) holds, at its top level:

* ``model.pt`` (platform ``pytorch_torchscript``) or ``model.pt2`` (``pytorch_export``, a
  program saved with ``torch.export.save``);
* ``meta.json`` in the store's format (:mod:`router.proto.meta`): ``name`` when given,
  ``platform``, ``inputs``, ``outputs``, ``example``, ``description`` when given, and the
  model file's ``sha256`` and ``size``; no ``version`` (the push names it) and no ``created``
  (the store fills it in);
* ``sample.npz`` when a reference sample is given: inputs by name, for drift monitoring.

The signature is read from the model itself: the example is run through the saved
and reloaded model file (what the router will serve), its outputs name the outputs, and a
second run with another batch size tells whether the first dimension is a batch the
router may split and concatenate (``-1`` in ``meta.json``) or a fixed shape.

Errors are :class:`router.proto.errors.ConfigError` (a ``ValueError``), each message naming
what is wrong: the class :func:`router.proto.meta.parse_meta` raises for a bad ``meta.json``
(the packager checks what it writes with it), so one ``except`` covers both; no new class,
since nothing but a person in a notebook or at a shell ever handles these.

It imports torch: the router daemon never imports it (``router package`` imports it
inside the command).
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from router.proto.errors import ConfigError
from router.proto.meta import (
    DATATYPES,
    EXPORT_FILE,
    META_FILE,
    MODEL_FILE,
    PLATFORM_EXPORT,
    PLATFORM_TORCHSCRIPT,
    SAMPLE_FILE,
    parse_meta,
)

from .store import _check_component, _fsync_dir, sha256_file

__all__ = ["ARCHIVE_SUFFIXES", "package", "package_file"]

log = logging.getLogger("modelkit.package")

#: What the push endpoint unpacks (the file names inside come from :mod:`router.proto.meta`).
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")

#: numpy dtype name -> OIP datatype: the store's one dtype table, inverted. torch dtypes map
#: through their names (``torch.float32`` -> ``float32``), so bfloat16 and complex are refused.
_OIP: dict[str, str] = {np_name: oip for oip, np_name in DATATYPES.items()}

Array = np.ndarray | torch.Tensor
Inputs = Array | Sequence[Array] | Mapping[str, Array]
Method = Literal["script", "trace", "export"]
_DONE = {"script": "scripted", "trace": "traced", "export": "exported"}


@dataclass(frozen=True, slots=True)
class _Saved:
    """The model file as it goes into the archive."""

    path: Path
    platform: str

    @property
    def archive_name(self) -> str:
        return EXPORT_FILE if self.platform == PLATFORM_EXPORT else MODEL_FILE


def package(
    model: nn.Module | torch.export.ExportedProgram,
    example_inputs: Inputs,
    out_path: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    method: Method = "script",
    reference_sample: Inputs | None = None,
    batchable: bool | None = None,
) -> Path:
    """Write a model, its ``meta.json`` and an optional reference sample into one archive.

    Args:
        model: a ``torch.jit.ScriptModule`` or a ``torch.export.ExportedProgram``, saved as
            it is; or an ``nn.Module``, converted as ``method`` says (in eval mode, as the
            router serves it; its own mode is restored afterwards).
        example_inputs: a numpy array or tensor (one input), a tuple or list of them (in
            ``forward``'s order), or a dict name -> array. Its first dimension is the batch.
        out_path: the archive to write, ending in ``.tar.gz``, ``.tgz`` or ``.zip``; it is
            written next to its final place and renamed there (an existing file is replaced).
        name: the model's name in ``meta.json`` (one path component); omitted when None.
        description: free text for ``meta.json``.
        input_names: names of positional inputs (default: ``forward``'s parameter names, or
            ``input_0``, ...); not with a dict, whose keys name the inputs.
        output_names: names of the outputs (default: a dict's keys, else ``output_0``, ...).
        method: how an ``nn.Module`` becomes a model file: ``"script"`` (``torch.jit.script``),
            ``"trace"`` (``torch.jit.trace`` on the example) or ``"export"`` (``torch.export``
            with a dynamic batch dimension, ``model.pt2``). Ignored for a ScriptModule or
            an ExportedProgram.
        reference_sample: inputs in the same forms as ``example_inputs`` (any number of rows),
            stored as ``sample.npz`` for drift monitoring.
        batchable: None: detect whether the first dimension is a batch (a model that cannot
            batch is recorded with fixed shapes, and a warning logged); True: require it
            (ConfigError naming why not); False: record fixed shapes.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ConfigError: naming what is wrong: an unsupported dtype, an example that is not an
            array, a model that fails on the example or that conversion cannot handle, an
            output that is not a tensor, a converted model whose output differs from the
            module's, a bad name or archive suffix.
        OSError: the archive cannot be written.
    """
    out = _archive_path(out_path)
    _check_name(name)
    if method not in ("script", "trace", "export"):
        raise ConfigError(f"method: {method!r} is not one of 'script', 'trace', 'export'")
    if not isinstance(model, nn.Module | torch.export.ExportedProgram):
        raise ConfigError(f"model: expected a torch.nn.Module, ScriptModule or ExportedProgram, "
                          f"got {type(model).__name__}")
    inputs = _named_inputs(example_inputs, input_names, _forward_names(model), "example_inputs")
    sample = _sample(reference_sample, inputs)
    with tempfile.TemporaryDirectory(prefix="modelkit-package-") as tmp:
        saved, reference, static = _save(model, inputs, method, batchable, Path(tmp))
        return _finish(saved, inputs, out, name=name, description=description, output_names=output_names,
                       reference=reference, static=static, batchable=batchable, sample=sample,
                       converted=method if reference is not None else "")


def package_file(
    model_path: str | Path,
    example_npz: str | Path,
    out_path: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    output_names: Sequence[str] | None = None,
    reference_sample: str | Path | None = None,
    batchable: bool | None = None,
) -> Path:
    """Package a saved model file: TorchScript (``.pt``) or a ``torch.export`` program (``.pt2``).

    The file goes into the archive byte for byte; it is loaded only to read its signature.

    Args:
        model_path: a ``.pt`` file written by ``torch.jit.save`` or a ``.pt2`` file written by
            ``torch.export.save``.
        example_npz: an ``.npz`` of example inputs (``np.savez``): keywords name the inputs;
            positional arrays (``arr_0``, ...) take ``forward``'s parameter names.
        out_path, name, description, output_names, batchable: as for :func:`package`.
        reference_sample: an ``.npz`` of reference inputs, keyed like the example.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ConfigError: as for :func:`package`; also a file that does not load, an unknown suffix.
        OSError: a file cannot be read, or the archive cannot be written.
    """
    out = _archive_path(out_path)
    _check_name(name)
    path = Path(model_path)
    platform = {".pt": PLATFORM_TORCHSCRIPT, ".pt2": PLATFORM_EXPORT}.get(path.suffix)
    if platform is None:
        raise ConfigError(f"{path}: expected a TorchScript .pt or a torch.export .pt2 file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    saved = _Saved(path, platform)
    loaded = _load(saved, str(path))
    names = _forward_names(loaded)
    inputs = _named_inputs(_read_npz(example_npz), None, names, str(example_npz))
    sample = _sample(None if reference_sample is None else _read_npz(reference_sample), inputs)
    return _finish(saved, inputs, out, name=name, description=description, output_names=output_names,
                   reference=None, static=None, batchable=batchable, sample=sample, converted="", loaded=loaded)


# --------------------------------------------------------------------------- inputs


def _archive_path(out_path: str | Path) -> Path:
    out = Path(out_path)
    if not out.name.endswith(ARCHIVE_SUFFIXES):
        raise ConfigError(f"out_path: {out.name!r} must end in {', '.join(ARCHIVE_SUFFIXES)}")
    return out


def _check_name(name: str | None) -> None:
    if name is None:
        return
    try:
        _check_component("model", name)
    except ValueError as exc:
        raise ConfigError(f"name: {exc}") from None


def _datatype(dtype_name: str, where: str) -> str:
    try:
        return _OIP[dtype_name]
    except KeyError:
        raise ConfigError(f"{where}: dtype {dtype_name} is not served (one of {', '.join(_OIP)})") from None


def _torch_dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _as_array(value: Any, where: str) -> np.ndarray:
    """A numpy copy of an example value, in native byte order, its dtype checked."""
    if isinstance(value, torch.Tensor):
        _datatype(_torch_dtype_name(value.dtype), where)
        return value.detach().cpu().numpy().copy()
    if isinstance(value, np.ndarray):
        _datatype(value.dtype.name, where)
        return np.array(value, dtype=value.dtype.newbyteorder("="), order="C")
    hint = " (wrap it in np.asarray)" if isinstance(value, list | tuple | float | int) else ""
    raise ConfigError(f"{where}: expected a numpy array or a torch tensor, got {type(value).__name__}{hint}")


def _forward_names(model: Any) -> list[str] | None:
    """Names of ``forward``'s positional parameters, or None when it takes ``*args``."""
    if isinstance(model, torch.jit.ScriptModule):
        try:
            schema = model.forward.schema  # type: ignore[attr-defined]  # a ScriptMethod
            return [a.name for a in schema.arguments[1:] if not a.kwarg_only]
        except (AttributeError, RuntimeError):
            return None
    forward = model.module().forward if isinstance(model, torch.export.ExportedProgram) else model.forward
    try:
        params = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def _named_inputs(value: Any, names: Sequence[str] | None, forward: list[str] | None,
                  where: str) -> dict[str, np.ndarray]:
    """The inputs by name, in the order ``forward`` takes them (the worker passes them positionally)."""
    if isinstance(value, Mapping):
        if names is not None:
            raise ConfigError("input_names: not with a dict of example inputs, whose keys name them")
        keys = list(value)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"{where}: a dict of inputs needs non-empty string keys")
        if forward is not None and len(keys) == 1 and forward and keys[0] not in forward:
            pass  # one input, passed as forward's first parameter: its key names it, whatever forward calls it
        elif forward is not None:
            unknown = [k for k in keys if k not in forward]
            if unknown:
                raise ConfigError(f"{where}: {', '.join(map(repr, unknown))} not among forward's parameters "
                                  f"({', '.join(forward)})")
            if set(keys) != set(forward[:len(keys)]):
                raise ConfigError(f"{where}: the inputs are passed positionally, so they must be forward's first "
                                  f"{len(keys)} parameters ({', '.join(forward[:len(keys)])})")
            keys = forward[:len(keys)]
        arrays = {k: _as_array(value[k], f"{where}[{k!r}]") for k in keys}
    else:
        items = list(value) if isinstance(value, list | tuple) else [value]
        if not items:
            raise ConfigError(f"{where}: no inputs")
        if names is None:
            if forward is not None and len(forward) >= len(items):
                names = forward[:len(items)]
            else:
                names = [f"input_{i}" for i in range(len(items))]
        names = list(names)
        if len(names) != len(items) or len(set(names)) != len(names) or not all(isinstance(n, str) and n
                                                                                  for n in names):
            raise ConfigError(f"input_names: {names!r} must be {len(items)} distinct non-empty strings, "
                              f"one per input")
        arrays = {n: _as_array(v, f"{where}[{i}]") for i, (n, v) in enumerate(zip(names, items, strict=True))}
    for k, a in arrays.items():
        if a.size == 0:
            raise ConfigError(f"{where}: input {k!r} is empty (shape {list(a.shape)})")
    return arrays


def _read_npz(path: str | Path) -> dict[str, np.ndarray] | list[np.ndarray]:
    """An ``.npz`` file's arrays: a list when they were saved positionally (``arr_0``, ...)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: not a readable .npz file: {exc}") from None
    if not arrays:
        raise ConfigError(f"{path}: holds no arrays")
    if list(arrays) == [f"arr_{i}" for i in range(len(arrays))]:
        return list(arrays.values())
    return arrays


def _sample(value: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The reference sample by input name, each checked against the example's dtype and row shape."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - set(inputs)
        missing = set(inputs) - set(value)
        if unknown or missing:
            raise ConfigError(f"reference_sample: keys must be the inputs {list(inputs)}: "
                              f"unknown {sorted(unknown)}, missing {sorted(missing)}")
        sample = _named_inputs(value, None, list(inputs), "reference_sample")
    else:
        given = len(value) if isinstance(value, list | tuple) else 1
        if given != len(inputs):
            raise ConfigError(f"reference_sample: {given} arrays for {len(inputs)} inputs ({', '.join(inputs)})")
        sample = _named_inputs(value, list(inputs), None, "reference_sample")
    rows = set()
    for k, a in sample.items():
        ex = inputs[k]
        if a.dtype != ex.dtype:
            raise ConfigError(f"reference_sample[{k!r}]: dtype {a.dtype} differs from the example's {ex.dtype}")
        if a.ndim != ex.ndim or a.shape[1:] != ex.shape[1:]:
            raise ConfigError(f"reference_sample[{k!r}]: shape {list(a.shape)} does not fit the example's "
                              f"{list(ex.shape)} (only the first dimension may differ)")
        rows.add(a.shape[0])
    if len(rows) > 1:
        raise ConfigError(f"reference_sample: the inputs have different numbers of rows {sorted(rows)}")
    return sample


# --------------------------------------------------------------------------- the model file


def _tensors(inputs: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a.copy()) for a in inputs.values())


def _save(model: nn.Module | torch.export.ExportedProgram, inputs: dict[str, np.ndarray], method: Method,
          batchable: bool | None, tmp: Path) -> tuple[_Saved, Any, str | None]:
    """Save the model file; returns it, the module's own result on the example (None when the
    model was given as it will be served), and why the batch is fixed when export had to fix it."""
    if isinstance(model, torch.export.ExportedProgram):
        torch.export.save(model, str(tmp / EXPORT_FILE))
        return _Saved(tmp / EXPORT_FILE, PLATFORM_EXPORT), None, None
    if isinstance(model, torch.jit.ScriptModule):
        model.save(str(tmp / MODEL_FILE))
        return _Saved(tmp / MODEL_FILE, PLATFORM_TORCHSCRIPT), None, None
    was_training = model.training
    model.eval()
    try:
        tensors = _tensors(inputs)
        reference = _call(model, tensors, "the model")
        if method == "export":
            program, static = _export(model, inputs, batchable)
            torch.export.save(program, str(tmp / EXPORT_FILE))
            return _Saved(tmp / EXPORT_FILE, PLATFORM_EXPORT), reference, static
        try:
            if method == "script":
                converted = torch.jit.script(model)
            else:
                converted = torch.jit.trace(model, tensors, strict=False)
        except Exception as exc:
            other = "'trace' or 'export'" if method == "script" else "'script' or 'export'"
            raise ConfigError(f"torch.jit.{method} cannot convert the model ({other} may): {exc}") from exc
        converted.save(str(tmp / MODEL_FILE))
        return _Saved(tmp / MODEL_FILE, PLATFORM_TORCHSCRIPT), reference, None
    finally:
        model.train(was_training)


def _export(model: nn.Module, inputs: dict[str, np.ndarray],
            batchable: bool | None) -> tuple[torch.export.ExportedProgram, str | None]:
    """``torch.export`` with a dynamic first dimension where the model allows one.

    torch.export specializes a dimension of size 1 to a constant, so a batch-of-1 example
    is exported as the same row twice."""
    tensors = _tensors(inputs)
    reason = _batch_candidate(inputs) if batchable is not False else "batchable=False"
    if reason is None:
        twice = tuple(torch.cat([t, t]) for t in tensors) if tensors[0].shape[0] == 1 else tensors
        batch = torch.export.Dim("batch")
        try:
            return torch.export.export(model, twice, dynamic_shapes=tuple({0: batch} for _ in twice)), None
        except Exception as exc:
            reason = f"torch.export fixes the batch dimension: {_brief(exc)}"
            if batchable:
                raise ConfigError(f"the model cannot batch: {reason}") from exc
    try:
        return torch.export.export(model, tensors), reason
    except Exception as exc:
        raise ConfigError(f"torch.export cannot export the model ('script' or 'trace' may): {exc}") from exc


def _brief(exc: BaseException) -> str:
    """The telling part of a torch error: TorchScript's last line (after its traceback), else the
    first sentence of each of the first two lines (torch.export's reason)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if "TorchScript" in lines[0]:
        return lines[-1]
    return " ".join(line.split(". ")[0] for line in lines[:2])


def _load(saved: _Saved, shown: str) -> Any:
    """Load the model file as the worker will (on the CPU); a ScriptModule or an ExportedProgram."""
    try:
        if saved.platform == PLATFORM_EXPORT:
            return torch.export.load(str(saved.path))
        module = torch.jit.load(str(saved.path), map_location="cpu")
        module.eval()
        return module
    except Exception as exc:
        kind = "a torch.export program" if saved.platform == PLATFORM_EXPORT else "TorchScript"
        raise ConfigError(f"{shown}: cannot load it as {kind}: {exc}") from exc


def _call(fn: Callable[..., Any], tensors: tuple[torch.Tensor, ...], what: str) -> Any:
    try:
        with torch.no_grad():
            return fn(*tensors)
    except Exception as exc:
        raise ConfigError(f"{what} fails on the example inputs: {exc}") from exc


def _named_outputs(result: Any, names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """A forward's result (a tensor, a tuple or list of tensors, a dict of tensors) by output name."""
    if isinstance(result, Mapping):
        keys = list(result)
        if not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"outputs: a dict of outputs needs non-empty string keys, got {keys!r}")
        if names is not None and sorted(names) != sorted(keys):
            raise ConfigError(f"output_names: {list(names)!r} must be the keys of the dict the model returns, "
                              f"{keys!r}")
        order = list(names) if names is not None else keys
        values = [result[k] for k in order]
        where = [f"output {k!r}" for k in order]
    else:
        values = list(result) if isinstance(result, list | tuple) else [result]
        if not values:
            raise ConfigError("outputs: the model returns an empty tuple")
        order = list(names) if names is not None else [f"output_{i}" for i in range(len(values))]
        if len(order) != len(values) or len(set(order)) != len(order):
            raise ConfigError(f"output_names: {order!r} must be {len(values)} distinct names: the model returns "
                              f"{len(values)} outputs")
        where = [f"output {i}" for i in range(len(values))]
    out = {}
    for k, v, at in zip(order, values, where, strict=True):
        if not isinstance(v, torch.Tensor):
            raise ConfigError(f"{at} is a {type(v).__name__}, not a tensor: a model returns a tensor, a tuple "
                              f"or list of tensors, or a dict of tensors")
        _datatype(_torch_dtype_name(v.dtype), at)
        out[k] = v.detach().cpu().numpy()
    return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the last bits a different kernel or batch size may change."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind != "f":
        return bool(np.array_equal(a, b))
    tol = 1e-3 if a.dtype.itemsize <= 2 else 1e-4
    scale = float(np.nanmax(np.abs(b), initial=1.0, where=np.isfinite(b)))
    return bool(np.allclose(a, b, rtol=tol, atol=tol * scale, equal_nan=True))


def _largest_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {list(a.shape)} against {list(b.shape)}"
    with np.errstate(all="ignore"):
        return f"largest difference {float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))):g}"


# --------------------------------------------------------------------------- the batch dimension


def _batch_candidate(inputs: Mapping[str, np.ndarray]) -> str | None:
    """Why the inputs cannot have a batch dimension, or None when they share a first dimension."""
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if None in sizes:
        return "an input is a scalar"
    if len(sizes) > 1:
        return f"the inputs' first dimensions differ ({sorted(s for s in sizes if s is not None)})"
    return None


def _probe(run: Callable[..., Any], inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
           names: list[str]) -> str | None:
    """Why the first dimension is not a batch the router may split and join, or None when it is.

    The model runs with another batch size (the example row twice for a batch of 1, else the
    first row alone): every output must follow the batch, and its rows must not change."""
    reason = _batch_candidate(inputs)
    if reason:
        return reason
    n = next(iter(inputs.values())).shape[0]
    for k, o in outputs.items():
        if o.ndim == 0 or o.shape[0] != n:
            return f"output {k!r} has shape {list(o.shape)}: its first dimension is not the batch of {n}"
    if n == 1:
        probe = {k: np.concatenate([a, a]) for k, a in inputs.items()}
        expected = {k: np.concatenate([o, o]) for k, o in outputs.items()}
    else:
        probe = {k: a[:1] for k, a in inputs.items()}
        expected = {k: o[:1] for k, o in outputs.items()}
    m = 2 if n == 1 else 1
    try:
        with torch.no_grad():
            got = _named_outputs(run(*_tensors(probe)), names)
    except Exception as exc:
        return f"a batch of {m} fails: {_brief(exc)}"
    for k, e in expected.items():
        g = got.get(k)
        if g is None or g.shape != e.shape:
            return f"with a batch of {m}, output {k!r} has shape {None if g is None else list(g.shape)}"
        if not _close(g, e):
            return f"rows depend on each other: with a batch of {m}, output {k!r} changes ({_largest_difference(g, e)})"
    return None


# --------------------------------------------------------------------------- meta.json and the archive


def _finish(saved: _Saved, inputs: dict[str, np.ndarray], out: Path, *, name: str | None, description: str | None,
            output_names: Sequence[str] | None, reference: Any, static: str | None, batchable: bool | None,
            sample: dict[str, np.ndarray] | None, converted: str, loaded: Any = None) -> Path:
    """Run the example through the saved file (``loaded``: loaded already), write ``meta.json``, and the archive."""
    if loaded is None:
        loaded = _load(saved, saved.archive_name)
    run = loaded.module() if saved.platform == PLATFORM_EXPORT else loaded
    outputs = _named_outputs(_call(run, _tensors(inputs), f"the saved {saved.archive_name}"), output_names)
    if reference is not None:
        expected = _named_outputs(reference, output_names)
        for k, e in expected.items():
            if k not in outputs or not _close(outputs[k], e):
                got = outputs.get(k)
                diff = "missing" if got is None else _largest_difference(got, e)
                hint = " (tracing records one path through the code: try method='script' or 'export')" \
                    if converted == "trace" else ""
                raise ConfigError(f"the {_DONE[converted]} model does not reproduce the module's output {k!r} on the "
                                  f"example ({diff}){hint}")
    names = list(outputs)
    if batchable is False:
        reason: str | None = "batchable=False"
    else:
        reason = static or _probe(run, inputs, outputs, names)
        if reason and batchable:
            raise ConfigError(f"the model cannot batch: {reason}")
        if reason:
            log.warning("%s: the first dimension is not a batch (%s): recorded with fixed shapes, which every "
                        "request must match", out.name, reason)
    batch = reason is None

    def specs(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"name": k, "datatype": _OIP[a.dtype.name],
                 "shape": [-1, *a.shape[1:]] if batch else list(a.shape)} for k, a in arrays.items()]

    doc: dict[str, Any] = {}
    if name is not None:
        doc["name"] = name
    doc["platform"] = saved.platform
    if description:
        doc["description"] = description
    doc["inputs"] = specs(inputs)
    doc["outputs"] = specs(outputs)
    doc["example"] = {k: (a[:1] if batch else a).tolist() for k, a in inputs.items()}
    doc["sha256"] = sha256_file(saved.path)
    doc["size"] = saved.path.stat().st_size
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError:
        raise ConfigError("example_inputs: the example row holds NaN or infinity, which JSON cannot hold") from None
    parse_meta(json.loads(text), META_FILE)  # what the store will read
    members: list[tuple[str, Path | bytes]] = [(META_FILE, text.encode()), (saved.archive_name, saved.path)]
    if sample is not None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **sample)  # type: ignore[arg-type]  # keywords name the arrays
        members.append((SAMPLE_FILE, buf.getvalue()))
    _write_archive(out, members)
    log.info("packaged %s: %s, inputs %s, outputs %s, %s", out, saved.archive_name,
             ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in doc["inputs"]),
             ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in doc["outputs"]),
             "batchable" if batch else "fixed shapes")
    return out


def _write_archive(out: Path, members: list[tuple[str, Path | bytes]]) -> None:
    """Write the archive into a hidden file next to ``out``, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    now = time.time()
    try:
        with os.fdopen(fd, "wb") as f:
            if out.name.endswith(".zip"):
                with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                    for arcname, src in members:
                        zinfo = zipfile.ZipInfo(arcname, time.localtime(now)[:6])
                        zinfo.compress_type = zipfile.ZIP_DEFLATED
                        zinfo.external_attr = 0o644 << 16
                        if isinstance(src, bytes):
                            z.writestr(zinfo, src)
                        else:
                            with open(src, "rb") as s, z.open(zinfo, "w", force_zip64=True) as d:
                                shutil.copyfileobj(s, d, 1 << 20)
            else:
                # The gzip header would carry the temporary file's name: write it without one.
                with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=6, mtime=int(now)) as gz, \
                        tarfile.open(fileobj=gz, mode="w") as tar:
                    for arcname, src in members:
                        info = tarfile.TarInfo(arcname)
                        info.mode, info.mtime = 0o644, int(now)
                        if isinstance(src, bytes):
                            info.size = len(src)
                            tar.addfile(info, io.BytesIO(src))
                        else:
                            info.size = src.stat().st_size
                            with open(src, "rb") as s:
                                tar.addfile(info, s)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(out.parent)
