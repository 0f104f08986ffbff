"""Dynamic batching: batched outputs equal each input run alone; batches respect their limits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import msgpack
import numpy as np
import pytest

from router.proto.link import FMT_JSON, FMT_MSGPACK
from router.proto.meta import read_meta
from runtime.batcher import Batcher
from runtime.codecs import decode_request
from runtime.model import Model

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole.
pytestmark = pytest.mark.daemon


@pytest.fixture(scope="module")
def wide(store):
    d = store / "mlp-wide" / "1"
    meta = read_meta(d)
    return Model(d / "model.pt", meta, "cpu"), meta


def msgpack_body(x: np.ndarray) -> bytes:
    return msgpack.packb({"inputs": {"x": {"datatype": "FP32", "shape": list(x.shape),
                                           "data": x.astype("<f4").tobytes()}}})


def decode_reply(body: bytes) -> np.ndarray:
    out = msgpack.unpackb(body)["outputs"]["y"]
    return np.frombuffer(out["data"], dtype="<f4").reshape(out["shape"])


class Recording:
    """The real model's forward, recording the batch size of each call."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.sizes: list[int] = []

    def __call__(self, inputs):
        self.sizes.append(inputs[0].shape[0])
        return self.model.forward(inputs)


def test_batched_outputs_equal_each_input_alone(wide):
    model, meta = wide
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(n, 256)).astype(np.float32) for n in (1, 3, 1, 5, 2, 1, 0, 4)]
    rec = Recording(model)
    b = Batcher(rec, meta, max_batch_size=64)
    for i, x in enumerate(xs):
        b.add(i, decode_request(FMT_MSGPACK, msgpack_body(x), 0, meta))
    replies = b.run()
    assert len(b) == 0 and rec.sizes == [sum(x.shape[0] for x in xs)]
    assert [r[0] for r in replies] == list(range(len(xs)))
    for (_rid, status, hlen, body), x in zip(replies, xs, strict=True):
        assert status == 200 and hlen == 0
        alone = model.forward([x])[0]
        np.testing.assert_allclose(decode_reply(body), alone, rtol=1e-5, atol=1e-6)
        assert decode_reply(body).shape == (x.shape[0], 10)


def test_batches_fill_greedily_oldest_first_within_max_batch_size(wide):
    model, meta = wide
    rec = Recording(model)
    b = Batcher(rec, meta, max_batch_size=4)
    sizes = [1, 2, 3, 1, 6, 1]
    for i, n in enumerate(sizes):
        b.add(i, decode_request(FMT_MSGPACK, msgpack_body(np.full((n, 256), i, np.float32)), 0, meta))
    assert b.full
    order = []
    while len(b):
        order += [r[0] for r in b.run()]
    # Each batch starts with the oldest request and takes every later one that fits:
    # [1,2,1] then [3,1] then the oversized 6, alone.
    assert rec.sizes == [4, 4, 6]
    assert order == [0, 1, 3, 2, 5, 4]


def test_mixed_formats_share_a_batch_and_each_gets_its_own_encoding(wide):
    model, meta = wide
    rec = Recording(model)
    b = Batcher(rec, meta, max_batch_size=64)
    x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    b.add(1, decode_request(FMT_MSGPACK, msgpack_body(x), 0, meta))
    body = json.dumps({"id": "j", "inputs": [{"name": "x", "shape": [2, 256], "datatype": "FP32",
                                               "data": x.tolist()}]}).encode()
    b.add(2, decode_request(FMT_JSON, body, 0, meta))
    (r1, r2) = b.run()
    assert rec.sizes == [4]
    j = json.loads(r2[3])
    assert j["id"] == "j" and j["outputs"][0]["shape"] == [2, 10]
    np.testing.assert_allclose(np.array(j["outputs"][0]["data"], np.float32).reshape(2, 10),
                               decode_reply(r1[3]), atol=1e-6)


def test_a_model_error_fails_only_the_request_that_causes_it(wide):
    model, meta = wide
    calls = []

    def poisoned(inputs):
        calls.append(inputs[0].shape[0])
        if (inputs[0] < 0).any():
            raise RuntimeError("boom")
        return model.forward(inputs)

    b = Batcher(poisoned, meta, max_batch_size=3)
    for i, v in enumerate((1.0, -1.0, 2.0, 3.0)):
        b.add(i, decode_request(FMT_MSGPACK, msgpack_body(np.full((1, 256), v, np.float32)), 0, meta))
    first, second = b.run(), b.run()
    # The batch of three fails, then each runs alone: only the poisoned one is answered 500.
    assert [(r[0], r[1]) for r in first] == [(0, 200), (1, 500), (2, 200)] and b"boom" in first[1][3]
    assert calls == [3, 1, 1, 1, 1]
    assert [(r[0], r[1]) for r in second] == [(3, 200)]
    good = decode_reply(first[2][3])
    np.testing.assert_allclose(good, model.forward([np.full((1, 256), 2.0, np.float32)])[0], rtol=1e-5, atol=1e-6)


def test_concurrent_requests_through_the_daemon_match_single_runs(shared_daemon, wide):
    model, _ = wide
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(1 + i % 3, 256)).astype(np.float32) for i in range(48)]

    def call(x):
        status, _, raw = shared_daemon.post("/v2/models/mlp-wide/infer", msgpack_body(x),
                                            {"Content-Type": "application/msgpack"})
        assert status == 200, raw
        return decode_reply(raw)

    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(call, xs))
    for x, y in zip(xs, got, strict=True):
        np.testing.assert_allclose(y, model.forward([x])[0], rtol=1e-5, atol=1e-6)
