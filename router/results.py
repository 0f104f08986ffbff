"""What control operations return, and how each adapter renders it.

The control plane (:mod:`router.control`) returns these objects; the admin API
sends :meth:`to_json`, the CLI rebuilds them from that JSON with ``from_json``
and prints :meth:`text`. One shape per operation, so the API, the CLI and the
UI say the same thing.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class TrafficResult:
    """A model's traffic: weights, shadow fractions, and the versions the split can choose now."""

    model: str
    routing_key: str | None
    weights: dict[str, int | float]
    shadow: dict[str, float]
    #: Versions with weight > 0 and a live worker: the routing table's.
    live: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrafficResult:
        return cls(d["model"], d["routing_key"], d["weights"], d["shadow"], d["live"])

    def text(self) -> str:
        total = sum(self.weights.values()) or 1
        lines = []
        for v, w in self.weights.items():
            if self.shadow.get(v):
                lines.append(f"{self.model} v{v}: shadow, mirrors {100 * self.shadow[v]:g}% of live traffic")
            else:
                lines.append(f"{self.model} v{v}: weight {w} ({100 * w / total:.1f}%)")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload applied: traffic changes live, and the models it deployed blue-green (with why)."""

    reloaded: str
    changes: list[str]
    deployed: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReloadResult:
        return cls(d["reloaded"], d["changes"], d["deployed"])

    def text(self) -> str:
        changes = [*self.changes, *(f"deployed {m} ({'; '.join(why)})" for m, why in self.deployed.items())]
        return f"reloaded {self.reloaded}: " + ("; ".join(changes) if changes else "no change")


@dataclass(frozen=True, slots=True)
class SwapResult:
    """A deploy or rollback: which pool is active now, how long the swap took, which versions serve."""

    action: Literal["deploy", "rollback", "drop"]
    model: str
    active: str
    swap_us: float
    versions: list[str]
    #: The version a drop took out of the active set.
    dropped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "dropped" or v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SwapResult:
        return cls(d["action"], d["model"], d["active"], d["swap_us"], d["versions"], d.get("dropped"))

    def text(self) -> str:
        if self.action == "rollback":
            return (f"{self.model}: the {self.active} pool is active again (versions {', '.join(self.versions)}; "
                    f"swap {self.swap_us} us)")
        if self.action == "drop":
            return (f"{self.model}: version {self.dropped} is out of the active set (still stored, warm in the "
                    f"previous pool for a rollback); versions {', '.join(self.versions)} serve from the "
                    f"{self.active} pool (swap {self.swap_us} us)")
        return (f"{self.model}: deployed versions {', '.join(self.versions)}; the {self.active} pool is active "
                f"(swap {self.swap_us} us)")


@dataclass(frozen=True, slots=True)
class StatusResult:
    """Every model: traffic, pools, versions and their workers; whether the server is ready or draining."""

    models: list[dict[str, Any]]
    ready: bool
    draining: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StatusResult:
        return cls(d["models"], d["ready"], d["draining"])

    def text(self) -> str:
        lines = [f"ready: {'yes' if self.ready else 'no'}{' (draining)' if self.draining else ''}"]
        for m in self.models:
            lines.append(f"model {m['model']}" + (f" (routing key: {m['routing_key']})" if m["routing_key"] else "")
                         + f", {m['pool']} pool active"
                         + (f", {m['previous']['pool']} pool warm for rollback"
                            + (f" ({m['previous']['expires_in_s']:.0f} s left)"
                               if m["previous"].get("expires_in_s") is not None else "") if m["previous"] else "")
                         + (f", {m['standby']['pool']} pool warming up ({m['standby']['live']}/"
                            f"{m['standby']['workers']} workers live)" if m.get("standby") else ""))
            total = sum(m["weights"].values()) or 1
            for v in m["versions"]:
                share = f"{100 * v['weight'] / total:5.1f}%" if not v["shadow"] else f"shadow {v['shadow']:.0%}"
                lines.append(f"  v{v['version']:<8} weight {v['weight']:<6} {share}  {v['device']}")
                q = v.get("shadow_queue")
                if q:
                    lines.append(f"    shadow queue {q['outstanding']}/{q['limit']}"
                                 + (f"; last error: {q['last_error']}" if q["last_error"] else ""))
                for w in v["workers"]:
                    lines.append(f"    #{w['replica']} pid {w['pid']} {w['state']:<10} cpus {w['cpus']} "
                                 f"in flight {w['outstanding']} restarts {w['restarts']}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ReleasedPool:
    """A model's previous pool, stopped before its ``keep_previous_s`` ran out: no rollback to it now."""

    model: str
    pool: str
    versions: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReleasedPool:
        return cls(d["model"], d["pool"], d["versions"])

    def text(self) -> str:
        return (f"model {self.model}: the previous ({self.pool}) pool, versions {', '.join(self.versions)}, "
                "is stopping; no rollback to it from now on")


