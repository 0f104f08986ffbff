"""The worker process: one model version on one device, serving the router over a Unix socket.

A single thread owns everything: it reads request frames, decodes them,
batches, runs the model and writes replies. Blocking ``select`` with a timeout
gives the batching window without an event loop's overhead.

Batching policy: after the first pending request arrives, keep reading for up
to ``max_batch_delay_us`` (or until ``max_batch_size`` rows wait); with a delay
of 0 the worker still batches whatever has already arrived, so batching costs
nothing at concurrency 1 and helps at once under load.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import select
import signal
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import numpy as np
import torch

from router.proto import link
from router.proto.errors import FrameError, InternalError, RouterError
from router.proto.framing import FrameScanner
from router.proto.link import (
    FMT_MASK,
    KIND_WARMUP,
    SHADOW,
    SHADOW_OUTPUTS,
    STATUS_DRIFT,
    STATUS_HELLO,
    STATUS_REFUSED,
    STATUS_STATS,
)
from router.proto.meta import ModelMeta
from router.proto.stats import INTERVAL_S

from .batcher import Batcher, Reply
from .codecs import Request, decode_reply, decode_request, example_request
from .drift import DriftMonitor, DriftThresholds, load_sample
from .express import Express
from .lifeline import die_with_parent
from .model import Model, refusal_of
from .stats import WorkerStats, timed

log = logging.getLogger("runtime.worker")

# recv(n) allocates n bytes up front: 1 MiB cost an mmap/munmap per request.
_RECV_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the router tells a worker on its command line."""

    fd: int
    parent_pid: int
    model_dir: str
    name: str
    version: str
    device: str
    cpus: tuple[int, ...]
    threads: int
    max_batch_size: int
    max_batch_delay_us: int
    max_frame: int
    optimize: bool = True
    #: The model's policy for NaN and infinities in FP inputs: "reject" (400) or "allow".
    nonfinite: str = "reject"
    #: The model's ``[models.drift]`` keys as JSON; empty: no drift monitoring.
    drift: str = ""


