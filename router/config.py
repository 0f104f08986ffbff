"""``config.toml`` -> one frozen :class:`Config`, validated once.

Every key is declared once, on its dataclass field (:func:`setting`): default, bounds, special
rule, whether a reload applies it live, and a one-line doc. Closed choices are ``Literal`` types.
One reader walks the fields and dispatches on their types, so key sets, defaults and error
messages cannot drift apart; the admin API validates with the same rules (:func:`parse_model`,
:func:`parse_version`, :func:`parse_value`).

Every error names the dotted key path and the reason, e.g.
``models[0].versions[1].weight: must be >= 0.0, got -5``. Unknown keys are rejected so a
typo never silently falls back to a default. The key names are a contract
(docs/config.md): extend, never rename.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

from .proto.errors import ConfigError

DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_MSGPACK = "127.0.0.1:8081"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` pair to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


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
    if not (port.isascii() and port.isdigit()):  # int() would take "8_080", " 80" and other digits
        raise ConfigError(f"{where}: port must be an integer, got {port!r}")
    p = int(port)
    if not 0 <= p <= 65535:
        raise ConfigError(f"{where}: port must be in 0..65535, got {p}")
    return Address(host, p)


# -- declaring keys -------------------------------------------------------------


class Ctx(NamedTuple):
    """What a :class:`Setting` hook may look at besides the value."""

    base: Path | None  # the config file's directory: relative paths are resolved against it
    table: dict[str, Any]  # the values of the current table read so far (by attribute name)


#: ``hook(value, dotted_key, ctx) -> value``; raises :class:`ConfigError` naming ``dotted_key``.
Hook = Callable[[Any, str, Ctx], Any]


@dataclass(frozen=True, slots=True)
class Setting:
    """What :func:`setting` records about one config key (in ``field.metadata["setting"]``)."""

    doc: str
    lo: float | None = None  # inclusive bounds of a number (of each element of an array)
    hi: float | None = None
    parse: Hook | None = None  # reads the raw value itself: a syntax of its own instead of the type's
    check: Hook | None = None  # validates / normalises the value after the type's reader
    default_from: Callable[[dict[str, Any]], Any] | None = None  # default depending on keys read before
    live: bool = False  # a reload applies a change of this key without restarting workers
    key: str | None = None  # the TOML key, where it is not the attribute's name


def setting(default: Any = MISSING, *, doc: str, lo: float | None = None, hi: float | None = None,
            parse: Hook | None = None, check: Hook | None = None,
            default_from: Callable[[dict[str, Any]], Any] | None = None, live: bool = False,
            key: str | None = None) -> Any:
    """A dataclass field that is a config key. Without ``default`` the key is required, unless
    its type admits ``None`` (absent = ``None``) or it is a table (absent = empty table)."""
    meta = {"setting": Setting(doc, lo, hi, parse, check, default_from, live, key)}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


def settings(cls: type) -> Mapping[str, tuple[dataclasses.Field[Any], Setting]]:
    """The keys of a config table class in declaration order: TOML key -> (field, :class:`Setting`).

    Fields not declared with :func:`setting` (``Config.source``) are not keys.
    """
    return {s.key or f.name: (f, s) for f in dataclasses.fields(cls) if (s := f.metadata.get("setting"))}


# -- rules of single keys (hooks) -----------------------------------------------


def _version_name(v: Any, where: str, ctx: Ctx) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)  # `version = 3` names the same directory as `version = "3"`
    if not isinstance(v, str) or not v or "/" in v:
        raise ConfigError(f"{where}: must be a non-empty string without '/', got {v!r}")
    return v


def _no_slash(v: str, where: str, ctx: Ctx) -> str:
    if "/" in v:  # names are URL path segments and store directories
        raise ConfigError(f"{where}: must not contain '/', got {v!r}")
    return v


def _device(v: Any, where: str, ctx: Ctx) -> str:
    if v == "cpu" or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isascii() and v[5:].isdigit()):
        return v
    raise ConfigError(f"{where}: must be \"cpu\" or \"cuda:N\", got {v!r}")


def _cpus(cpus: tuple[int, ...], where: str, ctx: Ctx) -> tuple[int, ...]:
    ncpu = os.cpu_count() or 1
    for c in cpus:
        if not 0 <= c < ncpu:
            raise ConfigError(f"{where}: CPU {c} does not exist (this machine has 0..{ncpu - 1})")
    if len(set(cpus)) != len(cpus):
        raise ConfigError(f"{where}: duplicate CPU numbers in {list(cpus)!r}")
    return cpus


def _weight_default(table: dict[str, Any]) -> float:
    return 0.0 if table["shadow"] else 1.0  # a shadow takes no live traffic


def _live_or_shadow(weight: float, where: str, ctx: Ctx) -> float:
    if weight and ctx.table.get("shadow"):
        raise ConfigError(f"{where.rpartition('.')[0]}: a shadow version takes no live traffic, but version "
                          f"{ctx.table.get('version')!r} has weight {weight:g}; set weight = 0 or remove shadow")
    return weight


def _lower(v: str | None, where: str, ctx: Ctx) -> str | None:
    return v.lower() if v else None  # HTTP header names are case-insensitive


def _unique(attr: str, noun: str) -> Hook:
    def check(items: tuple[Any, ...], where: str, ctx: Ctx) -> tuple[Any, ...]:
        seen: set[str] = set()
        for i, item in enumerate(items):
            name = getattr(item, attr)
            if name in seen:
                raise ConfigError(f"{where}[{i}].{attr}: duplicate {noun} {name!r}")
            seen.add(name)
        return items
    return check


def _versions(versions: tuple[VersionConfig, ...], where: str, ctx: Ctx) -> tuple[VersionConfig, ...]:
    _unique("version", "version")(versions, where, ctx)
    if not any(v.weight > 0 for v in versions):
        raise ConfigError(f"{where}: at least one version needs weight > 0")
    return versions


# -- the tables -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: listeners, deadlines and limits."""

    TABLE: ClassVar[str] = "[server]"

    http: Address | None = setting(parse_address(DEFAULT_HTTP, "server.http"),
                                   doc='HTTP listener (OIP v2, /metrics); "" disables it')
    msgpack: Address | None = setting(parse_address(DEFAULT_MSGPACK, "server.msgpack"),
                                      doc='msgpack TCP listener; "" disables it')
    request_timeout_ms: int = setting(1000, lo=1, hi=3_600_000, doc="deadline of each request")
    max_body_bytes: int = setting(16 * 1024 * 1024, lo=1024, hi=2**31 - 1,
                                  doc="largest HTTP body or msgpack frame accepted")
    drain_timeout_s: float = setting(10.0, lo=0, doc="on SIGTERM, how long in-flight requests may take")
    drain_delay_s: float = setting(0.0, lo=0, hi=300, doc="on SIGTERM, how long requests are still served after "
                                                          "readiness turns 503, while load balancers stop "
                                                          "sending")
    max_inflight_per_worker: int = setting(1024, lo=1, doc="requests outstanding on one worker before 503")
    worker_start_timeout_s: float = setting(60.0, lo=1, doc="time a worker has to load and warm up")
    shadow_priority: Literal["idle", "normal"] = setting("idle", doc="CPU scheduling of shadow workers")
    shadow_flush_us: int = setting(1000, lo=0, hi=1_000_000, doc="how long shadow copies wait to go as a batch")
    keepalive_timeout_s: float = setting(3630.0, lo=0, doc="idle HTTP connections close after this; 0: never")
    busy_poll_us: int = setting(0, lo=0, hi=1_000_000, doc="poll sockets this long after a request; 0: never")
    admin_http: Address | None = setting(None, doc="a second HTTP listener with a cap of its own, for probes, "
                                                   "scrapes, the admin API and the UI; absent: none")
    max_connections: int = setting(4096, lo=1, hi=1_000_000, doc="open connections per front; more close at once")
    admin_max_connections: int = setting(256, lo=1, hi=1_000_000, doc="open connections on admin_http")
    fd_reserve: int = setting(256, lo=16, hi=1_000_000,
                              doc="file handles kept free of connections: worker restarts, files, the admin path")
    head_timeout_s: float = setting(10.0, lo=0,
                                    doc="time to receive a whole request head from its first byte; 0: never")
    body_timeout_s: float = setting(10.0, lo=0,
                                    doc="time a body may take, plus 1 s per body_min_rate bytes received; 0: never")
    body_min_rate: int = setting(1024, lo=1, doc="bytes per second a slow body must keep up")
    send_timeout_s: float = setting(30.0, lo=0,
                                    doc="a client that reads none of its replies this long is cut off; 0: never")
    msgpack_idle_timeout_s: float = setting(600.0, lo=0, doc="msgpack connections with no request in flight and no "
                                                             "whole frame received this long close; 0: never")
    hang_timeout_s: float = setting(3.0, lo=0, doc="a worker owing answers that has answered nothing this long leaves "
                                                   "routing; 0: never")
    hang_restart_s: float = setting(15.0, lo=0, doc="a worker hung this long is killed and restarted; 0: never")
    config_poll_s: float = setting(0.5, lo=0, hi=60, doc="how often config.toml is looked at for changes (made "
                                                         "by another router sharing it, or by hand), which are "
                                                         "then applied as a reload; 0: only on reload")
    history_interval_s: float = setting(10.0, lo=1, hi=3600, doc="resolution of the in-memory history "
                                                                 "(GET /admin/models/{m}/history)")
    history_s: float = setting(21600.0, lo=60, hi=7 * 86400, doc="how far back the in-memory history reaches")


