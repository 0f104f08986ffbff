"""A model version on one device, pinned to its CPUs: a TorchScript archive or a ``torch.export`` program.

:func:`load_version` is the one way a worker (and ``python -m runtime validate``)
loads a version: the checks of :func:`router.proto.meta.verify` first (names,
platform, sha256), then :class:`Model`, which picks the loader by the file name.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from router.proto.errors import ConfigError, IntegrityError, ModelLoadFailed
from router.proto.meta import ModelMeta, read_meta, verify

log = logging.getLogger("runtime.model")

#: Comma-separated modules a worker imports before it loads a model.
PRELOAD_ENV = "ROUTER_WORKER_PRELOAD"


def preload(names: str | None = None) -> list[str]:
    """Import the modules named in ``names``, comma-separated (default: ``$ROUTER_WORKER_PRELOAD``).

    A model that calls custom operators (``torch.ops.<namespace>.<op>``) loads only
    once the module registering them is imported; the worker imports nothing of
    the kind itself, so such a model's operators come in this way.

    Returns:
        The module names imported, in order.

    Raises:
        ImportError: a module cannot be imported; the message names the variable.
    """
    if names is None:
        names = os.environ.get(PRELOAD_ENV, "")
    modules = [n.strip() for n in names.split(",") if n.strip()]
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{PRELOAD_ENV}: cannot import {name!r}: {exc}") from exc
    return modules


def pin(cpus: Sequence[int], threads: int) -> None:
    """Pin this process to ``cpus`` (all CPUs when empty) and size torch's thread pools.

    Inter-op parallelism is set to 1: a worker runs one forward at a time, and
    extra pools would only fight the pinned intra-op threads for the same cores.
    """
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (only allowed once per process)
        pass


#: Longest load error a refusal carries (TorchScript errors can quote whole programs).
_REFUSAL_MAX = 4000


def load_version(model_dir: str | Path, name: str | None, version: str | None, device: str,
                 optimize: bool = True, *, integrity: bool = True) -> Model:
    """Check and load the version in ``model_dir``: what a worker does before its hello.

    Args:
        model_dir: ``<store>/<model>/<version>`` (or a staging directory).
        name, version: what ``meta.json`` must name (None: not checked).
        device, optimize: as for :class:`Model`.
        integrity: check the model file's sha256 against ``meta.json``'s.

    Raises:
        IntegrityError: the sha256 or the names disagree (``reason`` says which).
        ConfigError: ``meta.json`` or the directory's files are invalid.
        ModelLoadFailed: loading raised (``reason="load"``); the message names the file.
    """
    meta = read_meta(model_dir)
    path = verify(model_dir, meta, name, version, integrity=integrity)
    try:
        return Model(path, meta, device, optimize)
    except Exception as exc:
        raise ModelLoadFailed(f"cannot load {path.name} on {device}: {type(exc).__name__}: {exc}", "load") from exc


def refusal_of(exc: BaseException) -> tuple[str, str]:
    """``(reason, message)`` for a load that raised ``exc``: reason is one of ``router.proto.link.REFUSALS``."""
    if isinstance(exc, IntegrityError | ModelLoadFailed):
        reason, message = exc.reason, str(exc)
    elif isinstance(exc, ConfigError):
        reason, message = "meta", str(exc)
    else:  # a preload import, a device that is not there
        reason, message = "load", f"{type(exc).__name__}: {exc}"
    if len(message) > _REFUSAL_MAX:
        message = f"{message[:_REFUSAL_MAX]}... ({len(message)} characters)"
    return reason, message


class Model:
    """A loaded model plus its declared signature.

    ``model.pt`` is loaded with ``torch.jit.load``; ``model.pt2`` (a ``torch.export``
    program) with ``torch.export.load(path).module()``. The modules named in
    ``ROUTER_WORKER_PRELOAD`` are imported first (:func:`preload`).

    Args:
        path: the model file (``model.pt`` or ``model.pt2``).
        meta: its validated ``meta.json``.
        device: ``"cpu"`` or ``"cuda:N"``.
        optimize: for TorchScript, freeze the module and apply ``torch.jit.optimize_for_inference``
            (constant folding, fused and prepacked ops). Measured on the demo MLP it
            cuts a batch-1 forward from about 13.6 to 10.9 us; outputs may differ from
            the unoptimised module in the last bits (below 1e-7 on the demo models).
            Ignored for an exported program (logged): both passes are TorchScript's.
    """

    def __init__(self, path: str | Path, meta: ModelMeta, device: str, optimize: bool = True) -> None:
        self.meta = meta
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(f"device {device!r} requested but CUDA is not available")
            torch.cuda.set_device(self.device)
        preloaded = preload()
        if preloaded:
            log.info("preloaded %s", ", ".join(preloaded))
        path = Path(path)
        #: True for a ``torch.export`` program, False for TorchScript.
        self.exported = path.suffix == ".pt2"
        module = self._load_exported(path, optimize) if self.exported else self._load_scripted(path, optimize)
        self.module = module
        # Calling forward directly skips nn.Module's Python hook dispatch (~1 us a call). For an
        # exported program it also skips the input-constraint pre-hook, whose checks the generated
        # forward repeats itself (`_guards_fn`, torch 2.13): 91 instead of 213 us a call on a 4-64-3 MLP.
        self._forward = module.forward
        self._cuda = self.device.type == "cuda"
        # The usual CPU model: one tensor in, one tensor out (no list or tuple built per call).
        self._simple = not self._cuda and len(meta.inputs) == 1
        self._one_out = len(meta.outputs) == 1

    def _load_scripted(self, path: Path, optimize: bool) -> Any:
        module = torch.jit.load(str(path), map_location=self.device)
        module.eval()
        if optimize:
            try:
                module = torch.jit.optimize_for_inference(module)
            except Exception as exc:  # some scripted code cannot be frozen: serve it as it is
                log.warning("optimize_for_inference failed (%s); serving the module unoptimised", exc)
                module = torch.jit.load(str(path), map_location=self.device)
                module.eval()
        return module

    def _load_exported(self, path: Path, optimize: bool) -> Any:
        # Imported here: a TorchScript worker never pays for torch.export's modules.
        from torch.export.passes import move_to_device_pass

        program = torch.export.load(str(path))
        # A saved program keeps the device its tensors were exported on: move it to ours
        # (weights, buffers, constants and device arguments in the graph alike).
        program = move_to_device_pass(program, self.device)
        if optimize:
            log.info("%s is a torch.export program: freezing and optimize_for_inference are TorchScript "
                     "passes, so it is served as exported", path.name)
        # No .eval(): an exported module refuses it; the program runs in the mode it was exported in.
        return program.module()

    def forward(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run one forward on numpy inputs (in signature order); return numpy outputs.

        The outputs are in ``meta.outputs`` order; a model returning a single
        tensor is treated as a one-tuple.
        """
        # The worker enters inference mode once for its whole life; entering it
        # per call costs about a microsecond, so only in-process callers pay.
        if torch.is_inference_mode_enabled():
            if self._simple:
                out = self._forward(torch.from_numpy(inputs[0]))
                if self._one_out and type(out) is torch.Tensor:
                    return [out.numpy()]
                result = self._outputs(out)
            else:
                result = self._run(inputs)
        else:
            with torch.inference_mode():
                result = self._run(inputs)
        if len(result) != len(self.meta.outputs):
            raise RuntimeError(
                f"model returned {len(result)} outputs, meta.json declares {len(self.meta.outputs)}"
            )
        return result

    def _run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self._cuda:
            # Without pinned host memory non_blocking buys nothing, and the copy
            # back to the host below synchronises anyway.
            args = [torch.from_numpy(a).to(self.device) for a in inputs]
        else:
            args = [torch.from_numpy(a) for a in inputs]
        return self._outputs(self._forward(*args))

    def _outputs(self, out: Any) -> list[np.ndarray]:
        """The forward's result (a tensor, a tuple or a dict of them) as numpy arrays, in ``meta.outputs`` order."""
        if isinstance(out, torch.Tensor):
            out = (out,)
        elif isinstance(out, dict):
            out = tuple(out[t.name] for t in self.meta.outputs)
        return [o.detach().cpu().numpy() if self._cuda else o.numpy() for o in out]
