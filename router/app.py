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
from .lifecycle import Exchange
from .proto.errors import InferenceError, PayloadTooLarge
from .proto.link import FMT_MSGPACK

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .lifecycle import Lifecycle

log = logging.getLogger("router.http")

_HCL = "Inference-Header-Content-Length"


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


class Handlers:
    """Route handlers of the aiohttp application; also the :class:`router.lifecycle.Front` of its requests.

    Args:
        lifecycle: what every inference request does once parsed.
        answers: health and metadata answers.
        registry: the metrics served at ``/metrics``.
        max_body: largest body accepted (``server.max_body_bytes``).
    """

    def __init__(self, lifecycle: Lifecycle, answers: oip.Answers, registry: CollectorRegistry,
                 max_body: int) -> None:
        self.lifecycle = lifecycle
        self.answers = answers
        self.registry = registry
        self.max_body = max_body
        self.loop = asyncio.get_running_loop()

    @staticmethod
    def _answer(answer: tuple[int, bytes]) -> web.Response:
        status, body = answer
        if not body:
            return web.Response(status=status)
        return web.Response(status=status, body=body, content_type="application/json")

    async def live(self, request: web.Request) -> web.Response:
        return self._answer(self.answers.live())

    async def ready(self, request: web.Request) -> web.Response:
        return self._answer(self.answers.ready())

    async def server_metadata(self, request: web.Request) -> web.Response:
        return self._answer(self.answers.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        mi = request.match_info
        return self._answer(self.answers.model_metadata(mi["model"], mi.get("version")))

    async def model_ready(self, request: web.Request) -> web.Response:
        mi = request.match_info
        return self._answer(self.answers.model_ready(mi["model"], mi.get("version")))

    async def infer(self, request: web.Request) -> web.StreamResponse:
        t0 = monotonic()
        mi = request.match_info
        model, version = mi["model"], mi.get("version")
        fut: asyncio.Future[tuple[int, int, bytes]] = self.loop.create_future()
        ex = Exchange(self.lifecycle, self, "http", fut)
        try:
            body = await self._read(request)
            headers = request.headers
            fmt, hlen = oip.body_format(headers.get(_HCL), headers.get("Content-Type", ""), len(body))
        except InferenceError as exc:
            self.lifecycle.refuse(ex, model, version, exc, t0)
        else:
            self.lifecycle.submit(ex, model, version, None, fmt, hlen, body, t0, request.headers)
        status, hlen, payload = await fut
        if status != 200:
            resp = error_response(status, payload.decode(errors="replace"))
        elif hlen:
            resp = web.Response(body=payload, content_type="application/octet-stream", headers={_HCL: str(hlen)})
        else:
            resp = web.Response(body=payload, content_type="application/msgpack" if ex.fmt == FMT_MSGPACK
                                else "application/json")
        try:
            if status == 200 and ex.pool is not None and ex.pool.mirror is not None:
                # Write it now: the copies leave only once the caller has its reply.
                await resp.prepare(request)
                await resp.write_eof()
        finally:
            self.lifecycle.written(ex, status, hlen, payload)
        return resp

    def reply(self, ex: Exchange, status: int, header_len: int, payload: bytes) -> None:
        """Wake the handler waiting for ``ex`` (:class:`router.lifecycle.Front`); it writes, then says so."""
        fut = ex.tag
        if not fut.done():
            fut.set_result((status, header_len, payload))

    async def _read(self, request: web.Request) -> bytes:
        n = request.content_length
        if n is not None and n > self.max_body:
            raise PayloadTooLarge(f"body of {n} bytes exceeds the limit of {self.max_body} bytes")
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"body exceeds the limit of {self.max_body} bytes") from None

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(lifecycle: Lifecycle, answers: oip.Answers, registry: CollectorRegistry, max_body: int,
             admin: web.Application) -> web.Application:
    """The aiohttp application: OIP v2, ``/metrics``, and the ``admin`` sub-application under ``/admin/``."""
    app = web.Application(middlewares=[json_errors], client_max_size=max_body)
    h = Handlers(lifecycle, answers, registry, max_body)
    r = app.router
    r.add_get("/v2/health/live", h.live)
    r.add_get("/v2/health/ready", h.ready)
    r.add_get("/v2", h.server_metadata)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, h.model_metadata)
        r.add_get(base + "/ready", h.model_ready)
        r.add_post(base + "/infer", h.infer)
    r.add_get("/metrics", h.metrics_endpoint)
    app.add_subapp("/admin/", admin)
    return app
