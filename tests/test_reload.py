"""Config reload (SIGHUP, POST /admin/reload, `router reload`) and blue-green deploys, under
continuous load with zero failed requests: traffic changes applied live, worker changes deployed to a
standby pool and swapped in, rollback to the pool kept warm; invalid files, changes that need a
restart and deploys that fail change nothing. The daemons here do not watch their file
(``config_poll_s = 0``): each change is applied by the reload the test asks for (the watch is in
test_replicas.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter

import pytest
from conftest import ROOT, Daemon, children_of, free_port, write_config
from fakes import without_generation
from test_shadow import metric, scrape, wait_for

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole.
pytestmark = pytest.mark.daemon

BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0]}]}).encode()


MLP_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                   "data": [0.5, -0.25, 1.0, 2.0]}]}).encode()


class Load:
    """A client sending requests the whole time, counting every status and answering version."""

    def __init__(self, d, model: str = "fraud") -> None:
        self.d = d
        self.model = model
        self.body = BODY if model == "fraud" else MLP_BODY
        self.outputs: list[list[float]] = []
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _, raw = self.d.post(f"/v2/models/{self.model}/infer", self.body)
            self.statuses[status] += 1
            if status == 200:
                reply = json.loads(raw)
                self.versions[reply["model_version"]] += 1
                self.outputs.append(reply["outputs"][0]["data"])

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def mark(self) -> None:
        self.versions.clear()
        self.outputs.clear()


def post_reload(d) -> tuple[int, dict]:
    return d.call("POST", "/admin/reload", {})


def reloads(d) -> dict[str, float]:
    s = scrape(d)
    return {r: metric(s, "router_reloads_total", result=r) for r in ("ok", "invalid", "refused")}


def traffic(d) -> dict:
    return json.loads(d.get("/admin/models/fraud/traffic")[1])


def test_sighup_applies_a_weights_only_change_under_load_with_zero_failures(start_daemon):
    d = start_daemon(config_poll_s=0)
    pids = sorted(children_of(d.proc.pid))
    text = d.config.read_text()
    with Load(d) as load:
        wait_for(lambda: load.statuses[200] >= 20 or None)
        d.config.write_text(text.replace("weight = 90", "weight = 0"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(d)["ok"] == 1 or None)
        assert traffic(d)["weights"] == {"1": 0, "2": 10} and traffic(d)["live"] == ["2"]
        load.mark()  # the one request in flight during the swap may still be answered by the old table
        wait_for(lambda: sum(load.versions.values()) >= 1 or None)
        load.mark()
        wait_for(lambda: sum(load.versions.values()) >= 30 or None)
        assert set(load.versions) == {"2"}  # after the swap, only the new table answers
        d.config.write_text(text)
        status, res = post_reload(d)
        assert status == 200 and res["changes"] == ["fraud/1: weight 0 -> 90"]
        load.mark()
        wait_for(lambda: load.versions["1"] >= 30 or None)
    assert set(load.statuses) == {200}, load.statuses
    assert sorted(children_of(d.proc.pid)) == pids, "a traffic reload must not restart workers"
    assert "reloaded" in d.log and "fraud/1: weight 90 -> 0" in d.log


def test_invalid_files_and_restart_changes_are_refused_and_change_nothing(start_daemon):
    d = start_daemon(config_poll_s=0)
    good = d.config.read_text()
    before = traffic(d)
    cases = [
        ("[server\n", 400, "TOML syntax error"),
        (good.replace("weight = 90", "weight = -1"), 400,
         "models[0].versions[0].weight: must be >= 0"),
        (good + '\n[[models.versions]]\nversion = "9"\n', 400, "models[0].versions[2]"),
        (good.replace("[server]", "[server]\nmax_body_bytes = 4096", 1), 409, "[server] changed: needs a restart"),
    ]
    with Load(d) as load:
        for text, status, words in cases:
            d.config.write_text(text)
            code, res = post_reload(d)
            assert (code, words in res["error"], "nothing changed" in res["error"]) == (status, True, True), res
            assert traffic(d) == before
        d.config.write_text(good)
        assert post_reload(d) == (200, {"reloaded": str(d.config), "changes": [], "deployed": {}})
    assert set(load.statuses) == {200}, load.statuses
    assert reloads(d) == {"ok": 1, "invalid": 3, "refused": 1}
    assert f"reload: {d.config}: models[0].versions[0].weight: must be >= 0.0, got -1; nothing changed" in d.log


def models_info(d, name: str = "fraud") -> dict:
    return next(m for m in json.loads(d.get("/admin/models")[1])["models"] if m["model"] == name)


def pids_of(info: dict) -> set[int]:
    return {w["pid"] for v in info["versions"] for w in v["workers"]}


def rollback(d, model: str = "fraud") -> tuple[int, dict]:
    return d.call("POST", f"/admin/models/{model}/rollback", b"")


def test_a_worker_change_deploys_blue_green_and_rolls_back_under_load(start_daemon):
    d = start_daemon(config_poll_s=0)
    good = d.config.read_text()
    blue = models_info(d)
    assert blue["pool"] == "blue" and blue["previous"] is None
    with Load(d) as load:
        wait_for(lambda: load.statuses[200] >= 20 or None)
        d.config.write_text(good.replace("max_batch_size = 32", "max_batch_size = 8", 1))
        status, res = post_reload(d)
        assert status == 200 and res["deployed"] == {"fraud": ["fraud/1: max_batch_size 32 -> 8"]}
        green = models_info(d)
        assert green["pool"] == "green" and green["previous"]["pool"] == "blue"
        assert green["previous"]["versions"] == ["1", "2"] and 0 < green["previous"]["expires_in_s"] <= 300
        assert not pids_of(green) & pids_of(blue)
        assert all(pid in children_of(d.proc.pid) for pid in pids_of(blue))  # kept warm
        load.mark()
        wait_for(lambda: sum(load.versions.values()) >= 30 or None)
        status, res = rollback(d)
        assert status == 200 and res["active"] == "blue" and res["swap_us"] < 1000
        assert pids_of(models_info(d)) == pids_of(blue) and models_info(d)["previous"]["pool"] == "green"
        load.mark()
        wait_for(lambda: sum(load.versions.values()) >= 30 or None)
    assert set(load.statuses) == {200}, load.statuses
    s = scrape(d)
    assert metric(s, "router_deploys_total", model="fraud", result="ok") == 1
    assert metric(s, "router_active_pool", model="fraud", pool="blue") == 1
    assert metric(s, "router_active_pool", model="fraud", pool="green") == 0
    assert metric(s, "router_previous_pool_warm", model="fraud") == 1
    assert 0 < metric(s, "router_pool_swap_seconds", model="fraud") < 1e-3


def test_a_deploy_that_adds_a_version_under_load(start_daemon):
    d = start_daemon(config_poll_s=0, models=[{"name": "mlp-small", "keep_previous_s": 0.5,
                              "versions": [{"version": "1", "weight": 1}]}])
    old = pids_of(models_info(d, "mlp-small"))
    with Load(d, "mlp-small") as load:
        wait_for(lambda: load.statuses[200] >= 20 or None)
        d.config.write_text(d.config.read_text() + '[[models.versions]]\nversion = "2"\nweight = 1\n')
        status, res = post_reload(d)
        assert status == 200 and res["deployed"] == {"mlp-small": ["mlp-small: version '2' added"]}
        load.mark()
        wait_for(lambda: load.versions["2"] >= 10 and load.versions["1"] >= 10 or None)
        assert set(load.versions) == {"1", "2"}
        # keep_previous_s = 0.5: the old pool stops, and there is nothing left to roll back to.
        wait_for(lambda: not (set(children_of(d.proc.pid)) & old) or None)
        assert rollback(d, "mlp-small")[0] == 409
    assert set(load.statuses) == {200}, load.statuses


@pytest.mark.daemon
def test_a_replaced_model_file_is_deployed_and_a_broken_one_changes_nothing(store, tmp_path):
    local = tmp_path / "store"
    shutil.copytree(store / "mlp-small" / "1", local / "mlp-small" / "1")
    cfg = write_config(tmp_path / "config.toml", local, [{"name": "mlp-small", "versions": [{"version": "1"}]}],
                       config_poll_s=0)
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        with Load(d, "mlp-small") as load:
            wait_for(lambda: load.statuses[200] >= 20 or None)
            before = load.outputs[-1]
            # A new file for version 1 (other weights): same signature, other answers.
            for f in ("model.pt", "meta.json"):
                shutil.copy(store / "mlp-small" / "2" / f, local / "mlp-small" / "1" / f)
            meta = json.loads((local / "mlp-small" / "1" / "meta.json").read_text())
            meta["version"] = "1"  # every load checks that meta.json names its own directory
            (local / "mlp-small" / "1" / "meta.json").write_text(json.dumps(meta))
            status, res = post_reload(d)
            assert status == 200 and res["deployed"] == {
                "mlp-small": ["mlp-small/1: model file replaced (sha256 changed)"]}
            load.mark()  # the one request in flight during the swap may still be answered by the old pool
            wait_for(lambda: len(load.outputs) >= 1 or None)
            load.mark()
            wait_for(lambda: len(load.outputs) >= 20 or None)
            assert all(out != before for out in load.outputs)
            # A corrupt file: the standby pool cannot load it, the deploy is aborted.
            (local / "mlp-small" / "1" / "model.pt").write_bytes(b"not a TorchScript archive")
            meta = json.loads((local / "mlp-small" / "1" / "meta.json").read_text())
            meta["sha256"] = "0" * 64
            (local / "mlp-small" / "1" / "meta.json").write_text(json.dumps(meta))
            active = models_info(d, "mlp-small")
            status, res = post_reload(d)
            assert status == 500 and "deploy of 'mlp-small' aborted" in res["error"]
            assert models_info(d, "mlp-small")["pool"] == active["pool"]
            assert pids_of(models_info(d, "mlp-small")) == pids_of(active)
            load.mark()
            wait_for(lambda: len(load.outputs) >= 20 or None)
        assert set(load.statuses) == {200}, load.statuses
        s = scrape(d)
        assert metric(s, "router_deploys_total", result="failed") == 1
        assert metric(s, "router_reloads_total", result="failed") == 1
        assert metric(s, "router_reloads_total", result="ok") == 1
    finally:
        assert d.stop() == 0


def test_cli_reload_and_a_broken_file_on_sighup(start_daemon):
    d = start_daemon(config_poll_s=0)
    good = d.config.read_text()
    d.config.write_text(good.replace("weight = 10", "weight = 30"))
    out = subprocess.run([sys.executable, "-m", "router", "reload", "--url", d.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"reloaded {d.config}: fraud/2: weight 10 -> 30" in out.stdout
    d.config.write_text("[[models]\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(d)["invalid"] == 1 or None)
    assert "TOML syntax error" in d.log and traffic(d)["weights"] == {"1": 90, "2": 30}
    assert d.post("/v2/models/fraud/infer", BODY)[0] == 200
    out = subprocess.run([sys.executable, "-m", "router", "reload", "--url", d.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "400" in out.stderr and "nothing changed" in out.stderr


def test_cli_deploy_by_reload_rollback_and_status(start_daemon):
    d = start_daemon(config_poll_s=0)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "router", *args, "--url", d.url], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    out = cli("rollback", "fraud")
    assert out.returncode == 1 and "409" in out.stderr and "no previous pool" in out.stderr
    d.config.write_text(d.config.read_text().replace("max_batch_size = 32", "max_batch_size = 16"))
    out = cli("reload")
    assert out.returncode == 0 and "deployed fraud (fraud/1: max_batch_size 32 -> 16; fraud/2:" in out.stdout
    out = cli("status")
    assert "green pool active, blue pool warm for rollback" in out.stdout
    out = cli("rollback", "fraud")
    assert out.returncode == 0 and "fraud: the blue pool is active again (versions 1, 2;" in out.stdout
    assert "blue pool active, green pool warm for rollback" in cli("status").stdout


def deploy(d, model: str, versions) -> tuple[int, dict]:
    return d.call("POST", f"/admin/models/{model}/deploy", versions)


def test_deploy_api_swaps_under_load_writes_back_and_a_failed_one_changes_nothing(start_daemon, tmp_path):
    from router.config import load_config

    d = start_daemon(config_poll_s=0, models=[{"name": "mlp-small", "versions": [{"version": "1", "weight": 1}]}])
    d.config.write_text("# ops notes: keep this\n" + d.config.read_text())
    with Load(d, "mlp-small") as load:
        wait_for(lambda: load.statuses[200] >= 20 or None)
        status, res = deploy(d, "mlp-small", {"versions": [{"version": "1", "weight": 1},
                                                           {"version": "2", "weight": 3, "max_batch_size": 8}]})
        assert status == 200 and res["versions"] == ["1", "2"] and res["active"] == "green"
        load.mark()
        wait_for(lambda: load.versions["2"] >= 20 or None)
        text = d.config.read_text()
        assert text.startswith("# ops notes: keep this\n")
        mc = load_config(d.config).model("mlp-small")
        assert [(v.version, v.weight, v.max_batch_size) for v in mc.versions] == [("1", 1, 32), ("2", 3, 8)]
        for body, code, words in [
            ({"versions": [{"version": "9"}]}, 400, "no model file"),
            ({"versions": [{"version": "1", "weight": -1}]}, 400, "deploy.versions[0].weight: must be >= 0"),
            ({"versions": [{"version": "1", "weight": 0}]}, 400, "at least one version needs weight > 0"),
            ({"version": "1"}, 400, "body must be a JSON object like"),
        ]:
            status, res = deploy(d, "mlp-small", body)
            assert status == code and words in res["error"], res
            assert without_generation(d.config.read_text()) == without_generation(text)  # still says what serves
        assert models_info(d, "mlp-small")["pool"] == "green"
        assert rollback(d, "mlp-small")[1]["versions"] == ["1"]
        # The rollback is written back too: the file says what serves, so a reload changes nothing.
        assert [v.version for v in load_config(d.config).model("mlp-small").versions] == ["1"]
        assert d.config.read_text().startswith("# ops notes: keep this\n")
        assert post_reload(d)[1]["deployed"] == {}
    assert set(load.statuses) == {200}, load.statuses
    versions_file = tmp_path / "versions.json"
    versions_file.write_text(json.dumps([{"version": "copy", "weight": 1}]))
    out = subprocess.run([sys.executable, "-m", "router", "deploy", "mlp-small", str(versions_file), "--url", d.url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "mlp-small: deployed versions copy; the green pool is active" in out.stdout, out
    assert [v.version for v in load_config(d.config).model("mlp-small").versions] == ["copy"]
    assert deploy(d, "nope", {"versions": []})[0] == 404


@pytest.mark.daemon
def test_a_model_that_raises_on_warm_up_aborts_the_deploy(store, tmp_path):
    local = tmp_path / "store"
    shutil.copytree(store / "mlp-small" / "1", local / "mlp-small" / "1")
    shutil.copytree(store / "mlp-small" / "faulty", local / "mlp-small" / "bad")
    meta = json.loads((local / "mlp-small" / "bad" / "meta.json").read_text())
    meta["example"] = {"x": [[5000.0, 0.0, 0.0, 0.0]]}  # beyond +-1000: the model raises on it
    meta["version"] = "bad"  # every load checks that meta.json names its own directory
    (local / "mlp-small" / "bad" / "meta.json").write_text(json.dumps(meta))
    cfg = write_config(tmp_path / "config.toml", local, [{"name": "mlp-small", "versions": [{"version": "1"}]}],
                       config_poll_s=0)
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        before = cfg.read_text()
        with Load(d, "mlp-small") as load:
            wait_for(lambda: load.statuses[200] >= 20 or None)
            active = models_info(d, "mlp-small")
            status, res = deploy(d, "mlp-small", {"versions": [{"version": "1"}, {"version": "bad", "weight": 1}]})
            assert status == 500 and "warm-up failed" in res["error"] and "input beyond +-1000" in res["error"]
            assert pids_of(models_info(d, "mlp-small")) == pids_of(active)
            load.mark()
            wait_for(lambda: load.versions["1"] >= 20 or None)
        assert set(load.statuses) == {200} and set(load.versions) == {"1"}, load.statuses
        assert without_generation(cfg.read_text()) == without_generation(before)
        assert not set(children_of(d.proc.pid)) - pids_of(active)  # the standby workers are gone
    finally:
        assert d.stop() == 0


def test_a_second_deploy_replaces_the_rollback_target_and_metrics_follow_the_active_pool(start_daemon):
    d = start_daemon(config_poll_s=0, models=[{"name": "mlp-small", "versions": [{"version": "1"}]}])
    blue = pids_of(models_info(d, "mlp-small"))
    assert deploy(d, "mlp-small", {"versions": [{"version": "1", "max_batch_size": 8}]})[1]["active"] == "green"
    green = pids_of(models_info(d, "mlp-small"))
    assert deploy(d, "mlp-small", {"versions": [{"version": "1", "max_batch_size": 4}]})[1]["active"] == "blue"
    info = models_info(d, "mlp-small")
    assert info["previous"]["pool"] == "green" and not set(children_of(d.proc.pid)) & blue
    s = scrape(d)
    assert metric(s, "router_worker_up", model="mlp-small", pool="blue") == 1
    assert metric(s, "router_worker_up", model="mlp-small", pool="green") == 1
    assert rollback(d, "mlp-small")[1]["active"] == "green"
    assert pids_of(models_info(d, "mlp-small")) == green
    assert metric(scrape(d), "router_deploys_total", model="mlp-small", result="ok") == 2
