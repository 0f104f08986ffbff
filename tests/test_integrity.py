"""Real workers and daemons: a ``torch.export`` version served end to end, and versions whose file or
meta.json was tampered with refused at every load -- by the worker, at start-up (``router serve``
exits 1 naming both values) and in a blue-green deploy (the old pool keeps serving; counted)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from conftest import FRAUD, ROOT, Daemon, free_port, write_config
from fakes import without_generation
from test_model_files import flip_byte, small_net, write_dir
from test_reload import Load, deploy, models_info, pids_of
from test_shadow import metric, scrape, wait_for

from router.proto import link
from router.proto.framing import FrameScanner
from router.proto.meta import MODEL_FILE, sha256_file

pytestmark = pytest.mark.daemon


def infer(d: Daemon, path: str, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    status, _, raw = d.post(path, body)
    assert status == 200, raw
    out = json.loads(raw)["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def copy_version(store: Path, local: Path, model: str, version: str, as_version: str | None = None) -> Path:
    """Copy ``store/model/version`` into ``local``, as ``as_version`` (its meta.json saying so)."""
    dst = local / model / (as_version or version)
    shutil.copytree(store / model / version, dst)
    if as_version is not None:
        doc = json.loads((dst / "meta.json").read_text())
        doc["version"] = as_version
        (dst / "meta.json").write_text(json.dumps(doc))
    return dst


# -- a torch.export program, served ---------------------------------------------------------------------------


def test_an_exported_version_serves_through_a_real_worker_like_the_eager_network(store, tmp_path):
    local = tmp_path / "store"
    copy_version(store, local, "mlp-small", "1")
    write_dir(local / "mlp-small" / "x", small_net(), "pt2", name="mlp-small", version="x")
    cfg = write_config(tmp_path / "config.toml", local, [{"name": "mlp-small", "versions": [
        {"version": "1", "weight": 1}, {"version": "x", "weight": 1, "max_batch_size": 16,
                                        "max_batch_delay_us": 2000}]}])
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        assert "loaded mlp-small/x (torch.export) on cpu" in d.log
        assert "model.pt2 is a torch.export program" in d.log  # optimize asked for, skipped, said why
        status, raw = d.get("/v2/models/mlp-small/versions/x")
        assert status == 200 and json.loads(raw)["platform"] == "pytorch_export"
        net = small_net()
        rng = np.random.default_rng(5)
        xs = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 2, 3, 1, 5, 1, 4, 2)]
        # Concurrent requests inside a 2 ms window: batched together in the worker, split back.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda x: infer(d, "/v2/models/mlp-small/versions/x/infer", x), xs))
        for x, y in zip(xs, answers, strict=True):
            with torch.no_grad():
                expected = net(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
            # The TorchScript version of the same network agrees.
            np.testing.assert_allclose(infer(d, "/v2/models/mlp-small/versions/1/infer", x), y, rtol=1e-5, atol=1e-6)
    finally:
        assert d.stop() == 0


# -- the worker refuses -----------------------------------------------------------------------------------------


def run_worker(version_dir: Path, name: str, version: str) -> tuple[int, list[tuple[int, int, bytes]], str]:
    """Start ``python -m runtime`` on ``version_dir`` as the router would; its exit status, the frames it
    sent, and its stderr."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "--fd", str(theirs.fileno()), "--parent-pid", str(os.getpid()),
             "--model-dir", str(version_dir), "--name", name, "--version", version],
            cwd=ROOT, pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE, text=True)
        theirs.close()
        ours.settimeout(60)
        scanner = FrameScanner(1 << 20)
        frames: list[tuple[int, int, int, bytes]] = []
        # Until it exits, or says hello (it then serves until the socket closes: closed on leaving).
        while not any(code == link.STATUS_HELLO for _, code, _, _ in frames) and (chunk := ours.recv(65536)):
            frames += [link.unpack(f) for f in scanner.feed(chunk)]
    _, err = proc.communicate(timeout=60)
    return proc.returncode, [(rid, code, payload) for rid, code, _, payload in frames], err