@dataclass(frozen=True, slots=True)
class VersionConfig:
    """``[[models.versions]]``: one version of a model and its workers."""

    TABLE: ClassVar[str] = "[[models.versions]]"

    version: str = setting(parse=_version_name, doc="the version's name; its directory in the store")
    weight: float = setting(1.0, lo=0, hi=1_000_000, default_from=_weight_default, check=_live_or_shadow, live=True,
                            doc="share of live traffic, relative to the other versions (0 for a shadow)")
    shadow: float = setting(0.0, lo=0, hi=1, live=True, doc="fraction of live traffic mirrored here")
    shadow_queue: int = setting(64, lo=1, hi=1_000_000, live=True, doc="most copies in flight to this version")
    replicas: int = setting(1, lo=1, hi=64, doc="worker processes")
    device: str = setting("cpu", parse=_device, doc='"cpu" or "cuda:N"')
    cpus: tuple[int, ...] = setting((), check=_cpus, doc="CPUs the workers are pinned to; empty: all")
    threads: int = setting(0, lo=0, hi=256, doc="torch intra-op threads; 0: len(cpus), or 1")
    max_batch_size: int = setting(32, lo=1, hi=65536, doc="most rows in one forward")
    max_batch_delay_us: int = setting(0, lo=0, hi=1_000_000, doc="how long a batch waits for more requests")
    optimize: bool = setting(True, doc="freeze and optimize_for_inference at load")

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
class DriftConfig:
    """``[models.drift]``: data drift monitoring, in the workers (docs/monitoring.md)."""

    TABLE: ClassVar[str] = "[models.drift]"

    enabled: bool = setting(True, doc="workers keep input and output histograms and drift statistics")
    reference_rows: int = setting(1000, lo=10, hi=1_000_000, doc="live rows taken as the reference when the "
                                                                "version has no sample.npz")
    window_rows: int = setting(10_000, lo=100, hi=10_000_000, doc="rows of the sliding window compared with the "
                                                                  "reference")
    min_window: int = setting(200, lo=1, hi=10_000_000, doc="finite values a feature's window needs before it is "
                                                            "flagged")
    psi_warning: float = setting(0.1, lo=1e-4, hi=100, doc="PSI from which a feature is a warning (at most psi_drift "
                                                           "is used)")
    psi_drift: float = setting(0.25, lo=1e-4, hi=100, doc="PSI from which a feature is drifting")
    js_drift: float = setting(0.2, lo=1e-4, hi=1, doc="Jensen-Shannon distance from which a feature is drifting")
    ks_drift: float = setting(0.2, lo=1e-4, hi=1, doc="two-sample KS statistic from which a feature is drifting")

    def to_table(self) -> dict[str, Any]:
        """The keys that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """``[[models]]``: one endpoint and its versions."""

    TABLE: ClassVar[str] = "[[models]]"

    name: str = setting(check=_no_slash, doc="the model's name in URLs and requests; its store directory")
    routing_key: str | None = setting(check=_lower, live=True, doc="header that keeps a caller on one version")
    versions: tuple[VersionConfig, ...] = setting(check=_versions, doc="the versions served")
    keep_previous_s: float = setting(300.0, lo=0, live=True, doc="how long the pool before a deploy stays warm")
    # Applied by the workers (runtime/codecs/requests.py); a change restarts them (a deploy).
    nonfinite: Literal["reject", "allow"] = setting("reject",
                                                    doc="inputs holding NaN or Infinity: 400, or passed to the model")
    # Applied by the workers (runtime/drift); a change restarts them (a deploy).
    drift: DriftConfig = setting(DriftConfig(), doc="[models.drift]: data drift monitoring")
    log_rate: float = setting(0.0, lo=0, hi=1, live=True,
                              doc="fraction of requests recorded in the prediction log ([predlog]); 0: none")

    def to_table(self) -> dict[str, Any]:
        """The ``[[models]]`` keys that reproduce this model (versions as tables), defaults left out."""
        out: dict[str, Any] = {"name": self.name, "versions": [v.to_table() for v in self.versions]}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in out or value == f.default:
                continue
            out[f.name] = value.to_table() if isinstance(value, DriftConfig) else value
        return out

    def version(self, v: str) -> VersionConfig | None:
        for vc in self.versions:
            if vc.version == v:
                return vc
        return None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: where versions are kept, and what one push may cost (``POST /admin/models/{m}/versions/{v}``)."""

    TABLE: ClassVar[str] = "[store]"

    path: Path = setting(Path("model-store"), doc="the model store: <path>/<model>/<version>/model.pt")
    max_push_bytes: int = setting(2 << 30, lo=1, doc="largest push body (an archive or a bare model file); 413 past it")
    validate_timeout_s: float = setting(120.0, lo=1, hi=3600, doc="seconds the validation of a pushed version may take")
    validate_memory_mb: int = setting(4096, lo=256, doc="memory limit (RLIMIT_DATA, MiB) of the validation process")


