"""The admin API under ``/admin/``: traffic weights, shadows and status, behind a bearer token.

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
from .configfile import plain_number, write_traffic
from .proto.errors import ConfigError, DeployFailed, NoPreviousPool, ReloadRefused

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


def _number(raw: Any, where: str, hi: float | None = None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw or raw in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}: must be a finite number, got {raw!r}")
    if raw < 0:
        raise ConfigError(f"{where}: must be >= 0, got {raw}")
    if hi is not None and raw > hi:
        raise ConfigError(f"{where}: must be <= {hi}, got {raw}")
    return float(raw)


def _section(body: dict, field: str, versions: Mapping[str, float], hi: float | None) -> dict[str, float]:
    raw = body[field]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{field}: must be a non-empty object of version -> number")
    new = dict(versions)
    for version, v in raw.items():
        if version not in versions:
            raise ConfigError(f"{field}.{version}: unknown version (the model has {', '.join(versions)})")
        new[version] = _number(v, f"{field}.{version}", hi)
    return new


def parse_traffic(body: Any, weights: Mapping[str, float],
                  shadows: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Validate a ``{"weights": {...}, "shadow": {...}}`` document (either part may be left out).

    Versions not named keep their weight and shadow fraction. Returns the full
    new weight and shadow maps.

    Raises:
        ConfigError: naming the problem (unknown version, bad number, a version
            that would be both live and shadow, no live version left).
    """
    unknown = sorted(set(body) - {"weights", "shadow"}) if isinstance(body, dict) else []
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r} (allowed: weights, shadow)")
    if not isinstance(body, dict) or not ({"weights", "shadow"} & set(body)):
        raise ConfigError('body must be a JSON object like {"weights": {"1": 80, "2": 20}} '
                          'or {"shadow": {"3": 0.5}}, or both')
    new_w = _section(body, "weights", weights, None) if "weights" in body else dict(weights)
    new_s = _section(body, "shadow", shadows, 1.0) if "shadow" in body else dict(shadows)
    for version in weights:
        if new_w[version] > 0 and new_s[version] > 0:
            field = "shadow" if version in body.get("shadow", ()) else "weights"
            raise ConfigError(
                f"{field}.{version}: a version is either live (weight > 0) or a shadow, not both; "
                f'to make it a shadow send {{"weights": {{"{version}": 0}}, "shadow": {{"{version}": ...}}}}')
    if not any(w > 0 for w in new_w.values()):
        raise ConfigError("weights: at least one version needs weight > 0")
    return new_w, new_s


class AdminHandlers:
    """Handlers bound to one :class:`Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server

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
        async with self.server.change_lock:  # one change (and file write) at a time
            mc = pools.models[name].config
            try:
                weights, shadows = parse_traffic(body, {v.version: v.weight for v in mc.versions},
                                                 {v.version: v.shadow for v in mc.versions})
            except ConfigError as exc:
                return _error(400, str(exc))
            config = self.server.config
            if config.source is not None:
                # Write first: if the file cannot take the change, nothing changes.
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, write_traffic, config.source, name, weights, shadows)
                except (ConfigError, OSError) as exc:
                    log.error("traffic change for %s not applied: %s", name, exc)
                    return _error(409 if isinstance(exc, ConfigError) else 500,
                                  f"config file not updated, nothing changed: {exc}")
            self.server.set_config(_with_traffic(config, name, weights, shadows))
            log.info("traffic for %s: %s", name, ", ".join(
                f"{v}={plain_number(w)}" if not shadows[v] else f"{v}=shadow {shadows[v]:g}"
                for v, w in weights.items()))
        return web.json_response(self._traffic(name))

    async def reload(self, request: web.Request) -> web.Response:
        try:
            plan = await self.server.reload()
        except (ConfigError, ReloadRefused) as exc:
            return _error(exc.status, f"{exc}; nothing changed")
        except DeployFailed as exc:
            return _error(exc.status, str(exc))
        return web.json_response({"reloaded": str(self.server.config.source), "changes": list(plan.live),
                                  "deployed": {m: list(why) for m, why in plan.deploy.items()}})

    def _swapped(self, name: str, swap: float) -> web.Response:
        route = self.server.pools.models[name]
        return web.json_response({"model": name, "active": route.pool, "swap_us": round(swap * 1e6, 1),
                                  "versions": [v.version for v in route.config.versions]})

    async def deploy(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.server.pools.models:
            return _error(404, f"unknown model {name!r}")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            return _error(400, f"malformed JSON: {exc}")
        if not isinstance(body, dict) or set(body) != {"versions"} or not isinstance(body["versions"], list):
            return _error(400, 'body must be a JSON object like {"versions": [{"version": "3", "weight": 100}]} '
                               "(the model's whole new version set, keys as in config.toml)")
        try:
            swap = await self.server.deploy(name, body["versions"])
        except ConfigError as exc:
            return _error(400, f"{exc}; nothing changed")
        except DeployFailed as exc:
            return _error(exc.status, str(exc))
        return self._swapped(name, swap)

    async def rollback(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name not in self.server.pools.models:
            return _error(404, f"unknown model {name!r}")
        try:
            swap = await self.server.rollback(name)
        except NoPreviousPool as exc:
            return _error(exc.status, str(exc))
        return self._swapped(name, swap)

    async def models(self, request: web.Request) -> web.Response:
        out = []
        for name, route in self.server.pools.models.items():
            t = self._traffic(name)
            prev = self.server.pools.previous.get(name)
            t["pool"] = route.pool
            t["previous"] = ({"pool": prev.pool, "versions": [v.version for v in prev.config.versions]}
                             if prev is not None else None)
            t["versions"] = [
                {
                    "version": p.version,
                    "weight": plain_number(p.vc.weight),
                    "shadow": p.vc.shadow,
                    "device": p.vc.device,
                    **({"shadow_queue": {"outstanding": route.shadows[p.version].outstanding,
                                         "limit": p.vc.shadow_queue,
                                         "last_error": route.shadows[p.version].last_error}}
                       if p.vc.shadow else {}),
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


def _with_traffic(config: Config, model: str, weights: Mapping[str, float], shadows: Mapping[str, float]) -> Config:
    models = tuple(
        dataclasses.replace(m, versions=tuple(
            dataclasses.replace(v, weight=weights[v.version], shadow=shadows[v.version]) for v in m.versions))
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
    app.router.add_post("/reload", h.reload)
    app.router.add_post("/models/{model}/rollback", h.rollback)
    app.router.add_post("/models/{model}/deploy", h.deploy)
    return app
