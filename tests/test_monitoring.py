"""monitoring/: the Grafana dashboard, the Prometheus rules and the example config, against the real thing.

promtool checks the rules and the config and unit-tests the alerts on made-up series; a Prometheus
server started here scrapes a real daemon every second and loads the rules, and PromQL over its HTTP
API must find the requests sent; every series the dashboard and the rules name must be one the
daemon's ``/metrics`` lists (or a rule records).

Prometheus and promtool come from Debian's ``prometheus`` package (``make tools`` installs it). Without
them these tests fail and say so rather than skip: a skip would let a run pass with the monitoring
files unchecked.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FRAUD, ROOT, Daemon, free_port, write_config
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.daemon

MONITORING = ROOT / "monitoring"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
PROMETHEUS_YML = MONITORING / "prometheus" / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "model-router.json"

BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [4.5, 0.2, 0.9, 0.7, 3.1, 2, 1.5, 0]}]}).encode()
#: Every wait here is for a condition; this only bounds how long a broken setup takes to fail.
DEADLINE_S = 60


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: these tests need Debian's prometheus package "
                    "(`make tools`, or `apt-get install prometheus`)", pytrace=False)
    return path


def wait_for(probe: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    """Call ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout} s: {what} (last: {value!r})")
        time.sleep(0.2)


# --- metric names -----------------------------------------------------------------------------------

#: Series Prometheus makes itself for every target, not the daemon.
PROMETHEUS_OWN = frozenset({"up"})
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")  # label matchers; ranges and subqueries
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier not inside a number (1e-3, 15m) or a Grafana variable ($model), and not a function call.
_IDENT = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and",
                       "or", "unless", "atan2", "inf", "nan"})
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.+),\s*)?[\w$]+\)\s*$", re.S)


def exported_names(text: str) -> set[str]:
    """The series names a /metrics page exports, families without samples yet included (from TYPE lines)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values(...)`` query) reads."""
    m = _LABEL_VALUES.match(expr)
    if m:
        expr = m.group(1) or ""
    expr = _GROUPING.sub(" ", _BRACES.sub(" ", _STRING.sub(" ", expr)))
    return {n for n in _IDENT.findall(expr) if n.lower() not in _KEYWORDS}


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*-?\s*record:\s*(\S+)\s*$", ALERTS.read_text(), re.M))


def dashboard_exprs() -> list[str]:
    """Every query of the dashboard: panel targets (rows' nested panels too) and template variables."""
    dashboard = json.loads(DASHBOARD.read_text())
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                out.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["query"] if isinstance(var["query"], str) else var["query"]["query"])
    return out


def test_names_are_read_from_promql():
    expr = ('histogram_quantile(0.99, sum by (le, version) (rate(a_bucket{x=~"4..|5..", y="$v"}[$__rate_interval])))'
            ' / ignoring (version) group_left () sum without (le) (b_total offset 15m) > bool 1e-3'
            ' and on () vector(0.1) or c:d:e unless up')
    assert metric_names(expr) == {"a_bucket", "b_total", "c:d:e", "up"}
    assert metric_names('label_values(m_total{model=~"$model"}, version)') == {"m_total"}
    assert metric_names("label_values(version)") == set()


# --- the daemon and a Prometheus scraping it ---------------------------------------------------------

@pytest.fixture(scope="module")
def starting_daemon(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[Daemon]:
    """One daemon serving the demo fraud model (v1 and v2, one worker each), maybe not ready yet: Prometheus
    starts meanwhile. /metrics is on its HTTP port."""
    cfg = write_config(tmp_path_factory.mktemp("monitoring") / "config.toml", store, [FRAUD])
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    try:
        yield d
    finally:
        code = d.stop()
    assert code == 0


@pytest.fixture(scope="module")
def daemon(starting_daemon: Daemon) -> Daemon:
    starting_daemon.wait_ready()
    return starting_daemon


@pytest.fixture(scope="module")
def exported(daemon: Daemon) -> set[str]:
    status, body = daemon.get("/metrics")
    assert status == 200
    return exported_names(body.decode())


class Prometheus:
    """A Prometheus server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: {e.code} {e.read().decode(errors='replace')}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """An instant query at the present: its vector as a list of {"metric": labels, "value": [t, "v"]}."""
        return self.get("/api/v1/query", query=promql)["result"]

    def by(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}


@pytest.fixture(scope="module")
def prometheus(starting_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A Prometheus scraping the daemon every second under the job name the rules expect, with the rules loaded.

    Its first scrape comes about 5 s after it starts (the scrape manager applies new targets every 5 s):
    started before the daemon is ready, it waits while the daemon starts, not after."""
    binary = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    # JSON is YAML.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "model-router", "static_configs": [{"targets": [starting_daemon.http]}]}],
    }))
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(prom.url + "/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, "prometheus ready")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"prometheus ignored SIGTERM for 20 s:\n{log.read_text()}") from None


# --- promtool --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS_YML)]],
                         ids=["rules", "config"])
