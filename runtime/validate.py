"""``python -m runtime validate``: check a model version in a throwaway process before it is accepted.

The command (the supervisor) starts a fresh ``python -m runtime validate``
process (the check) under a memory limit, kills it at the time limit, and prints
exactly one JSON object on stdout; the exit status is 0 when ``ok`` is true,
1 otherwise (2 for bad arguments, with argparse's usage on stderr). The check
loads the version as a worker does (:func:`runtime.model.load_version`: names,
platform and sha256 first), runs ``meta.json``'s example through the worker's
own path (:func:`runtime.codecs.example_request` -> :class:`runtime.batcher.Batcher`
-> forward -> :func:`runtime.codecs.encode_response`, the reply decoded back),
then two examples batched together when the signature is batchable, and
reports the output signature it saw: names, datatypes, shapes with ``-1`` where
a dimension followed the batch. Outputs that disagree with ``meta.json`` fail it.

The memory limit is ``RLIMIT_DATA`` (heap and private writable mappings), not
``RLIMIT_AS``: torch maps over 600 MB of address space for its libraries and
each thread's malloc arena reserves 64 MB that is never touched, none of which
``RLIMIT_DATA`` counts. An allocation past it fails (torch raises, Python raises
``MemoryError``). The time limit is wall-clock and covers everything, torch's
import included.

Success::

    {"ok": true, "name": "fraud", "version": "3", "file": "model.pt2", "platform": "pytorch_export",
     "sha256": "...", "size": 12345, "batchable": true,
     "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
     "load_seconds": 0.41, "example_seconds": 0.002, "seconds": 2.3, "peak_rss_mb": 310.5}

Failure: ``{"ok": false, "reason": ..., "error": "...", ...}`` with what was known
by then (``sha256``, ``outputs``...). ``reason`` is one of
``router.proto.link.REFUSALS`` or ``example`` (the example did not run),
``signature`` (outputs disagree with ``meta.json``), ``memory``, ``timeout``,
``crashed`` (the check died without an answer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_MB = 4096

_EPILOG = """\
Prints one JSON object on stdout: {"ok": true, "outputs": [{"name", "datatype", "shape"}...], "sha256",
"size", "seconds", ...} and exits 0, or {"ok": false, "reason", "error", ...} and exits 1. The sha256 and
size of the model file are always computed and printed: with --no-integrity (a staging directory whose
meta.json has no sha256 yet) they are not compared with meta.json's.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runtime validate", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load a model version in a fresh process under memory and time limits, run its meta.json "
                    "example through the worker's decode -> batch -> forward -> encode path, and report its "
                    "output signature.")
    p.add_argument("--model-dir", required=True, help="the version directory: model.pt or model.pt2, meta.json")
    p.add_argument("--name", help="the model name meta.json must give (default: not checked)")
    p.add_argument("--version", help="the version meta.json must give (default: not checked)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds for the whole check, start-up included (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB,
                   help=f"RLIMIT_DATA of the check, MiB (default {DEFAULT_MEMORY_MB})")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-integrity", action="store_true",
                   help="do not compare the model file's sha256 with meta.json's (still computed and printed)")
    p.add_argument("--no-optimize", action="store_true", help="skip optimize_for_inference, as a worker can")
    p.add_argument("--result-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor for the check
    a = p.parse_args(argv)
    if a.timeout <= 0 or a.memory_mb <= 0 or a.threads <= 0:
        p.error("--timeout, --memory-mb and --threads must be positive")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """The command: supervise one check and print its one JSON object; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.result_fd is not None:
        return _check_process(args)
    result = supervise(argv, args.timeout, args.memory_mb)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result.get("ok") else 1


# -- the supervisor (no torch, no numpy) -------------------------------------------------------------------


def supervise(argv: list[str], timeout: float, memory_mb: int) -> dict[str, Any]:
    """Run the check in a fresh process, kill it at ``timeout``; its answer, or why there is none."""
    t0 = time.monotonic()
    r, w = os.pipe()
    try:
        # Its stdout goes to our stderr: a model that prints cannot garble the one JSON object.
        # A session of its own, so the kill at the time limit reaches anything it started.
        proc = subprocess.Popen([sys.executable, "-m", "runtime", "validate", *argv, "--result-fd", str(w)],
                                stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), pass_fds=(w,),
                                start_new_session=True)
    finally:
        os.close(w)
    data = b""
    timed_out = False
    with os.fdopen(r, "rb") as pipe:
        while True:
            left = t0 + timeout - time.monotonic()
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    if not timed_out:
        try:
            proc.wait(max(0.0, t0 + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    seconds = round(time.monotonic() - t0, 3)
    peak = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)  # KiB on Linux
    if timed_out:
        result: dict[str, Any] = {"ok": False, "reason": "timeout",
                                  "error": f"time limit: no answer within {timeout:g} s"}
    else:
        try:
            result = json.loads(data)
        except ValueError:
            code = proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            result = {"ok": False, "reason": "crashed",
                      "error": f"the check process ended with {how} and no answer (memory limit {memory_mb} MiB, "
                               f"peak RSS {peak} MiB)"}
    result["seconds"] = seconds
    result["peak_rss_mb"] = peak
    return result


# -- the check (a fresh process) ---------------------------------------------------------------------------


def _check_process(args: argparse.Namespace) -> int:
    """The check process: limits first, then torch; writes its JSON answer to ``--result-fd``."""
    supervisor = os.getppid()
    limit = args.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    from .lifeline import die_with_parent

    die_with_parent(supervisor)  # a supervisor killed outright leaves no check running
    result: dict[str, Any] = {"ok": False}
    try:
        check(args, result)
    except BaseException as exc:  # every failure is an answer; nothing is swallowed, it is the answer
        reason, message = _failure(exc)
        result.update(ok=False, reason=reason, error=message)
    if _is_memory(str(result.get("error", ""))):
        result["reason"] = "memory"
        result["error"] = f"memory limit of {args.memory_mb} MiB exceeded: {result['error']}"
    with os.fdopen(args.result_fd, "w") as out:
        out.write(json.dumps(result))
    return 0 if result["ok"] else 1


def _failure(exc: BaseException) -> tuple[str, str]:
    from .model import refusal_of

    if isinstance(exc, _Failed):
        return exc.reason, str(exc)
    if isinstance(exc, MemoryError):
        return "memory", f"MemoryError: {exc}"
    return refusal_of(exc)


def _is_memory(message: str) -> bool:
    return any(s in message for s in ("MemoryError", "can't allocate memory", "Cannot allocate memory"))


class _Failed(Exception):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Load the version and run its example as a worker would, filling ``result`` as it goes.

    Raises:
        Exception: the first failure (the caller turns it into ``reason`` and ``error``).
    """
    import numpy as np
    import torch

    from router.proto.link import FMT_MSGPACK
    from router.proto.meta import DATATYPES, model_file, read_meta, sha256_file

    from .batcher import Batcher
    from .codecs import decode_reply, example_request
    from .model import load_version, pin

    d = args.model_dir
    meta = read_meta(d)
    path = model_file(d)
    result.update(name=meta.name, version=meta.version, file=path.name, platform=meta.platform,
                  size=path.stat().st_size, batchable=meta.batchable)
    if args.no_integrity:
        result["sha256"] = sha256_file(path)
    pin((), args.threads)
    t = time.monotonic()
    model = load_version(d, args.name, args.version, args.device, not args.no_optimize,
                         integrity=not args.no_integrity)
    result["load_seconds"] = round(time.monotonic() - t, 3)
    if not args.no_integrity:
        result["sha256"] = meta.sha256  # just checked against the file

    seen: list[list[np.ndarray] | BaseException] = []

    def forward(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            outs = model.forward(arrays)
        except Exception as exc:
            seen.append(exc)
            raise
        seen.append(outs)
        return outs

    def run(batcher: Batcher, n: int) -> None:
        for rid in range(1, n + 1):
            batcher.add(rid, example_request(meta))  # built as the warm-up builds it
        for _, status, hlen, body in batcher.run():
            if status != 200:
                raise _Failed(f"the example failed ({status}): {body.decode(errors='replace')}", "example")
            decoded = decode_reply(FMT_MSGPACK, body, hlen)  # what a client would receive
            if list(decoded) != [o.name for o in meta.outputs]:
                raise _Failed(f"the reply holds outputs {list(decoded)}, meta.json declares "
                              f"{[o.name for o in meta.outputs]}", "signature")

    with torch.inference_mode():  # as the worker serves
        t = time.monotonic()
        run(Batcher(forward, meta, 1), 1)
        result["example_seconds"] = round(time.monotonic() - t, 6)
        single = seen[-1]
        assert isinstance(single, list)
        shapes = [list(o.shape) for o in single]
        if meta.batchable:
            # Two examples in one batch, as concurrent requests are run: the dimensions that
            # follow the batch are the variable ones.
            rows = example_request(meta).batch
            seen.clear()
            run(Batcher(forward, meta, 2 * rows), 2)
            joint = seen[0]
            if isinstance(joint, BaseException) or len(seen) != 1:
                why = joint if isinstance(joint, BaseException) else "its outputs do not keep the batch"
                raise _Failed(f"meta.json declares a batchable signature (-1 first dimensions) but two examples "
                              f"batched together fail: {why}", "signature")
            for i, o in enumerate(joint):
                if len(o.shape) != len(shapes[i]):
                    raise _Failed(f"output {meta.outputs[i].name!r} has {len(shapes[i])} dimensions for one "
                                  f"example and {len(o.shape)} for two", "signature")
                shapes[i] = [-1 if a != b else a for a, b in zip(shapes[i], o.shape, strict=True)]
    names = {np.dtype(v).name: k for k, v in DATATYPES.items()}
    outputs = [{"name": spec.name, "datatype": names.get(o.dtype.name, o.dtype.name), "shape": shape}
               for spec, o, shape in zip(meta.outputs, single, shapes, strict=True)]
    result["outputs"] = outputs
    wrong = []
    for spec, got in zip(meta.outputs, outputs, strict=True):
        if got["datatype"] != spec.datatype:
            wrong.append(f"{spec.name}: datatype {got['datatype']}, meta.json declares {spec.datatype}")
        declared = list(spec.shape)
        shape = got["shape"]
        if len(shape) != len(declared) or any(d != -1 and d != s for d, s in zip(declared, shape, strict=False)):
            wrong.append(f"{spec.name}: shape {shape}, meta.json declares {declared}")
    if wrong:
        raise _Failed(f"the outputs disagree with meta.json: {'; '.join(wrong)}", "signature")
    result["ok"] = True