class Worker:
    """Serves one model over one connected socket until the router closes it."""

    def __init__(self, spec: WorkerSpec, sock: socket.socket, model: Model, meta: ModelMeta,
                 drift: DriftMonitor | None = None) -> None:
        self.spec = spec
        self.sock = sock
        self.meta = meta
        self.stats = WorkerStats(_device_memory(spec.device), drift)
        forward = timed(model.forward, self.stats)
        self.batcher = Batcher(forward, meta, spec.max_batch_size)
        self.scanner = FrameScanner(spec.max_frame)
        self.delay = spec.max_batch_delay_us / 1e6
        self.out: list[bytes] = []
        #: Lone msgpack requests skip the general path; not when a batching window should wait for more.
        self.express = Express.of(model, spec.nonfinite, forward) if not spec.max_batch_delay_us else None
        # Wait for requests in poll(), not in a blocking recv(): when the router reads a
        # reply, the kernel signals "writable" on this socket's wait queue, which wakes a
        # task blocked in recv() for nothing (one extra switch to the worker and back, in
        # the router's way before it writes the reply), while a poll() waiter that asked
        # only for input stays asleep.
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)

    def send_hello(self) -> None:
        info = {
            "pid": os.getpid(),
            "device": self.spec.device,
            "cpus": sorted(os.sched_getaffinity(0)),
            "threads": self.spec.threads,
            "batchable": self.meta.batchable,
        }
        self._queue((0, STATUS_HELLO, 0, msgpack.packb(info)))
        self._flush()

    def _report(self) -> None:
        """Send the statistics frame, and the drift summary when one is due (:mod:`router.proto.stats`)."""
        frames = [link.pack(0, STATUS_STATS, 0, self.stats.payload())]
        drift = self.stats.drift_payload()
        if drift is not None:
            frames.append(link.pack(0, STATUS_DRIFT, 0, drift))
        self.sock.sendall(b"".join(frames))

    def _queue(self, reply: Reply) -> None:
        self.out.append(link.pack(*reply))

    def _flush(self) -> None:
        if self.out:
            self.sock.sendall(b"".join(self.out))
            self.out.clear()

    def _handle(self, frame: bytes) -> None:
        try:
            rid, kind, hlen, payload = link.unpack(frame)
        except FrameError as exc:  # a router bug, never caller input: say so loudly
            log.error("malformed frame from the router: %s", exc)
            return
        try:
            if kind == KIND_WARMUP:
                req = example_request(self.meta)
            elif kind & SHADOW:
                req = self._decode_shadow(kind & FMT_MASK, payload, hlen)
                req.log_outputs = bool(kind & SHADOW_OUTPUTS)
            else:
                req = decode_request(kind, payload, hlen, self.meta, self.spec.nonfinite)
        except RouterError as exc:
            self._queue((rid, exc.status, 0, str(exc).encode()))
            return
        except Exception as exc:  # a codec bug must cost one request, not the worker
            log.exception("decoding request %d failed", rid)
            self._queue((rid, 500, 0, f"internal error while decoding: {exc!r}".encode()))
            return
        self.batcher.add(rid, req)

    def _decode_shadow(self, fmt: int, payload: bytes, hlen: int) -> Request:
        try:
            body, reply, reply_hlen = link.split_shadow(payload)
        except FrameError as exc:
            raise InternalError(f"shadow copy: {exc}") from None
        req = decode_request(fmt, body, hlen, self.meta, self.spec.nonfinite)
        req.live = decode_reply(fmt, reply, reply_hlen)
        return req

    def _read(self) -> bool:
        """Read what is available (called once the socket polled readable); False on EOF."""
        data = self.sock.recv(_RECV_SIZE)
        if not data:
            return False
        self._take(data)
        return True

    def _take(self, data: bytes) -> None:
        """Handle every frame ``data`` completes."""
        for frame in self.scanner.feed(data):
            self._handle(frame)

    def serve(self) -> None:
        """The loop: read, batch, run, reply. Returns when the router closes the socket."""
        rlist = [self.sock]
        batcher = self.batcher
        pending = batcher.pending  # tested as a list: no __len__ call per turn
        delay = self.delay
        express = self.express
        scanner = self.scanner
        sock = self.sock
        stats = self.stats
        report_at = 0.0
        first_at = 0.0
        while True:
            if not pending:
                self._flush()
                if stats.dirty:  # report what was counted once it is due, or when the worker goes idle first
                    left = report_at - time.monotonic()
                    if left <= 0 or not self._readable.poll(math.ceil(left * 1000)):
                        self._report()
                        report_at = time.monotonic() + INTERVAL_S
                        continue
                else:
                    self._readable.poll()
                data = sock.recv(_RECV_SIZE)
                if not data:
                    return
                if express is not None and not scanner.buffered:
                    answer = express.answer(data)
                    if answer is not None:
                        sock.sendall(answer)
                        continue
                self._take(data)
                if not pending:  # only errors or a partial frame so far
                    continue
                first_at = time.monotonic()
            # With a delay of 0 the batch is what the last read brought: no extra
            # system call per request. Otherwise gather more while the window is open.
            while delay and not batcher.full:
                wait = first_at + delay - time.monotonic()
                # select() rather than poll(): microsecond timeouts, not milliseconds.
                if wait <= 0 or not select.select(rlist, (), (), wait)[0]:
                    break
                if not self._read():
                    return
            stats.waited(time.monotonic() - first_at)
            for reply in batcher.run():
                self._queue(reply)
            self._flush()
            first_at = time.monotonic()
            if first_at >= report_at:  # busy without a pause: report on time all the same
                self._report()
                report_at = first_at + INTERVAL_S