def test_a_worker_refuses_a_tampered_file_and_a_meta_naming_another_version(store, tmp_path):
    tampered = copy_version(store, tmp_path, "mlp-small", "1")
    recorded = json.loads((tampered / "meta.json").read_text())["sha256"]
    flip_byte(tampered / MODEL_FILE, 200)
    actual = sha256_file(tampered / MODEL_FILE)
    code, frames, err = run_worker(tampered, "mlp-small", "1")
    assert code == 1
    assert len(frames) == 1 and frames[0][:2] == (0, link.STATUS_REFUSED)  # a refusal and no hello
    refusal = msgpack.unpackb(frames[0][2])
    assert refusal == {"reason": "integrity",
                       "error": f"model.pt sha256 {actual} does not match meta.json's {recorded}"}
    assert refusal["error"] in err and "Traceback" not in err

    other = copy_version(store, tmp_path / "other", "mlp-small", "1")
    code, frames, _ = run_worker(other, "mlp-small", "3")
    assert code == 1 and msgpack.unpackb(frames[0][2]) == {
        "reason": "identity", "error": "meta.json names version '1' but the directory is version '3'"}

    code, frames, _ = run_worker(other, "mlp-small", "1")  # the same files, named right: served
    assert frames[0][:2] == (0, link.STATUS_HELLO) and code == 0  # exits 0 on the socket's EOF


def test_router_serve_exits_1_naming_both_sha256_values(store, tmp_path):
    local = tmp_path / "store"
    copy_version(store, local, "fraud", "1")
    v2 = copy_version(store, local, "fraud", "2")
    recorded = json.loads((v2 / "meta.json").read_text())["sha256"]
    flip_byte(v2 / MODEL_FILE)
    cfg = write_config(tmp_path / "config.toml", local, [FRAUD])
    r = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(cfg), "--http",
                        f"127.0.0.1:{free_port()}", "--msgpack", f"127.0.0.1:{free_port()}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    reason = f"model.pt sha256 {sha256_file(v2 / MODEL_FILE)} does not match meta.json's {recorded}"
    assert f"cannot serve: fraud/2#0: worker refused the model before it was ready: {reason}" in r.stderr


# -- a blue-green deploy of a tampered version --------------------------------------------------------------------


def test_a_deploy_of_a_tampered_version_fails_the_old_pool_serves_and_it_is_counted(store, tmp_path):
    local = tmp_path / "store"
    copy_version(store, local, "mlp-small", "1")
    t = copy_version(store, local, "mlp-small", "1", as_version="t")
    flip_byte(t / MODEL_FILE)
    copy_version(store, local, "mlp-small", "1", as_version="w")
    doc = json.loads((local / "mlp-small" / "w" / "meta.json").read_text())
    doc["version"] = "2"  # a meta.json from another version's directory
    (local / "mlp-small" / "w" / "meta.json").write_text(json.dumps(doc))
    cfg = write_config(tmp_path / "config.toml", local, [{"name": "mlp-small", "versions": [{"version": "1"}]}])
    d = Daemon(cfg, free_port(), free_port(), dict(os.environ))
    try:
        d.wait_ready()
        before = cfg.read_text()
        with Load(d, "mlp-small") as load:
            wait_for(lambda: load.statuses[200] >= 20 or None)
            active = models_info(d, "mlp-small")
            status, res = deploy(d, "mlp-small", {"versions": [{"version": "1"}, {"version": "t", "weight": 1}]})
            assert status == 500 and "deploy of 'mlp-small' aborted" in res["error"]
            assert f"model.pt sha256 {sha256_file(t / MODEL_FILE)} does not match meta.json's" in res["error"]
            status, res = deploy(d, "mlp-small", {"versions": [{"version": "w", "weight": 1}]})
            assert status == 500
            assert "meta.json names version '2' but the directory is version 'w'" in res["error"]
            assert pids_of(models_info(d, "mlp-small")) == pids_of(active)
            load.mark()
            wait_for(lambda: load.versions["1"] >= 20 or None)
        assert set(load.statuses) == {200} and set(load.versions) == {"1"}, load.statuses
        assert without_generation(cfg.read_text()) == without_generation(before)
        s = scrape(d)
        assert metric(s, "router_model_load_failures_total", model="mlp-small", version="t", reason="integrity") == 1
        assert metric(s, "router_model_load_failures_total", model="mlp-small", version="w", reason="identity") == 1
        assert metric(s, "router_model_load_failures_total") == 2  # the healthy 1 of the standby was not one
        assert metric(s, "router_deploys_total", result="failed") == 2
    finally:
        assert d.stop() == 0
