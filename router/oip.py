"""The Open Inference Protocol's non-inference answers, for both HTTP fronts.

:class:`Answers` returns ``(status, body)`` with a JSON body (empty for a bare
200), so the hot-path front (:mod:`router.http`) and the aiohttp application
(:mod:`router.app`) answer health and metadata requests byte for byte alike.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import __version__
from .proto.errors import BadRequest, NotFound, shown
from .proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK

if TYPE_CHECKING:
    from .routing import Pool, ReplicaSet, Routing
    from .state import ServerState

_SERVER_METADATA = json.dumps({"name": "model-router", "version": __version__,
                               "extensions": ["binary_tensor_data", "msgpack"]}).encode()


MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


def body_format(header_length: str | None, content_type: str, size: int) -> tuple[int, int]:
    """``(format, json_header_len)`` of an infer body, from its headers, as both fronts read them.

    ``Inference-Header-Content-Length`` present: OIP binary; a msgpack
    Content-Type: msgpack; anything else, no Content-Type included (tritonclient
    sends none): OIP JSON.

    Raises:
        BadRequest: the header length is not an integer in ``0..size``.
    """
    if header_length is not None:
        try:
            hlen = int(header_length)
        except ValueError:
            hlen = -1
        if not 0 <= hlen <= size:
            raise BadRequest(f"Inference-Header-Content-Length must be an integer in 0..{size} (the body length), "
                             f"got {shown(header_length)}")
        return FMT_BINARY, hlen
    return (FMT_MSGPACK if content_type.startswith(MSGPACK_TYPES) else FMT_JSON), 0


def error_body(message: str) -> bytes:
    """``{"error": message}``: the only error shape callers ever see."""
    return json.dumps({"error": message}).encode()


class Answers:
    """Health and metadata answers, read from the server's state and the active pools.

    Each method returns ``(status, body)``: a JSON body, or ``b""`` for a bare 200.
    """

    def __init__(self, state: ServerState, routing: Routing) -> None:
        self.state = state
        self.routing = routing

    def live(self) -> tuple[int, bytes]:
        return 200, b""

    def ready(self) -> tuple[int, bytes]:
        if self.state.draining or self.state.stopping:
            return 503, error_body("server is shutting down")
        if not self.state.started:
            return 503, error_body("starting: not every worker is live yet")
        if not self.routing.ready:
            down = sorted(name for name, pool in self.routing.active.items() if not len(pool.table))
            return 503, error_body(f"model(s) with no live worker to route to: {', '.join(down)}")
        return 200, b""

    def server_metadata(self) -> tuple[int, bytes]:
        return 200, _SERVER_METADATA

    def _lookup(self, model: str, version: str | None) -> tuple[Pool, ReplicaSet | None]:
        pool = self.routing.active.get(model)
        if pool is None:
            raise NotFound(f"unknown model {shown(model)}")
        if version is None:
            return pool, None
        replicas = pool.versions.get(version)
        if replicas is None:
            raise NotFound(f"unknown version {shown(version)} of model {model!r}")
        return pool, replicas

    def model_metadata(self, model: str, version: str | None) -> tuple[int, bytes]:
        try:
            pool, replicas = self._lookup(model, version)
        except NotFound as exc:
            return 404, error_body(str(exc))
        if replicas is None:
            # The heaviest-weighted version speaks for the model: it answers most callers.
            replicas = max(pool.versions.values(), key=lambda s: s.vc.weight)
            versions = [v for v, s in pool.versions.items() if s.vc.weight > 0]
        else:
            versions = [replicas.version]
        meta = replicas.meta
        body: dict[str, Any] = {
            "name": pool.name,
            "versions": versions,
            "platform": meta.platform,
            "inputs": [t.to_json() for t in meta.inputs],
            "outputs": [t.to_json() for t in meta.outputs],
        }
        return 200, json.dumps(body).encode()

    def model_ready(self, model: str, version: str | None) -> tuple[int, bytes]:
        try:
            pool, replicas = self._lookup(model, version)
        except NotFound as exc:
            return 404, error_body(str(exc))
        ok = bool(replicas.live) if replicas is not None else len(pool.table) > 0
        if not ok:
            return 503, error_body("model has no live worker")
        if self.state.draining:
            return 503, error_body("server is shutting down")
        return 200, b""
