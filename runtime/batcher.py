"""Dynamic batching: concatenate compatible requests along dim 0, run one forward, split back.

Requests are compatible when every input has the same trailing shape (the
datatypes are already fixed by the signature). A worker serves one version, so
a batch never mixes versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from router.proto.errors import RouterError
from router.proto.link import FMT_MSGPACK
from router.proto.meta import ModelMeta

from .codecs import Request, encode_response
from .codecs.plan import plan_of
from .compare import compare, pack_stats

log = logging.getLogger("runtime.batcher")

#: One reply: (rid, status, json_header_len, body).
Reply = tuple[int, int, int, bytes]
Forward = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def model_failed(exc: Exception) -> bytes:
    """The error message of a request whose forward raised ``exc`` (logged here)."""
    log.warning("forward failed: %s", exc)
    return f"model raised {type(exc).__name__}: {exc}".encode()


class Batcher:
    """Pending decoded requests of one worker, run in arrival order.

    Args:
        forward: the model's forward on numpy inputs (signature order).
        meta: the model's signature (``batchable`` decides whether to concatenate).
        max_batch_size: most rows (sum of dim 0) in one forward; a single
            request larger than this still runs, alone.
    """

    __slots__ = ("forward", "meta", "max_batch_size", "pending", "rows", "batches", "batched_requests")

    def __init__(self, forward: Forward, meta: ModelMeta, max_batch_size: int) -> None:
        self.forward = forward
        self.meta = meta
        self.max_batch_size = max_batch_size if meta.batchable else 1
        #: ``(rid, request, batch key)`` in arrival order; the worker's loop tests it for emptiness.
        self.pending: list[tuple[int, Request, tuple[tuple[int, ...], ...]]] = []
        self.rows = 0
        self.batches = 0
        self.batched_requests = 0

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def full(self) -> bool:
        return self.rows >= self.max_batch_size

    def add(self, rid: int, req: Request) -> None:
        arrays = req.arrays
        # Requests batch together when every input has the same trailing shape.
        key = (arrays[0].shape[1:],) if len(arrays) == 1 else tuple(a.shape[1:] for a in arrays)
        self.pending.append((rid, req, key))
        self.rows += req.batch

    def run(self) -> list[Reply]:
        """Run one batch: the oldest request and every later compatible one that fits."""
        pending = self.pending
        rid0, req0, key0 = pending[0]
        group = [(rid0, req0)]
        rows = req0.batch
        if len(pending) == 1:  # concurrency 1: nothing to gather
            pending.clear()
        else:
            rest = []
            for item in pending[1:]:
                if item[2] == key0 and rows + item[1].batch <= self.max_batch_size:
                    group.append((item[0], item[1]))
                    rows += item[1].batch
                else:
                    rest.append(item)
            pending[:] = rest
        self.rows -= rows
        self.batches += 1
        self.batched_requests += len(group)
        if len(group) == 1:
            return [self._alone(rid0, req0)]
        try:
            n_in = len(req0.arrays)
            joined = [np.concatenate([r.arrays[i] for _, r in group]) for i in range(n_in)]
            outs = self.forward(joined)
            for o in outs:
                if o.ndim == 0 or o.shape[0] != rows:
                    raise RuntimeError(f"model output of shape {list(o.shape)} does not keep the batch of {rows}")
        except Exception as exc:
            # One poisoned request must not fail its neighbours: run each alone to find out whose it is.
            log.warning("forward failed for a batch of %d (%s); running its requests one by one", len(group), exc)
            return [self._alone(rid, req) for rid, req in group]
        replies = []
        reply = self._reply
        # The usual single-output model: no list comprehension per request.
        only = outs[0] if len(outs) == 1 else None
        start = 0
        for rid, req in group:
            stop = start + req.batch
            replies.append(reply(rid, req, [only[start:stop]] if only is not None else [o[start:stop] for o in outs]))
            start = stop
        return replies

    def _alone(self, rid: int, req: Request) -> Reply:
        try:
            outs = self.forward(req.arrays)
        except Exception as exc:  # the model raised: this request learns why
            return rid, 500, 0, model_failed(exc)
        return self._reply(rid, req, outs)

    def _reply(self, rid: int, req: Request, outputs: Sequence[np.ndarray]) -> Reply:
        if req.live is not None:
            return self._compare(rid, req, req.live, outputs)
        hlen, body = encode_response(req, outputs, self.meta)
        return rid, 200, hlen, body

    def _compare(self, rid: int, req: Request, live: dict[str, np.ndarray], outputs: Sequence[np.ndarray]) -> Reply:
        """A shadow copy's answer: how our outputs differ from the live ones; the tensors themselves only
        when the copy was sampled for the prediction log."""
        meta = self.meta
        ours = {spec.name: out for spec, out in zip(meta.outputs, outputs, strict=False)}
        try:
            diffs = compare(live, ours)
            if not req.log_outputs:
                return rid, 200, 0, pack_stats(diffs)
            plan = plan_of(meta)
            every = Request(None, [], plan.every_output, plan.all_binary, FMT_MSGPACK, req.batch)
            return rid, 200, 0, pack_stats(diffs, outputs=encode_response(every, outputs, meta)[1])
        except RouterError as exc:
            return rid, exc.status, 0, str(exc).encode()
