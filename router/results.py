"""What control operations return, and how each adapter renders it.

The control plane (:mod:`router.control`) returns these objects; the admin API
sends :meth:`to_json`, the CLI rebuilds them from that JSON with ``from_json``
and prints :meth:`text`. One shape per operation, so the API, the CLI and the
UI say the same thing.
"""

from __future__ import annotations

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

    action: Literal["deploy", "rollback"]
    model: str
    active: str
    swap_us: float
    versions: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SwapResult:
        return cls(d["action"], d["model"], d["active"], d["swap_us"], d["versions"])

    def text(self) -> str:
        if self.action == "rollback":
            return (f"{self.model}: the {self.active} pool is active again (versions {', '.join(self.versions)}; "
                    f"swap {self.swap_us} us)")
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
                         + (f", {m['previous']['pool']} pool warm for rollback" if m["previous"] else ""))
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
