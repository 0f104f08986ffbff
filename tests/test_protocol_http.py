"""The HTTP front end to end: OIP v2 JSON, binary tensors, msgpack bodies, tritonclient, errors.

A real daemon with real workers and TorchScript models answers every request;
the expected values come from running the same TorchScript file in-process.
"""

from __future__ import annotations

import functools
import json
import re

import msgpack
import numpy as np
import pytest

from router.proto.meta import read_meta
from runtime.model import Model

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole; its requests
#: go through the extensions, so it runs again on their twins.
pytestmark = [pytest.mark.daemon, pytest.mark.twins]

X = np.array([[1.2, 0.3, 0.9, 0.5, 5.1, 2.0, 1.1, 0.0],
              [3.0, -0.5, 0.1, 0.95, 0.5, 9.0, 4.2, 1.0],
              [0.1, 0.0, 1.0, 0.05, 7.0, 0.0, 0.2, 1.0]], dtype=np.float32)


@functools.cache
def _loaded(store, model: str, version: str) -> Model:
    d = store / model / version
    return Model(d / "model.pt", read_meta(d), "cpu")


def reference(store, model: str, version: str, x: np.ndarray) -> np.ndarray:
    """The served module run in-process: the same bytes the worker computes."""
    return _loaded(store, model, version).forward([x])[0]


def oip_json(x: np.ndarray, name: str = "features", **extra) -> bytes:
    body = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    body.update(extra)
    return json.dumps(body).encode()


def test_health_and_server_metadata(shared_daemon):
    assert shared_daemon.get("/v2/health/live")[0] == 200
    assert shared_daemon.get("/v2/health/ready")[0] == 200
    status, body = shared_daemon.get("/v2")
    meta = json.loads(body)
    assert status == 200 and meta["name"] == "model-router" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_readiness(shared_daemon):
    status, body = shared_daemon.get("/v2/models/fraud")
    meta = json.loads(body)
    assert status == 200
    assert meta["name"] == "fraud" and meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    status, body = shared_daemon.get("/v2/models/fraud/versions/2")
    assert status == 200 and json.loads(body)["versions"] == ["2"]
    assert shared_daemon.get("/v2/models/fraud/ready")[0] == 200
    assert shared_daemon.get("/v2/models/fraud/versions/1/ready")[0] == 200
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/fraud/versions/9",
                 "/v2/models/fraud/versions/9/ready"):
        status, body = shared_daemon.get(path)
        assert status == 404 and "error" in json.loads(body), path


@pytest.mark.parametrize("nested", [True, False])
def test_json_infer_matches_the_model(shared_daemon, store, nested):
    x = X
    data = x.tolist() if nested else x.ravel().tolist()
    body = json.dumps({"id": "req-7", "inputs": [{"name": "features", "shape": [3, 8], "datatype": "FP32",
                                                   "data": data}]}).encode()
    # No Content-Type at all, like tritonclient; and curl's form type: both are JSON.
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
        status, hdrs, raw = shared_daemon.post("/v2/models/fraud/versions/1/infer", body, headers)
        assert status == 200, raw
        reply = json.loads(raw)
        assert hdrs["Content-Type"].startswith("application/json")
        assert reply["model_name"] == "fraud" and reply["model_version"] == "1" and reply["id"] == "req-7"
        (out,) = reply["outputs"]
        assert out["name"] == "probabilities" and out["shape"] == [3, 2] and out["datatype"] == "FP32"
        got = np.array(out["data"], dtype=np.float32).reshape(3, 2)
        np.testing.assert_allclose(got, reference(store, "fraud", "1", x), atol=1e-6)


