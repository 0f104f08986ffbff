"""deploy/kubernetes/ and deploy/Dockerfile, checked offline: no cluster, no container runtime.

- **Schemas.** Every manifest that a kustomization lists validates, in strict mode (a field the API
  does not have is an error), against the OpenAPI schemas of two recent Kubernetes releases that
  kubernetes-validate ships (``VERSIONS``): in-process for each document, and once through its command
  line, ``kubernetes-validate --strict``, as a user would run it (marked daemon: it starts a process).
  The ServiceMonitor is a Prometheus Operator CRD, for which kubernetes-validate has no schema: it is
  checked structurally here instead (its fields, and that it selects the admin Service and its port).
- **Policy**, for each variant as ``kubectl apply -k`` would send it: probes on the admin listener
  (startup, liveness, readiness), requests and limits on every container, Guaranteed QoS with integer
  CPUs (the static CPU manager), a GPU only in the GPU variants, non-root, no ``latest`` tag, the
  configuration mounted as a directory and never with ``subPath``, a grace period above the whole
  shutdown (preStop pause + ``server.drain_timeout_s`` + the workers' and the log writer's stop), the
  admin token from a Secret. The configuration each variant serves is parsed by the daemon's own loader,
  and its listeners, paths and devices must fit the pod.
- **Wiring**: Services, the autoscaler, the disruption budget, the claim and the ConfigMaps refer to
  what exists; the autoscaler's metric is one the daemon exports (``router/metrics.py``) and the one
  the prometheus-adapter rule serves, and that rule's query is unit-tested with promtool (daemon layer).
- **The Dockerfile**: pinned base images and torch, the CPU wheel index for the CPU variant, the uid
  and ports the manifests expect, sources that ``.dockerignore`` lets through.

The kustomizations use ``resources`` only (no patches or transformers), so rendering one is reading
its files: ``render`` does that, and refuses any other kustomize feature.
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.config import Config, parse_config
from router.metrics import Metrics
from router.predlog import PredictionLog
from router.replica import Replica

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
#: Two recent releases whose schemas kubernetes-validate ships: the oldest and the newest minor that
#: upstream Kubernetes still supports when this was written.
VERSIONS = ("1.35.0", "1.37.0")
VARIANTS = ("cpu", "gpu", "gitops-cpu", "gitops-gpu")
#: Kinds kubernetes-validate has no schema for (CRDs): checked structurally below.
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}
#: YAML under deploy/kubernetes that is not a Kubernetes object.
NOT_MANIFESTS = {K8S / "monitoring" / "prometheus-adapter-values.yaml"}
#: Directories a user applies with ``kubectl apply -k``.
TOP_LEVEL = (*VARIANTS, "monitoring")
#: The daemon's listeners and the container ports that carry them.
LISTENERS = {"http": "http", "msgpack": "msgpack", "admin_http": "admin"}
IN_FLIGHT = "router_requests_in_flight"


# --- reading the manifests ---------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomization(directory: Path) -> dict[str, Any]:
    k = documents(directory / "kustomization.yaml")[0]
    assert k.get("apiVersion") == "kustomize.config.k8s.io/v1beta1" and k.get("kind") == "Kustomization", directory
    unknown = set(k) - {"apiVersion", "kind", "resources"}
    assert not unknown, f"{directory}/kustomization.yaml uses {sorted(unknown)}: render() reads resources only"
    return k


def resource_files(directory: Path) -> list[Path]:
    """The manifest files a kustomization includes, its bases' included."""
    out: list[Path] = []
    for entry in kustomization(directory)["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        out.extend(resource_files(path) if path.is_dir() else [path])
    return out


@cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """What ``kubectl apply -k deploy/kubernetes/NAME`` sends (resources only: no transformers)."""
    objs = [d for f in resource_files(K8S / name) for d in documents(f)]
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"{name}: an object appears twice: {keys}"
    return tuple(objs)


def manifest_files() -> list[Path]:
    return sorted({f for top in TOP_LEVEL for f in resource_files(K8S / top)})


def one(objs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_of(variant: str) -> dict[str, Any]:
    return one(render(variant), "Deployment")["spec"]["template"]


def router_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == "router")


def config_path(container: dict[str, Any]) -> PurePosixPath:
    args = container["args"]
    assert args[0] == "serve" and "--config" in args, args
    return PurePosixPath(args[args.index("--config") + 1])


def volume_at(pod_spec: dict[str, Any], container: dict[str, Any], path: PurePosixPath) -> tuple[dict, dict]:
    """The volume mount holding ``path`` (the deepest mountPath above it) and its volume."""
    mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    return mount, volume


def served_config(variant: str) -> Config:
    """The configuration the variant's router serves, parsed by the daemon's own loader.

    GitOps mode serves the ConfigMap mounted at the config's directory; shared-volume mode the seed that
    the init container copies from the ConfigMap it mounts onto the volume.
    """
    pod = pod_of(variant)["spec"]
    router = router_container(pod)
    path = config_path(router)
    _, volume = volume_at(pod, router, path)
    if "configMap" in volume:
        name = volume["configMap"]["name"]
    else:
        seed = next(c for c in pod["initContainers"] if c["name"] == "seed")
        volumes = {v["name"]: v for v in pod["volumes"]}
        [mount] = [m for m in seed["volumeMounts"] if "configMap" in volumes[m["name"]]]
        assert f"{mount['mountPath']}/{path.name}" in seed["args"][0], "the seed copies another file"
        name = volumes[mount["name"]]["configMap"]["name"]
    text = one(render(variant), "ConfigMap", name)["data"][path.name]
    return parse_config(tomllib.loads(text), Path(path))


def is_gpu(variant: str) -> bool:
    return variant.endswith("gpu")


def is_gitops(variant: str) -> bool:
    return variant.startswith("gitops")


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --- the files -----------------------------------------------------------------------------------------


def test_every_yaml_file_is_applied_somewhere():
    """No manifest lies outside every kustomization (it would never be applied, nor validated here)."""
    listed = set(manifest_files())
    for path in sorted(K8S.rglob("*.y*ml")):
        assert path.name == "kustomization.yaml" or path in listed or path in NOT_MANIFESTS, \
            f"{path.relative_to(ROOT)} is in no kustomization"
    assert {p.parent.name for p in K8S.rglob("kustomization.yaml")} == {*TOP_LEVEL, "common"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_strictly(path: Path, version: str):
    for doc in documents(path):
        try:
            assert kv.validate(doc, version, strict=True) == version.rsplit(".", 1)[0]
        except kv.SchemaNotFoundError:
            assert (doc["apiVersion"], doc["kind"]) in NO_SCHEMA, f"{path}: no schema for {doc['kind']}"
        except kv.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}",
                        pytrace=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_validation_rejects_unknown_fields(version: str):
    """The check above has teeth: a field the API lacks, or a wrong type, fails."""
    deployment = one(render("cpu"), "Deployment")
    bad = copy.deepcopy(deployment)
    router_container(bad["spec"]["template"]["spec"])["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, version, strict=True)
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "45"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, version, strict=True)


@pytest.mark.daemon
def test_kubernetes_validate_command_line():
    """What the issue asks for, as a user runs it: ``kubernetes-validate --strict`` on every manifest."""
    files = [str(p) for p in manifest_files()]
    args = [arg for v in VERSIONS for arg in ("-k", v)]
    r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *args, *files],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert not [line for line in lines if not line.startswith("WARN")], r.stdout
    # The only warnings: no schema for the CRD, once per version.
    assert len(lines) == len(VERSIONS) and all("ServiceMonitor" in line for line in lines), r.stdout


