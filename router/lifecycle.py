"""The life of a request, the same for every front (HTTP hot path, aiohttp, msgpack TCP).

A front parses a request and calls :meth:`Lifecycle.submit` with an
:class:`Exchange`; from then on the request's life is here:

1. **lookup** — the model's active pool (404 for an unknown model) and, when
   pinned, the version (404 for an unknown one);
2. **draining** — a server that is shutting down answers 503;
3. **in flight** — counted per (model, protocol) until answered;
4. **submit** — :meth:`Routing.dispatch <router.routing.Routing.dispatch>` picks
   the version (weights, routing key) and a replica, and sends the bytes;
5. **answer** — exactly once: the worker's reply, its death (503) or the
   deadline (504) calls :meth:`Exchange.done`, which hands the reply to the
   front's ``reply``; a request refused in 1-4 is handed there at once;
6. **written** — the front writes the reply, then calls :meth:`Lifecycle.written`:
   metrics (labels only from the configuration: an unknown model is not
   recorded, an unknown version is recorded as ``""``), the prediction log's
   sample (:mod:`router.predlog`), then the shadow copies, which leave only
   once the caller has its reply.

The router never decodes the body: it travels as bytes to the worker and back.
One :class:`Exchange` per request is the only object the lifecycle allocates:
it is also the link's call, so nothing else is made per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from random import random
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

from .proto.errors import InferenceError, shown
from .worker_link import Call

if TYPE_CHECKING:
    from .metrics import Metrics
    from .predlog import PredictionLog
    from .routing import Pool, Routing
    from .state import ServerState


class Front(Protocol):
    """What a front gives the lifecycle: a way to write a request's reply."""

    def reply(self, ex: Exchange, status: int, header_len: int, payload: bytes) -> None:
        """Write the reply of ``ex`` (``payload`` is the UTF-8 error message unless ``status`` is 200),
        then call :meth:`Lifecycle.written` once it is written."""


class Exchange(Call):
    """One request, from a front's parse to its written reply. Fronts make one per request.

    Args:
        lifecycle: the router's lifecycle.
        front: where the reply goes.
        protocol: ``"http"`` or ``"msgpack"`` (the metrics label).
        tag: the front's own (the msgpack request id, the aiohttp future).
    """

    __slots__ = ("lifecycle", "front", "protocol", "tag", "pool", "model", "answered", "key", "fmt", "header_len",
                 "body", "t0", "counted")
    # Set by the lifecycle as the request goes (a refused one never gets past ``answered``).
    pool: Pool | None
    model: str
    #: The version that answers: the dispatched one, a valid pin, or "" (the metrics label).
    answered: str
    key: str | bytes | None
    fmt: int
    header_len: int
    body: bytes
    t0: float

    def __init__(self, lifecycle: Lifecycle, front: Front, protocol: str, tag: Any = None) -> None:
        self.deadline = 0.0
        self.lifecycle = lifecycle
        self.front = front
        self.protocol = protocol
        self.tag = tag
        #: The in-flight key while the request is with a worker; None when it never reached one.
        self.counted: tuple[str, str] | None = None

    def done(self, status: int, header_len: int, payload: bytes) -> None:
        """The answer: the worker's reply, or 503/504 in its place (called by the link, exactly once)."""
        self.lifecycle.in_flight[self.counted] -= 1  # type: ignore[index]
        self.front.reply(self, status, header_len, payload)


class Lifecycle:
    """What every request does between "a front has parsed it" and "the front has written its reply".

    Args:
        routing: the active pools and the dispatch.
        metrics: where answered requests are recorded.
        state: the server's draining flag.
        predlog: where sampled requests go (None: nowhere, whatever the models' ``log_rate``).
    """

    def __init__(self, routing: Routing, metrics: Metrics, state: ServerState,
                 predlog: PredictionLog | None = None) -> None:
        self.routing = routing
        self.metrics = metrics
        self.state = state
        self.predlog = predlog
        #: (model, protocol) -> requests received and not yet answered (read at scrape time).
        self.in_flight = metrics.in_flight

    def submit(self, ex: Exchange, model: str, version: str | None, key: str | bytes | None, fmt: int,
               header_len: int, body: bytes, t0: float, headers: Mapping[str, str] | None = None) -> None:
        """Start ``ex``: its reply reaches ``ex.front.reply`` exactly once, maybe before this returns.

        Args:
            model: the model named by the request.
            version: the pinned version, or None to let the traffic split choose.
            key: the routing key (msgpack envelope), or None.
            fmt: the body format (``router.proto.link.FMT_*``).
            header_len: OIP binary JSON header length (0 otherwise).
            body: the request body, passed to the worker untouched.
            t0: when the request was received (``time.monotonic()``).
            headers: the HTTP headers, where the routing key is the header the model names.
        """
        pool = self._lookup(ex, model, version, t0)
        if pool is None:
            return
        if self.state.draining:
            self._refuse(ex, 503, "server is shutting down")
            return
        if headers is not None:
            rk = pool.routing_key
            key = headers.get(rk) if rk is not None else None
        ex.key = key
        ex.fmt = fmt
        ex.header_len = header_len
        ex.body = body
        counted = ex.counted = (model, ex.protocol)
        counts = self.in_flight
        counts[counted] += 1
        try:
            ex.answered = self.routing.dispatch(pool, version, key, fmt, header_len, body, ex, t0)
        except InferenceError as exc:
            counts[counted] -= 1
            ex.counted = None
            self._refuse(ex, exc.status, exc.message)

    def refuse(self, ex: Exchange, model: str, version: str | None, error: InferenceError, t0: float) -> None:
        """Answer a request the front itself refuses after parsing (a bad body format, a body too large).

        An unknown model is still a 404: the same answer whatever else is wrong.
        """
        if self._lookup(ex, model, version, t0) is not None:
            self._refuse(ex, error.status, error.message)

    def _lookup(self, ex: Exchange, model: str, version: str | None, t0: float) -> Pool | None:
        """The model's active pool, with ``ex``'s labels set; None after answering 404 for an unknown model."""
        pool = ex.pool = self.routing.active.get(model)
        ex.model = model
        ex.t0 = t0
        if pool is None:
            ex.answered = ""
            self._refuse(ex, 404, f"unknown model {shown(model)}")
            return None
        # A version label only ever names a configured version: never one a client invented.
        ex.answered = "" if version is None or version not in pool.versions else version
        return pool

    @staticmethod
    def _refuse(ex: Exchange, status: int, message: str) -> None:
        ex.front.reply(ex, status, 0, message.encode())

    def written(self, ex: Exchange, status: int, header_len: int, payload: bytes) -> None:
        """The front has written the reply of ``ex``: record it, sample it for the prediction log, then mirror
        it to the shadows."""
        pool: Pool | None = ex.pool
        if pool is None:  # an unknown model: no label set for a name a client invented
            return
        self.metrics.observe(ex.model, ex.answered, ex.protocol, status, monotonic() - ex.t0)
        sampled = None
        rate = pool.log_rate
        # Only requests that reached a worker (``counted``): one refused before has no version to log under.
        if rate and (rate >= 1.0 or random() < rate) and ex.counted is not None and self.predlog is not None:
            sampled = self.predlog.live(ex, status, header_len, payload)
        if status == 200 and pool.mirror is not None:
            pool.mirror_copy(ex.answered, ex.key, ex.protocol, ex.fmt, ex.header_len, ex.body, header_len, payload,
                             sampled)
