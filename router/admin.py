"""The admin API under ``/admin/``: an HTTP adapter over the control plane, behind a bearer token.

Each handler parses its request, calls :class:`router.control.ControlPlane` and
sends the result's JSON; errors are ``{"error": ...}`` with the error's status.

With a token configured (``ROUTER_ADMIN_TOKEN`` or ``admin.token_file``) every
``/admin/`` request needs ``Authorization: Bearer <token>`` (401 without it,
403 with a wrong one). Without a token only loopback callers are served, and
``router serve`` refuses to bind a non-loopback HTTP address at all.

Browsers are kept out, so that no web page a developer visits can drive the
router (cross-site requests, DNS rebinding): a request whose ``Origin`` is not
the router's own is refused (403), every write must carry
``Content-Type: application/json`` (415: a page can send a cross-site
``text/plain`` POST without asking, but not a JSON one; a push carries one of
:data:`PUSH_TYPES` instead, none of which a page can send without a CORS
preflight either), and without a token
the ``Host`` header must name a loopback address (403: a rebound DNS name
reaches 127.0.0.1 but still says its own name).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .app import body_chunks, read_body
from .audit import actor
from .config import Address, Config
from .limits import Timeouts
from .proto.errors import ConfigError, ReloadRefused, RouterError, shown

if TYPE_CHECKING:
    from .control import ControlPlane

log = logging.getLogger("router.admin")

TOKEN_ENV = "ROUTER_ADMIN_TOKEN"
#: Who the caller says it is, for the audit trail (the CLI sends the login name, the UI the name signed in
#: with). Informational: the token is what authorises.
USER_HEADER = "X-Router-User"


def resolve_token(config: Config, environ: Mapping[str, str] = os.environ) -> str | None:
    """The admin token: ``ROUTER_ADMIN_TOKEN`` wins over ``admin.token_file``.

    Raises:
        ConfigError: the token file cannot be read or is empty.
    """
    token = environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = config.admin.token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"admin.token_file: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"admin.token_file: {path} is empty")
    return token


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_bind(address: Address | None, token: str | None, key: str = "server.http") -> None:
    """Refuse an HTTP listener reachable from other hosts when the admin API has no token.

    Raises:
        ConfigError: naming the address and the remedy.
    """
    if address is not None and token is None and not is_loopback(address.host):
        raise ConfigError(
            f"{key}: refusing to listen on {address} without an admin token: "
            f"set {TOKEN_ENV} or admin.token_file, or bind a loopback address")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json")


_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The body types of a push (a bare model file, a .tar.gz, a .zip): like JSON, none is a "simple" type
#: a cross-site page may send without a CORS preflight (Fetch standard, CORS-safelisted request-header).
PUSH_TYPES = frozenset({"application/octet-stream", "application/gzip", "application/x-gzip", "application/zip"})
_PUSH_ROUTE = "push"
#: Reads that show what ``/metrics`` shows anyone who can reach the listener (models, versions, weights,
#: health, rates, latency, drift): answered without a token, for the UI's read-only view and dashboards.
#: The store's contents, the prediction log, the audit trail and every change need the token.
PUBLIC_READS = frozenset({"status", "traffic", "history", "drift"})


def _host_name(host: str) -> str:
    """``host[:port]`` or ``[v6][:port]`` -> the name or address alone."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def browser_refusal(request: web.Request, token: str | None) -> web.Response | None:
    """The answer to a request a browser on another site may have sent, or None when it is not one."""
    host = request.headers.get("Host", "")
    origin = request.headers.get("Origin")
    if origin is not None and origin.partition("://")[2].rstrip("/") != host:
        return _error(403, f"cross-origin admin request refused (Origin {shown(origin)} is not this router)")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return _error(403, "cross-site admin request refused")
    if token is None and not is_loopback(_host_name(host)):
        return _error(403, f"Host {shown(host)} is not a loopback name: without an admin token the admin API "
                           "answers only requests addressed to localhost")
    # DELETE carries no body, and no page can send it across sites without a CORS preflight.
    if request.method in _WRITES and request.method != "DELETE":
        route = request.match_info.route
        if route.name == _PUSH_ROUTE:
            # Checked on the header itself: aiohttp reads a missing one as application/octet-stream, and a
            # page may post a Blob with no type (so no Content-Type) across sites without a preflight.
            if "Content-Type" not in request.headers or request.content_type not in PUSH_TYPES:
                return _error(415, f"a push needs 'Content-Type: application/octet-stream' (or "
                                   f"{', '.join(sorted(PUSH_TYPES - {'application/octet-stream'}))}; got "
                                   f"{shown(request.headers.get('Content-Type', 'none'))})")
        elif request.content_type != "application/json":
            return _error(415, f"admin changes need 'Content-Type: application/json' (got "
                               f"{shown(request.headers.get('Content-Type', 'none'))})")
    return None


