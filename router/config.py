"""``config.toml`` -> one frozen :class:`Config`, validated once.

Every error names the dotted key path and the reason, e.g.
``models[0].versions[1].weight: must be >= 0``. Unknown keys are rejected so a
typo never silently falls back to a default. The key names are a contract
(docs/config.md): extend, never rename.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .proto.errors import ConfigError

DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_MSGPACK = "127.0.0.1:8081"


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` pair to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    http: Address | None
    msgpack: Address | None
    request_timeout_ms: int = 1000
    max_body_bytes: int = 16 * 1024 * 1024
    drain_timeout_s: float = 10.0
    max_inflight_per_worker: int = 1024
    worker_start_timeout_s: float = 60.0
    shadow_priority: str = "idle"
    shadow_flush_us: int = 1000
    keepalive_timeout_s: float = 3630.0
    busy_poll_us: int = 0


@dataclass(frozen=True, slots=True)
class VersionConfig:
    version: str
    weight: float = 1.0
    shadow: float = 0.0
    shadow_queue: int = 64
    replicas: int = 1
    device: str = "cpu"
    cpus: tuple[int, ...] = ()
    threads: int = 0  # 0 = len(cpus), or 1 when cpus is empty
    max_batch_size: int = 32
    max_batch_delay_us: int = 0
    optimize: bool = True

    @property
    def effective_threads(self) -> int:
        return self.threads or max(1, len(self.cpus))

    def to_table(self) -> dict[str, Any]:
        """The ``[[models.versions]]`` keys that reproduce this version: ``version``, ``weight`` and
        every other key that differs from its default."""
        out: dict[str, Any] = {"version": self.version, "weight": self.weight}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in out and value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    routing_key: str | None
    versions: tuple[VersionConfig, ...]
    keep_previous_s: float = 300.0

    def version(self, v: str) -> VersionConfig | None:
        for vc in self.versions:
            if vc.version == v:
                return vc
        return None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration. Built by :func:`load_config` / :func:`parse_config`."""

    server: ServerConfig
    store_path: Path
    models: tuple[ModelConfig, ...]
    source: Path | None = field(default=None, compare=False)
    admin: AdminConfig = AdminConfig()

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


# -- validation helpers -------------------------------------------------------


def _table(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return raw


def _int(raw: dict[str, Any], key: str, where: str, default: int, lo: int, hi: int | None = None) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{where}.{key}: must be an integer, got {v!r}")
    if v < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{where}.{key}: must be <= {hi}, got {v}")
    return v


def _num(raw: dict[str, Any], key: str, where: str, default: float, lo: float, hi: float | None = None) -> float:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}.{key}: must be a number, got {v!r}")
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}.{key}: must be a finite number, got {v}")
    if v < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{where}.{key}: must be <= {hi}, got {v}")
    return float(v)


def _bool(raw: dict[str, Any], key: str, where: str, default: bool) -> bool:
    v = raw.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{where}.{key}: must be true or false, got {v!r}")
    return v


def _choice(raw: dict[str, Any], key: str, where: str, default: str, allowed: tuple[str, ...]) -> str:
    v = raw.get(key, default)
    if v not in allowed:
        raise ConfigError(f"{where}.{key}: must be one of {', '.join(map(repr, allowed))}, got {v!r}")
    return v


def _str(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    v = raw.get(key, default)
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}.{key}: must be a non-empty string, got {v!r}")
    return v


def parse_address(value: Any, where: str) -> Address | None:
    """Parse ``"host:port"``; ``""`` or ``false`` disables the listener."""
    if value is False or value == "":
        return None
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{where}: must be \"host:port\", got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{where}: missing host in {value!r}")
    try:
        p = int(port)
    except ValueError:
        raise ConfigError(f"{where}: port must be an integer, got {port!r}") from None
    if not 0 <= p <= 65535:
        raise ConfigError(f"{where}: port must be in 0..65535, got {p}")
    return Address(host, p)


_SERVER_KEYS = {
    "http", "msgpack", "request_timeout_ms", "max_body_bytes", "drain_timeout_s",
    "max_inflight_per_worker", "worker_start_timeout_s", "shadow_priority", "shadow_flush_us",
    "keepalive_timeout_s", "busy_poll_us",
}
_VERSION_KEYS = {
    "version", "weight", "shadow", "shadow_queue", "replicas", "device", "cpus", "threads",
    "max_batch_size", "max_batch_delay_us", "optimize",
}


def _device(v: Any, where: str) -> str:
    if v == "cpu":
        return v
    if isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit():
        return v
    raise ConfigError(f"{where}: must be \"cpu\" or \"cuda:N\", got {v!r}")


