"""The request and shadow metrics: plain lists on the hot path, exposed as prometheus_client would."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.metrics import DIVERGENCE_BUCKETS, LATENCY_BUCKETS, SHADOW_RESULTS, Metrics


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_observations_match_a_prometheus_client_histogram():
    rng = random.Random(3)
    values = [rng.choice([0.0, *LATENCY_BUCKETS]) for _ in range(200)]  # bucket edges included
    values += [10 ** rng.uniform(-6, 2) for _ in range(2000)]
    ours = Metrics()
    ref_reg = CollectorRegistry()
    ref = Histogram("router_request_duration_seconds", "x", ["model", "version", "route", "protocol", "status"],
                    buckets=LATENCY_BUCKETS, registry=ref_reg)
    for i, v in enumerate(values):
        status = 200 if i % 7 else 504
        ours.observe("fraud", "1", "http", status, v)
        ref.labels("fraud", "1", "live", "http", str(status)).observe(v)
    got = samples(ours.registry)
    want = samples(ref_reg)
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-9 * max(1.0, abs(value)), key
    labels = frozenset({"model": "fraud", "version": "1", "route": "live", "protocol": "http", "status": "504"}.items())
    assert got[("router_requests_total", labels)] == sum(1 for i in range(len(values)) if i % 7 == 0)


def test_shadow_route_is_its_own_series():
    m = Metrics()
    m.observe("m", "2", "http", 200, 0.001, route="shadow")
    m.observe("m", "1", "http", 200, 0.001)
    got = samples(m.registry)
    shadow = frozenset({"model": "m", "version": "2", "route": "shadow", "protocol": "http", "status": "200"}.items())
    live = frozenset({"model": "m", "version": "1", "route": "live", "protocol": "http", "status": "200"}.items())
    assert got[("router_request_duration_seconds_count", shadow)] == 1
    assert got[("router_requests_total", live)] == 1
    assert got[("router_request_duration_seconds_bucket", live | {("le", "0.001")})] == 1
    assert got[("router_request_duration_seconds_bucket", live | {("le", "0.00075")})] == 0


def test_shadow_metrics_match_prometheus_client_objects():
    rng = random.Random(5)
    ours = Metrics()
    ref_reg = CollectorRegistry()
    div = Histogram("router_shadow_divergence", "x", ["model", "version", "output", "measure"],
                    buckets=DIVERGENCE_BUCKETS, registry=ref_reg)
    agreement = Counter("router_shadow_agreement", "x", ["model", "version", "output", "result"], registry=ref_reg)
    results = Counter("router_shadow_requests", "x", ["model", "version", "result"], registry=ref_reg)
    for version in ("2", "3"):
        counts = ours.shadow_counts("fraud", version)
        for r in SHADOW_RESULTS:
            results.labels("fraud", version, r)  # every result shows, at 0, once the version is a shadow
        for _ in range(300):
            r = rng.randrange(len(SHADOW_RESULTS))
            counts[r] += 1
            results.labels("fraud", version, SHADOW_RESULTS[r]).inc()
    edges = [*DIVERGENCE_BUCKETS, math.inf]
    for i in range(3000):
        output = ("probabilities", "logits")[i % 2]
        max_abs = rng.choice(edges) if i % 5 == 0 else 10 ** rng.uniform(-12, 2)
        max_rel = rng.choice(edges) if i % 3 == 0 else rng.random()
        classifier = output == "probabilities"
        rows = rng.randrange(1, 5) if classifier else -1
        agree = rng.randrange(rows + 1) if classifier else -1
        ours.observe_divergence("fraud", "2", output, max_abs, max_rel, agree, rows)
        div.labels("fraud", "2", output, "abs").observe(max_abs)
        div.labels("fraud", "2", output, "rel").observe(max_rel)
        agree_c = agreement.labels("fraud", "2", output, "agree")
        disagree_c = agreement.labels("fraud", "2", output, "disagree")
        if rows > 0:
            agree_c.inc(agree)
            disagree_c.inc(rows - agree)
    got = samples(ours.registry)
    want = samples(ref_reg)
    names = {name for name, _ in want}
    assert {name for name, _ in got if name.startswith("router_shadow_") and "queue" not in name} == names
    for key, value in want.items():
        assert got[key] == value or abs(got[key] - value) < 1e-9 * max(1.0, abs(value)), key