def caller(request: web.Request) -> str:
    """``name@address`` of an admin request (the name from :data:`USER_HEADER`, cleaned and cut), or the address."""
    name = "".join(c for c in request.headers.get(USER_HEADER, "") if c.isprintable() and c not in "@\\")[:64]
    remote = request.remote or "unknown"
    return f"{name.strip()}@{remote}" if name.strip() else remote


def auth_middleware(token: str | None) -> Any:
    """aiohttp middleware of the admin sub-application (so inference never pays for it)."""
    expected = f"Bearer {token}".encode() if token else b""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET" and request.match_info.route.name in PUBLIC_READS:
            return await handler(request)  # what /metrics shows anyone, in another shape: no token
        if token is None:
            if not is_loopback(request.remote):
                return _error(403, "the admin API answers only loopback callers when no admin token is set")
        else:
            given = request.headers.get("Authorization")
            if given is None:
                return _error(401, "missing 'Authorization: Bearer <token>' header")
            # Undecodable bytes arrive as surrogate escapes: compared as the bytes they were, never a 500.
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
                return _error(403, "invalid admin token")
        refused = browser_refusal(request, token)
        if refused is not None:
            return refused
        actor.set(caller(request))  # this request's task: the audit trail reads it
        return await handler(request)

    return guard