# --- policy, per variant -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_pinned_and_match_the_variant(variant: str):
    pod = pod_of(variant)["spec"]
    want = f"{project_version()}-{'gpu' if is_gpu(variant) else 'cpu'}"
    for c in pod["initContainers"] + pod["containers"]:
        image = c["image"]
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{c['name']}: {image} has no tag"
        assert tag != "latest" and tag == want, f"{c['name']}: {image}: want the tag {want}"
        assert c.get("imagePullPolicy") == "IfNotPresent"


@pytest.mark.parametrize("variant", VARIANTS)
def test_resources_give_guaranteed_qos_with_whole_cpus(variant: str):
    """Requests == limits for CPU and memory in every container (init ones too: QoS counts them), whole
    CPUs, so that the static CPU manager gives the container cores of its own; a GPU in the GPU variants."""
    pod = pod_of(variant)["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        res = c.get("resources", {})
        requests, limits = res.get("requests", {}), res.get("limits", {})
        assert {"cpu", "memory"} <= set(limits), f"{c['name']}: limits must set cpu and memory"
        assert requests == limits, f"{c['name']}: requests {requests} != limits {limits}"
        assert re.fullmatch(r"[1-9][0-9]*", str(limits["cpu"])), f"{c['name']}: cpu {limits['cpu']!r} is not whole"
    gpus = router_container(pod)["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") if is_gpu(variant) else gpus is None
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in pod["initContainers"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_runs_as_non_root(variant: str):
    pod = pod_of(variant)["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0 and psc["runAsGroup"] > 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in pod["initContainers"] + pod["containers"]:
        sc = {**psc, **c.get("securityContext", {})}
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], c["name"]
        assert not sc.get("privileged"), c["name"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_on_the_admin_listener(variant: str):
    """Startup and liveness ask whether the loop answers, readiness whether every model can serve and
    the pod is not draining: all on the admin port, so a flood on the inference ports never fails them."""
    router = router_container(pod_of(variant)["spec"])
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    paths = {"startupProbe": "/v2/health/live", "livenessProbe": "/v2/health/live",
             "readinessProbe": "/v2/health/ready"}
    for probe, path in paths.items():
        got = router.get(probe)
        assert got, f"{probe} missing"
        assert got["httpGet"]["path"] == path and got["httpGet"]["port"] == "admin", probe
        assert got["timeoutSeconds"] < got["periodSeconds"], probe
    assert "admin" in ports
    startup = router["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too short for workers to load"


@pytest.mark.parametrize("variant", VARIANTS)
def test_grace_period_covers_the_whole_shutdown(variant: str):
    """preStop pause, then SIGTERM: the drain (server.drain_timeout_s of the configuration served), the
    workers' SIGTERM-to-SIGKILL wait and the prediction log writer's exit (their defaults in the code), all
    before the kubelet's SIGKILL."""
    pod = pod_of(variant)["spec"]
    pre_stop = router_container(pod)["lifecycle"]["preStop"]
    pause = pre_stop["sleep"]["seconds"]
    assert pause > 0
    config = served_config(variant)
    worker_stop = inspect.signature(Replica.stop).parameters["timeout"].default
    writer_stop = inspect.signature(PredictionLog.stop).parameters["timeout"].default
    # server.drain_delay_s, where the daemon has it: serving on after SIGTERM while the endpoints update.
    delay = getattr(config.server, "drain_delay_s", 0)
    shutdown = pause + delay + config.server.drain_timeout_s + worker_stop + writer_stop
    assert pod["terminationGracePeriodSeconds"] > shutdown, \
        f"grace {pod['terminationGracePeriodSeconds']} s <= preStop {pause} + delay {delay} + drain " \
        f"{config.server.drain_timeout_s} + workers {worker_stop} + log writer {writer_stop}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_configuration_is_a_directory_mount_never_subpath(variant: str):
    """config.toml is replaced by rename (admin API writes, the kubelet's ..data swap): a subPath mount
    would pin the old file. Shared-volume mode reads it from the RWX claim, GitOps mode from a ConfigMap,
    read-only, with ROUTER_CONFIG_READONLY=1."""
    pod = pod_of(variant)["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        for m in c.get("volumeMounts", []):
            assert "subPath" not in m and "subPathExpr" not in m, f"{c['name']}: {m['name']} uses subPath"
    router = router_container(pod)
    path = config_path(router)
    mount, volume = volume_at(pod, router, path)
    assert path.parent == PurePosixPath(mount["mountPath"]) and path.name == "config.toml"
    env = {e["name"]: e for e in router["env"]}
    if is_gitops(variant):
        assert "configMap" in volume and mount.get("readOnly") is True
        assert env["ROUTER_CONFIG_READONLY"]["value"] == "1"
    else:
        assert volume["persistentVolumeClaim"]["claimName"] == "router-shared"
        assert "ROUTER_CONFIG_READONLY" not in env
        assert not mount.get("readOnly")


@pytest.mark.parametrize("variant", VARIANTS)
def test_admin_token_comes_from_a_secret(variant: str):
    """The listeners bind 0.0.0.0, which `router serve` refuses without an admin token."""
    env = {e["name"]: e for e in router_container(pod_of(variant)["spec"])["env"]}
    token = env["ROUTER_ADMIN_TOKEN"]
    assert "value" not in token and token["valueFrom"]["secretKeyRef"]["name"] == "router-admin-token"


@pytest.mark.parametrize("variant", VARIANTS)
def test_served_configuration_fits_the_pod(variant: str):
    """The daemon's own loader accepts it; its listeners are the container's ports on every address;
    everything it writes is on the shared volume; devices match the variant; no CPU numbers (the static
    CPU manager hands each pod different ones); the workers' threads and the router fit the CPU limit."""
    pod = pod_of(variant)["spec"]
    router = router_container(pod)
    config = served_config(variant)
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    for key, port_name in LISTENERS.items():
        address = getattr(config.server, key)
        assert address is not None and address.host == "0.0.0.0", f"server.{key} must listen on 0.0.0.0"
        assert address.port == ports[port_name], f"server.{key} is not the container port {port_name}"
    shared = next(m["mountPath"] for m in router["volumeMounts"]
                  if next(v for v in pod["volumes"] if v["name"] == m["name"]).get("persistentVolumeClaim"))
    audit = config.admin.audit_file
    for what, path in (("store.path", config.store.path), ("predlog.path", config.predlog.path),
                       ("admin.audit_file", audit)):
        assert path is not None and PurePosixPath(path).is_relative_to(shared), f"{what} {path} is not on {shared}"
    versions = [v for m in config.models for v in m.versions]
    assert versions
    for v in versions:
        assert v.device.startswith("cuda:") if is_gpu(variant) else v.device == "cpu"
        assert v.cpus == ()
    cpu_limit = int(router["resources"]["limits"]["cpu"])
    assert 1 + sum(v.replicas * v.effective_threads for v in versions) <= cpu_limit


def test_variants_agree_where_they_should():
    """The four Deployments are plain files, not patches: what they share must stay the same."""
    def shared(variant: str) -> dict[str, Any]:
        template = copy.deepcopy(pod_of(variant))
        spec = template["spec"]
        router = router_container(spec)
        keep = ("ports", "startupProbe", "livenessProbe", "readinessProbe", "lifecycle", "securityContext")
        return {"labels": template["metadata"], "pod": {k: spec[k] for k in (
            "securityContext", "terminationGracePeriodSeconds", "topologySpreadConstraints",
            "automountServiceAccountToken", "enableServiceLinks")},
            "router": {k: router[k] for k in keep},
            "strategy": one(render(variant), "Deployment")["spec"]["strategy"]}
    base = shared("cpu")
    for variant in VARIANTS[1:]:
        assert shared(variant) == base, variant
    assert pod_of("gpu")["spec"]["tolerations"] == pod_of("gitops-gpu")["spec"]["tolerations"]
    assert "tolerations" not in pod_of("cpu")["spec"] and "tolerations" not in pod_of("gitops-cpu")["spec"]


# --- wiring --------------------------------------------------------------------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_refer_to_what_exists(variant: str):
    objs = render(variant)
    deployment = one(objs, "Deployment")
    assert "replicas" not in deployment["spec"], "the autoscaler owns replicas: apply would reset them"
    template = deployment["spec"]["template"]
    labels, pod = template["metadata"]["labels"], template["spec"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    router = router_container(pod)
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    services = [o for o in objs if o["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"router-http", "router-msgpack", "router-admin"}
    for s in services:
        assert selects(s["spec"]["selector"], labels), s["metadata"]["name"]
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in ports and p["port"] == ports[p["targetPort"]], s["metadata"]["name"]
    assert one(objs, "Service", "router-admin")["spec"]["publishNotReadyAddresses"] is True
    hpa = one(objs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = one(objs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    pvc = one(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for v in pod["volumes"]:
        if "persistentVolumeClaim" in v:
            assert v["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        if "configMap" in v:
            one(objs, "ConfigMap", v["configMap"]["name"])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == ports["admin"]


def test_autoscaler_metric_is_exported_by_the_daemon():
    metrics = Metrics()
    metrics.in_flight[("fraud", "http")] = 3
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    family = families[IN_FLIGHT]
    assert family.type == "gauge"
    assert [(s.labels, s.value) for s in family.samples] == [({"model": "fraud", "protocol": "http"}, 3.0)]
    hpa = one(render("cpu"), "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == IN_FLIGHT
    assert metric["pods"]["target"]["type"] == "AverageValue"


def adapter_rule() -> dict[str, Any]:
    [rule] = documents(K8S / "monitoring" / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    return rule


def test_prometheus_adapter_rule_serves_the_autoscaler_metric():
    rule = adapter_rule()
    assert rule["seriesQuery"].startswith(IN_FLIGHT + "{")
    assert rule["name"]["as"] == IN_FLIGHT and re.fullmatch(rule["name"]["matches"], IN_FLIGHT)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


def test_service_monitor_structure():
    """No schema ships for this CRD: its fields (monitoring.coreos.com/v1) are checked here, and what it
    selects must be the admin Service and its port."""
    [sm] = documents(K8S / "monitoring" / "servicemonitor.yaml")
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert (sm["apiVersion"], sm["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert set(sm["metadata"]) <= {"name", "namespace", "labels", "annotations"} and sm["metadata"]["name"]
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert set(sm["spec"]["selector"]) == {"matchLabels"}
    services = [o for o in render("common") if o["kind"] == "Service"
                and selects(sm["spec"]["selector"]["matchLabels"], o["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == ["router-admin"]
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert sm["spec"]["endpoints"], "no endpoints"
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
        assert ep["port"] in port_names and ep["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"[0-9]+(ms|s|m)", ep[key]), key
        assert int(ep["scrapeTimeout"].rstrip("s")) < int(ep["interval"].rstrip("s"))


_RULE_TEST = """\
rule_files: [rules.yml]
evaluation_interval: 15s
tests:
  - interval: 25s
    input_series:
      # pod a: two models over two protocols, scraped twice (ServiceMonitor and annotations)
      - series: 'router_requests_in_flight{namespace="ml",pod="a",job="sm",model="fraud",protocol="http"}'
        values: '4x8'
      - series: 'router_requests_in_flight{namespace="ml",pod="a",job="ann",model="fraud",protocol="http"}'
        values: '4x8'
      - series: 'router_requests_in_flight{namespace="ml",pod="a",job="sm",model="fraud",protocol="msgpack"}'
        values: '2x8'
      - series: 'router_requests_in_flight{namespace="ml",pod="a",job="sm",model="churn",protocol="http"}'
        values: '1x8'
      # pod b: load that rises by 4 every 25 s; the one-minute average lags it. The rule runs every 15 s and
      # no sample falls on either end of the minute before 2m (Prometheus 2 closes ranges, 3 opens them
      # on the left): it averages the samples at 75 s and 100 s, 12 and 16
      - series: 'router_requests_in_flight{namespace="ml",pod="b",job="sm",model="fraud",protocol="http"}'
        values: '0+4x8'
      # another namespace: never counted
      - series: 'router_requests_in_flight{namespace="other",pod="a",job="sm",model="fraud",protocol="http"}'
        values: '100x8'
    promql_expr_test:
      - expr: adapter:in_flight
        eval_time: 2m
        exp_samples:
          - labels: 'adapter:in_flight{pod="a"}'
            value: 7
          - labels: 'adapter:in_flight{pod="b"}'
            value: 14
"""


@pytest.mark.daemon
def test_prometheus_adapter_query_per_pod(tmp_path: Path):
    """The rule's query, as the adapter fills it in for the pods of one namespace, evaluated by promtool:
    per pod, the sum over models and protocols, duplicates of a twice-scraped series counted once."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: this test needs Debian's prometheus package "
                    "(`make tools`, or `apt-get install prometheus`)", pytrace=False)
    query = (adapter_rule()["metricsQuery"].replace("<<.Series>>", IN_FLIGHT)
             .replace("<<.LabelMatchers>>", 'namespace="ml"').replace("<<.GroupBy>>", "pod"))
    rules = {"groups": [{"name": "adapter", "rules": [{"record": "adapter:in_flight", "expr": query}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "test.yml").write_text(_RULE_TEST)
    r = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"{query}\n{r.stdout}{r.stderr}"


# --- the image -----------------------------------------------------------------------------------------


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> its text (the unnamed last stage is ``""``)."""
    parts = re.split(r"^(?=FROM )", DOCKERFILE.read_text(), flags=re.M)[1:]
    out = {}
    for part in parts:
        m = re.match(r"FROM (\S+)(?: AS (\S+))?", part)
        assert m, part[:80]
        out[m.group(2) or ""] = part
    return out


def test_dockerfile_base_images_and_torch_are_pinned():
    args = dockerfile_args()
    images = {k: v for k, v in args.items() if k.endswith("_IMAGE")}
    assert set(images) == {"PYTHON_IMAGE", "CUDA_IMAGE", "NODE_IMAGE"}
    for key, image in images.items():
        _, _, tag = image.rpartition(":")
        assert tag and tag != "latest" and "/" not in tag, f"{key}={image} is not pinned"
    assert images["PYTHON_IMAGE"].startswith("python:3.11")
    makefile_torch = re.search(r"^TORCH\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert args["TORCH"] == makefile_torch == "torch==2.13.0"
    stages = dockerfile_stages()
    cpu_pip = [line for line in stages["cpu-base"].splitlines() if "pip install" in line]
    assert cpu_pip and "--index-url https://download.pytorch.org/whl/cpu" in cpu_pip[0]
    assert "index-url" not in stages["gpu-base"], "the GPU variant takes torch's default (CUDA) wheel"
    assert stages["gpu-base"].startswith("FROM ${CUDA_IMAGE}")
    assert args["VARIANT"] == "cpu" and "FROM ${VARIANT}-base" in DOCKERFILE.read_text()
    for line in DOCKERFILE.read_text().splitlines():
        assert not re.match(r"FROM \S+:latest\b", line), line


def test_dockerfile_matches_the_manifests():
    text = DOCKERFILE.read_text()
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user, "USER must be numeric, so that runAsNonRoot can check it"
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1)
    cmd = re.search(r"^CMD (.+)$", text, re.M).group(1)
    assert yaml.safe_load(entrypoint) == ["/usr/bin/tini", "--", "router"]
    for variant in VARIANTS:
        pod = pod_of(variant)["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == \
            (int(user.group(1)), int(user.group(2)))
        router = router_container(pod)
        assert {p["containerPort"] for p in router["ports"]} == exposed
        assert "command" not in router, "the image's entrypoint (tini, router) must stay"
    assert yaml.safe_load(cmd) == router_container(pod_of("cpu")["spec"])["args"]
    assert "/opt/router/seed/model-store" in text  # what the init containers copy
    for variant in VARIANTS:
        seed = next(c for c in pod_of(variant)["spec"]["initContainers"] if c["name"] == "seed")
        assert "/opt/router/seed/model-store" in seed["args"][0]


def dockerignore() -> list[tuple[bool, str]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return out


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regular expression, as Docker reads it: ``**/`` is any number of
    directories (none too), ``*`` anything but ``/``, and a pattern that matches a directory matches
    everything under it."""
    out = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out.append({"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token)))
    return "".join(out) + "(/.*)?"


def ignored(path: str) -> bool:
    """Docker's rule: the last pattern that matches decides."""
    verdict = False
    for include, pattern in dockerignore():
        if re.fullmatch(pattern_regex(pattern), path):
            verdict = not include
    return verdict


def test_dockerfile_copies_sources_the_context_holds():
    """Every COPY from the context names a path in the repository that .dockerignore lets through; the
    host's build outputs (compiled extensions, the built UI, node_modules, .venv) stay out."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources.extend(line.split()[1:-1])
    assert {"pyproject.toml", "setup.py", "README.md", "ext/", "router/", "runtime/", "modelkit/"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not ignored(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"
    for path in ("router/_splitter_c.cpython-311-x86_64-linux-gnu.so", "router/proto/_framing_c.so",
                 "router/ui_dist/index.html", "router/__pycache__/x.pyc", "ui/node_modules/esbuild",
                 ".venv/bin/python", "model-store/fraud", "router/_http_c.stamp", ".git/HEAD"):
        assert ignored(path), f"{path} would be sent to the build"
    assert not ignored("router/http.py") and not ignored("ui/src/main.js") and not ignored("ext/_http.pyx")
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        top = pattern.split(".")[0]
        assert f"{top}/" in sources, f"the wheel needs {top}/"


# --- the docs ------------------------------------------------------------------------------------------


def test_docs_name_every_directory():
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for name in (*TOP_LEVEL, "common"):
        assert f"deploy/kubernetes/{name}" in text, name
    assert "ROUTER_CONFIG_READONLY" in text and "router-admin-token" in text
