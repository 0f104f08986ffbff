"""The admin API under ``/admin/``: traffic weights and status, behind a bearer token.

With a token configured (``ROUTER_ADMIN_TOKEN`` or ``admin.token_file``) every
``/admin/`` request needs ``Authorization: Bearer <token>`` (401 without it,
403 with a wrong one). Without a token only loopback callers are served, and
``router serve`` refuses to bind a non-loopback HTTP address at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import Address, Config
from .configfile import plain_number, write_weights
from .errors import ConfigError

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("router.admin")

TOKEN_ENV = "ROUTER_ADMIN_TOKEN"


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


def check_bind(address: Address | None, token: str | None) -> None:
    """Refuse an HTTP listener reachable from other hosts when the admin API has no token.

    Raises:
        ConfigError: naming the address and the remedy.
    """
    if address is not None and token is None and not is_loopback(address.host):
        raise ConfigError(
            f"server.http: refusing to listen on {address} without an admin token: "
            f"set {TOKEN_ENV} or admin.token_file, or bind a loopback address")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"error": message}).encode(),
                        content_type="application/json")


def auth_middleware(token: str | None) -> Any:
    """aiohttp middleware of the admin sub-application (so inference never pays for it)."""
    expected = f"Bearer {token}".encode() if token else b""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is None:
            if not is_loopback(request.remote):
                return _error(403, "the admin API answers only loopback callers when no admin token is set")
            return await handler(request)
        given = request.headers.get("Authorization")
        if given is None:
            return _error(401, "missing 'Authorization: Bearer <token>' header")
        if not hmac.compare_digest(given.encode(), expected):
            return _error(403, "invalid admin token")
        return await handler(request)

    return guard


def parse_weights(body: Any, versions: Mapping[str, float], shadows: set[str]) -> dict[str, float]:
    """Validate a ``{"weights": {...}}`` document against a model's versions.

    Versions not named keep their weight. Returns the full new weight map.

    Raises:
        ConfigError: naming the problem (unknown version, bad number, all zero).
    """
    if not isinstance(body, dict) or "weights" not in body:
        raise ConfigError('body must be a JSON object like {"weights": {"1": 80, "2": 20}}')
    unknown = sorted(set(body) - {"weights"})
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} (allowed: weights)")
    raw = body["weights"]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("weights: must be a non-empty object of version -> weight")
    new = dict(versions)
    for version, w in raw.items():
        if version not in versions:
            raise ConfigError(f"weights.{version}: unknown version (the model has {', '.join(versions)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w != w or w in (float("inf"), float("-inf")):
            raise ConfigError(f"weights.{version}: must be a finite number, got {w!r}")
        if w < 0:
            raise ConfigError(f"weights.{version}: must be >= 0, got {w}")
        if w > 0 and version in shadows:
            raise ConfigError(f"weights.{version}: a shadow version takes no live traffic")
        new[version] = float(w)
    if not any(w > 0 for w in new.values()):
        raise ConfigError("weights: at least one version needs weight > 0")
    return new


class AdminHandlers:
    """Handlers bound to one :class:`Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._lock = asyncio.Lock()  # one traffic change (and file write) at a time

    def _traffic(self, name: str) -> dict[str, Any]:
        route = self.server.pools.models[name]
        mc = route.config
        return {
            "model": name,
            "routing_key": mc.routing_key,
            "weights": {v.version: plain_number(v.weight) for v in mc.versions},
            "shadow": {v.version: v.shadow for v in mc.versions if v.shadow},
            "live": list(route.table.versions),
        }

    async def get_traffic(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.server.pools.models:
            return _error(404, f"unknown model {name!r}")
        return web.json_response(self._traffic(name))

    async def put_traffic(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        pools = self.server.pools
        if name not in pools.models:
            return _error(404, f"unknown model {name!r}")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error(400, f"malformed JSON: {exc}")
        async with self._lock:
            mc = pools.models[name].config
            try:
                weights = parse_weights(body, {v.version: v.weight for v in mc.versions},
                                        {v.version for v in mc.versions if v.shadow})
            except ConfigError as exc:
                return _error(400, str(exc))
            config = self.server.config
            if config.source is not None:
                # Write first: if the file cannot take the change, nothing changes.
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, write_weights, config.source, name, weights)
                except (ConfigError, OSError) as exc:
                    log.error("traffic change for %s not applied: %s", name, exc)
                    return _error(409 if isinstance(exc, ConfigError) else 500,
                                  f"config file not updated, nothing changed: {exc}")
            self.server.set_config(_with_weights(config, name, weights))
            log.info("traffic for %s: %s", name, ", ".join(f"{v}={plain_number(w)}" for v, w in weights.items()))
        return web.json_response(self._traffic(name))

    async def models(self, request: web.Request) -> web.Response:
        out = []
        for name, route in self.server.pools.models.items():
            t = self._traffic(name)
            t["versions"] = [
                {
                    "version": p.version,
                    "weight": plain_number(p.vc.weight),
                    "shadow": p.vc.shadow,
                    "device": p.vc.device,
                    "workers": [
                        {"replica": r.index, "pid": r.pid, "state": r.state, "live": r.live,
                         "cpus": r.info.get("cpus", list(p.vc.cpus)), "device": r.info.get("device", p.vc.device),
                         "outstanding": r.outstanding, "restarts": r.restarts}
                        for r in p.replicas
                    ],
                }
                for p in route.versions.values()
            ]
            out.append(t)
        return web.json_response({"models": out, "ready": self.server.pools.ready,
                                  "draining": self.server.draining})


def _with_weights(config: Config, model: str, weights: Mapping[str, float]) -> Config:
    models = tuple(
        dataclasses.replace(m, versions=tuple(dataclasses.replace(v, weight=weights[v.version]) for v in m.versions))
        if m.name == model else m
        for m in config.models
    )
    return dataclasses.replace(config, models=models)


def make_admin_app(server: Server) -> web.Application:
    """The ``/admin/`` sub-application, guarded by :func:`auth_middleware`."""
    app = web.Application(middlewares=[auth_middleware(server.admin_token)])
    h = AdminHandlers(server)
    app.router.add_get("/models", h.models)
    app.router.add_get("/models/{model}/traffic", h.get_traffic)
    app.router.add_put("/models/{model}/traffic", h.put_traffic)
    return app
