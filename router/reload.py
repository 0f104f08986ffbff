"""Planning a reload of ``config.toml``: what changed, and whether it can be applied live.

:meth:`ControlPlane.reload <router.control.ControlPlane.reload>` carries the plan out.

A reload re-reads the file, validates it exactly as at start-up, and compares it
with the running configuration. Changes of traffic (weights, shadow fractions,
shadow queues, routing keys, ``keep_previous_s``) are applied with one table
swap per model, no worker restarted. A model whose workers must change
(versions added or removed, a model file replaced, replicas, device, CPUs,
threads, batching, the ``nonfinite`` policy) is deployed blue-green, and a model added is started
in a pool of its own before it joins the routing. Models removed and
``[server]`` / ``[store]`` / ``[admin]`` settings need a restart: a reload
that contains such a change is refused as a whole, naming each one, and
nothing changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .config import TRAFFIC_KEYS, Config, ModelConfig, VersionConfig, load_config, settings
from .proto.errors import ConfigError
from .proto.meta import model_file, read_meta


@dataclass(frozen=True, slots=True)
class Plan:
    """What a reload would do."""

    config: Config
    #: Human-readable changes that are applied live (traffic).
    live: tuple[str, ...] = ()
    #: Changes that cannot be applied by a reload; any of them refuses the whole reload.
    refused: tuple[str, ...] = field(default=())
    #: Models to deploy blue-green, and why.
    deploy: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Models the file adds: each starts in a pool of its own, then joins the routing.
    add: tuple[str, ...] = ()


def read(path: Path, running: Config) -> tuple[Config, dict[tuple[str, str], str]]:
    """Load and validate ``path``; also the sha256 of every version's model file it names.

    The listen addresses of the running daemon are kept (they may come from the
    command line, and a listener cannot move live).

    Raises:
        ConfigError: the file is unreadable, not TOML, invalid, or names a
            version whose model file or meta.json is missing or invalid.
    """
    new = load_config(path)
    new = dataclasses.replace(new, server=dataclasses.replace(
        new.server, http=running.server.http, msgpack=running.server.msgpack))
    digests = {}
    for i, m in enumerate(new.models):
        for j, v in enumerate(m.versions):
            where = f"models[{i}].versions[{j}]"
            d = new.store_path / m.name / v.version
            try:
                model_file(d)  # found now, not as a failed deploy: 400 and nothing changes
                digests[(m.name, v.version)] = read_meta(d).sha256
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    return new, digests


def plan(running: Config, new: Config, digests: dict[tuple[str, str], str],
         running_digests: dict[tuple[str, str], str]) -> Plan:
    """Compare ``new`` with the running configuration."""
    live: list[str] = []
    refused: list[str] = []
    for section in ("server", "store", "admin", "predlog"):
        if getattr(running, section) != getattr(new, section):
            refused.append(f"[{section}] changed: needs a restart")
    old_models = {m.name: m for m in running.models}
    new_models = {m.name: m for m in new.models}
    for name in sorted(set(old_models) - set(new_models)):
        refused.append(f"model {name!r} removed: needs a restart")
    add = tuple(sorted(set(new_models) - set(old_models)))
    deploy: dict[str, tuple[str, ...]] = {}
    for name in sorted(old_models.keys() & new_models.keys()):
        why: list[str] = []
        _model(old_models[name], new_models[name], digests, running_digests, live, why)
        if why:
            deploy[name] = tuple(why)
    return Plan(new, tuple(live), tuple(refused), deploy, add)


def _model(old: ModelConfig, new: ModelConfig, digests: dict[tuple[str, str], str],
           running_digests: dict[tuple[str, str], str], live: list[str], deploy: list[str]) -> None:
    name = old.name
    # Every model-level key, from the fields: one added later is planned too, never silently ignored.
    for key, (f, s) in settings(ModelConfig).items():
        if key in ("name", "versions"):  # the same by construction; versions just below
            continue
        x, y = getattr(old, f.name), getattr(new, f.name)
        if x != y:
            (live if s.live else deploy).append(f"{name}: {key} {_show(x)} -> {_show(y)}")
    old_v = {v.version: v for v in old.versions}
    new_v = {v.version: v for v in new.versions}
    for v in sorted(old_v.keys() - new_v.keys()):
        deploy.append(f"{name}: version {v!r} removed")
    for v in sorted(new_v.keys() - old_v.keys()):
        deploy.append(f"{name}: version {v!r} added")
    for v in sorted(old_v.keys() & new_v.keys()):
        a, b = old_v[v], new_v[v]
        for f in dataclasses.fields(VersionConfig):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if x == y:
                continue
            if f.name in TRAFFIC_KEYS:
                live.append(f"{name}/{v}: {f.name} {x:g} -> {y:g}")
            else:
                deploy.append(f"{name}/{v}: {f.name} {x!r} -> {y!r}")
        if digests.get((name, v)) != running_digests.get((name, v)):
            deploy.append(f"{name}/{v}: model file replaced (sha256 changed)")


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)
