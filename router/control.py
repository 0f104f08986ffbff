"""The control plane: every operation that changes what serves, one at a time.

Set traffic, reload, deploy and roll back all go through :class:`ControlPlane`,
which owns the change lock, validates a change with the config loader's own
rules (:mod:`router.config`), writes ``config.toml`` first (so a change the
file cannot take changes nothing, and a restart never undoes one), then
applies it to the routing tables or the pools (:mod:`router.deployments`).
Each operation returns a result object (:mod:`router.results`); the admin
API, the CLI and the UI only render them.

Pushing a version into the model store (:meth:`ControlPlane.push`) changes no
serving state: it takes no lock (a 2 GiB upload must not hold up a traffic
change), and the store itself settles concurrent pushes of one version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from . import configfile, reload
from .config import Config, ModelConfig, VersionConfig, parse_model, parse_value
from .configfile import plain_number
from .deployments import Deployments
from .metrics import Metrics
from .proto.errors import (
    BadArchive,
    ConfigError,
    ConfigFileError,
    DeployFailed,
    NotFound,
    ReloadRefused,
    UploadTooLarge,
    ValidationFailed,
    shown,
)
from .results import PushedVersion, ReloadResult, StatusResult, SwapResult, TrafficResult
from .routing import Pool, Routing
from .state import ServerState
from .store import DEFAULT_LIMITS, Staged, Upload, commit, prepare

log = logging.getLogger("router.control")


class ControlPlane:
    """The one place that changes what serves.

    Args:
        deployments: the pools (build, swap, rollback) and the running configuration.
        routing: the active pools (read for results).
        metrics: where reloads are counted.
        state: the server's readiness and draining flags (read for status).
    """

    def __init__(self, deployments: Deployments, routing: Routing, metrics: Metrics, state: ServerState) -> None:
        self.deployments = deployments
        self.routing = routing
        self.metrics = metrics
        self.state = state
        #: One change at a time: a traffic change, reload, deploy or rollback, and its file write.
        self.lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        """The configuration that serves now."""
        return self.deployments.config

    def _pool(self, model: str) -> Pool:
        pool = self.routing.active.get(model)
        if pool is None:
            raise NotFound(f"unknown model {shown(model)}")
        return pool

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # -- reading -------------------------------------------------------------------------------------------

    def traffic(self, model: str) -> TrafficResult:
        """The model's weights and shadow fractions.

        Raises:
            NotFound: unknown model.
        """
        pool = self._pool(model)
        mc = pool.config
        return TrafficResult(model, mc.routing_key, {v.version: plain_number(v.weight) for v in mc.versions},
                             {v.version: v.shadow for v in mc.versions if v.shadow}, list(pool.table.versions))

    def status(self) -> StatusResult:
        """Every model's traffic, pools, versions and workers."""
        out = []
        for name, pool in self.routing.active.items():
            t = self.traffic(name).to_json()
            prev = self.deployments.previous.get(name)
            t["pool"] = pool.color
            t["previous"] = ({"pool": prev.color, "versions": [v.version for v in prev.config.versions]}
                             if prev is not None else None)
            t["versions"] = [
                {
                    "version": s.version,
                    "weight": plain_number(s.vc.weight),
                    "shadow": s.vc.shadow,
                    "device": s.vc.device,
                    **({"shadow_queue": {"outstanding": pool.shadows[s.version].outstanding,
                                         "limit": s.vc.shadow_queue,
                                         "last_error": pool.shadows[s.version].last_error}}
                       if s.vc.shadow else {}),
                    "workers": [
                        {"replica": r.index, "pid": r.pid, "state": r.state.value, "live": r.live,
                         "cpus": r.info.get("cpus", list(s.vc.cpus)), "device": r.info.get("device", s.vc.device),
                         "outstanding": r.outstanding, "restarts": r.restarts}
                        for r in s.replicas
                    ],
                }
                for s in pool.versions.values()
            ]
            out.append(t)
        return StatusResult(out, self.state.started and self.routing.ready, self.state.draining)

    # -- changes -------------------------------------------------------------------------------------------

    async def set_traffic(self, model: str, weights: Mapping[str, Any] | None = None,
                          shadow: Mapping[str, Any] | None = None) -> TrafficResult:
        """Set the weights and/or shadow fractions of some versions; the others keep theirs. No worker restarts.

        Raises:
            NotFound: unknown model.
            ConfigError: a value or the resulting model is invalid (the message names
                ``weights.<version>`` or ``shadow.<version>``); nothing changed.
            ConfigFileError: the file cannot take the change (409) or cannot be written (500);
                nothing changed.
        """
        async with self.lock:
            mc = self._pool(model).config
            new = self._with_traffic(mc, weights or {}, shadow or {})
            source = self.config.source
            if source is not None:  # write first: if the file cannot take the change, nothing changes
                try:
                    await self._in_thread(configfile.write_traffic, source, model,
                                          {v.version: v.weight for v in new.versions},
                                          {v.version: v.shadow for v in new.versions})
                except (ConfigError, OSError) as exc:
                    log.error("traffic change for %s not applied: %s", model, exc)
                    raise ConfigFileError(f"config file not updated, nothing changed: {exc}",
                                          409 if isinstance(exc, ConfigError) else 500) from None
            config = dataclasses.replace(self.config, models=tuple(
                new if m.name == model else m for m in self.config.models))
            self.deployments.apply_traffic(config)
            log.info("traffic for %s: %s", model, ", ".join(
                f"{v.version}={plain_number(v.weight)}" if not v.shadow else f"{v.version}=shadow {v.shadow:g}"
                for v in new.versions))
        return self.traffic(model)

    @staticmethod
    def _with_traffic(mc: ModelConfig, weights: Mapping[str, Any], shadow: Mapping[str, Any]) -> ModelConfig:
        """``mc`` with the given weights and shadow fractions, validated by the config loader's rules."""
        versions = {v.version: v.to_table() for v in mc.versions}
        for section, key, values in (("weights", "weight", weights), ("shadow", "shadow", shadow)):
            for version, value in values.items():
                if version not in versions:
                    raise ConfigError(f"{section}.{version}: unknown version (the model has {', '.join(versions)})")
                versions[version][key] = parse_value(VersionConfig, key, value, f"{section}.{version}")
        raw: dict[str, Any] = {"name": mc.name, "versions": list(versions.values()),
                               "keep_previous_s": mc.keep_previous_s, "nonfinite": mc.nonfinite}
        if mc.routing_key is not None:
            raw["routing_key"] = mc.routing_key
        return parse_model(raw, "traffic")

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply what changed: traffic live, workers blue-green.

        Raises:
            ConfigError: the file is invalid (the message names the key path); nothing changed.
            ReloadRefused: it changes what needs a restart; nothing changed.
            DeployFailed: a model's standby pool failed; that model keeps its
                active pool, every other change was applied.
        """
        async with self.lock:
            running_config = self.config
            source = running_config.source
            if source is None:
                raise ConfigError("this daemon was not started from a config file: nothing to reload")
            try:
                new, digests = await self._in_thread(reload.read, source, running_config)
            except ConfigError as exc:
                self.metrics.reloads.labels("invalid").inc()
                msg = str(exc)
                log.error("reload: %s; nothing changed", msg if msg.startswith(str(source)) else f"{source}: {msg}")
                raise
            running = {(m, v): s.meta.sha256 for m, p in self.routing.active.items() for v, s in p.versions.items()}
            plan = reload.plan(running_config, new, digests, running)
            if plan.refused:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload of %s refused, nothing changed: %s", source, "; ".join(plan.refused))
                raise ReloadRefused("; ".join(plan.refused))
            failed: list[str] = []
            deployed: list[str] = []
            for i, mc in enumerate(new.models):
                if mc.name in plan.deploy:
                    log.info("reload: deploying %s (%s)", mc.name, "; ".join(plan.deploy[mc.name]))
                    try:
                        await self.deployments.deploy(mc, f"models[{i}]")
                        deployed.append(mc.name)
                    except (ConfigError, DeployFailed) as exc:
                        log.error("reload: %s", exc)
                        failed.append(str(exc))
            # A deployed model runs the file's config; one whose deploy failed keeps what it ran.
            active = self.routing.active
            new = dataclasses.replace(new, models=tuple(
                active[m.name].config if m.name in plan.deploy else m for m in new.models))
            self.deployments.apply_traffic(new)
            self.metrics.reloads.labels("failed" if failed else "ok").inc()
            log.info("reloaded %s: %s", source, "; ".join([*plan.live, *(f"deployed {m}" for m in deployed)])
                     if plan.live or deployed else "nothing applied (a deploy failed)" if failed else "no change")
            if failed:
                raise DeployFailed("; ".join(failed))
            return ReloadResult(str(source), list(plan.live), {m: list(why) for m, why in plan.deploy.items()})

    async def deploy(self, model: str, versions: list[Any]) -> SwapResult:
        """Deploy a new version set of ``model`` blue-green and write it into the config file.

        The file is written first and put back if the deploy fails, so it always says what serves.

        Raises:
            NotFound: unknown model.
            ConfigError: the versions are invalid, a model file is missing, or the
                file cannot take them; nothing changed.
            DeployFailed: the standby pool failed; nothing changed.
        """
        async with self.lock:
            old = self._pool(model).config
            raw: dict[str, Any] = {"name": model, "versions": versions, "keep_previous_s": old.keep_previous_s,
                                   "nonfinite": old.nonfinite}
            if old.routing_key is not None:
                raw["routing_key"] = old.routing_key
            mc = parse_model(raw, "deploy")
            source = self.config.source
            before = None
            if source is not None:
                before = await self._in_thread(source.read_text)
                await self._in_thread(configfile.write_versions, source, model, versions)
            try:
                swap = await self.deployments.deploy(mc, "deploy")
            except BaseException:
                if source is not None and before is not None:
                    await self._in_thread(configfile.replace_text, source, before)
                raise
            return self._swapped("deploy", model, swap)

    async def rollback(self, model: str) -> SwapResult:
        """Make the model's previous pool active again, and write its version set back into the file.

        Raises:
            NotFound: unknown model.
            NoPreviousPool: none is kept warm.
        """
        async with self.lock:
            self._pool(model)
            swap = self.deployments.rollback(model)
            source = self.config.source
            if source is not None:  # the file says what serves
                versions = [v.to_table() for v in self.routing.active[model].config.versions]
                try:
                    await self._in_thread(configfile.write_versions, source, model, versions)
                except (ConfigError, OSError) as exc:
                    log.error("rolled back %s, but %s was not updated: %s", model, source, exc)
            return self._swapped("rollback", model, swap)

    def _swapped(self, action: Any, model: str, swap: float) -> SwapResult:
        pool = self.routing.active[model]
        return SwapResult(action, model, pool.color, round(swap * 1e6, 1), [v.version for v in pool.config.versions])

    # -- the model store -----------------------------------------------------------------------------------

    async def push(self, model: str, version: str, chunks: AsyncIterator[bytes], *, size: int | None = None,
                   description: str | None = None) -> PushedVersion:
        """Receive a version into the model store, validate it in a fresh process, and store it.

        The body streams to ``<store>/.staging/`` (never held whole); a version already stored with
        the same contents is answered at once (``created`` false); otherwise ``python -m runtime
        validate`` loads it and runs its example under ``store.validate_timeout_s`` and
        ``store.validate_memory_mb`` before it is committed. Nothing is left in staging on any error.
        The model need not be in ``config.toml``: the store is apart from what serves.

        Args:
            chunks: the body (:func:`router.app.body_chunks`), consumed here.
            size: its announced length, if any: over ``store.max_push_bytes`` is refused unread.
            description: ``meta.json``'s ``description`` where the push's own gives none.

        Raises:
            BadArchive: 400, a bad name, archive or ``meta.json`` (naming what).
            UploadTooLarge: 413, over ``store.max_push_bytes`` or the unpacking limits.
            VersionExists: 409, the version is stored with other contents.
            ValidationFailed: 422, the validation failed (its reason and error).
            RequestTimeout, BadRequest, PayloadTooLarge: from ``chunks``.
        """
        sc = self.config.store
        if size is not None and size > sc.max_push_bytes:
            raise UploadTooLarge(f"push of {size} bytes exceeds store.max_push_bytes ({sc.max_push_bytes})")
        limits = dataclasses.replace(DEFAULT_LIMITS, max_upload_bytes=sc.max_push_bytes)
        up = await self._in_thread(Upload.open, sc.path, model, version, limits)
        try:
            async for chunk in chunks:
                await up.write(chunk)
            await up.finish()
        except BaseException:
            await _cleanup(up.discard)
            raise
        staged: Staged = await self._in_thread(prepare, up)  # removes the staging directory on error
        try:
            if staged.same:
                result = await self._in_thread(commit, staged, None)
            else:
                extra = _described(staged, description)
                extra.update(await self._validate(staged))
                result = await self._in_thread(commit, staged, extra)
        except BaseException:
            await _cleanup(staged.discard)
            raise
        log.info("push of %s version %s: %s", model, version, "stored" if result.created else "already stored")
        return PushedVersion(result.model, result.version, result.created, result.meta)

    async def _validate(self, staged: Staged) -> dict[str, Any]:
        """Run ``python -m runtime validate`` on the staged version; the ``meta.json`` fields it adds.

        The workers' environment (``ROUTER_WORKER_PRELOAD``) passes through, as to a worker.

        Raises:
            ValidationFailed: 422, ``"<reason>: <error>"`` of a failed validation.
        """
        sc = self.config.store
        argv = [sys.executable, "-m", "runtime", "validate", "--model-dir", str(staged.path),
                "--name", staged.model, "--version", staged.version,
                "--timeout", f"{sc.validate_timeout_s:g}", "--memory-mb", str(sc.validate_memory_mb)]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE)
        try:
            # The supervisor enforces the time limit itself; this bound only covers a supervisor that hangs.
            out, _ = await asyncio.wait_for(proc.communicate(), sc.validate_timeout_s + 30)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            raise
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {"ok": False, "reason": "crashed",
                      "error": f"the validation ended with status {proc.returncode} and no answer"}
        if not answer.get("ok"):
            log.warning("push of %s version %s refused by its validation: %s: %s", staged.model, staged.version,
                        answer.get("reason"), answer.get("error"))
            raise ValidationFailed(f"validation failed: {answer.get('reason')}: {answer.get('error')}")
        log.info("validated %s version %s in %.1f s (peak RSS %s MiB)", staged.model, staged.version,
                 answer.get("seconds", 0), answer.get("peak_rss_mb"))
        # A push without a signature (a bare model file) gets the outputs the validation saw.
        return {} if "outputs" in staged.meta else {"outputs": answer.get("outputs", [])}


def _described(staged: Staged, description: str | None) -> dict[str, Any]:
    """``{"description": ...}`` to add to ``meta.json``, where the push's own gives none.

    Raises:
        BadArchive: the push's ``meta.json`` gives another description.
    """
    if description is None:
        return {}
    given = staged.given.get("description")
    if given is not None and given != description:
        raise BadArchive(f"meta.json gives description {shown(given)} but the push says {shown(description)}")
    return {} if given is not None else {"description": description}


async def _cleanup(fn: Callable[[], None]) -> None:
    """Run a blocking cleanup in a thread; if this task is cancelled meanwhile, finish it here."""
    try:
        await asyncio.get_running_loop().run_in_executor(None, fn)
    except asyncio.CancelledError:
        fn()  # safe to call twice; a leftover would otherwise wait for the next start
        raise
