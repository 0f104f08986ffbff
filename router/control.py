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
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from . import configfile, drift, reload
from .audit import AuditTrail, audited
from .config import Config, ModelConfig, VersionConfig, parse_model, parse_value
from .configfile import plain_number
from .deployments import Deployments
from .history import ALL_SERIES, History
from .metrics import Metrics
from .predlog import PredictionLog
from .proto.errors import (
    BadArchive,
    ConfigError,
    ConfigFileError,
    DeployFailed,
    NotFound,
    ReloadRefused,
    UploadTooLarge,
    ValidationFailed,
    VersionInUse,
    shown,
)
from .results import (
    AuditResult,
    DriftResult,
    HistoryResult,
    PredlogResult,
    PushedVersion,
    ReleasedPool,
    ReloadResult,
    RemovedVersion,
    RolloutResult,
    StatusResult,
    SwapResult,
    TrafficResult,
    VersionsResult,
)
from .routing import Pool, Routing
from .sharedconfig import SharedConfig
from .state import ServerState
from .store import (
    DEFAULT_LIMITS,
    Staged,
    StoredVersion,
    Upload,
    commit,
    list_models,
    list_versions,
    prepare,
    stored_version,
)
from .store import remove as store_remove

log = logging.getLogger("router.control")

#: ``ROUTER_CONFIG_READONLY=1``: as ``[admin] read_only`` (a GitOps deployment sets it on the pod).
READ_ONLY_ENV = "ROUTER_CONFIG_READONLY"


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
        #: The in-memory history (set by the server once it runs).
        self.history_source: History | None = None
        #: The prediction log (set by the server).
        self.predlog_source: PredictionLog | None = None
        #: Every change asked for, and how it ended (the server gives it its file).
        self.audit = AuditTrail(None)
        #: config.toml as shared with other routers (lock, watch, generation); None without a file.
        self.shared: SharedConfig | None = None

    @property
    def config(self) -> Config:
        """The configuration that serves now."""
        return self.deployments.config

    def _pool(self, model: str) -> Pool:
        pool = self.routing.active.get(model)
        if pool is None:
            raise NotFound(f"unknown model {shown(model)}")
        return pool

    @property
    def read_only(self) -> bool:
        """The file comes from elsewhere (``[admin] read_only``, or ``ROUTER_CONFIG_READONLY=1``): no change
        through the admin API may write it."""
        return self.config.admin.read_only or os.environ.get(READ_ONLY_ENV, "") not in ("", "0")

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[None]:
        """One change that writes config.toml at a time, here and in every router sharing the file: the
        change lock, then the file's lock; a file another router changed since is applied first, so no
        change is made on a stale picture and none is lost. Its generation is published after.

        Raises:
            ConfigFileError: 409, the file is read-only here (GitOps mode).
        """
        if self.read_only:
            raise ConfigFileError("config.toml is read-only here ([admin] read_only or ROUTER_CONFIG_READONLY: "
                                  "GitOps mode): change it where it comes from (its Git repository or "
                                  "ConfigMap); every router reloads it when it changes", 409)
        async with self.lock:
            shared = self.shared
            if shared is None:
                yield
                return
            async with shared.locked():
                if shared.changed():
                    log.info("%s changed since it was applied here: applying it before this change", shared.path)
                    await self._reload_locked()
                try:
                    yield
                finally:
                    shared.seen()

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
            t["previous"] = ({"pool": prev.color, "versions": [v.version for v in prev.config.versions],
                              "expires_in_s": self.deployments.retire_in(name)}
                             if prev is not None else None)
            standby = next((p for p in self.routing.pools if p.name == name and p is not pool and p is not prev
                            and p not in self.deployments.stopping), None)
            # A deploy in progress: how far its workers have come (they load, then warm up).
            t["standby"] = ({"pool": standby.color, "versions": [v.version for v in standby.config.versions],
                             "workers": len(standby.replicas), "live": sum(r.live for r in standby.replicas)}
                            if standby is not None else None)
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

    def drift(self, model: str) -> DriftResult:
        """The model's data drift per version of its active pool, merged over each version's replicas.

        Raises:
            NotFound: unknown model.
        """
        pool = self._pool(model)
        conf = pool.config.drift
        thresholds = {k: getattr(conf, k) for k in ("psi_warning", "psi_drift", "js_drift", "ks_drift", "min_window")}
        versions = {v: drift.of_replicas(s.replicas) for v, s in pool.versions.items()}
        # Since when what drifts has drifted, as the history saw it (to its resolution).
        since = self.history_source.drifting_since if self.history_source is not None else {}
        for v, summary in versions.items():
            if summary is None:
                continue
            summary["since"] = since.get((model, v)) if summary["drifting"] else None
            for io in ("inputs", "outputs"):
                for name, f in summary[io]["features"].items():
                    f["since"] = since.get((model, v, io, name)) if f["drifting"] else None
        return DriftResult(model, conf.enabled, thresholds, versions)

    async def predlog(self, model: str) -> PredlogResult:
        """The model's prediction log: rate, folder, files, and what was written and dropped.

        Raises:
            NotFound: unknown model.
        """
        pool = self._pool(model)
        if self.predlog_source is None:
            raise NotFound("this router keeps no prediction log")
        return PredlogResult(**await self.predlog_source.describe(model, pool.log_rate))

    async def audit_trail(self, model: str | None = None, limit: int = 100) -> AuditResult:
        """The newest ``limit`` changes (``model``'s only, when given), newest first (:mod:`router.audit`)."""
        return AuditResult(await self.audit.read(model, limit))

    def history(self, model: str, series: list[str] | None = None, since: float | None = None) -> HistoryResult:
        """The model's recent points (:mod:`router.history`): ``series`` (default all) after ``since``
        (unix seconds; negative: that many seconds before now; default: all kept).

        Raises:
            NotFound: a model neither served nor in the history.
            ConfigError: an unknown series name.
        """
        history = self.history_source
        if history is None or (model not in self.routing.active
                               and not any(m == model for m, _ in history.rings)):
            raise NotFound(f"unknown model {shown(model)}")
        names = list(series) if series else list(ALL_SERIES)
        unknown = [n for n in names if n not in ALL_SERIES]
        if unknown:
            raise ConfigError(f"series: unknown {shown(unknown[0])} (known: {', '.join(ALL_SERIES)})")
        if since is None:
            since = 0.0
        elif since < 0:
            since = time.time() + since
        q = history.query(model, names, since)
        return HistoryResult(model, q["interval_s"], names, q["versions"])

    # -- changes -------------------------------------------------------------------------------------------

    @audited("traffic", "weights", "shadow")
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
        async with self._change():
            await self._set_traffic(model, weights or {}, shadow or {})
        return self.traffic(model)

    async def _set_traffic(self, model: str, weights: Mapping[str, Any], shadow: Mapping[str, Any]) -> None:
        """:meth:`set_traffic` under the lock."""
        mc = self._pool(model).config
        new = self._with_traffic(mc, weights, shadow)
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

    @staticmethod
    def _with_traffic(mc: ModelConfig, weights: Mapping[str, Any], shadow: Mapping[str, Any]) -> ModelConfig:
        """``mc`` with the given weights and shadow fractions, validated by the config loader's rules."""
        versions = {v.version: v.to_table() for v in mc.versions}
        for section, key, values in (("weights", "weight", weights), ("shadow", "shadow", shadow)):
            for version, value in values.items():
                if version not in versions:
                    raise ConfigError(f"{section}.{version}: unknown version (the model has {', '.join(versions)})")
                versions[version][key] = parse_value(VersionConfig, key, value, f"{section}.{version}")
        # Every other model key as it is (from the fields: a key added later is never dropped here).
        return parse_model({**mc.to_table(), "versions": list(versions.values())}, "traffic")

    @audited("reload")
    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply what changed: traffic live, workers blue-green.

        Raises:
            ConfigError: the file is invalid (the message names the key path); nothing changed.
            ReloadRefused: it changes what needs a restart; nothing changed.
            DeployFailed: a model's standby pool failed; that model keeps its
                active pool, every other change was applied.
        """
        async with self.lock:
            return await self._reload_locked()

    async def apply_file_change(self) -> None:
        """The file changed under us (another router sharing it, an edit, a ConfigMap swap): apply it as a
        reload does, unaudited (the change was recorded where it was made)."""
        async with self.lock:
            if self.shared is not None and self.shared.changed():
                log.info("%s changed: applying it", self.shared.path)
                await self._reload_locked()

    async def _reload_locked(self) -> ReloadResult:
        """:meth:`reload` under the lock. The file's version is marked looked at, applied or not (a file
        that fails is tried again once it changes), and its generation published once it serves."""
        if self.shared is not None:
            self.shared.mark()
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
            if mc.name in plan.deploy or mc.name in plan.add:
                why = plan.deploy.get(mc.name, ("a new model",))
                log.info("reload: %s %s (%s)", "deploying" if mc.name in plan.deploy else "adding", mc.name,
                         "; ".join(why))
                try:
                    if mc.name in plan.add:
                        await self.deployments.add(mc, f"models[{i}]")
                    else:
                        await self.deployments.deploy(mc, f"models[{i}]")
                    deployed.append(mc.name)
                except (ConfigError, DeployFailed) as exc:
                    log.error("reload: %s", exc)
                    failed.append(str(exc))
        # A deployed model runs the file's config; one whose deploy failed keeps what it ran, and one
        # that failed to start is not served.
        active = self.routing.active
        new = dataclasses.replace(new, models=tuple(
            active[m.name].config if m.name in plan.deploy else m for m in new.models if m.name in active))
        self.deployments.apply_traffic(new)
        for name in deployed:
            if name in plan.add:
                await self._in_thread(self._count_store, name)
        self.metrics.reloads.labels("failed" if failed else "ok").inc()
        log.info("reloaded %s: %s", source, "; ".join([*plan.live, *(f"deployed {m}" for m in deployed)])
                 if plan.live or deployed else "nothing applied (a deploy failed)" if failed else "no change")
        if self.shared is not None:
            self.shared.seen()  # what serves is the file now (a model whose deploy failed keeps what it ran)
        if failed:
            raise DeployFailed("; ".join(failed))
        return ReloadResult(str(source), list(plan.live), {m: list(plan.deploy.get(m, ("a new model",)))
                                                           for m in (*plan.deploy, *plan.add)})

    @audited("deploy", "versions")
    async def deploy(self, model: str, versions: list[Any]) -> SwapResult:
        """Deploy a new version set of ``model`` blue-green and write it into the config file.

        The file is written first and put back if the deploy fails, so it always says what serves.

        Raises:
            NotFound: unknown model.
            ConfigError: the versions are invalid, a model file is missing, or the
                file cannot take them; nothing changed.
            DeployFailed: the standby pool failed; nothing changed.
        """
        async with self._change():
            swap = await self._deploy(model, versions, "deploy")
            return self._swapped("deploy", model, swap)

    async def _deploy(self, model: str, versions: list[Any], where: str) -> float:
        """:meth:`deploy` under the lock; the swap's duration in seconds."""
        mc = parse_model({**self._pool(model).config.to_table(), "versions": versions}, where)
        async with self._file_kept(configfile.write_versions, model, versions):
            return await self.deployments.deploy(mc, where)

    @contextlib.asynccontextmanager
    async def _file_kept(self, write: Callable[..., object], *args: Any) -> AsyncIterator[None]:
        """Write the config file first (``write(path, *args)``), and put it back as it was if the body fails,
        so that it always says what serves."""
        source = self.config.source
        if source is None:
            yield
            return
        before = await self._in_thread(source.read_text)
        await self._in_thread(write, source, *args)
        try:
            yield
        except BaseException:
            await self._in_thread(configfile.restore_text, source, before)
            raise

    @audited("rollback")
    async def rollback(self, model: str) -> SwapResult:
        """Make the model's previous pool active again, and write its version set back into the file.

        Raises:
            NotFound: unknown model.
            NoPreviousPool: none is kept warm.
        """
        async with self._change():
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

    @audited("release")
    async def release(self, model: str) -> ReleasedPool:
        """Stop the model's previous pool now (no rollback to it afterwards): its versions can then be removed.

        Raises:
            NotFound: unknown model.
            NoPreviousPool: none is kept warm.
        """
        async with self.lock:
            self._pool(model)
            prev = self.deployments.release(model)
            return ReleasedPool(model, prev.color, [v.version for v in prev.config.versions])

    def _swapped(self, action: Any, model: str, swap: float) -> SwapResult:
        pool = self.routing.active[model]
        return SwapResult(action, model, pool.color, round(swap * 1e6, 1), [v.version for v in pool.config.versions])

    # -- stored versions into traffic and out ---------------------------------------------------------------

    @audited("rollout", "weight", "percent", "shadow", "settings")
    async def rollout(self, model: str, version: str, *, weight: Any = None, percent: Any = None,
                      shadow: Any = None, settings: Mapping[str, Any] | None = None) -> RolloutResult:
        """Put a stored version into the model's active set, in one step.

        Exactly one of ``weight`` (relative, the other versions keep theirs), ``percent`` (the version's
        share of live traffic; the other live versions are scaled to share the rest as they did) or
        ``shadow`` (the fraction of live traffic mirrored to it) says where. A version that is not in
        the active set is deployed blue-green with it (``settings``: its other ``[[models.versions]]``
        keys, such as ``replicas`` or ``max_batch_size``); one that is already there only has its
        traffic changed (no worker restarts), unless ``settings`` are given. A model the daemon does
        not serve yet is started with this version as its only one. The file is written first and put
        back if the deploy fails.

        Raises:
            NotFound: the version is not in the store.
            ConfigError: not exactly one of weight / percent / shadow, a value or setting the config
                loader refuses, a shadow as a new model's first version; nothing changed.
            ConfigFileError: the file cannot take the change; nothing changed.
            DeployFailed: the standby pool failed; nothing changed.
        """
        given = [k for k, v in (("weight", weight), ("percent", percent), ("shadow", shadow)) if v is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of weight, percent or shadow"
                              + (f" (got {' and '.join(given)})" if given else ""))
        settings = dict(settings or {})
        fixed = sorted(set(settings) & {"version", "weight", "shadow"})
        if fixed:
            raise ConfigError(f"settings.{fixed[0]}: set by the rollout itself, not a setting")
        if percent is not None:
            percent = _percent(percent)
        async with self._change():
            stored = await self._in_thread(stored_version, self.config.store_path, model, version)
            if stored.meta is None:
                raise ConfigError(f"model {shown(model)} version {shown(version)} in the store is unusable: "
                                  f"{stored.problem}")
            pool = self.routing.active.get(model)
            if pool is None:
                return await self._add_model(model, version, weight, percent, shadow, settings)
            tables = [v.to_table() for v in pool.config.versions]
            entry = next((t for t in tables if t["version"] == version), None)
            if entry is not None and not settings:
                _place(tables, entry, weight, percent, shadow)
                await self._set_traffic(model, {t["version"]: t["weight"] for t in tables},
                                        {t["version"]: t.get("shadow", 0) for t in tables})
                return self._rolled_out("traffic", model, version, None)
            if entry is None:
                entry = {"version": version}
                tables.append(entry)
            entry.update(settings)
            _place(tables, entry, weight, percent, shadow)
            swap = await self._deploy(model, tables, "rollout")
            return self._rolled_out("deploy", model, version, swap)

    async def _add_model(self, model: str, version: str, weight: Any, percent: float | None, shadow: Any,
                         settings: dict[str, Any]) -> RolloutResult:
        if shadow is not None:
            raise ConfigError(f"model {shown(model)} is not served yet: its first version takes live traffic "
                              "(a weight or a percent), there is nothing to mirror")
        raw = {"name": model, "versions": [{"version": version, "weight": 100 if percent is not None else weight,
                                            **settings}]}
        mc = parse_model(raw, "rollout")
        async with self._file_kept(configfile.add_model, raw):
            await self.deployments.add(mc, "rollout")
        await self._in_thread(self._count_store, model)
        return self._rolled_out("create", model, version, None)

    def _rolled_out(self, action: Any, model: str, version: str, swap: float | None) -> RolloutResult:
        t = self.traffic(model)
        return RolloutResult(action, model, version, self.routing.active[model].color,
                             None if swap is None else round(swap * 1e6, 1), t.weights, t.shadow)

    @audited("drop")
    async def drop(self, model: str, version: str) -> SwapResult:
        """Take a version out of the model's active set: a blue-green deploy of the others (their
        weights unchanged), written into the file. The version stays in the store, and in the previous
        pool for ``keep_previous_s`` (a rollback brings it back).

        Raises:
            NotFound: unknown model, or the version is not in its active set.
            ConfigError: it is the model's only version (409), or no version left would take live
                traffic; nothing changed.
            DeployFailed: the standby pool failed; nothing changed.
        """
        async with self._change():
            tables = [v.to_table() for v in self._pool(model).config.versions]
            rest = [t for t in tables if t["version"] != version]
            if len(rest) == len(tables):
                raise NotFound(f"model {shown(model)} does not serve version {shown(version)} (its active set: "
                               f"{', '.join(t['version'] for t in tables)})")
            if not rest:
                raise ConfigError(f"version {shown(version)} is the only version of model {shown(model)}: "
                                  "roll out another one first", 409)
            swap = await self._deploy(model, rest, "drop")
            pool = self.routing.active[model]
            return SwapResult("drop", model, pool.color, round(swap * 1e6, 1),
                              [v.version for v in pool.config.versions], version)

    # -- the model store -----------------------------------------------------------------------------------

    def _states(self, model: str) -> dict[str, tuple[str, Pool]]:
        """Each version of ``model`` that has workers: its state and the pool it has them in
        (active first, then previous, standby, stopping)."""
        out: dict[str, tuple[str, Pool]] = {}
        active = self.routing.active.get(model)
        previous = self.deployments.previous.get(model)
        for pool in self.routing.pools:
            if pool.name != model or pool is active or pool is previous:
                continue
            state = "stopping" if pool in self.deployments.stopping else "standby"
            for v in pool.versions:
                if out.get(v, ("stopping",))[0] == "stopping":
                    out[v] = (state, pool)
        if previous is not None:
            out.update((v, ("previous", previous)) for v in previous.versions)
        if active is not None:
            out.update((vc.version, ("serving" if vc.weight > 0 else "shadow" if vc.shadow > 0 else "idle", active))
                       for vc in active.config.versions)
        return out

    async def versions(self, model: str) -> VersionsResult:
        """The model's stored versions: metadata (without the example), bytes, and state (serving,
        shadow, idle: in the active set at weight 0; previous, standby, stopping; or stored)."""
        stored = await self._in_thread(list_versions, self.config.store_path, model)
        states = self._states(model)
        active = self.routing.active.get(model)
        rows = []
        for sv in stored:
            state = states.get(sv.version, ("stored", None))[0]
            vc = active.config.version(sv.version) if active is not None else None
            row: dict[str, Any] = {"version": sv.version, "state": state, "bytes": sv.bytes}
            if vc is not None:
                row["weight"] = plain_number(vc.weight)
                row["shadow"] = vc.shadow
            if sv.meta is None:
                row["problem"] = sv.problem
            else:
                row["meta"] = {k: v for k, v in sv.meta.items() if k != "example"}
            rows.append(row)
        self._gauge_store(model, stored)
        return VersionsResult(model, rows, sum(sv.bytes for sv in stored))

    @audited("remove")
    async def remove(self, model: str, version: str) -> RemovedVersion:
        """Delete a stored version that no pool holds.

        Raises:
            NotFound: no such stored version.
            VersionInUse: 409, it serves in the active, standby or previous pool (the message says
                which, and what to do).
        """
        async with self.lock:  # no deploy may start from the directory while it goes
            state, pool = self._states(model).get(version, ("stored", None))
            if pool is not None:
                raise VersionInUse(self._in_use(model, version, state, pool))
            removed = await self._in_thread(store_remove, self.config.store_path, model, version)
        await self._in_thread(self._count_store, model)
        return RemovedVersion(model, version, removed.bytes)

    def _in_use(self, model: str, version: str, state: str, pool: Pool) -> str:
        what = f"model {shown(model)} version {shown(version)}"
        if state == "previous":
            left = self.deployments.retire_in(model)
            return (f"{what} is kept warm in the previous ({pool.color}) pool for a rollback"
                    + (f" for another {left:.0f} s (keep_previous_s)" if left is not None else "")
                    + "; remove it after that")
        if state in ("standby", "stopping"):
            return f"{what} has workers in a {state} ({pool.color}) pool; try again when the deploy is over"
        return (f"{what} is in the active set ({pool.color} pool, {state}): drop it first "
                f"(POST /admin/models/{model}/versions/{version}/drop)")

    def _count_store(self, model: str) -> None:
        """Set the model's store gauges from the disk (blocking: run in a thread)."""
        try:
            stored = list_versions(self.config.store_path, model)
        except NotFound:
            stored = []
        self._gauge_store(model, stored)

    def _gauge_store(self, model: str, stored: list[StoredVersion]) -> None:
        self.metrics.store_bytes.labels(model).set(sum(sv.bytes for sv in stored))
        self.metrics.store_versions.labels(model).set(len(stored))

    async def scan_store(self) -> None:
        """Set every stored model's store gauges (at start; pushes and removals keep them current)."""
        for model in await self._in_thread(list_models, self.config.store_path):
            await self._in_thread(self._count_store, model)


    @audited("push", "size", "description")
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
        if result.created:
            await self._in_thread(self._count_store, model)
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


def _percent(value: Any) -> float:
    """A share of live traffic in percent, 0 < p <= 100.

    Raises:
        ConfigError: naming ``percent``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise ConfigError(f"percent: must be a number in (0, 100], got {shown(value)}")
    return float(value)


def _place(tables: list[dict[str, Any]], entry: dict[str, Any], weight: Any, percent: float | None,
           shadow: Any) -> None:
    """Set ``entry``'s place in its model's version tables: a weight, a percent of live traffic (the
    other live versions scaled to share the rest in their proportions), or a shadow fraction. The
    values are the config loader's to check."""
    if shadow is not None:
        entry["weight"], entry["shadow"] = 0, shadow
        return
    entry.pop("shadow", None)
    if percent is None:
        entry["weight"] = weight
        return
    others = [t for t in tables if t is not entry and t["weight"] > 0]
    total = sum(t["weight"] for t in others)
    for t in others:
        t["weight"] = round(t["weight"] * (100 - percent) / total, 6)
    entry["weight"] = percent if others else 100.0
