"""Config reload (SIGHUP, POST /admin/reload, `router reload`): traffic changes applied live under
load with zero failed requests; invalid files and changes that need a deploy change nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter

from conftest import FRAUD, ROOT, Daemon, children_of, free_port, write_config
from test_shadow import metric, scrape, wait_for

BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0]}]}).encode()


class Load:
    """A client sending requests the whole time, counting every status and answering version."""

    def __init__(self, d) -> None:
        self.d = d
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _, raw = self.d.post("/v2/models/fraud/infer", BODY)
            self.statuses[status] += 1
            if status == 200:
                self.versions[json.loads(raw)["model_version"]] += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def mark(self) -> None:
        self.versions.clear()


def post_reload(d) -> tuple[int, dict]:
    req = urllib.request.Request(f"{d.url}/admin/reload", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def reloads(d) -> dict[str, float]:
    s = scrape(d)
    return {r: metric(s, "router_reloads_total", result=r) for r in ("ok", "invalid", "refused")}


def traffic(d) -> dict:
    return json.loads(d.get("/admin/models/fraud/traffic")[1])


def test_sighup_applies_a_weights_only_change_under_load_with_zero_failures(start_daemon):
    d = start_daemon()
    pids = sorted(children_of(d.proc.pid))
    text = d.config.read_text()
    with Load(d) as load:
        wait_for(lambda: load.statuses[200] >= 20 or None)
        d.config.write_text(text.replace("weight = 90", "weight = 0"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: reloads(d)["ok"] == 1 or None)
        assert traffic(d)["weights"] == {"1": 0, "2": 10} and traffic(d)["live"] == ["2"]
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


def test_invalid_files_and_deploy_changes_are_refused_and_change_nothing(start_daemon):
    d = start_daemon()
    good = d.config.read_text()
    before = traffic(d)
    cases = [
        ("[server\n", 400, "TOML syntax error"),
        (good.replace("weight = 90", "weight = -1"), 400,
         "models[0].versions[0].weight: must be >= 0"),
        (good + '\n[[models.versions]]\nversion = "9"\n', 400, "models[0].versions[2]"),
        (good.replace("max_batch_size = 32", "max_batch_size = 8", 1), 409,
         "fraud/1: max_batch_size 32 -> 8: needs a deploy"),
        (good.replace("[server]", "[server]\nmax_body_bytes = 4096", 1), 409, "[server] changed: needs a restart"),
    ]
    with Load(d) as load:
        for text, status, words in cases:
            d.config.write_text(text)
            code, res = post_reload(d)
            assert (code, words in res["error"], "nothing changed" in res["error"]) == (status, True, True), res
            assert traffic(d) == before
        d.config.write_text(good)
        assert post_reload(d) == (200, {"reloaded": str(d.config), "changes": []})
    assert set(load.statuses) == {200}, load.statuses
    assert reloads(d) == {"ok": 1, "invalid": 3, "refused": 2}
    assert f"reload: {d.config}: models[0].versions[0].weight: must be >= 0.0, got -1; nothing changed" in d.log


def test_a_replaced_model_file_needs_a_deploy(store, tmp_path):
    local = tmp_path / "store"
    shutil.copytree(store / "fraud", local / "fraud")
    cfg = write_config(tmp_path / "config.toml", local, [FRAUD])
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        meta = local / "fraud" / "2" / "meta.json"
        raw = json.loads(meta.read_text())
        raw["sha256"] = json.loads((local / "fraud" / "1" / "meta.json").read_text())["sha256"]
        meta.write_text(json.dumps(raw))
        code, res = post_reload(d)
        assert code == 409 and "fraud/2: model file replaced (sha256 changed): needs a deploy" in res["error"]
        assert d.post("/v2/models/fraud/versions/2/infer", BODY)[0] == 200
    finally:
        assert d.stop() == 0


def test_cli_reload_and_a_broken_file_on_sighup(start_daemon):
    d = start_daemon()
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