def test_promtool_checks(args):
    # check config resolves rule_files against the config file's folder: it checks alerts.yml again, as loaded.
    r = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


FRAUD_POOLS = [series("router_active_pool", "1x40", model="fraud", pool="blue"),
               series("router_active_pool", "0x40", model="fraud", pool="green")]

#: promtool unit tests (interval 1m: "_x19 1x20" is absent for 19 minutes, then 1 from 19m). They pin what
#: the expressions alone do not show: a failure counted from its series' first sample, no alert for old
#: events when Prometheus has just started, readiness from the active pool only, the latency objective.
#: The alerts read recording rules of another group, which may run just before or just after them:
#: no evaluation time here falls on the minute a recorded value changes.
ALERT_TESTS = [
    {   # The daemon creates result="failed" at the first failed deploy: alerts for 15 minutes from then.
        "interval": "1m",
        "input_series": [*FRAUD_POOLS, series("router_deploys_total", "_x19 1x20", model="fraud", result="failed"),
                         series("router_reloads_total", "_x19 1x20", result="refused")],
        "alert_rule_test": [
            {"eval_time": "18m", "alertname": "DeployFailed", "exp_alerts": []},
            {"eval_time": "18m", "alertname": "ReloadFailed", "exp_alerts": []},
            {"eval_time": "21m", "alertname": "ReloadFailed", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "result": "refused"},
                "exp_annotations": {
                    "summary": "A config reload was not applied (refused)",
                    "description": "Reloads in the last 15 minutes that ended refused: 1 (invalid: the file did not "
                                   "validate, nothing changed; refused: it changes what needs a restart, nothing "
                                   "changed; failed: a deploy it started failed, and that model keeps what it ran). "
                                   "What serves is not what the file says."}}]},
            {"eval_time": "21m", "alertname": "DeployFailed", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "model": "fraud"},
                "exp_annotations": {
                    "summary": "A deploy of fraud failed",
                    "description": "Failed blue-green deploys of fraud in the last 15 minutes: 1. The active pool "
                                   "kept serving; the daemon's log says why."}}]},
            {"eval_time": "40m", "alertname": "DeployFailed", "exp_alerts": []},
        ],
    },
    {   # Prometheus starts scraping a daemon whose counters already count old events: no alert.
        "interval": "1m",
        "input_series": [*FRAUD_POOLS, series("router_deploys_total", "2x30", model="fraud", result="failed"),
                         series("router_reloads_total", "1x30", result="invalid"),
                         series("router_worker_restarts_total", "9x30", model="fraud", version="1", replica="0",
                                pool="blue")],
        "alert_rule_test": [{"eval_time": f"{t}m", "alertname": name, "exp_alerts": []}
                            for t in (1, 10, 20) for name in ("DeployFailed", "ReloadFailed", "WorkerCrashLooping")],
    },
    {   # Both versions down in the active pool (blue); the previous pool (green) is live but takes no traffic.
        "interval": "1m",
        "input_series": [*FRAUD_POOLS,
                         series("router_worker_up", "1 0x10", model="fraud", version="1", replica="0", pool="blue"),
                         series("router_worker_up", "1 0x10", model="fraud", version="2", replica="0", pool="blue"),
                         series("router_worker_up", "1x10", model="fraud", version="1", replica="0", pool="green")],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "RouterNotReady", "exp_alerts": []},
            {"eval_time": "3m", "alertname": "RouterNotReady", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "model": "fraud"},
                "exp_annotations": {
                    "summary": "Model fraud has no live worker in its active pool",
                    "description": "No worker of fraud's active pool has been live for a minute: its requests "
                                   "get 503 and /v2/health/ready answers 503."}}]},
            {"eval_time": "4m", "alertname": "WorkerDown", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "model": "fraud", "version": v, "replica": "0",
                               "pool": "blue"},
                "exp_annotations": {
                    "summary": f"Worker fraud v{v} replica 0 (blue) is down",
                    "description": "The worker has not been live for 2 minutes; other replicas and versions take "
                                   "its traffic if they can. See the daemon's log for why it exited or did not "
                                   "load."}} for v in ("1", "2")]},
        ],
    },
    {   # 1 request in 10 answered 503 from 5m on; none before, when no 5xx series exists yet.
        "interval": "1m",
        "input_series": [series("router_requests_total", "0+540x30", model="fraud", version="1", route="live",
                                protocol="http", status="200"),
                         series("router_requests_total", "_x5 0+60x25", model="fraud", version="1", route="live",
                                protocol="http", status="503")],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "HighErrorRate", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "HighErrorRate", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "model": "fraud"},
                "exp_annotations": {
                    "summary": "fraud answers 10% of its requests with 5xx",
                    "description": "More than 5% of live requests to fraud have failed with 503 or 504 for "
                                   "5 minutes."}}]},
        ],
    },
    {   # 1 request/s: v1 all under 50 ms, v2 all between 0.1 s and 0.25 s (over the 0.1 s objective).
        "interval": "1m",
        "input_series": [
            *(series("router_request_duration_seconds_bucket", f"0+{n}x30", model="fraud", version="1",
                     route="live", protocol="http", status="200", le=le)
              for le, n in (("0.05", 60), ("0.1", 60), ("0.25", 60), ("+Inf", 60))),
            *(series("router_request_duration_seconds_bucket", f"0+{n}x30", model="fraud", version="2",
                     route="live", protocol="http", status="200", le=le)
              for le, n in (("0.05", 0), ("0.1", 0), ("0.25", 60), ("+Inf", 60))),
            *(series("router_requests_total", "0+60x30", model="fraud", version=v, route="live", protocol="http",
                     status="200") for v in ("1", "2")),
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "HighP99Latency", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "HighP99Latency", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "model": "fraud", "version": "2", "route": "live"},
                "exp_annotations": {
                    "summary": "p99 latency of fraud v2 is 248.5ms",
                    "description": "The p99 of live requests to fraud v2 has been above the objective "
                                   "(router:request_duration_p99_objective_seconds) for 10 minutes."}}]},
        ],
    },
    {   # v2 drifts from minute 10 on; v1 never does. Fires after 30 minutes of drift, not before.
        "interval": "1m",
        "input_series": [series("router_drift_version_drifting", "0x60", model="fraud", version="1"),
                         series("router_drift_version_drifting", "0x9 1x50", model="fraud", version="2")],
        "alert_rule_test": [
            {"eval_time": "35m", "alertname": "DataDrift", "exp_alerts": []},
            {"eval_time": "45m", "alertname": "DataDrift", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "model": "fraud", "version": "2"},
                "exp_annotations": {
                    "summary": "fraud v2: its inputs or outputs drift from its reference",
                    "description": "A monitored feature of the version has been over a [models.drift] threshold "
                                   "for 30 minutes. GET /admin/models/fraud/drift names the features and their "
                                   "PSI, JS and KS; router_drift_statistic has them over time."}}]},
        ],
    },
    {   # fraud's log folder is unwritable from minute 5: 2 records/s fail to be written; a dropped queue never.
        "interval": "1m",
        "input_series": [series("router_predlog_dropped_total", "0x5 0+120x40", model="fraud", reason="write_failed"),
                         series("router_predlog_dropped_total", "0x45", model="fraud", reason="queue_full")],
        "alert_rule_test": [
            {"eval_time": "12m", "alertname": "PredictionLogDrops", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "PredictionLogDrops", "exp_alerts": [{
                "exp_labels": {"severity": "warning", "model": "fraud", "reason": "write_failed"},
                "exp_annotations": {
                    "summary": "The prediction log of fraud drops records (write_failed)",
                    "description": "2 sampled records per second have not been written for 10 minutes (queue_full: "
                                   "the writer falls behind, lower log_rate; writer_down: it is not running, see "
                                   "the daemon's log; write_failed: its folder is unwritable or the disk is full). "
                                   "Serving is not affected."}}]},
        ],
    },
]


