"""Data drift per model version, as the workers report it: merged over a version's replicas.

Each worker monitors its own traffic (``runtime.drift``) and sends a summary every few seconds in a
``STATUS_DRIFT`` frame; its link keeps the last one undecoded. Reading them (a scrape, the drift API)
merges a version's replicas: a statistic is the mean over the replicas that have one, weighted by
their window sizes; a feature or a version is flagged when any replica flags it; windows, non-finite
counts and rows still being collected add up; the reference is the largest replica's. Nothing here
runs per request, and no tensor is decoded: the summaries are a few numbers per feature.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .proto.stats import unpack_drift

STATISTICS = ("psi", "js", "ks")
GROUPS = ("inputs", "outputs")


def merge(summaries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary for a version from its replicas' (``DriftMonitor.summary`` shape, plus ``replicas``);
    None when no replica has reported."""
    reports = list(summaries)
    if not reports:
        return None
    out: dict[str, Any] = {"replicas": len(reports),
                           "drifting": any(r.get("drifting") for r in reports),
                           "warning": any(r.get("warning") for r in reports)}
    for group in GROUPS:
        parts = [r[group] for r in reports if isinstance(r.get(group), dict)]
        features: dict[str, dict[str, Any]] = {}
        for name in dict.fromkeys(n for p in parts for n in p.get("features", {})):
            rows = [(p.get("window", 0), p["features"][name]) for p in parts if name in p.get("features", {})]
            merged: dict[str, Any] = {}
            for stat in STATISTICS:
                weighted = [(max(w, 1), f[stat]) for w, f in rows if isinstance(f.get(stat), int | float)]
                total = sum(w for w, _ in weighted)
                merged[stat] = sum(w * v for w, v in weighted) / total if weighted else None
            merged["nonfinite"] = sum(int(f.get("nonfinite", 0)) for _, f in rows)
            merged["warning"] = any(f.get("warning") for _, f in rows)
            merged["drifting"] = any(f.get("drifting") for _, f in rows)
            features[name] = merged
        out[group] = {"reference": max((int(p.get("reference", 0)) for p in parts), default=0),
                      "collecting": sum(int(p.get("collecting", 0)) for p in parts),
                      "window": sum(int(p.get("window", 0)) for p in parts),
                      "features": features}
    return out


def of_replicas(replicas: Iterable[Any]) -> dict[str, Any] | None:
    """The merged drift of these replicas (their links' last drift frames)."""
    reports = []
    for r in replicas:
        link = getattr(r, "link", None)
        payload = link.drift if link is not None else None
        summary = unpack_drift(payload) if payload is not None else None
        if summary is not None:
            reports.append(summary)
    return merge(reports)
