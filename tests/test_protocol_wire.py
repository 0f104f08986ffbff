"""The msgpack TCP front end to end, with raw sockets: framing, pipelining, errors."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from conftest import RawConn

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole; its requests
#: go through the extensions, so it runs again on their twins.
pytestmark = [pytest.mark.daemon, pytest.mark.twins]

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


def frame(obj) -> bytes:
    body = obj if isinstance(obj, bytes) else msgpack.packb(obj)
    return len(body).to_bytes(4, "big") + body


def tensor(x: np.ndarray) -> dict:
    return {"datatype": "FP32", "shape": list(x.shape), "data": x.astype("<f4").tobytes()}


def request(rid, model="fraud", version=None, key=None, x=X, name="features") -> bytes:
    return frame([rid, model, version, key, {"inputs": {name: tensor(x)}}])


class Conn(RawConn):
    def recv(self):
        """The next reply frame, decoded."""
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    return msgpack.unpackb(body)
            self.fill()


@pytest.fixture
def conn(shared_daemon):
    c = Conn(shared_daemon.wire_port)
    yield c
    c.close()


def outputs(reply) -> np.ndarray:
    out = reply[3]["outputs"]["probabilities"]
    return np.frombuffer(out["data"], dtype="<f4").reshape(out["shape"])


def test_single_request(conn, shared_daemon):
    conn.send(request(5, version="2"))
    rid, status, version, result, generation = conn.recv()
    assert (rid, status, version, generation) == (5, 200, "2", 0)  # the configuration generation: none written
    assert result["model_name"] == "fraud" and result["model_version"] == "2"
    # Same answer as the HTTP front.
    import json
    body = json.dumps({"inputs": [{"name": "features", "shape": [2, 8], "datatype": "FP32",
                                   "data": X.tolist()}]}).encode()
    _, _, raw = shared_daemon.post("/v2/models/fraud/versions/2/infer", body)
    http = np.array(json.loads(raw)["outputs"][0]["data"], dtype=np.float32).reshape(2, 2)
    np.testing.assert_allclose(outputs((rid, status, version, result)), http, atol=1e-6)


def test_pipelined_requests_are_all_answered_and_matched_by_id(conn):
    rng = np.random.default_rng(1)
    xs = {rid: rng.normal(size=(1 + rid % 3, 8)).astype(np.float32) for rid in range(1, 301)}
    conn.send(b"".join(request(rid, version="1", x=x) for rid, x in xs.items()))
    replies = {}
    for _ in xs:
        r = conn.recv()
        replies[r[0]] = r
    assert set(replies) == set(xs)
    # Compare against one-at-a-time answers: batching must not change results.
    for rid in (1, 2, 3, 150, 300):
        conn.send(request(10_000 + rid, version="1", x=xs[rid]))
        single = conn.recv()
        assert single[1] == 200
        np.testing.assert_allclose(outputs(replies[rid]), outputs(single), atol=1e-6)


def test_routing_key_sticks_and_bin_keys_work(conn):
    for key in ("user-1", "user-2", b"\x00\x01binary", "user-3"):
        versions = set()
        for i in range(8):
            conn.send(request(i, key=key))
            r = conn.recv()
            assert r[1] == 200
            versions.add(r[2])
        assert len(versions) == 1


@pytest.mark.parametrize("req,status,message", [
    (request(1, model="nope"), 404, "unknown model 'nope'"),
    (request(2, version="9"), 404, "unknown version '9'"),
    (request(3, x=np.zeros((1, 7), np.float32)), 400, "expected shape [-1, 8], got [1, 7]"),
    (request(4, name="other"), 400, "other"),
    (frame([5, "fraud", None, None, {"inputs": {"features": {"datatype": "INT32", "shape": [1, 8],
                                                             "data": b"\0" * 32}}}]), 400, "datatype"),
    (frame([6, "fraud", None, None, {"inputs": {"features": {"datatype": "FP32", "shape": [1, 8],
                                                             "data": b"\0" * 31}}}]), 400, "features"),
])
def test_request_errors_keep_the_connection_open(conn, req, status, message):
    conn.send(req)
    rid, got, version, result, _ = conn.recv()
    assert got == status and message in result and isinstance(result, str)
    conn.send(request(99))
    assert conn.recv()[1] == 200


@pytest.mark.parametrize("garbage,status", [
    (b"\x00\x00\x00\x00", 400),                       # zero-length frame
    (frame(b"\xc1"), 400),                            # not msgpack at all
    (frame([1, 2, 3]), 400),                          # wrong envelope
    (frame({"id": 1}), 400),
    (frame([1, "fraud", None, None, [1, 2]]), 400),   # item 4 not a map
    ((1 << 30).to_bytes(4, "big"), 413),              # longer than max_body_bytes
])
def test_malformed_frames_get_an_error_frame_and_close_only_that_connection(shared_daemon, garbage, status):
    bad, good = Conn(shared_daemon.wire_port), Conn(shared_daemon.wire_port)
    try:
        good.send(request(1))
        assert good.recv()[1] == 200
        bad.send(garbage)
        rid, got, version, message, _ = bad.recv()
        assert rid is None and got == status and version is None and isinstance(message, str) and message
        assert bad.closed_by_peer()
        good.send(request(2))
        assert good.recv()[:2] == [2, 200]
    finally:
        bad.close()
        good.close()


def test_a_malformed_body_inside_a_good_envelope_is_a_400_reply(conn):
    body = msgpack.packb([8, "fraud", None, None, {}])[:-1] + b"\x81\xa6inputs\xc1"
    conn.send(frame(body))
    rid, status, _, message, _ = conn.recv()
    assert rid == 8 and status == 400 and "malformed msgpack" in message


def test_many_connections_at_once(shared_daemon):
    conns = [Conn(shared_daemon.wire_port) for _ in range(20)]
    try:
        for i, c in enumerate(conns):
            c.send(request(i, model="mlp-small", x=np.ones((1, 4), np.float32), name="x"))
        t0 = time.monotonic()
        for i, c in enumerate(conns):
            r = c.recv()
            assert r[0] == i and r[1] == 200 and r[2] == "1"
        assert time.monotonic() - t0 < 10
    finally:
        for c in conns:
            c.close()


def test_one_read_of_good_unknown_and_malformed_frames(shared_daemon):
    """Replies held for one write (the cork) still all leave: before the error frame, in any order."""
    c = Conn(shared_daemon.wire_port)
    try:
        c.send(request(1) + request(2, model="nope") + request(3, version="9") + request(4) + frame([1, 2, 3]))
        replies = [c.recv() for _ in range(5)]
        assert replies[-1][0] is None and replies[-1][1] == 400  # the malformed frame's, written last
        by_id = {r[0]: r[1] for r in replies[:4]}
        assert by_id == {1: 200, 2: 404, 3: 404, 4: 200}
        assert c.closed_by_peer()
    finally:
        c.close()


@pytest.mark.parametrize("bad", [b"\x00\x00\x00\x00", (1 << 30).to_bytes(4, "big")], ids=["zero", "oversized"])
def test_requests_in_the_same_write_as_a_bad_header_are_answered_first(shared_daemon, bad):
    """docs/protocol.md: the requests before a bad frame are answered, then the error, then the close."""
    c = Conn(shared_daemon.wire_port)
    try:
        c.send(request(1) + request(2, version="2") + bad + request(3))
        replies = [c.recv() for _ in range(3)]
        assert sorted((r[0], r[1]) for r in replies[:2]) == [(1, 200), (2, 200)]
        assert replies[2][0] is None and replies[2][1] == (400 if bad == b"\0\0\0\0" else 413)
        assert c.closed_by_peer()
    finally:
        c.close()