def test_promtool_alert_unit_tests(tmp_path):
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(json.dumps({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": ALERT_TESTS}))
    r = subprocess.run([tool("promtool"), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# --- a real Prometheus on a real daemon -------------------------------------------------------------------

def test_prometheus_scrapes_the_daemon(prometheus, daemon):
    answered: Counter[str] = Counter()

    def send() -> None:
        for version, n in (("1", 3), ("2", 2)):
            for _ in range(n):
                status, _, raw = daemon.post(f"/v2/models/fraud/versions/{version}/infer", BODY)
                assert status == 200, raw
                answered[json.loads(raw)["model_version"]] += 1
        for i in range(5):  # split by weight, sticky per key
            status, _, raw = daemon.post("/v2/models/fraud/infer", BODY, {"x-user-id": f"user-{i}"})
            assert status == 200, raw
            answered[json.loads(raw)["model_version"]] += 1

    total = 'sum(router_requests_total{model="fraud"})'

    def scraped() -> bool:
        return prometheus.by(total, "") == {"": answered.total()}

    # A rate needs two samples of a series: the second round goes after Prometheus has stored the first.
    send()
    wait_for(scraped, f"{total} == {answered.total()}")
    send()
    wait_for(scraped, f"{total} == {answered.total()}")
    assert answered.total() == 20 and set(answered) == {"1", "2"}

    by_version = 'sum by (version) (router_requests_total{model="fraud", route="live", status="200"})'
    assert prometheus.by(by_version, "version") == dict(answered)

    workers = {(r["metric"]["model"], r["metric"]["version"], r["metric"]["replica"], r["metric"]["pool"])
               for r in prometheus.query("router_worker_up == 1")}
    assert workers == {("fraud", v["version"], "0", "blue") for v in FRAUD["versions"]}
    # RouterNotReady's join of worker_up with the active pool, on the daemon's real label sets.
    serving = "max by (model) (router_worker_up * on (model, pool) group_left () router_active_pool)"
    assert prometheus.by(serving, "model") == {"fraud": 1.0}

    p99 = ('histogram_quantile(0.99, sum by (le, version) '
           '(rate(router_request_duration_seconds_bucket{model="fraud"}[1m])))')

    def finite_p99() -> dict[str, float]:
        values = prometheus.by(p99, "version")
        ok = all(0 < values.get(v, math.nan) < math.inf for v in answered)
        return values if ok else {}

    values = wait_for(finite_p99, f"{p99} finite for versions {sorted(answered)}")
    assert all(0 < values[v] < math.inf for v in answered), values

    # The recording rules the alerts read, evaluated every second on the same samples.
    recorded = 'model_version_route:router_request_duration_seconds:p99_5m{model="fraud", route="live"}'
    wait_for(lambda: {v for v, x in prometheus.by(recorded, "version").items() if 0 < x < math.inf} >= set(answered),
             f"{recorded} for versions {sorted(answered)}")
    assert prometheus.by('model:router_requests_5xx:ratio_rate5m{model="fraud"}', "model") == {"fraud": 0.0}


REQUIRED_ALERTS = {"RouterDown", "RouterNotReady", "WorkerDown", "WorkerCrashLooping", "WorkerHung",
                   "ModelLoadFailures", "HighP99Latency", "HighErrorRate", "ShadowDisagreement", "DeployFailed",
                   "ReloadFailed", "DataDrift", "PredictionLogDrops"}


def test_rules_run_on_the_daemon_series(prometheus, exported):
    """Every rule evaluates without error on the daemon's real series, and reads only series that exist."""

    def evaluated() -> list[dict]:
        rules = [r for g in prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = wait_for(evaluated, "every rule evaluated once")
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    assert REQUIRED_ALERTS <= {r["name"] for r in rules if r["type"] == "alerting"}
    for rule in rules:
        if rule["type"] == "alerting":
            assert rule["labels"].get("severity") in ("warning", "critical"), rule["name"]
            assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["name"]
    unknown = {(r["name"], n) for r in rules for n in metric_names(r["query"])
               if n not in exported | recorded_names() | PROMETHEUS_OWN}
    assert unknown == set(), "rules read series the daemon does not export"


# --- the dashboard ----------------------------------------------------------------------------------------

#: What the dashboard must show (the series its panels are for).
DASHBOARD_SERIES = {
    "router_requests_total", "router_request_duration_seconds_bucket", "router_requests_in_flight",
    "router_shadow_agreement_total", "router_shadow_divergence_bucket", "router_shadow_requests_total",
    "router_worker_up", "router_worker_restarts_total", "router_worker_hangs_total",
    "router_model_load_failures_total", "router_deploys_total", "router_active_pool", "router_store_bytes",
    "router_worker_cpu_seconds_total", "router_worker_resident_memory_bytes", "router_worker_queue_depth",
}


def test_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {variables[n]["type"] for n in ("model", "version")} == {"query"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]


def test_dashboard_names_only_exported_series(exported):
    used = {n for expr in dashboard_exprs() for n in metric_names(expr)}
    assert DASHBOARD_SERIES <= used, f"no panel shows {sorted(DASHBOARD_SERIES - used)}"
    unknown = used - exported - recorded_names()
    assert not unknown, f"the dashboard reads series the daemon's /metrics does not list: {sorted(unknown)}"


def test_dashboard_queries_run(prometheus):
    """Every dashboard query, with Grafana's variables filled in, is PromQL Prometheus accepts."""
    subs = {"$__rate_interval": "1m", "$model": ".+", "$version": ".+"}
    for expr in dashboard_exprs():
        m = _LABEL_VALUES.match(expr)
        if m:
            expr = m.group(1)
        for var, value in subs.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        prometheus.query(expr)