@dataclass(frozen=True, slots=True)
class PushedVersion:
    """A push into the model store: the version's stored ``meta.json``, and whether this push created it
    (201) or found the same contents already stored (200)."""

    model: str
    version: str
    created: bool
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PushedVersion:
        return cls(d["model"], d["version"], d["created"], d["meta"])

    def text(self) -> str:
        m = self.meta
        what = (f"{m.get('platform', '?')}, {m.get('size', '?')} bytes, sha256 {str(m.get('sha256', '?'))[:12]}, "
                f"pushed {m.get('created', '?')}")
        if self.created:
            return f"stored {self.model} version {self.version} ({what})"
        return f"{self.model} version {self.version} is already stored with these contents ({what})"


def _shares(weights: dict[str, int | float], shadow: dict[str, float]) -> dict[str, str]:
    """Each version's place in words: ``10.0% of traffic`` or ``shadow of 50% of traffic``."""
    total = sum(weights.values()) or 1
    return {v: (f"shadow of {100 * shadow[v]:g}% of traffic" if shadow.get(v)
                else f"{100 * w / total:.1f}% of traffic (weight {w})") for v, w in weights.items()}


@dataclass(frozen=True, slots=True)
class RolloutResult:
    """A stored version put into a model's active set: ``deploy`` (blue-green, with the swap's
    duration), ``traffic`` (it was in the set: only the weights changed) or ``create`` (the model's
    first version: the model is new); the model's weights and shadows after it."""

    action: Literal["deploy", "traffic", "create"]
    model: str
    version: str
    active: str
    swap_us: float | None
    weights: dict[str, int | float]
    shadow: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RolloutResult:
        return cls(d["action"], d["model"], d["version"], d["active"], d["swap_us"], d["weights"], d["shadow"])

    def text(self) -> str:
        shares = _shares(self.weights, self.shadow)
        how = {"deploy": f"deployed blue-green, the {self.active} pool is active (swap {self.swap_us} us)",
               "traffic": "already in the active set: traffic changed, no worker restarted",
               "create": f"a new model, serving from the {self.active} pool"}[self.action]
        return "\n".join([f"{self.model} version {self.version}: {shares[self.version]}; {how}",
                          *(f"  v{v}: {share}" for v, share in shares.items() if v != self.version)])