@dataclass(frozen=True, slots=True)
class PredlogConfig:
    """``[predlog]``: where the prediction log is written, and how its files rotate and expire
    (each model samples with its own ``log_rate``; docs/monitoring.md)."""

    TABLE: ClassVar[str] = "[predlog]"

    path: Path = setting(Path("predictions"), doc="the log: <path>/<model>/<version>/date=<day>/<file>.parquet")
    file_bytes: int = setting(64 << 20, lo=4096, doc="a file is closed, and a new one begun, past this size")
    file_s: float = setting(300.0, lo=1, hi=86400, doc="... or at this age: how soon records become readable")
    retain_s: float = setting(7 * 86400.0, lo=60, doc="files older than this are deleted")
    retain_bytes: int = setting(10 << 30, lo=1 << 20, doc="per model: past this, its oldest files are deleted")
    queue_bytes: int = setting(16 << 20, lo=65536, hi=1 << 30,
                               doc="records waiting for the log's writer; records past it are dropped and counted")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``[admin]``: the admin API."""

    TABLE: ClassVar[str] = "[admin]"

    token_file: Path | None = setting(None, doc="file holding the admin API's bearer token")
    audit_file: Path | None = setting(None, doc="where the audit trail of changes is appended (JSON lines); "
                                                "absent: audit.jsonl beside config.toml")
    read_only: bool = setting(False, doc="the file comes from elsewhere (GitOps: a ConfigMap): changes through "
                                         "the admin API are refused; the file is still watched and reloaded")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration. Built by :func:`load_config` / :func:`parse_config`."""

    server: ServerConfig = setting(doc="[server]")
    store: StoreConfig = setting(doc="[store]")
    models: tuple[ModelConfig, ...] = setting(check=_unique("name", "model"), doc="[[models]]")
    source: Path | None = field(default=None, compare=False)  # the file it was read from; not a key
    admin: AdminConfig = setting(AdminConfig(), doc="[admin]")
    predlog: PredlogConfig = setting(PredlogConfig(), doc="[predlog]")
    generation: int = setting(0, lo=0, doc="the file's version: bumped by every change the admin API writes, "
                                           "carried by replies (router/sharedconfig.py)")

    @property
    def store_path(self) -> Path:
        """``store.path``: the model store's directory."""
        return self.store.path

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