def _traffic_body(body: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The ``weights`` and ``shadow`` objects of a traffic change (the values are the control plane's to check).

    Raises:
        ConfigError: the body is not ``{"weights": {...}, "shadow": {...}}`` (either may be left out).
    """
    unknown = sorted(set(body) - {"weights", "shadow"}) if isinstance(body, dict) else []
    if unknown:
        raise ConfigError(f"unknown field {shown(unknown[0])} (allowed: weights, shadow)")
    if not isinstance(body, dict) or not body:
        raise ConfigError('body must be a JSON object like {"weights": {"1": 80, "2": 20}} '
                          'or {"shadow": {"3": 0.5}}, or both')
    out: list[dict[str, Any] | None] = []
    for section in ("weights", "shadow"):
        raw = body.get(section)
        if section in body and (not isinstance(raw, dict) or not raw):
            raise ConfigError(f"{section}: must be a non-empty object of version -> number")
        out.append(raw)
    return out[0], out[1]


_MAX_BODY = 1 << 20  # an admin change is a few hundred bytes of JSON
_TIMEOUTS = web.AppKey("timeouts", Timeouts)


async def _json_body(request: web.Request) -> Any:
    body = await read_body(request, _MAX_BODY, request.app[_TIMEOUTS])
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"malformed JSON: {exc}") from None


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A control-plane error as ``{"error": ...}`` with its status; "nothing changed" where nothing did."""
    try:
        return await handler(request)
    except (ConfigError, ReloadRefused) as exc:
        return _error(exc.status, f"{exc}; nothing changed")
    except RouterError as exc:
        return _error(exc.status, str(exc))


class AdminHandlers:
    """The admin API: each handler parses its request, calls the control plane, and renders the result."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.status().to_json())

    async def get_traffic(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.traffic(request.match_info["model"]).to_json())

    async def put_traffic(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self.control.traffic(name)  # 404 before the body is read
        weights, shadow = _traffic_body(await _json_body(request))
        return web.json_response((await self.control.set_traffic(name, weights, shadow)).to_json())

    async def reload(self, request: web.Request) -> web.Response:
        return web.json_response((await self.control.reload()).to_json())

    async def deploy(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self.control.traffic(name)  # 404 before the body is read
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) != {"versions"} or not isinstance(body["versions"], list):
            raise ConfigError('body must be a JSON object like {"versions": [{"version": "3", "weight": 100}]} '
                              "(the model's whole new version set, keys as in config.toml)")
        return web.json_response((await self.control.deploy(name, body["versions"])).to_json())

    async def rollback(self, request: web.Request) -> web.Response:
        return web.json_response((await self.control.rollback(request.match_info["model"])).to_json())

    async def push(self, request: web.Request) -> web.Response:
        """A version's body (an archive or a bare model file), streamed into the store: 201 stored,
        200 already stored with these contents; ``?description=`` fills meta.json's where it has none."""
        mi = request.match_info
        limit = self.control.config.store.max_push_bytes
        result = await self.control.push(mi["model"], mi["version"],
                                         body_chunks(request, limit, request.app[_TIMEOUTS]),
                                         size=request.content_length,
                                         description=request.query.get("description"))
        if result.created:
            return web.json_response(result.to_json(), status=201)
        return web.json_response(result.to_json())


    async def drift(self, request: web.Request) -> web.Response:
        return web.json_response(self.control.drift(request.match_info["model"]).to_json())

    async def history(self, request: web.Request) -> web.Response:
        """``?series=rate,p99`` (default all), ``?since=`` unix seconds or negative seconds before now."""
        q = request.query
        since = None
        if "since" in q:
            try:
                since = float(q["since"])
                if not math.isfinite(since):
                    raise ValueError
            except ValueError:
                raise ConfigError(f"since: expected unix seconds, or negative seconds before now, got "
                                  f"{shown(q['since'])}") from None
        series = [s for s in q.get("series", "").split(",") if s] or None
        return web.json_response(self.control.history(request.match_info["model"], series, since).to_json())

    async def audit(self, request: web.Request) -> web.Response:
        """``?model=`` (default all), ``?limit=`` (default 100, at most 1000)."""
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= 1000:
                raise ValueError
        except ValueError:
            raise ConfigError(f"limit: expected an integer from 1 to 1000, got {shown(q['limit'])}") from None
        return web.json_response((await self.control.audit_trail(q.get("model") or None, limit)).to_json())

    async def predlog(self, request: web.Request) -> web.Response:
        return web.json_response((await self.control.predlog(request.match_info["model"])).to_json())

    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response((await self.control.versions(request.match_info["model"])).to_json())

    async def remove(self, request: web.Request) -> web.Response:
        mi = request.match_info
        return web.json_response((await self.control.remove(mi["model"], mi["version"])).to_json())

    async def rollout(self, request: web.Request) -> web.Response:
        """``{"weight": W}``, ``{"percent": P}`` or ``{"shadow": F}``, optionally ``"settings": {...}``."""
        mi = request.match_info
        body = await _json_body(request)
        allowed = {"weight", "percent", "shadow", "settings"}
        if not isinstance(body, dict) or not body or set(body) - allowed:
            extra = sorted(set(body) - allowed) if isinstance(body, dict) else []
            raise ConfigError((f"unknown field {shown(extra[0])}; " if extra else "")
                              + 'body must be a JSON object like {"percent": 10}, {"weight": 5} or {"shadow": 0.5}, '
                              'optionally with "settings": {"replicas": 2, ...} (keys of [[models.versions]])')
        settings = body.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise ConfigError("settings: must be an object of [[models.versions]] keys")
        result = await self.control.rollout(mi["model"], mi["version"], weight=body.get("weight"),
                                            percent=body.get("percent"), shadow=body.get("shadow"),
                                            settings=settings)
        return web.json_response(result.to_json(), status=201 if result.action == "create" else 200)

    async def release(self, request: web.Request) -> web.Response:
        return web.json_response((await self.control.release(request.match_info["model"])).to_json())

    async def drop(self, request: web.Request) -> web.Response:
        mi = request.match_info
        return web.json_response((await self.control.drop(mi["model"], mi["version"])).to_json())


def make_admin_app(control: ControlPlane, token: str | None, timeouts: Timeouts) -> web.Application:
    """The ``/admin/`` sub-application over ``control``, guarded by :func:`auth_middleware`."""
    app = web.Application(middlewares=[auth_middleware(token), _errors])
    app[_TIMEOUTS] = timeouts
    h = AdminHandlers(control)
    app.router.add_get("/models", h.models, name="status")
    app.router.add_get("/models/{model}/traffic", h.get_traffic, name="traffic")
    app.router.add_put("/models/{model}/traffic", h.put_traffic)
    app.router.add_post("/reload", h.reload)
    app.router.add_post("/models/{model}/rollback", h.rollback)
    app.router.add_post("/models/{model}/release", h.release)
    app.router.add_post("/models/{model}/deploy", h.deploy)
    app.router.add_get("/models/{model}/versions", h.versions)
    app.router.add_get("/models/{model}/history", h.history, name="history")
    app.router.add_get("/models/{model}/drift", h.drift, name="drift")
    app.router.add_get("/models/{model}/predlog", h.predlog)
    app.router.add_get("/audit", h.audit)
    app.router.add_post("/models/{model}/versions/{version}", h.push, name=_PUSH_ROUTE)
    app.router.add_delete("/models/{model}/versions/{version}", h.remove)
    app.router.add_post("/models/{model}/versions/{version}/rollout", h.rollout)
    app.router.add_post("/models/{model}/versions/{version}/drop", h.drop)
    return app
