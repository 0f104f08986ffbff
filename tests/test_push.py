"""Pushing versions through the daemon: ``POST /admin/models/{model}/versions/{version}`` and ``router push``.

A real daemon over a store of its own; each refused push leaves nothing in the store and nothing in
its staging area, and a 200 MB push streams through the router without growing it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Daemon, RawConn, free_port
from storekit import MIB, Models, archive, build_models, meta_bytes, snapshot, tar_gz, upload

from router.store import push

#: Every test here talks to one daemon and its worker: the daemon layer as a whole.
pytestmark = pytest.mark.daemon

MAX_PUSH = 300 * MIB


@pytest.fixture(scope="module")
def models() -> Models:
    return build_models()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[Daemon]:
    """A daemon serving ``tiny`` v1 from a store of its own, pushes capped at 300 MiB."""
    root = tmp_path_factory.mktemp("push")
    store = root / "store"
    push(upload(store, archive(models), model="tiny", version="1"))
    (store / ".staging" / "leftover").mkdir(parents=True)  # what a crash left: removed at start
    config = root / "config.toml"
    config.write_text(f"[store]\npath = {json.dumps(str(store))}\nmax_push_bytes = {MAX_PUSH}\n"
                      "validate_timeout_s = 60\nvalidate_memory_mb = 4096\n\n"
                      '[[models]]\nname = "tiny"\n[[models.versions]]\nversion = "1"\n')
    d = Daemon(config, free_port(), free_port(), dict(os.environ))
    d.store = store  # type: ignore[attr-defined]
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def post(d: Daemon, path: str, body: bytes, content_type: str = "application/octet-stream",
         timeout: float = 90) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": content_type})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def staging_empty(d: Daemon) -> bool:
    staging = d.store / ".staging"  # type: ignore[attr-defined]
    return not staging.exists() or not any(staging.iterdir())


def scripted_raiser() -> bytes:
    class Boom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if bool(x.sum() > -1e30):
                raise RuntimeError("boom at inference")
            return x[:, :2]

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Boom()), buf)
    return buf.getvalue()


def test_a_new_version_is_stored_then_the_same_bytes_are_200_and_other_bytes_409(daemon, models):
    d = daemon
    assert staging_empty(d)  # the start-up cleaned what the "crash" left
    body = archive(models, meta=meta_bytes(description="first"))
    status, reply = post(d, "/admin/models/pushed/versions/1", body)
    assert status == 201, reply
    assert reply["created"] is True and reply["model"] == "pushed" and reply["version"] == "1"
    vdir = d.store / "pushed" / "1"  # type: ignore[attr-defined]
    assert sorted(p.name for p in vdir.iterdir()) == ["meta.json", "model.pt"]
    meta = json.loads((vdir / "meta.json").read_text())
    assert meta == reply["meta"]
    assert {"name", "version", "platform", "sha256", "size", "created", "inputs", "outputs", "example",
            "description"} <= set(meta)
    assert (meta["name"], meta["version"], meta["platform"]) == ("pushed", "1", "pytorch_torchscript")
    assert meta["size"] == len(models.pt)

    status, again = post(d, "/admin/models/pushed/versions/1", body)
    assert status == 200 and again["created"] is False and again["meta"] == meta

    status, reply = post(d, "/admin/models/pushed/versions/1", archive(models, model=models.pt_other))
    assert status == 409 and "already exists" in reply["error"]
    assert json.loads((vdir / "meta.json").read_text()) == meta
    assert staging_empty(d)


def test_a_malformed_archive_is_400_and_leaves_nothing(daemon, models):
    d = daemon
    before = snapshot(d.store)  # type: ignore[attr-defined]
    for body in (b"\x1f\x8b\x08\x00" + b"not gzip at all" * 10,
                 tar_gz([("model.pt", models.pt), ("../evil", b"x")]),
                 tar_gz([("meta.json", meta_bytes())])):
        status, reply = post(d, "/admin/models/broken/versions/1", body, "application/gzip")
        assert status == 400 and reply["error"], reply
    assert snapshot(d.store) == before  # type: ignore[attr-defined]
    assert staging_empty(d)


def test_a_model_whose_example_fails_is_422_and_not_stored(daemon, models):
    d = daemon
    before = snapshot(d.store)  # type: ignore[attr-defined]
    status, reply = post(d, "/admin/models/raiser/versions/1", archive(models, model=scripted_raiser()))
    assert status == 422, reply
    assert reply["error"].startswith("validation failed: example: ") and "boom at inference" in reply["error"]
    assert snapshot(d.store) == before  # type: ignore[attr-defined]
    assert staging_empty(d)


def test_an_announced_length_over_the_limit_is_413_unread(daemon):
    d = daemon
    c = RawConn(d.http_port)
    try:
        c.send(f"POST /admin/models/big/versions/1 HTTP/1.1\r\nHost: {d.http}\r\n"
               f"Content-Type: application/octet-stream\r\nContent-Length: {MAX_PUSH + 1}\r\n\r\n".encode())
        while b"\r\n\r\n" not in c.buf:
            c.fill()
        assert c.buf.startswith(b"HTTP/1.1 413 ")
        assert b"max_push_bytes" in c.buf or (c.fill() or b"max_push_bytes" in c.buf)
    finally:
        c.close()
    assert staging_empty(d)


def test_a_push_needs_a_binary_content_type(daemon, models):
    d = daemon
    for ctype in ("text/plain", "application/json", "multipart/form-data; boundary=x"):
        status, reply = post(d, "/admin/models/typed/versions/1", archive(models), ctype)
        assert status == 415 and "application/octet-stream" in reply["error"], ctype
    assert not (d.store / "typed").exists()  # type: ignore[attr-defined]


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_200_mb_push_streams_through_without_growing_the_router(daemon):
    d = daemon
    pid = d.proc.pid
    size = 200 * MIB
    block = os.urandom(MIB)
    before = vm_rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], vm_rss_kib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=60)
    try:
        conn.putrequest("POST", "/admin/models/huge/versions/1")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        for _ in range(size // MIB):
            conn.send(block)  # not a model, not an archive: refused once it has all arrived
        r = conn.getresponse()
        status, reply = r.status, json.loads(r.read())
    finally:
        conn.close()
        done.set()
        sampler.join()
    assert status == 400, reply
    assert (peak[0] - before) < 20 * 1024, f"router RSS grew by {(peak[0] - before) / 1024:.1f} MiB"
    assert staging_empty(d) and not (d.store / "huge").exists()  # type: ignore[attr-defined]


def test_router_push_cli(daemon, models, tmp_path):
    d = daemon
    path = tmp_path / "m.tar.gz"
    path.write_bytes(archive(models, meta=meta_bytes()))
    argv = [sys.executable, "-m", "router", "push", "cli", "7", str(path), "--description", "from the CLI",
            "--url", d.url]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("stored cli version 7 (pytorch_torchscript, ")
    meta = json.loads((d.store / "cli" / "7" / "meta.json").read_text())  # type: ignore[attr-defined]
    assert meta["description"] == "from the CLI"
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and "already stored" in out.stdout
    path.write_bytes(archive(models, model=models.pt_other))
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 1 and "409" in out.stderr and "already exists" in out.stderr