#: Version keys a reload applies live (one table swap); every other version key needs other workers.
TRAFFIC_KEYS = frozenset(k for k, (_, s) in settings(VersionConfig).items() if s.live)


# -- the reader -----------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)  # annotations are strings (postponed evaluation)


def _is_table(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond any double (JSON from the admin API can hold one)
        return False


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _resolve(p: Path, base: Path | None) -> Path:
    return base / p if base is not None and not p.is_absolute() else p


def _read_table(cls: type[T], raw: Any, where: str, base: Path | None, **internal: Any) -> T:
    """Validate the TOML table ``raw`` into ``cls``, key by key in declaration order."""
    keys = settings(cls)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (allowed: {', '.join(sorted(keys))})")
    ctx = Ctx(base, {})
    # Keys whose default depends on other keys come last (sorted() is stable).
    for key in sorted(keys, key=lambda k: keys[k][1].default_from is not None):
        f, s = keys[key]
        ctx.table[f.name] = _read_key(cls, f, s, raw.get(key, MISSING), _join(where, key), ctx)
    return cls(**ctx.table, **internal)


def _read_key(cls: type, f: dataclasses.Field[Any], s: Setting, value: Any, where: str, ctx: Ctx) -> Any:
    if value is MISSING:
        if s.default_from is not None:
            return s.default_from(ctx.table)
        if f.default is not MISSING and not hasattr(f.default, "TABLE"):
            return _resolve(f.default, ctx.base) if isinstance(f.default, Path) else f.default
        # A table left out is read as an empty one: its relative paths are resolved like any other.
        value = None  # no default: an optional key stays None, a required one fails in its reader
    value = s.parse(value, where, ctx) if s.parse else _read(_hints(cls)[f.name], value, where, s, ctx.base)
    return s.check(value, where, ctx) if s.check else value


def _read(tp: Any, v: Any, where: str, s: Setting, base: Path | None) -> Any:
    """Read ``v`` as the field type ``tp``, within ``s``'s bounds."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):  # X | None
        return None if v is None else _read(next(a for a in args if a is not type(None)), v, where, s, base)
    if origin is Literal:
        if v not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {v!r}")
        return v
    if origin is tuple:  # tuple[X, ...]: a TOML array
        elem: Any = args[0]
        if _is_table(elem):
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{where}: must be a non-empty array of tables ({elem.TABLE})")
            return tuple(_read_table(elem, t, f"{where}[{i}]", base) for i, t in enumerate(v))
        if not isinstance(v, list):
            raise ConfigError(f"{where}: must be an array, got {v!r}")
        return tuple(_read(elem, x, where, s, base) for x in v)
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: must be true or false, got {v!r}")
        return v
    if tp is int or tp is float:
        if isinstance(v, bool) or not isinstance(v, int if tp is int else int | float):
            raise ConfigError(f"{where}: must be {'an integer' if tp is int else 'a number'}, got {v!r}")
        if tp is float and not _finite(v):
            raise ConfigError(f"{where}: must be a finite number, got {v!r}")
        if s.lo is not None and v < s.lo:
            raise ConfigError(f"{where}: must be >= {tp(s.lo)}, got {v}")
        if s.hi is not None and v > s.hi:
            raise ConfigError(f"{where}: must be <= {tp(s.hi)}, got {v}")
        return tp(v)
    if tp is str or tp is Path:
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{where}: must be a non-empty string, got {v!r}")
        return v if tp is str else _resolve(Path(v), base)
    if tp is Address:
        return parse_address(v, where)
    if _is_table(tp):
        return _read_table(tp, {} if v is None else v, where, base)
    raise TypeError(f"{where}: no reader for fields of type {tp!r}")  # a new field type needs a branch here


# -- public entry points ----------------------------------------------------------


def parse_version(raw: Any, where: str) -> VersionConfig:
    """Validate one ``[[models.versions]]`` table; errors start with ``where``.

    Raises:
        ConfigError: naming the key path and the reason.
    """
    return _read_table(VersionConfig, raw, where, None)


def parse_model(raw: Any, where: str) -> ModelConfig:
    """Validate one ``[[models]]`` table (a deploy's new version set); errors start with ``where``.

    Raises:
        ConfigError: naming the key path and the reason.
    """
    return _read_table(ModelConfig, raw, where, None)


def parse_value(cls: type, key: str, value: Any, where: str) -> Any:
    """Validate one key's value as the loader does (type, bounds, choices, its own rule), e.g.
    ``parse_value(VersionConfig, "weight", 80, "weights.2") == 80.0``; errors start with ``where``.

    Rules that span keys of a table (a shadow has weight 0) or tables (at least one live
    version) are not checked: validate the whole table for those.

    Raises:
        ConfigError: naming ``where`` and the reason.
        KeyError: ``key`` is not a key of ``cls``.
    """
    f, s = settings(cls)[key]
    return _read_key(cls, f, s, value, where, Ctx(None, {}))


def parse_config(raw: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a decoded TOML document.

    Relative paths (``store.path``, ``admin.token_file``) are resolved against the config file's directory.

    Raises:
        ConfigError: naming the key path and the reason.
    """
    return _read_table(Config, raw, "", source.parent if source is not None else None, source=source)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a ``config.toml``.

    Raises:
        ConfigError: unreadable file, TOML syntax error, or invalid schema.
    """
    # Absolute, links not followed: a ConfigMap's config.toml is a link into a ``..data`` folder the
    # kubelet replaces on each update; the watch and every reload must keep reading it by its own name.
    p = Path(path).absolute()
    try:
        raw = tomllib.loads(p.read_bytes().decode())  # TOML is UTF-8 whatever the locale says
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:  # found by tests/fuzz (config_toml)
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except RecursionError:  # tomllib recurses per nesting level: `a = [[[...` 400 deep (tests/fuzz corpus)
        raise ConfigError(f"{path}: TOML syntax error: arrays or tables nested too deeply") from None
    return parse_config(raw, p)
