"""The Open Inference Protocol's non-inference answers, for both HTTP fronts.

Each function returns ``(status, body)`` with a JSON body (empty for a bare
200), so the hot-path front (:mod:`router.http`) and the aiohttp application
(:mod:`router.app`) answer health and metadata requests byte for byte alike.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import __version__
from .proto.errors import BadRequest, NotFound
from .proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK

if TYPE_CHECKING:
    from .pool import ModelRoute, VersionPool
    from .server import Server

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
                             f"got {header_length!r}")
        return FMT_BINARY, hlen
    return (FMT_MSGPACK if content_type.startswith(MSGPACK_TYPES) else FMT_JSON), 0


def error_body(message: str) -> bytes:
    """``{"error": message}``: the only error shape callers ever see."""
    return json.dumps({"error": message}).encode()


def live(server: Server) -> tuple[int, bytes]:
    return 200, b""


def ready(server: Server) -> tuple[int, bytes]:
    if server.draining:
        return 503, error_body("server is shutting down")
    if not server.started or not server.pools.ready:
        return 503, error_body("not every worker is live yet")
    return 200, b""


def server_metadata(server: Server) -> tuple[int, bytes]:
    return 200, _SERVER_METADATA


def _route(server: Server, model: str, version: str | None) -> tuple[ModelRoute, VersionPool | None]:
    route = server.pools.route(model)
    if version is None:
        return route, None
    pool = route.versions.get(version)
    if pool is None:
        raise NotFound(f"unknown version {version!r} of model {model!r}")
    return route, pool


def model_metadata(server: Server, model: str, version: str | None) -> tuple[int, bytes]:
    try:
        route, pool = _route(server, model, version)
    except NotFound as exc:
        return 404, error_body(str(exc))
    if pool is None:
        # The heaviest-weighted version speaks for the model: it answers most callers.
        pool = max(route.versions.values(), key=lambda p: p.vc.weight)
        versions = [v for v, p in route.versions.items() if p.vc.weight > 0]
    else:
        versions = [pool.version]
    meta = pool.meta
    body: dict[str, Any] = {
        "name": route.name,
        "versions": versions,
        "platform": meta.platform,
        "inputs": [t.to_json() for t in meta.inputs],
        "outputs": [t.to_json() for t in meta.outputs],
    }
    return 200, json.dumps(body).encode()


def model_ready(server: Server, model: str, version: str | None) -> tuple[int, bytes]:
    try:
        route, pool = _route(server, model, version)
    except NotFound as exc:
        return 404, error_body(str(exc))
    ok = bool(pool.live) if pool is not None else len(route.table) > 0
    if not ok:
        return 503, error_body("model has no live worker")
    if server.draining:
        return 503, error_body("server is shutting down")
    return 200, b""
