"""The admin API against browsers: cross-site requests, DNS rebinding, odd tokens, unbounded weights.

Every request here is written byte for byte on a raw socket, as a browser (or an attacker's page
through one) would send it; each test checks what the daemon answered and that config.toml and
the serving state did not change.
"""

from __future__ import annotations

import json

import pytest
from conftest import RawConn

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole.
pytestmark = pytest.mark.daemon

DEPLOY = json.dumps({"versions": [{"version": "1", "weight": 100}]}).encode()


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"",
         raw_headers: bytes = b"") -> tuple[int, dict]:
    c = RawConn(port)
    try:
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        c.send(head.encode() + raw_headers + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in c.buf:
            c.fill()
        top, _, rest = c.buf.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in top.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            c.fill()
            rest = c.buf.partition(b"\r\n\r\n")[2]
        return int(top.split(b" ")[1]), json.loads(rest[:length]) if length else {}
    finally:
        c.close()


@pytest.fixture
def daemon(start_daemon):
    d = start_daemon()
    d.original = d.config.read_text()
    return d


def local(d, **extra: str) -> dict[str, str]:
    return {"Host": d.http, **extra}


def test_a_cross_site_text_plain_deploy_is_refused_and_nothing_changes(daemon):
    d = daemon
    for headers in (
        # A page on another site posting a "simple" request (no CORS preflight) through the browser.
        {"Host": d.http, "Origin": "http://evil.example", "Content-Type": "text/plain"},
        # The same through DNS rebinding: evil.example resolves to 127.0.0.1 now, and says so in Host.
        {"Host": f"evil.example:{d.http_port}", "Origin": f"http://evil.example:{d.http_port}",
         "Content-Type": "text/plain"},
        {"Host": f"evil.example:{d.http_port}", "Content-Type": "application/json"},
        {"Host": d.http, "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
    ):
        status, body = send(d.http_port, "POST", "/admin/models/fraud/deploy", headers, DEPLOY)
        assert status == 403 and body["error"], headers
    assert d.config.read_text() == d.original
    status, body = d.call("GET", "/admin/models")
    assert status == 200 and body["models"][0]["pool"] == "blue"  # no deploy happened


def test_admin_writes_need_the_json_content_type(daemon):
    d = daemon
    for method, path, body in (("POST", "/admin/reload", b""), ("POST", "/admin/models/fraud/rollback", b""),
                               ("PUT", "/admin/models/fraud/traffic", b'{"weights": {"1": 1}}')):
        status, reply = send(d.http_port, method, path, local(d, **{"Content-Type": "text/plain"}), body)
        assert status == 415 and "application/json" in reply["error"]
        status, reply = send(d.http_port, method, path, local(d), body)  # no Content-Type at all
        assert status == 415
    assert d.config.read_text() == d.original
    # The same origin (the UI served by the daemon) and plain tools are served.
    status, reply = send(d.http_port, "PUT", "/admin/models/fraud/traffic",
                         local(d, Origin=f"http://{d.http}", **{"Content-Type": "application/json"}),
                         b'{"weights": {"1": 80, "2": 20}}')
    assert status == 200 and reply["weights"] == {"1": 80, "2": 20}
    status, _ = send(d.http_port, "GET", "/admin/models", {"Host": f"localhost:{d.http_port}"})
    assert status == 200


def test_a_push_needs_a_binary_content_type_and_the_same_browser_checks(daemon):
    d = daemon
    path = "/admin/models/fraud/versions/9"
    # text/plain (what a page may post across sites without a preflight), JSON, or nothing: refused unread.
    for headers in (local(d, **{"Content-Type": "text/plain"}), local(d, **{"Content-Type": "application/json"}),
                    local(d)):
        status, reply = send(d.http_port, "POST", path, headers, b"model bytes")
        assert status == 415 and "application/octet-stream" in reply["error"], headers
    # A binary type from another origin or through a rebound name is still refused.
    for headers in ({"Host": d.http, "Origin": "http://evil.example", "Content-Type": "application/octet-stream"},
                    {"Host": f"evil.example:{d.http_port}", "Content-Type": "application/zip"}):
        status, reply = send(d.http_port, "POST", path, headers, b"model bytes")
        assert status == 403, headers
    # Only the push route takes binary types: every other write still needs JSON.
    status, reply = send(d.http_port, "POST", "/admin/reload", local(d, **{"Content-Type": "application/octet-stream"}))
    assert status == 415 and "application/json" in reply["error"]
    assert d.config.read_text() == d.original


def test_weights_are_bounded(daemon):
    d = daemon
    status, reply = send(d.http_port, "PUT", "/admin/models/fraud/traffic",
                         local(d, **{"Content-Type": "application/json"}), b'{"weights": {"1": 1e308}}')
    assert status == 400 and "weights.1: must be <= 1000000" in reply["error"]
    assert d.config.read_text() == d.original


def test_an_authorization_header_that_is_not_utf8_is_refused_not_a_500(start_daemon):
    d = start_daemon(env={"ROUTER_ADMIN_TOKEN": "s3cret"})
    status, reply = send(d.http_port, "GET", "/admin/models/fraud/versions", {"Host": d.http},
                         raw_headers=b"Authorization: Bearer \xff\xfe\xc3\x28\r\n")
    assert status == 403 and reply["error"] == "invalid admin token"
    # With a token the Host may be any name (a Service's, a pod's); the token is the guard.
    status, _ = send(d.http_port, "GET", "/admin/models/fraud/versions", {"Host": "router.default.svc:8080",
                                                                          "Authorization": "Bearer s3cret"})
    assert status == 200
    assert "Traceback" not in d.log
