"""The HTTP front: Open Inference Protocol v2 (JSON, binary tensors, msgpack bodies) and /metrics.

The handlers read only the path, the headers and the body's length; the body
goes to a worker as bytes and the worker's reply comes back as bytes.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import oip
from .admin import make_admin_app
from .proto.errors import InferenceError, PayloadTooLarge, WorkerUnavailable

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("router.http")

_HCL = "Inference-Header-Content-Length"
SERVER_KEY: web.AppKey[Server] = web.AppKey("server")


def error_response(status: int, message: str) -> web.Response:
    """``{"error": message}`` with ``status``: the only error shape callers ever see."""
    return web.Response(status=status, body=oip.error_body(message), content_type="application/json")


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn aiohttp's HTML/text errors (404 route, 405, 413) into ``{"error"}`` bodies."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason if exc.text is None or exc.text.startswith(str(exc.status))
                              else exc.text)


class _Call:
    """What a mirrored copy needs to know about the live request it copies."""

    __slots__ = ("version", "answered", "key", "kind", "hlen", "body")

    def __init__(self, version: str | None) -> None:
        self.version = version
        self.answered = version or ""
        self.key: str | None = None
        self.kind = 0
        self.hlen = 0
        self.body = b""


class Handlers:
    """Route handlers bound to one :class:`Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pools = server.pools
        self.metrics = server.metrics
        self.max_body = server.config.server.max_body_bytes
        self.loop = asyncio.get_running_loop()

    @staticmethod
    def _answer(answer: tuple[int, bytes]) -> web.Response:
        status, body = answer
        if not body:
            return web.Response(status=status)
        return web.Response(status=status, body=body, content_type="application/json")

    async def live(self, request: web.Request) -> web.Response:
        return self._answer(oip.live(self.server))

    async def ready(self, request: web.Request) -> web.Response:
        return self._answer(oip.ready(self.server))

    async def server_metadata(self, request: web.Request) -> web.Response:
        return self._answer(oip.server_metadata(self.server))

    async def model_metadata(self, request: web.Request) -> web.Response:
        mi = request.match_info
        return self._answer(oip.model_metadata(self.server, mi["model"], mi.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        mi = request.match_info
        return self._answer(oip.model_ready(self.server, mi["model"], mi.get("version")))

    async def infer(self, request: web.Request) -> web.StreamResponse:
        t0 = monotonic()
        mi = request.match_info
        model = mi["model"]
        version = mi.get("version")
        route = self.pools.models.get(model)
        if route is None:
            return error_response(404, f"unknown model {model!r}")
        counts = self.metrics.in_flight
        ckey = (model, "http")
        counts[ckey] += 1
        call = _Call(version)
        try:
            try:
                status, hlen, payload = await self._infer(request, route, call, t0)
            except InferenceError as exc:
                status, hlen, payload = exc.status, 0, exc.message.encode()
            if status != 200:
                resp = error_response(status, payload.decode(errors="replace"))
            elif hlen:
                resp = web.Response(body=payload, content_type="application/octet-stream",
                                    headers={_HCL: str(hlen)})
            else:
                resp = web.Response(body=payload, content_type=self._reply_type(request))
        finally:
            counts[ckey] -= 1
        self.metrics.observe(model, call.answered, "http", status, monotonic() - t0)
        if status == 200 and route.mirror is not None:
            # The copies leave only once the caller has its reply.
            await resp.prepare(request)
            await resp.write_eof()
            route.mirror_copy(call.answered, call.key, "http", call.kind, call.hlen, call.body, hlen, payload)
        return resp

    @staticmethod
    def _reply_type(request: web.Request) -> str:
        ct = request.headers.get("Content-Type", "")
        return "application/msgpack" if ct.startswith(oip.MSGPACK_TYPES) else "application/json"

    async def _infer(self, request: web.Request, route: Any, call: _Call, t0: float) -> tuple[int, int, bytes]:
        if self.server.draining:
            raise WorkerUnavailable("server is shutting down")
        n = request.content_length
        if n is not None and n > self.max_body:
            raise PayloadTooLarge(f"body of {n} bytes exceeds the limit of {self.max_body} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"body exceeds the limit of {self.max_body} bytes") from None
        headers = request.headers
        kind, hlen = oip.body_format(headers.get(_HCL), headers.get("Content-Type", ""), len(body))
        rk = route.routing_key
        key = headers.get(rk) if rk is not None else None
        fut: asyncio.Future[tuple[int, int, bytes]] = self.loop.create_future()

        def done(status: int, hl: int, payload: bytes) -> None:
            if not fut.done():
                fut.set_result((status, hl, payload))

        call.answered = self.pools.submit(route, call.version, key, kind, hlen, body, done, t0)
        call.key, call.kind, call.hlen, call.body = key, kind, hlen, body
        return await fut

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(server: Server) -> web.Application:
    """The aiohttp application serving OIP v2 and /metrics for ``server``."""
    app = web.Application(middlewares=[json_errors], client_max_size=server.config.server.max_body_bytes)
    app[SERVER_KEY] = server
    h = Handlers(server)
    r = app.router
    r.add_get("/v2/health/live", h.live)
    r.add_get("/v2/health/ready", h.ready)
    r.add_get("/v2", h.server_metadata)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, h.model_metadata)
        r.add_get(base + "/ready", h.model_ready)
        r.add_post(base + "/infer", h.infer)
    r.add_get("/metrics", h.metrics_endpoint)
    app.add_subapp("/admin/", make_admin_app(server))
    return app
