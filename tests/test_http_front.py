"""The HTTP front's own protocol: head parsing (extension against twin) and HTTP/1.x on the wire.

The hot path parses requests itself and hands a connection to aiohttp at the
first request it does not take; these tests speak raw HTTP to a real daemon
to pin down both halves and the hand-off between them.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import RawConn
from hypothesis import given, settings
from hypothesis import strategies as st

from router import _http_py
from router.proto.errors import HttpHeadError

try:
    from router import _http_c
except ImportError:  # only acceptable when the twins are forced
    _http_c = None

PARSERS = [pytest.param(_http_py.parse_head, id="py")]
if _http_c is not None:
    PARSERS.append(pytest.param(_http_c.parse_head, id="c"))

ROW = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1.0, -0.5, 0.5, 1.0]}]}
BODY = json.dumps(ROW).encode()
INFER = "/v2/models/mlp-small/infer"


def request(path: str = INFER, body: bytes = BODY, version: str = "1.1", method: str = "POST",
            headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    hdrs = {"Content-Length": str(len(body))} if method == "POST" else {}
    hdrs.update(headers or {})
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Conn(RawConn):
    """A raw HTTP connection to the daemon, reading answers by Content-Length."""

    def __init__(self, daemon) -> None:
        super().__init__(daemon.http_port)

    def read(self) -> tuple[int, dict[str, str], bytes]:
        """One whole answer: (status, lower-cased headers, body)."""
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        if status == 100:
            return status, headers, b""
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self.fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self) -> bool:
        return self.closed_by_peer()


@pytest.fixture
def conn(shared_daemon):
    c = Conn(shared_daemon)
    yield c
    c.close()


def outputs(body: bytes) -> list[float]:
    return json.loads(body)["outputs"][0]["data"]


# -- the parser: extension and twin ----------------------------------------------------------------------


@pytest.mark.parametrize("parse", PARSERS)
def test_parse_head_fields(parse):
    raw = (b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length:  12 \r\n"
           b"X-User-ID: \xc3\xa9t\xc3\xa9\r\nAccept: a\r\naccept: b\r\n\r\nBODY")
    end, method, target, minor, headers = parse(raw)
    assert raw[end:] == b"BODY" and method == "POST" and target == "/v2/models/m/infer?x=1" and minor == 1
    assert headers == {"host": "a", "content-length": "12", "x-user-id": "été", "accept": "a, b"}
    assert parse(b"GET / HTTP/1.0\r\n\r\n") == (18, "GET", "/", 0, {})
    # A second request further along the same buffer.
    two = b"GET /a HTTP/1.1\r\n\r\n" + b"DELETE /b HTTP/1.1\r\nX: y\r\n\r\n"
    assert parse(two, 19) == (len(two), "DELETE", "/b", 1, {"x": "y"})


@pytest.mark.parametrize("parse", PARSERS)
def test_parse_head_incomplete_and_too_long(parse):
    full = request()
    head_end = full.index(b"\r\n\r\n") + 4
    for cut in range(head_end):
        assert parse(full[:cut]) is None, cut
    assert parse(full[:head_end])[0] == head_end
    with pytest.raises(HttpHeadError) as exc:
        parse(b"GET / HTTP/1.1\r\nX: " + b"a" * _http_py.MAX_HEAD)
    assert exc.value.status == 431
    with pytest.raises(HttpHeadError) as exc:
        parse(b"GET / HTTP/1.1\r\nX: " + b"a" * _http_py.MAX_HEAD + b"\r\n\r\n")
    assert exc.value.status == 431


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",          # bare LF
    b"GET http://a/ HTTP/1.1\r\n\r\n",          # absolute form
    b"GET * HTTP/1.1\r\n\r\n",
    b"GET  / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1 \r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",       # space before the colon
    b"GET / HTTP/1.1\r\n folded\r\n\r\n",        # obsolete line folding
    b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"\r\n\r\n",
])
def test_parse_head_refuses_what_it_leaves_to_aiohttp(parse, raw):
    with pytest.raises(HttpHeadError) as exc:
        parse(raw)
    assert exc.value.status == 400


_TOKEN = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefXYZ", min_size=1, max_size=12)
_LINE = st.one_of(
    st.tuples(_TOKEN, st.binary(max_size=20)).map(lambda t: t[0].encode() + b":" + t[1]),
    st.binary(max_size=30),
)


@pytest.mark.skipif(_http_c is None, reason="the extension is not built (twins forced)")
@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"get", b""]),
       target=st.binary(max_size=20).map(lambda b: b"/" + b),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/1.1x"]),
       lines=st.lists(_LINE, max_size=5),
       tail=st.binary(max_size=8),
       start=st.integers(0, 3),
       cut=st.integers(0, 200))
def test_extension_matches_twin(method, target, version, lines, tail, start, cut):
    raw = b"".join([b"junk"[:start], method, b" ", target, b" ", version, b"\r\n",
                    *(ln + b"\r\n" for ln in lines), b"\r\n", tail])
    for buf in (raw, raw[:cut]):
        results = []
        for parse in (_http_py.parse_head, _http_c.parse_head):
            try:
                results.append(("ok", parse(buf, start if start <= len(buf) else 0)))
            except HttpHeadError as exc:
                results.append(("error", exc.status))
        assert results[0] == results[1], buf


# -- the protocol on the wire ----------------------------------------------------------------------------


def test_fast_and_aiohttp_paths_answer_the_same(shared_daemon, conn):
    conn.send(request())
    status, headers, fast = conn.read()
    assert status == 200 and headers["content-type"] == "application/json" and "date" in headers
    # A chunked body is aiohttp's to read: the connection is handed over and answers alike.
    chunked = request(body=b"", headers={"Transfer-Encoding": "chunked"}).replace(b"Content-Length: 0\r\n", b"")
    conn.send(chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
    status, headers, slow = conn.read()
    assert status == 200 and slow == fast
    # A handed-over connection closes once answered (no second head is read where no head
    # timeout runs); the client's next connection starts on the hot path again.
    assert headers.get("connection") == "close" and conn.closed()
    again = Conn(shared_daemon)
    again.send(request())
    assert again.read()[2] == fast
    again.close()


def test_pipelined_requests_answer_in_order(conn):
    bodies = [json.dumps({**ROW, "id": str(i)}).encode() for i in range(5)]
    conn.send(b"".join(request(body=b) for b in bodies)
              + request("/v2/health/ready", b"", method="GET") + request(body=b"{"))
    ids = [json.loads(conn.read()[2])["id"] for _ in bodies]
    assert ids == ["0", "1", "2", "3", "4"]
    assert conn.read()[0] == 200
    status, _, err = conn.read()
    assert status == 400 and "error" in json.loads(err)


def test_request_trickling_in_byte_by_byte(conn):
    raw = request(headers={"Content-Type": "application/json"})
    for i in range(len(raw)):
        conn.send(raw[i:i + 1])
        if i % 40 == 0:
            time.sleep(0.002)  # separate reads on the daemon's side
    status, _, body = conn.read()
    assert status == 200 and len(outputs(body)) == 3


def test_http10_closes_unless_kept_alive(shared_daemon):
    c = Conn(shared_daemon)
    c.send(request(version="1.0"))
    status, headers, _ = c.read()
    assert status == 200 and headers.get("connection") == "close" and c.closed()
    c.close()
    c = Conn(shared_daemon)
    c.send(request(version="1.0", headers={"Connection": "keep-alive"}) * 2)
    for _ in range(2):
        status, headers, _ = c.read()
        assert status == 200 and headers["connection"] == "keep-alive"
    c.close()


def test_connection_close_is_honoured(conn):
    conn.send(request(headers={"Connection": "close"}) + request())
    status, headers, _ = conn.read()
    assert status == 200 and headers["connection"] == "close"
    assert conn.buf == b"" and conn.closed()  # the second request was not answered


def test_expect_100_continue(conn):
    conn.send(request(body=b"", headers={"Content-Length": str(len(BODY)), "Expect": "100-continue"}))
    status, _, _ = conn.read()
    assert status == 100
    conn.send(BODY)
    status, _, body = conn.read()
    assert status == 200 and len(outputs(body)) == 3


def test_admin_and_other_paths_after_inference_on_one_connection(conn):
    conn.send(request() + request("/admin/models", b"", method="GET"))
    assert conn.read()[0] == 200
    status, _, body = conn.read()
    assert status == 200 and "mlp-small" in [m["model"] for m in json.loads(body)["models"]]


@pytest.mark.parametrize("raw,status", [
    (request("/v2/models/mlp%2Dsmall/infer"), 200),           # aiohttp decodes the escape
    (request(INFER, b"", method="GET"), 405),
    (request("/v2/models/nope/infer"), 404),
    (request("/v2/models/mlp-small/versions/9/infer"), 404),
    (request("/v2/models/mlp-small/infer/"), 404),
    (request("/nowhere", b"", method="GET"), 404),
    (request(headers={"Inference-Header-Content-Length": "x"}), 400),
    (request(body=b"[1, 2]"), 400),
])
def test_statuses_and_json_errors(conn, raw, status):
    conn.send(raw)
    got, headers, body = conn.read()
    assert got == status
    if status != 200:
        assert headers["content-type"].startswith("application/json") and json.loads(body)["error"]


def test_malformed_head_is_answered_and_the_daemon_serves_on(shared_daemon):
    c = Conn(shared_daemon)
    c.send(b"HELLO THERE\r\n\r\n")
    status = c.read()[0]
    assert status == 400
    c.close()
    c = Conn(shared_daemon)
    c.send(request())
    assert c.read()[0] == 200
    c.close()


def test_oversized_body_gets_413_then_close_without_reset(shared_daemon):
    c = Conn(shared_daemon)
    n = (1 << 20) + 1  # the shared daemon's max_body_bytes + 1
    c.send(request(body=b"", headers={"Content-Length": str(n)}))
    status, headers, body = c.read()
    assert status == 413 and headers["connection"] == "close" and "exceeds the limit" in json.loads(body)["error"]
    c.send(b"x" * n)  # the rest is read and dropped, then the connection closes
    assert c.closed()
    c.close()


def test_idle_connections_close_after_the_keepalive_timeout(start_daemon):
    d = start_daemon(keepalive_timeout_s=1.0)
    ready = request("/v2/health/ready", b"", method="GET")
    idle, busy, handed = Conn(d), Conn(d), Conn(d)
    try:
        idle.send(ready)
        assert idle.read()[0] == 200
        handed.send(request("/admin/models", b"", method="GET"))  # served by aiohttp from here on
        assert handed.read()[0] == 200
        t0 = time.monotonic()
        # Over two timeouts, a request every 0.1 s: a busy machine may stall this loop for most of a
        # timeout and the connection is still not idle.
        while time.monotonic() - t0 < 2.5:
            busy.send(ready)
            assert busy.read()[0] == 200
            time.sleep(0.1)
        assert idle.closed() and handed.closed()
        busy.send(ready)
        assert busy.read()[0] == 200
    finally:
        for c in (idle, busy, handed):
            c.close()


def test_large_binary_body_in_many_reads_matches_one_write(shared_daemon):
    import numpy as np

    x = np.linspace(-1, 1, 200 * 256, dtype=np.float32).reshape(200, 256)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [200, 256],
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    raw = request("/v2/models/mlp-wide/infer", head + x.tobytes(),
                  headers={"Inference-Header-Content-Length": str(len(head))})
    answers = []
    for chunk in (len(raw), 7000):
        c = Conn(shared_daemon)
        try:
            for i in range(0, len(raw), chunk):
                c.send(raw[i:i + chunk])
                time.sleep(0.001)
            status, headers, body = c.read()
            assert status == 200 and headers["content-type"] == "application/octet-stream"
            hlen = int(headers["inference-header-content-length"])
            assert json.loads(body[:hlen])["outputs"][0]["shape"] == [200, 10]
            answers.append(body)
        finally:
            c.close()
    assert answers[0] == answers[1] and len(answers[0]) > 200 * 10 * 4