@dataclass(frozen=True, slots=True)
class VersionsResult:
    """A model's stored versions: per version its ``state`` (serving, shadow, idle, previous, standby,
    stopping, stored), ``bytes``, ``meta`` (``meta.json`` without its example) and, in the active set,
    ``weight`` and ``shadow``; ``bytes`` of them all."""

    model: str
    versions: list[dict[str, Any]]
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionsResult:
        return cls(d["model"], d["versions"], d["bytes"])

    def text(self) -> str:
        lines = [f"model {self.model}: {len(self.versions)} stored version(s), {_size(self.bytes)}"]
        for v in self.versions:
            meta = v.get("meta") or {}
            place = v["state"]
            if v["state"] == "serving":
                place += f" (weight {v['weight']})"
            elif v["state"] == "shadow":
                place += f" ({100 * v['shadow']:g}% mirrored)"
            lines.append(f"  v{v['version']:<8} {place:<22} {_size(v['bytes']):>10}  {meta.get('platform', '?'):<12} "
                         f"{meta.get('created', '?')}  {meta.get('description', '') or v.get('problem', '')}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class RemovedVersion:
    """A version deleted from the store, and the bytes that freed."""

    model: str
    version: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RemovedVersion:
        return cls(d["model"], d["version"], d["bytes"])

    def text(self) -> str:
        return f"removed {self.model} version {self.version} from the store ({_size(self.bytes)} freed)"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Recent points of a model's versions: per version ``{"t": [unix seconds...], series: [values...]}``
    (None where a point has no value: no requests, no shadow comparison), ``interval_s`` apart."""

    model: str
    interval_s: float
    series: list[str]
    versions: dict[str, dict[str, list[float | None]]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HistoryResult:
        return cls(d["model"], d["interval_s"], d["series"], d["versions"])

    def text(self) -> str:
        lines = [f"model {self.model}: points every {self.interval_s:g} s"]
        for version, points in self.versions.items():
            n = len(points["t"])
            latest = ", ".join(f"{name} {_show(points[name][-1])}" for name in self.series) if n else "no points"
            lines.append(f"  v{version}: {n} point(s); latest: {latest}")
        return "\n".join(lines)


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True, slots=True)
class AuditResult:
    """The audit trail, newest first: each entry ``{"time" (unix seconds), "who", "action", "model", "version",
    "detail", "result" (ok, refused or failed), "error"}`` (:mod:`router.audit`)."""

    entries: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditResult:
        return cls(d["entries"])

    def text(self) -> str:
        if not self.entries:
            return "no changes recorded"
        lines = []
        for e in self.entries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            what = " ".join(x for x in (e["action"], e["model"], e["version"] and f"v{e['version']}") if x)
            detail = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in (e["detail"] or {}).items())
            line = f"{when}  {e['who']:<24} {what}{' ' + detail if detail else ''}: {e['result']}"
            lines.append(line + (f" ({e['error']})" if e["error"] else ""))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class PredlogResult:
    """A model's prediction log: its sampling ``rate`` (``log_rate``), its folder, newest files first
    (at most 100 of ``file_count``), and what was sampled, written and dropped (by reason)."""

    model: str
    rate: float
    path: str
    format: str
    files: list[dict[str, Any]]
    file_count: int
    bytes: int
    sampled: int
    written: int
    dropped: int
    dropped_by_reason: dict[str, int]
    writer: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PredlogResult:
        return cls(**d)


@dataclass(frozen=True, slots=True)
class DriftResult:
    """A model's data drift per version (:mod:`router.drift`): ``enabled`` (``[models.drift]``), the
    ``thresholds``, and per version its merged summary (None until a worker reported)."""

    model: str
    enabled: bool
    thresholds: dict[str, float]
    versions: dict[str, dict[str, Any] | None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DriftResult:
        return cls(d["model"], d["enabled"], d["thresholds"], d["versions"])

    def text(self) -> str:
        if not self.enabled:
            return f"model {self.model}: drift monitoring is off ([models.drift] enabled = false)"
        lines = [f"model {self.model}: drift against each version's reference"]
        for version, d in self.versions.items():
            if d is None:
                lines.append(f"  v{version}: no report yet")
                continue
            state = "DRIFTING" if d["drifting"] else "warning" if d["warning"] else "ok"
            lines.append(f"  v{version}: {state} (window {d['inputs']['window']} rows, reference "
                         f"{d['inputs']['reference'] or 'collecting ' + str(d['inputs']['collecting'])})")
            for io in ("inputs", "outputs"):
                for name, f in d[io]["features"].items():
                    flag = " DRIFTING" if f["drifting"] else " warning" if f["warning"] else ""
                    lines.append(f"    {io[:-1]} {name:<16} psi {_show(f['psi'])}  js {_show(f['js'])}  "
                                 f"ks {_show(f['ks'])}{flag}")
        return "\n".join(lines)