def drift_monitor(spec: WorkerSpec, model: Model) -> DriftMonitor | None:
    """The version's drift monitor (``[models.drift]``), its reference fixed from the version's ``sample.npz``
    when it has one (the outputs' too: the model runs on it), else from its first live rows. None when off.

    A sample that cannot be read is logged and the live rows are used instead: drift monitoring never
    keeps a version from serving.
    """
    conf = json.loads(spec.drift) if spec.drift else {"enabled": False}
    if not conf.get("enabled", True):
        return None
    psi_drift = conf.get("psi_drift", 0.25)
    thresholds = DriftThresholds(psi_warning=min(conf.get("psi_warning", 0.1), psi_drift), psi_drift=psi_drift,
                                 js_drift=conf.get("js_drift", 0.2), ks_drift=conf.get("ks_drift", 0.2),
                                 min_window=conf.get("min_window", 200))
    meta = model.meta
    monitor = DriftMonitor.for_meta(meta, reference_rows=conf.get("reference_rows", 1000),
                                    window_rows=conf.get("window_rows", 10_000), thresholds=thresholds)
    try:
        sample = load_sample(spec.model_dir, meta.inputs)
    except RouterError as exc:
        log.warning("drift: %s; the first %d live rows will be the reference", exc, conf.get("reference_rows", 1000))
        return monitor
    if sample is not None:
        monitor.set_reference(sample, _outputs_of(model, sample) if meta.batchable else None)
        log.info("drift: the reference is sample.npz (%d rows)", len(next(iter(sample.values()))))
    return monitor


def _outputs_of(model: Model, sample: dict[str, np.ndarray], rows: int = 1024) -> dict[str, np.ndarray]:
    """The model's outputs on a reference sample, run ``rows`` at a time."""
    inputs = [sample[t.name] for t in model.meta.inputs]
    n = len(inputs[0])
    with torch.inference_mode():
        parts = [model.forward([a[i:i + rows] for a in inputs]) for i in range(0, n, rows)]
    return {t.name: np.concatenate([p[k] for p in parts]) for k, t in enumerate(model.meta.outputs)}


def _device_memory(device: str) -> Callable[[], int] | None:
    """What reads the bytes the CUDA caching allocator holds for ``device``; None on the CPU."""
    if not device.startswith("cuda"):
        return None
    return lambda: int(torch.cuda.memory_reserved(device))


def refuse(sock: socket.socket, exc: BaseException) -> None:
    """Tell the router why this worker will not serve its version (``STATUS_REFUSED``, instead of the hello)."""
    reason, message = refusal_of(exc)
    # The traceback helps only when torch itself failed; a refused check says everything in one line.
    log.error("refusing to serve (%s): %s", reason, message, exc_info=exc if reason == "load" else None)
    try:
        sock.sendall(link.pack(0, STATUS_REFUSED, 0, msgpack.packb({"reason": reason, "error": message})))
    except OSError:  # the router is gone: nobody to tell
        pass


def run(spec: WorkerSpec) -> int:
    """Check and load the model, say hello, serve until the router goes away.

    A version that fails its checks or does not load is refused (:func:`refuse`) and the worker exits 1.
    """
    die_with_parent(spec.parent_pid)
    # Ctrl-C reaches the whole process group; the router owns shutdown and
    # stops workers itself after draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Request arrays come from np.frombuffer (read-only); torch only reads them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    from .model import load_version, pin

    sock = socket.socket(fileno=spec.fd)
    pin(spec.cpus, spec.threads)
    t0 = time.monotonic()
    try:
        # Every load checks the file's sha256 and that meta.json names this model and version.
        model = load_version(spec.model_dir, spec.name, spec.version, spec.device, spec.optimize)
    except Exception as exc:
        refuse(sock, exc)
        return 1
    meta = model.meta
    log.info("loaded %s/%s (%s) on %s in %.0f ms (cpus %s, %d threads)", spec.name, spec.version,
             "torch.export" if model.exported else "TorchScript", spec.device, (time.monotonic() - t0) * 1000,
             sorted(os.sched_getaffinity(0)), spec.threads)
    worker = Worker(spec, sock, model, meta, drift_monitor(spec, model))
    # torch, numpy and the model are loaded for good: keep the collector from
    # walking them again and again (a full collection of them is a latency spike).
    gc.freeze()
    worker.send_hello()
    try:
        with torch.inference_mode():
            worker.serve()
    except (BrokenPipeError, ConnectionResetError):
        pass
    return 0
