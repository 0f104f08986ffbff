"""Tests for router.client: the four clients against a real daemon (no mocks).

Every client path is checked against a reference answer obtained with a
hand-written JSON request (urllib, independent of the client code).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from router.client import AsyncHttpClient, AsyncWireClient, HttpClient, InferResult, WireClient
from router.proto.errors import BadRequest, InferenceError, NotFound, PayloadTooLarge

#: Every way to send an inference request: (client, body format).
PATHS = ["http-json", "http-binary", "http-msgpack", "ahttp-json", "ahttp-binary", "ahttp-msgpack",
         "wire", "awire"]

Infer = Callable[..., InferResult]


def rows(n: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


FRAUD_X = rows(5, 8, 1)
SMALL_X = rows(3, 4, 2)


def reference(daemon: Any, model: str, name: str, x: np.ndarray, version: str | None = None,
              key: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """``(model_version, outputs)`` of a hand-built OIP JSON request sent with urllib."""
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["x-user-id"] = key
    status, _, raw = daemon.post(path, json.dumps(body).encode(), headers)
    assert status == 200, raw
    reply = json.loads(raw)
    outs = {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in reply["outputs"]}
    return reply["model_version"], outs


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def clients(shared_daemon: Any, loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, Any]]:
    """One client of each kind, shared by the module (they keep their connections open)."""
    d = shared_daemon
    made = {
        "http": HttpClient(d.url),
        "ahttp": AsyncHttpClient(d.url),
        "wire": WireClient("127.0.0.1", d.wire_port),
        "awire": loop.run_until_complete(AsyncWireClient.connect("127.0.0.1", d.wire_port)),
    }
    yield made
    made["http"].close()
    made["wire"].close()
    loop.run_until_complete(made["ahttp"].close())
    loop.run_until_complete(made["awire"].close())


def make_infer(clients: dict[str, Any], loop: asyncio.AbstractEventLoop, path: str) -> Infer:
    """A synchronous ``infer(model, inputs, **kw)`` for one path."""
    kind, _, fmt = path.partition("-")
    client = clients[kind]
    extra = {"format": fmt} if fmt else {}
    if kind.startswith("a"):
        return lambda *a, **kw: loop.run_until_complete(client.infer(*a, **kw, **extra))
    return lambda *a, **kw: client.infer(*a, **kw, **extra)


@pytest.fixture(params=PATHS)
def infer(request: pytest.FixtureRequest, clients: dict[str, Any], loop: asyncio.AbstractEventLoop) -> Infer:
    return make_infer(clients, loop, request.param)


@pytest.fixture(scope="module")
def keys(shared_daemon: Any) -> dict[str, str]:
    """Routing keys -> the fraud version the server pins them to, at least one key per version."""
    found: dict[str, str] = {}
    for i in range(200):
        key = f"user-{i}"
        found[key] = reference(shared_daemon, "fraud", "features", FRAUD_X[:1], key=key)[0]
        if len(set(found.values())) == 2 and len(found) >= 4:
            return found
    raise AssertionError(f"200 keys never reached both versions: {found}")


# -- inference, every path --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_outputs_match_reference(infer: Infer, shared_daemon: Any, version: str) -> None:
    answered, ref = reference(shared_daemon, "fraud", "features", FRAUD_X, version=version)
    assert answered == version
    r = infer("fraud", {"features": FRAUD_X}, version=version)
    assert (r.model_name, r.model_version, r.id) == ("fraud", version, None)
    assert list(r.outputs) == ["probabilities"]
    out = r["probabilities"]
    assert out.dtype == np.float32 and out.shape == (5, 2)
    assert np.allclose(out, ref["probabilities"], atol=1e-6)

    _, ref_small = reference(shared_daemon, "mlp-small", "x", SMALL_X)
    r = infer("mlp-small", {"x": SMALL_X})
    assert r.model_version == "1"
    assert np.allclose(r["y"], ref_small["y"], atol=1e-6)


def test_unusual_layouts_are_sent_as_oip(infer: Infer, shared_daemon: Any) -> None:
    """Big-endian and non-contiguous arrays go out little-endian, C order."""
    _, ref = reference(shared_daemon, "fraud", "features", FRAUD_X, version="1")
    big_endian = FRAUD_X.astype(">f4")
    fortran = np.asfortranarray(FRAUD_X)
    strided = np.repeat(FRAUD_X, 2, axis=0)[::2]
    for x in (big_endian, fortran, strided):
        r = infer("fraud", {"features": x}, version="1")
        assert np.allclose(r["probabilities"], ref["probabilities"], atol=1e-6)


def test_routing_key_is_sticky(infer: Infer, keys: dict[str, str]) -> None:
    for key, version in list(keys.items())[:4]:
        got = {infer("fraud", {"features": FRAUD_X[:1]}, key=key).model_version for _ in range(5)}
        assert got == {version}, key
    # 20 calls on the key that reaches the minority version (10 % of unkeyed traffic).
    key = next(k for k, v in keys.items() if v == "2")
    assert {infer("fraud", {"features": FRAUD_X[:1]}, key=key).model_version for _ in range(20)} == {"2"}


def test_non_ascii_routing_key_routes_alike_on_every_path(clients: dict[str, Any],
                                                          loop: asyncio.AbstractEventLoop) -> None:
    """A key travels as UTF-8 over HTTP, so it lands where the same key sent over TCP lands."""
    by_version: dict[str, list[str]] = {"1": [], "2": []}
    for i in range(300):  # keys reaching both versions (version 2 takes 10 % of the keys)
        key = f"\u00fcser-\u2713-{i}"
        v = clients["wire"].infer("fraud", {"features": FRAUD_X[:1]}, key=key).model_version
        if len(by_version[v]) < 2:
            by_version[v].append(key)
        if all(len(k) == 2 for k in by_version.values()):
            break
    assert all(by_version.values()), by_version
    for path in PATHS:
        infer = make_infer(clients, loop, path)
        for want, keys in by_version.items():
            for key in keys:
                for k in (key, key.encode()):
                    assert infer("fraud", {"features": FRAUD_X[:1]}, key=k).model_version == want, (path, k)


def test_non_utf8_bytes_key(clients: dict[str, Any]) -> None:
    # Over TCP a key is any bytes; an HTTP header carries text, so the client refuses it.
    assert clients["wire"].infer("fraud", {"features": FRAUD_X[:1]}, key=b"\xff\x00").model_name == "fraud"
    with pytest.raises(UnicodeDecodeError):
        clients["http"].infer("fraud", {"features": FRAUD_X[:1]}, key=b"\xff\x00")


# SERVER BUG (router/splitter.py RouteTable.choose, reached from router/app.py Handlers._infer):
# a routing header whose bytes are not UTF-8 reaches choose() as a str holding surrogate
# escapes; key.encode() raises UnicodeEncodeError, which escapes the json_errors middleware,
# so aiohttp answers a plain-text "500 Internal Server Error" (not {"error"} JSON) and logs a
# traceback. Expected: route by the raw bytes (or a 400 with a JSON body). The clients here
# never send such a header (keys travel as UTF-8); this test sends one by hand.
def test_server_non_utf8_routing_header_routes_like_the_same_bytes_over_tcp(shared_daemon: Any) -> None:
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                   "data": [0.0] * 8}]}).encode()
    with WireClient("127.0.0.1", shared_daemon.wire_port) as c:
        for i in range(40):
            key = f"\u00fc-latin-1-{i}"
            status, _, raw = shared_daemon.post("/v2/models/fraud/infer", body, {"x-user-id": key})  # latin-1
            assert status == 200, raw
            tcp = c.infer("fraud", {"features": np.zeros((1, 8), np.float32)}, key=key.encode("latin-1"))
            assert json.loads(raw)["model_version"] == tcp.model_version, key


def test_output_selection(infer: Infer) -> None:
    # The demo models have one output each: selecting it, and naming an unknown one.
    r = infer("fraud", {"features": FRAUD_X}, version="1", outputs=["probabilities"])
    assert list(r.outputs) == ["probabilities"] and r["probabilities"].shape == (5, 2)
    with pytest.raises(BadRequest, match="nope"):
        infer("fraud", {"features": FRAUD_X}, version="1", outputs=["nope"])


def test_request_id_is_echoed(infer: Infer) -> None:
    assert infer("mlp-small", {"x": SMALL_X}, request_id="req-7").id == "req-7"
    assert infer("mlp-small", {"x": SMALL_X}).id is None


def test_errors_are_typed(infer: Infer) -> None:
    with pytest.raises(NotFound) as e:
        infer("no-such-model", {"x": SMALL_X})
    assert e.value.status == 404 and "no-such-model" in e.value.message
    with pytest.raises(NotFound) as e:
        infer("fraud", {"features": FRAUD_X}, version="9")
    assert e.value.status == 404 and "9" in e.value.message
    with pytest.raises(BadRequest) as e:
        infer("fraud", {"features": rows(2, 7, 3)}, version="1")
    assert e.value.status == 400 and "features" in e.value.message and "shape" in e.value.message
    with pytest.raises(BadRequest) as e:
        infer("fraud", {"features": FRAUD_X.astype(np.float64)}, version="1")
    assert e.value.status == 400 and "features" in e.value.message and "FP64" in e.value.message
    with pytest.raises(BadRequest, match="'y'"):
        infer("mlp-small", {"y": SMALL_X})
    # Refused client-side, naming the dtype; the connection is still good afterwards.
    with pytest.raises(TypeError, match="complex64"):
        infer("fraud", {"features": FRAUD_X.astype(np.complex64)})
    with pytest.raises(TypeError, match="<U"):
        infer("fraud", {"features": np.array([["a"] * 8])})
    assert infer("fraud", {"features": FRAUD_X}, version="2").model_version == "2"


def test_unknown_format_is_refused(clients: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="format"):
        clients["http"].infer("fraud", {"features": FRAUD_X}, format="xml")


# -- pipelining -------------------------------------------------------------------------------------------------


def mixed_requests(n: int) -> list[dict[str, Any]]:
    """Fraud (pinned, keyed or split) and mlp-small requests, each with its own inputs and batch size."""
    g = np.random.default_rng(11)
    out: list[dict[str, Any]] = []
    for i in range(n):
        batch = int(g.integers(1, 5))
        if i % 3 == 0:
            out.append({"model": "mlp-small", "inputs": {"x": g.standard_normal((batch, 4)).astype(np.float32)}})
        else:
            req: dict[str, Any] = {"model": "fraud",
                                   "inputs": {"features": g.standard_normal((batch, 8)).astype(np.float32)}}
            if i % 3 == 1:
                req["version"] = str(1 + i % 2)
            else:
                req["key"] = f"user-{i % 7}"
            out.append(req)
    return out


def assert_same(got: InferResult, want: InferResult) -> None:
    assert (got.model_name, got.model_version) == (want.model_name, want.model_version)
    assert list(got.outputs) == list(want.outputs)
    for name in want.outputs:
        assert got[name].shape == want[name].shape
        assert np.allclose(got[name], want[name], atol=1e-6), name


def test_infer_many_matches_each_reply_to_its_request(clients: dict[str, Any]) -> None:
    wire: WireClient = clients["wire"]
    reqs = mixed_requests(500)
    # Errors answered in place, without breaking the pipeline or the connection.
    reqs[17] = {"model": "no-such-model", "inputs": {"x": SMALL_X}}
    reqs[250] = {"model": "fraud", "inputs": {"features": rows(1, 3, 0)}}
    results = wire.infer_many(reqs, depth=64)
    assert len(results) == 500
    assert isinstance(results[17], NotFound) and isinstance(results[250], BadRequest)
    for i, (req, got) in enumerate(zip(reqs, results, strict=True)):
        if i in (17, 250):
            continue
        assert isinstance(got, InferResult), (i, got)
        assert_same(got, wire.infer(**req))
    assert wire.infer_many([], depth=4) == []
    # Depth 1 is plain request/reply.
    assert_same(wire.infer_many(reqs[:3], depth=1)[2], wire.infer(**reqs[2]))


def test_infer_many_refuses_bad_arguments(clients: dict[str, Any]) -> None:
    wire: WireClient = clients["wire"]
    with pytest.raises(ValueError, match="depth"):
        wire.infer_many([], depth=0)
    with pytest.raises(ValueError, match="model"):
        wire.infer_many([{"inputs": {"x": SMALL_X}}])
    assert wire.infer("mlp-small", {"x": SMALL_X}).model_name == "mlp-small"


def test_async_wire_concurrent_calls_are_matched(clients: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    wire: WireClient = clients["wire"]
    awire: AsyncWireClient = clients["awire"]
    reqs = mixed_requests(200)
    expected = [wire.infer(**r) for r in reqs]

    async def call(r: dict[str, Any]) -> InferResult:
        return await awire.infer(r["model"], r["inputs"], version=r.get("version"), key=r.get("key"))

    async def main() -> list[InferResult]:
        return await asyncio.gather(*(call(r) for r in reqs))

    for got, want in zip(loop.run_until_complete(main()), expected, strict=True):
        assert_same(got, want)


def test_async_http_concurrent_calls_are_matched(clients: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    wire: WireClient = clients["wire"]
    ahttp: AsyncHttpClient = clients["ahttp"]
    reqs = mixed_requests(60)
    expected = [wire.infer(**r) for r in reqs]

    async def main() -> list[InferResult]:
        return await asyncio.gather(*(ahttp.infer(r["model"], r["inputs"], version=r.get("version"),
                                                  key=r.get("key"), format=("json", "binary", "msgpack")[i % 3])
                                      for i, r in enumerate(reqs)))

    for got, want in zip(loop.run_until_complete(main()), expected, strict=True):
        assert_same(got, want)


def test_async_wire_close_fails_pending_calls(shared_daemon: Any, loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> list[Any]:
        client = await AsyncWireClient.connect("127.0.0.1", shared_daemon.wire_port)
        calls = [asyncio.ensure_future(client.infer("fraud", {"features": FRAUD_X})) for _ in range(20)]
        await asyncio.sleep(0)  # every call has written its frame and waits for its reply
        closing = client.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        await closing
        assert client.closed
        with pytest.raises(ConnectionError):
            await client.infer("fraud", {"features": FRAUD_X})
        return results

    results = loop.run_until_complete(main())
    assert all(isinstance(r, ConnectionError) for r in results), results


# -- limits and connections -------------------------------------------------------------------------------------


def too_big() -> dict[str, np.ndarray]:
    # 1100 x 256 FP32 = 1.07 MiB: over the shared daemon's max_body_bytes (1 MiB).
    return {"x": np.zeros((1100, 256), np.float32)}


@pytest.mark.parametrize("fmt", ["binary", "msgpack"])
def test_http_payload_too_large(clients: dict[str, Any], fmt: str) -> None:
    http: HttpClient = clients["http"]
    with pytest.raises(PayloadTooLarge) as e:
        http.infer("mlp-wide", too_big(), format=fmt)
    assert e.value.status == 413
    assert http.infer("mlp-wide", {"x": np.ones((2, 256), np.float32)})["y"].shape == (2, 10)


def test_wire_payload_too_large_then_reconnects(shared_daemon: Any) -> None:
    with WireClient("127.0.0.1", shared_daemon.wire_port, timeout=5) as wire:
        with pytest.raises(PayloadTooLarge) as e:
            wire.infer("mlp-wide", too_big())
        assert e.value.status == 413
        # The server closed that connection; the next call opens a new one.
        assert wire.infer("mlp-wide", {"x": np.ones((2, 256), np.float32)})["y"].shape == (2, 10)
        with pytest.raises(PayloadTooLarge):
            wire.infer_many([{"model": "mlp-small", "inputs": {"x": SMALL_X}},
                             {"model": "mlp-wide", "inputs": too_big()}])
        assert wire.infer_many([{"model": "mlp-small", "inputs": {"x": SMALL_X}}])[0]["y"].shape == (3, 3)


def test_async_wire_payload_too_large_closes_client(shared_daemon: Any, loop: asyncio.AbstractEventLoop) -> None:
    async def main() -> None:
        client = await AsyncWireClient.connect("127.0.0.1", shared_daemon.wire_port)
        with pytest.raises(PayloadTooLarge):
            await client.infer("mlp-wide", too_big())
        await asyncio.wait_for(client.close(), 5)
        with pytest.raises(ConnectionError):
            await client.infer("mlp-small", {"x": SMALL_X})

    loop.run_until_complete(main())


def test_http_reconnects_after_a_dropped_keepalive_connection(shared_daemon: Any) -> None:
    with HttpClient(shared_daemon.url) as http:
        assert http.infer("mlp-small", {"x": SMALL_X}).model_name == "mlp-small"
        # Break the idle keep-alive connection under the client, as a server or proxy dropping it would.
        conn = http._conn
        assert conn is not None and conn.sock is not None
        conn.sock.shutdown(socket.SHUT_RDWR)
        assert http.infer("mlp-small", {"x": SMALL_X}).model_name == "mlp-small"
        assert http._conn is not conn


def test_connection_refused_is_an_oserror() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        HttpClient(f"http://127.0.0.1:{port}", timeout=2).is_live()
    with pytest.raises(OSError):
        WireClient("127.0.0.1", port, timeout=2).infer("m", {"x": SMALL_X})
    with pytest.raises(OSError):
        asyncio.run(AsyncWireClient.connect("127.0.0.1", port, timeout=2))

    async def ahttp() -> None:
        async with AsyncHttpClient(f"http://127.0.0.1:{port}", timeout=2) as c:
            await c.is_live()

    with pytest.raises(OSError):
        asyncio.run(ahttp())


# -- health and metadata ----------------------------------------------------------------------------------------


def check_health_and_metadata(call: Callable[..., Any]) -> None:
    assert call("is_live") is True
    assert call("is_ready") is True
    assert call("is_model_ready", "fraud") is True
    assert call("is_model_ready", "fraud", "2") is True
    assert call("is_model_ready", "no-such-model") is False
    assert call("is_model_ready", "fraud", "9") is False

    meta = call("server_metadata")
    assert meta["name"] == "model-router" and "binary_tensor_data" in meta["extensions"]

    fraud = call("model_metadata", "fraud")
    assert fraud["name"] == "fraud" and fraud["versions"] == ["1", "2"]
    assert fraud["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert fraud["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert call("model_metadata", "fraud", "2")["versions"] == ["2"]
    wide = call("model_metadata", "mlp-wide")
    assert wide["inputs"][0]["shape"] == [-1, 256] and wide["outputs"][0]["shape"] == [-1, 10]
    with pytest.raises(NotFound):
        call("model_metadata", "no-such-model")
    with pytest.raises(NotFound):
        call("model_metadata", "fraud", "9")


def test_health_and_metadata_sync(clients: dict[str, Any]) -> None:
    http = clients["http"]
    check_health_and_metadata(lambda name, *a: getattr(http, name)(*a))


def test_health_and_metadata_async(clients: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    ahttp = clients["ahttp"]
    check_health_and_metadata(lambda name, *a: loop.run_until_complete(getattr(ahttp, name)(*a)))


@pytest.mark.daemon
def test_client_imports_neither_torch_nor_runtime() -> None:
    import subprocess

    code = ("import sys, router.client; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'runtime')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parent.parent)


def test_infer_result_api() -> None:
    r = InferResult({"a": np.zeros(2), "b": np.ones(1)}, "m", "3", "id-1")
    assert r["b"][0] == 1 and list(r) == ["a", "b"] and "a" in r and len(r) == 2
    assert "model_version='3'" in repr(r)
    with pytest.raises(KeyError):
        r["c"]
    assert issubclass(PayloadTooLarge, InferenceError)
