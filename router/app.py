"""The aiohttp application: what the hot-path front (:mod:`router.http`) hands over.

It serves the whole HTTP surface (OIP v2, ``/metrics``, the admin API) for the
connections handed to it: a path the hot path does not take, a chunked body,
a head the strict parser refuses. The handlers read only the path, the headers
and the body; the body goes to a worker as bytes and the worker's reply comes
back as bytes. Every error is ``{"error": ...}`` JSON, aiohttp's own included
(:class:`FallbackHandler`), and a client's bad input is never logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from time import monotonic
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import oip, ui
from .lifecycle import Exchange
from .limits import Listener, Timeouts
from .proto import GENERATION_HEADER
from .proto.errors import BadRequest, InferenceError, PayloadTooLarge, RequestTimeout, shown
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
    """Turn aiohttp's HTML/text errors (404 route, 405, 413) into ``{"error"}`` bodies; close after each answer.

    A handed-over connection is closed once answered: its next request goes to the
    hot path again, and no second head is read here, where no head timeout runs.
    """
    try:
        resp = await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        resp = error_response(413, exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_response(exc.status, exc.reason if exc.text is None or exc.text.startswith(str(exc.status))
                              else exc.text)
    resp.force_close()
    return resp


class FallbackHandler(RequestHandler):
    """aiohttp's connection protocol for the connections the hot path hands over.

    It keeps the listener's count of the connection, answers aiohttp's own errors
    (a header line over 8,190 bytes, a malformed chunk) as ``{"error": ...}`` JSON, and
    logs a client's bad input at debug level: only the router's own failures are errors.
    """

    def __init__(self, listener: Listener, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.listener = listener

    def connection_lost(self, exc: BaseException | None) -> None:
        self.listener.release()
        super().connection_lost(exc)

    def no_linger(self) -> None:
        """Close right after this answer: the rest of a stalled body is not waited for."""
        self._lingering_time = 0.0

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling %s %s", request.method, shown(request.path), exc_info=exc)
        else:
            log.debug("bad request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun: no error response can follow")
        text = HTTPStatus(status).phrase if status >= 500 or not message else message
        resp = error_response(status, text[:500])
        resp.force_close()
        return resp


def _no_linger(request: web.Request) -> None:
    proto = request.protocol
    if isinstance(proto, FallbackHandler):
        proto.no_linger()


async def body_chunks(request: web.Request, max_body: int, timeouts: Timeouts) -> AsyncIterator[bytes]:
    """The request's body as it arrives, chunk by chunk, within ``max_body`` and the body timeout
    (a slow body must keep moving: ``body_timeout_s`` + 1 s per ``body_min_rate`` bytes received).

    A ``Content-Length`` over ``max_body`` is refused before any byte is read. The consumer may
    pause between chunks (a push writes each block to disk): the time it takes counts against
    the client, as TCP slows the client down meanwhile.

    Raises:
        PayloadTooLarge: over ``max_body``.
        RequestTimeout: the body stopped moving (the connection is closed after the answer).
        BadRequest: the body is malformed (a bad chunk, shorter than its length).
    """
    n = request.content_length
    if n is not None and n > max_body:
        raise PayloadTooLarge(f"body of {n} bytes exceeds the limit of {max_body} bytes")
    content = request.content
    got = 0
    start = monotonic()
    while True:
        left = timeouts.body + got / timeouts.body_rate - (monotonic() - start) if timeouts.body else None
        if left is not None and left <= 0:
            _no_linger(request)
            raise RequestTimeout("request body not received in time (body timeout)")
        try:
            chunk = await asyncio.wait_for(content.readany(), left)
        except TimeoutError:
            _no_linger(request)
            raise RequestTimeout("request body not received in time (body timeout)") from None
        except web.RequestPayloadError as exc:
            raise BadRequest(f"malformed request body: {exc}") from None
        if not chunk:
            return
        got += len(chunk)
        if got > max_body:
            raise PayloadTooLarge(f"body exceeds the limit of {max_body} bytes")
        yield chunk


async def read_body(request: web.Request, max_body: int, timeouts: Timeouts) -> bytes:
    """The request's body, whole, within ``max_body`` and the body timeout (:func:`body_chunks`).

    Raises:
        PayloadTooLarge, RequestTimeout, BadRequest: as :func:`body_chunks`.
    """
    return b"".join([chunk async for chunk in body_chunks(request, max_body, timeouts)])


class Handlers:
    """Route handlers of the aiohttp application; also the :class:`router.lifecycle.Front` of its requests.

    Args:
        lifecycle: what every inference request does once parsed.
        answers: health and metadata answers.
        registry: the metrics served at ``/metrics``.
        max_body: largest body accepted (``server.max_body_bytes``).
        timeouts: the body timeout (:mod:`router.limits`).
    """

    def __init__(self, lifecycle: Lifecycle, answers: oip.Answers, registry: CollectorRegistry,
                 max_body: int, timeouts: Timeouts) -> None:
        self.lifecycle = lifecycle
        self.answers = answers
        self.registry = registry
        self.max_body = max_body
        self.timeouts = timeouts
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
            body = await read_body(request, self.max_body, self.timeouts)
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

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(lifecycle: Lifecycle, answers: oip.Answers, registry: CollectorRegistry, max_body: int,
             timeouts: Timeouts, admin: web.Application) -> web.Application:
    """The aiohttp application: OIP v2, ``/metrics``, and the ``admin`` sub-application under ``/admin/``."""
    app = web.Application(middlewares=[json_errors], client_max_size=max_body)
    h = Handlers(lifecycle, answers, registry, max_body, timeouts)
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
    ui.add_routes(app)  # the web UI's built files (router/ui.py)
    state = lifecycle.state

    async def generation(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[GENERATION_HEADER] = str(state.generation)  # as the hot path's replies say it

    app.on_response_prepare.append(generation)
    return app