def _version(raw: Any, where: str) -> VersionConfig:
    t = _table(raw, where, _VERSION_KEYS)
    version = t.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version or "/" in version:
        raise ConfigError(f"{where}.version: must be a non-empty string without '/', got {version!r}")
    shadow = _num(t, "shadow", where, 0.0, 0.0, 1.0)
    weight = _num(t, "weight", where, 0.0 if shadow else 1.0, 0.0)
    if shadow and weight:
        raise ConfigError(f"{where}: a shadow version takes no live traffic; set weight = 0 or remove shadow")
    cpus = t.get("cpus", [])
    if not isinstance(cpus, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in cpus):
        raise ConfigError(f"{where}.cpus: must be a list of CPU numbers, got {cpus!r}")
    ncpu = os.cpu_count() or 1
    for c in cpus:
        if not 0 <= c < ncpu:
            raise ConfigError(f"{where}.cpus: CPU {c} does not exist (this machine has 0..{ncpu - 1})")
    if len(set(cpus)) != len(cpus):
        raise ConfigError(f"{where}.cpus: duplicate CPU numbers in {cpus!r}")
    return VersionConfig(
        version=version,
        weight=weight,
        shadow=shadow,
        shadow_queue=_int(t, "shadow_queue", where, 64, 1, 1_000_000),
        replicas=_int(t, "replicas", where, 1, 1, 64),
        device=_device(t.get("device", "cpu"), f"{where}.device"),
        cpus=tuple(cpus),
        threads=_int(t, "threads", where, 0, 0, 256),
        max_batch_size=_int(t, "max_batch_size", where, 32, 1, 65536),
        max_batch_delay_us=_int(t, "max_batch_delay_us", where, 0, 0, 1_000_000),
        optimize=_bool(t, "optimize", where, True),
    )


def _model(raw: Any, where: str) -> ModelConfig:
    t = _table(raw, where, {"name", "routing_key", "versions", "keep_previous_s"})
    name = _str(t, "name", where)
    if "/" in name:
        raise ConfigError(f"{where}.name: must not contain '/', got {name!r}")
    rk = t.get("routing_key")
    if rk is not None and (not isinstance(rk, str) or not rk):
        raise ConfigError(f"{where}.routing_key: must be a non-empty string, got {rk!r}")
    vraw = t.get("versions")
    if not isinstance(vraw, list) or not vraw:
        raise ConfigError(f"{where}.versions: must be a non-empty array of tables ([[models.versions]])")
    versions = tuple(_version(v, f"{where}.versions[{i}]") for i, v in enumerate(vraw))
    seen: set[str] = set()
    for i, v in enumerate(versions):
        if v.version in seen:
            raise ConfigError(f"{where}.versions[{i}].version: duplicate version {v.version!r}")
        seen.add(v.version)
    if not any(v.weight > 0 for v in versions):
        raise ConfigError(f"{where}.versions: at least one version needs weight > 0")
    return ModelConfig(name=name, routing_key=rk.lower() if rk else None, versions=versions,
                       keep_previous_s=_num(t, "keep_previous_s", where, 300.0, 0.0))


def parse_model(raw: Any, where: str) -> ModelConfig:
    """Validate one ``[[models]]`` table (a deploy's new version set); errors start with ``where``.

    Raises:
        ConfigError: naming the key path and the reason.
    """
    return _model(raw, where)


def parse_config(raw: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a decoded TOML document.

    Relative ``store.path`` is resolved against the config file's directory.

    Raises:
        ConfigError: naming the key path and the reason.
    """
    top = _table(raw, "", {"server", "store", "models", "admin"})
    s = _table(top.get("server", {}), "server", _SERVER_KEYS)
    server = ServerConfig(
        http=parse_address(s.get("http", DEFAULT_HTTP), "server.http"),
        msgpack=parse_address(s.get("msgpack", DEFAULT_MSGPACK), "server.msgpack"),
        request_timeout_ms=_int(s, "request_timeout_ms", "server", 1000, 1, 3_600_000),
        max_body_bytes=_int(s, "max_body_bytes", "server", 16 * 1024 * 1024, 1024, 2**31 - 1),
        drain_timeout_s=_num(s, "drain_timeout_s", "server", 10.0, 0.0),
        max_inflight_per_worker=_int(s, "max_inflight_per_worker", "server", 1024, 1),
        worker_start_timeout_s=_num(s, "worker_start_timeout_s", "server", 60.0, 1.0),
        shadow_priority=_choice(s, "shadow_priority", "server", "idle", ("idle", "normal")),
        shadow_flush_us=_int(s, "shadow_flush_us", "server", 1000, 0, 1_000_000),
        keepalive_timeout_s=_num(s, "keepalive_timeout_s", "server", 3630.0, 0.0),
        busy_poll_us=_int(s, "busy_poll_us", "server", 0, 0, 1_000_000),
    )
    st = _table(top.get("store", {}), "store", {"path"})
    store = Path(_str(st, "path", "store", "model-store"))
    if not store.is_absolute() and source is not None:
        store = source.parent / store
    mraw = top.get("models")
    if not isinstance(mraw, list) or not mraw:
        raise ConfigError("models: must be a non-empty array of tables ([[models]])")
    models = tuple(_model(m, f"models[{i}]") for i, m in enumerate(mraw))
    names: set[str] = set()
    for i, m in enumerate(models):
        if m.name in names:
            raise ConfigError(f"models[{i}].name: duplicate model {m.name!r}")
        names.add(m.name)
    ad = _table(top.get("admin", {}), "admin", {"token_file"})
    token_file = None
    if "token_file" in ad:
        token_file = Path(_str(ad, "token_file", "admin"))
        if not token_file.is_absolute() and source is not None:
            token_file = source.parent / token_file
    return Config(server=server, store_path=store, models=models, source=source, admin=AdminConfig(token_file))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a ``config.toml``.

    Raises:
        ConfigError: unreadable file, TOML syntax error, or invalid schema.
    """
    p = Path(path).resolve()
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    return parse_config(raw, p)