def test_binary_tensor_extension_both_ways(shared_daemon, store):
    header = json.dumps({"inputs": [{"name": "features", "shape": [3, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": X.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    status, hdrs, raw = shared_daemon.post("/v2/models/fraud/versions/2/infer", header + X.tobytes(),
                                           {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, raw
    n = int(hdrs["Inference-Header-Content-Length"])
    assert hdrs["Content-Type"] == "application/octet-stream"
    reply = json.loads(raw[:n])
    out = reply["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 3 * 2 * 4 and "data" not in out
    got = np.frombuffer(raw[n:], dtype="<f4").reshape(3, 2)
    np.testing.assert_array_equal(got, reference(store, "fraud", "2", X))


def test_msgpack_body(shared_daemon, store):
    body = msgpack.packb({"id": "m1", "inputs": {"features": {"datatype": "FP32", "shape": [3, 8],
                                                              "data": X.tobytes()}}})
    status, hdrs, raw = shared_daemon.post("/v2/models/fraud/versions/1/infer", body,
                                           {"Content-Type": "application/msgpack"})
    assert status == 200, raw
    assert hdrs["Content-Type"] == "application/msgpack"
    reply = msgpack.unpackb(raw)
    assert reply["model_version"] == "1" and reply["id"] == "m1"
    out = reply["outputs"]["probabilities"]
    got = np.frombuffer(out["data"], dtype="<f4").reshape(out["shape"])
    np.testing.assert_array_equal(got, reference(store, "fraud", "1", X))


def test_routing_by_weight_reports_the_answering_version(shared_daemon, store):
    seen = {}
    for _ in range(200):
        status, _, raw = shared_daemon.post("/v2/models/fraud/infer", oip_json(X[:1]))
        assert status == 200
        r = json.loads(raw)
        seen[r["model_version"]] = seen.get(r["model_version"], 0) + 1
        expected = reference(store, "fraud", r["model_version"], X[:1])
        np.testing.assert_allclose(np.array(r["outputs"][0]["data"]).reshape(1, 2), expected, atol=1e-6)
    # 90/10 split over 200 draws: both versions answer, v1 far more often.
    assert set(seen) == {"1", "2"} and seen["1"] > 140, seen


def test_routing_key_is_sticky(shared_daemon):
    for user in ("alice", "bob", "carol", "dave"):
        versions = set()
        for _ in range(10):
            status, _, raw = shared_daemon.post("/v2/models/fraud/infer", oip_json(X[:1]), {"X-User-Id": user})
            assert status == 200
            versions.add(json.loads(raw)["model_version"])
        assert len(versions) == 1, (user, versions)


def test_tritonclient_binary_and_json(shared_daemon, store):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(shared_daemon.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fraud") and not client.is_model_ready("nope")
    assert client.get_model_metadata("fraud")["inputs"][0]["name"] == "features"
    for binary in (True, False):
        inp = httpclient.InferInput("features", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        outs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        res = client.infer("fraud", [inp], model_version="2", outputs=outs, request_id="t-1")
        assert res.get_response()["model_version"] == "2" and res.get_response()["id"] == "t-1"
        np.testing.assert_allclose(res.as_numpy("probabilities"), reference(store, "fraud", "2", X), atol=1e-6)
    # Defaults: binary input, outputs=None (the client asks for binary outputs).
    inp = httpclient.InferInput("features", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    res = client.infer("fraud", [inp])
    v = res.get_response()["model_version"]
    np.testing.assert_allclose(res.as_numpy("probabilities"), reference(store, "fraud", v, X), atol=1e-6)
    from tritonclient.utils import InferenceServerException
    bad = httpclient.InferInput("features", [1, 7], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 7), np.float32))
    with pytest.raises(InferenceServerException) as e:
        client.infer("fraud", [bad])
    assert e.value.status() == "400" and "expected shape [-1, 8]" in e.value.message()
    client.close()


BAD_BODIES = [
    (b"{not json", {}, 400, "malformed JSON"),
    (b"", {}, 400, "malformed JSON"),
    (json.dumps({"inputs": [{"name": "features", "shape": [1, 7], "datatype": "FP32",
                             "data": [0] * 7}]}).encode(), {}, 400, "expected shape [-1, 8], got [1, 7]"),
    (json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "INT64",
                             "data": [0] * 8}]}).encode(), {}, 400, "expected datatype FP32, got INT64"),
    (json.dumps({"inputs": [{"name": "feat", "shape": [1, 8], "datatype": "FP32",
                             "data": [0] * 8}]}).encode(), {}, 400, "feat"),
    (json.dumps({"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32",
                             "data": [0] * 8}]}).encode(), {}, 400, "features"),
    (json.dumps({"inputs": []}).encode(), {}, 400, "missing input 'features'"),
    (oip_json(X[:1], outputs=[{"name": "nope"}]), {}, 400, "unknown output 'nope'"),
    (b"\xc1\xc1", {"Content-Type": "application/msgpack"}, 400, "malformed msgpack"),
    (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "Inference-Header-Content-Length"),
    (b"{}", {"Inference-Header-Content-Length": "x"}, 400, "Inference-Header-Content-Length"),
]


@pytest.mark.parametrize("body,headers,status,message", BAD_BODIES)
def test_bad_input_gets_its_status_and_the_daemon_keeps_serving(shared_daemon, body, headers, status, message):
    got, hdrs, raw = shared_daemon.post("/v2/models/fraud/infer", body, headers)
    assert got == status, raw
    assert hdrs["Content-Type"].startswith("application/json")
    assert message in json.loads(raw)["error"]
    ok, _, _ = shared_daemon.post("/v2/models/fraud/infer", oip_json(X[:1]))
    assert ok == 200


def test_unknown_model_version_and_route(shared_daemon):
    status, _, raw = shared_daemon.post("/v2/models/nope/infer", oip_json(X[:1]))
    assert status == 404 and json.loads(raw)["error"] == "unknown model 'nope'"
    status, _, raw = shared_daemon.post("/v2/models/fraud/versions/7/infer", oip_json(X[:1]))
    assert status == 404 and "unknown version '7'" in json.loads(raw)["error"]
    status, raw = shared_daemon.get("/v2/nothing/here")
    assert status == 404 and "error" in json.loads(raw)
    status, _, raw = shared_daemon.post("/v2/health/live", b"")
    assert status == 405 and "error" in json.loads(raw)


def test_oversized_body_is_413(shared_daemon):
    big = b"[" + b"0," * 600_000 + b"0]"  # > max_body_bytes = 1 MiB in the shared daemon
    status, _, raw = shared_daemon.post("/v2/models/fraud/infer", big)
    assert status == 413 and "exceeds the limit" in json.loads(raw)["error"]
    assert shared_daemon.post("/v2/models/fraud/infer", oip_json(X[:1]))[0] == 200


def test_metrics_carry_model_version_protocol_status(shared_daemon):
    shared_daemon.post("/v2/models/fraud/versions/2/infer", oip_json(X[:1]))
    shared_daemon.post("/v2/models/fraud/versions/2/infer", b"{bad")
    status, raw = shared_daemon.get("/metrics")
    text = raw.decode()
    assert status == 200
    ok = re.search(r'router_request_duration_seconds_count\{model="fraud",protocol="http",route="live",'
                   r'status="200",version="2"\} (\d+)', text)
    bad = re.search(r'router_requests_total\{model="fraud",protocol="http",route="live",status="400",'
                    r'version="2"\} (\d+)', text)
    assert ok and int(float(ok.group(1))) >= 1, text
    assert bad and int(float(bad.group(1))) >= 1
    assert 'le="2.5e-05"' in text and 'le="10.0"' in text
    assert 'router_requests_in_flight{model="fraud",protocol="http"}' in text
    assert 'router_worker_up{model="fraud",pool="blue",replica="0",version="1"} 1.0' in text


def test_optimize_false_serves_the_module_exactly_as_saved(start_daemon, store):
    import torch

    d = start_daemon([{"name": "fraud", "versions": [{"version": "2", "optimize": False}]}])
    header = json.dumps({"inputs": [{"name": "features", "shape": [3, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": X.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    status, hdrs, raw = d.post("/v2/models/fraud/infer", header + X.tobytes(),
                               {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, raw
    got = np.frombuffer(raw[int(hdrs["Inference-Header-Content-Length"]):], dtype="<f4").reshape(3, 2)
    m = torch.jit.load(str(store / "fraud" / "2" / "model.pt"))
    with torch.inference_mode():
        np.testing.assert_array_equal(got, m(torch.from_numpy(X)).numpy())


@pytest.mark.parametrize("path", ["/v2/models/fraud/infer", "/admin/models/fraud/traffic"])
def test_oversized_chunked_body_is_413_json(shared_daemon, path):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", shared_daemon.http_port, timeout=10)
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MiB, no Content-Length: the limit is found while reading
    conn.request("PUT" if "admin" in path else "POST", path, body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 413
    assert "exceed" in json.loads(r.read())["error"]
    conn.close()
    assert shared_daemon.post("/v2/models/fraud/infer", oip_json(X[:1]))[0] == 200
