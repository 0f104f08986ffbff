"""Connection limits (router.limits): caps per listener, the file-handle reserve, head/body/send/idle timeouts.

The in-process tests drive the fronts' protocols over a recording transport and ask the
sweep's question (``overdue``) at chosen times: they assert which limit closes a connection
and why, never how long anything took. The daemon tests do what the hostile probe did.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import FRAUD, RawConn, free_port
from fakes import Replicas, fake_store

from router.config import parse_config
from router.http import HttpProtocol
from router.limits import Listener, Timeouts
from router.server import Server
from router.wire import WireProtocol

#: The fronts' limits are read by the extensions' parsers: these run again on their twins.
pytestmark = pytest.mark.twins

T = Timeouts(head=10.0, body=10.0, body_rate=1024.0, send=30.0, keepalive=60.0, msgpack_idle=600.0)


class ClientTransport(asyncio.Transport):
    """The router's side of a client socket: records what the router writes and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def in_server(test: Callable[[Server], Awaitable[None]]) -> Callable[[Path], None]:
    """Run the async ``test`` against a server of fake workers (no processes)."""

    def run(tmp_path: Path) -> None:
        async def main() -> None:
            store = fake_store(tmp_path / "store", {"fraud": ["1"]})
            config = parse_config({"server": {"http": "", "msgpack": ""}, "store": {"path": str(store)},
                                   "models": [{"name": "fraud", "versions": [{"version": "1"}]}]})
            s = Server(config, replica_factory=Replicas())
            await s.deployments.start()
            s.state.started = True
            try:
                await test(s)
            finally:
                await s.deployments.stop()

        asyncio.run(main())

    run.__name__ = test.__name__
    return run


def http(server: Server, listener: Listener | None = None) -> tuple[HttpProtocol, ClientTransport]:
    proto = HttpProtocol(server.lifecycle, server.answers, server.metrics.registry, 1 << 20,
                         lambda: None, listener or Listener("http", 10))  # type: ignore[arg-type, return-value]
    t = ClientTransport()
    proto.connection_made(t)
    return proto, t


def status_of(written: bytes) -> int:
    return int(written.split(b" ", 2)[1])


@in_server
async def test_a_head_trickled_in_times_out_from_its_first_byte(server):
    proto, t = http(server)
    first = time.monotonic()
    for byte in b"POST /v2/models/fraud/infer HTTP/1.1\r\n":
        proto.data_received(bytes([byte]))  # each byte arriving must not restart the clock
    assert proto.overdue(first + 9.5, T) is None
    assert proto.overdue(time.monotonic() + 10.5, T) == "head_timeout"
    proto.time_out("head_timeout")
    assert status_of(t.written) == 408 and b'"error": "request head not received in time' in t.written
    assert t.closed


@in_server
async def test_a_body_must_keep_moving_at_the_minimum_rate(server):
    proto, t = http(server)
    head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nContent-Length: 4000\r\n\r\n"
    proto.data_received(head + b"x" * 10)
    now = time.monotonic()
    assert proto.overdue(now + 9.9, T) is None
    assert proto.overdue(now + 10.1, T) == "body_timeout"  # 10 bytes earn ~10 ms more, not 100
    proto.data_received(b"x" * 2048)  # 2 KB more earn two more seconds
    assert proto.overdue(now + 11.9, T) is None
    assert proto.overdue(now + 12.1, T) == "body_timeout"
    proto.time_out("body_timeout")
    assert status_of(t.written) == 408 and b"request body not received in time" in t.written


@in_server
async def test_a_content_length_of_thousands_of_digits_is_413_not_an_exception(server):
    proto, t = http(server)
    proto.data_received(b"POST /v2/models/fraud/infer HTTP/1.1\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n")
    assert status_of(t.written) == 413 and b"exceeds the limit" in t.written


@in_server
async def test_a_client_that_reads_no_replies_is_cut_off(server):
    proto, t = http(server)
    proto.pause_writing()
    now = time.monotonic()
    assert proto.overdue(now + 29, T) is None
    assert proto.overdue(now + 31, T) == "send_timeout"
    proto.time_out("send_timeout")
    assert t.aborted and t.written == b""
    proto.resume_writing()


@in_server
async def test_idle_keepalive_and_a_request_in_flight(server):
    proto, t = http(server)
    now = time.monotonic()
    assert proto.overdue(now + 59, T) is None
    assert proto.overdue(now + 61, T) == "idle"
    proto.time_out("idle")
    assert t.closed and t.written == b""  # an idle connection just closes
    # A request in flight is the deadline's business, never the sweep's.
    proto, t = http(server)
    server.deployments.replicas[0].worker.answer = lambda *a: None  # it never answers
    proto.data_received(b"POST /v2/models/fraud/infer HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert not proto.idle
    assert proto.overdue(time.monotonic() + 1000, T) is None


@in_server
async def test_a_listener_at_its_cap_closes_new_connections_at_once(server):
    listener = Listener("http", 2)
    conns = [http(server, listener) for _ in range(3)]
    assert [t.aborted for _, t in conns] == [False, False, True]
    assert (listener.open, listener.refused) == (2, 1)
    conns[2][0].connection_lost(None)  # the refused one was never counted in
    assert listener.open == 2
    conns[0][0].connection_lost(None)
    assert listener.open == 1
    assert not http(server, listener)[1].aborted


@in_server
async def test_msgpack_idle_counts_from_the_last_whole_frame(server):
    listener = Listener("msgpack", 10)
    proto = WireProtocol(server.lifecycle, 1 << 20, listener)
    t = ClientTransport()
    proto.connection_made(t)
    opened = time.monotonic()
    proto.data_received(b"\x00\x00\x00\x10abc")  # part of a frame: not activity
    assert proto.overdue(opened + 599, T) is None
    assert proto.overdue(opened + 601, T) == "idle"
    proto.in_flight = 1  # a request in flight keeps it open and restarts the idle clock
    assert proto.overdue(opened + 10_000, T) is None
    proto.in_flight = 0
    assert proto.overdue(opened + 10_500, T) is None
    assert proto.overdue(opened + 10_601, T) == "idle"
    proto.time_out("idle")
    assert t.closed and not t.aborted


def test_the_sweep_interval_follows_the_shortest_limit():
    assert T.interval == 1.0
    assert Timeouts(0.4, 0, 1, 0, 0, 0).interval == pytest.approx(0.1)
    assert Timeouts(0, 0, 1, 0, 0, 0).interval == 1.0


# -- the daemon, as the probe tried it ---------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the series of ``name`` that carry ``labels`` (0 when there is none yet)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def http_get(port: int, path: str) -> tuple[int, bytes]:
    c = RawConn(port)
    try:
        c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while True:
            try:
                c.fill()
            except ConnectionError:
                break
        head, _, body = c.buf.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    finally:
        c.close()


def refused(port: int) -> bool:
    """Connect, and see whether the daemon closes at once (before we send anything)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        s.close()


def test_a_flood_of_idle_connections_never_locks_out_probes_or_worker_restarts(start_daemon):
    """The probe's 20,000 idle connections, scaled to a file-handle limit of 256: the caps are fitted
    inside it, connections past them are closed at once, and the admin listener and a worker
    restart still find file handles."""
    admin = free_port()
    d = start_daemon(nofile=(256, 256), admin_http=f"127.0.0.1:{admin}", fd_reserve=64)
    assert re.search(r"file-handle limit 256 .* caps lowered to http \d+, msgpack \d+, admin_http 16", d.log)
    held: list[socket.socket] = []
    try:
        for port in (d.http_port, d.wire_port):
            for _ in range(400):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                held.append(s)
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        break  # closed at once: this listener is full
                except BlockingIOError:
                    time.sleep(0.002)  # not closed (yet): look again once the daemon has seen it
                    try:
                        if s.recv(1) == b"":
                            break
                    except BlockingIOError:
                        continue
                except ConnectionResetError:
                    break
            else:
                raise AssertionError(f"port {port}: 400 connections and none refused")
        assert refused(d.http_port) and refused(d.wire_port)
        assert http_get(admin, "/v2/health/ready")[0] == 200
        # A worker killed now is restarted: the reserve holds file handles for it.
        os_kill(d.workers, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = http_get(admin, "/metrics")
            if status == 200 and metric(body.decode(), "router_worker_restarts_total", model="fraud") >= 1 \
                    and http_get(admin, "/v2/health/ready")[0] == 200:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the killed worker was not restarted:\n{d.log[-3000:]}")
        text = http_get(admin, "/metrics")[1].decode()
        assert metric(text, "router_connections_refused_total", listener="http") >= 1
        assert metric(text, "router_connections_refused_total", listener="msgpack") >= 1
        assert "Too many open files" not in d.log
    finally:
        for s in held:
            s.close()
    d.workers = []  # the first worker was killed on purpose; its replacement ends with the daemon


def os_kill(pids: list[int], sig: int) -> None:
    import os
    os.kill(pids[0], sig)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, store: Path):
    """A daemon with one-second limits."""
    from conftest import Daemon, write_config

    tmp = tmp_path_factory.mktemp("strict")
    cfg = write_config(tmp / "config.toml", store, [FRAUD], head_timeout_s=1, body_timeout_s=1,
                       send_timeout_s=1, msgpack_idle_timeout_s=1, admin_http=f"127.0.0.1:{free_port()}")
    d = Daemon(cfg, free_port(), free_port(), {})
    d.wait_ready()
    yield d
    assert d.stop() == 0


def read_reply(c: RawConn) -> tuple[int, dict[str, str], bytes]:
    """One HTTP reply, read until the daemon closes or the body is whole."""
    while b"\r\n\r\n" not in c.buf:
        c.fill()
    head, _, rest = c.buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        c.fill()
        rest = c.buf.partition(b"\r\n\r\n")[2]
    return int(lines[0].split(" ", 2)[1]), headers, rest[:n]


def test_a_slowloris_head_gets_408_and_is_closed(strict):
    c = RawConn(strict.http_port)
    try:
        head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 40
        c.sock.settimeout(0.05)
        sent = 0
        for byte in head:  # one byte every 50 ms: 25 s for the head if nothing stopped it
            c.send(bytes([byte]))
            sent += 1
            try:
                c.fill()
                break  # the daemon answered before the head was whole
            except TimeoutError:
                continue
        assert sent < len(head)
        c.sock.settimeout(10)
        status, _, body = read_reply(c)
        assert status == 408 and "request head not received in time" in json.loads(body)["error"]
        assert c.closed_by_peer()
    finally:
        c.close()


@pytest.mark.parametrize("path", ["/v2/models/fraud/infer", "/admin/models/fraud/traffic"])
def test_a_body_announced_and_not_sent_gets_408(strict, path):
    c = RawConn(strict.http_port)
    try:
        method = "POST" if "infer" in path else "PUT"
        c.send(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: 1000\r\n\r\n".encode() + b"{" * 10)
        status, headers, body = read_reply(c)
        assert status == 408 and "request body not received in time" in json.loads(body)["error"]
        assert c.closed_by_peer()
    finally:
        c.close()


def test_msgpack_connections_idle_or_trickling_are_closed(strict):
    idle, trickle = RawConn(strict.wire_port), RawConn(strict.wire_port)
    try:
        frame = msgpack.packb([1, "fraud", None, None, {"inputs": {}}])
        data = len(frame).to_bytes(4, "big") + frame
        with pytest.raises((ConnectionError, BrokenPipeError)):
            for byte in data:  # a whole frame never arrives in time
                trickle.send(bytes([byte]))
                time.sleep(0.1)
            trickle.fill()
        assert idle.closed_by_peer()
    finally:
        idle.close()
        trickle.close()


def test_a_client_that_never_reads_is_cut_off_and_counted(strict):
    admin = int(re.search(r"admin_http = \"127.0.0.1:(\d+)\"", strict.config.read_text()).group(1))
    c = RawConn(strict.http_port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        c.sock.settimeout(2)
        with pytest.raises((ConnectionError, BrokenPipeError, TimeoutError, OSError)):
            for _ in range(20_000):  # never read: replies pile up until the daemon gives up on us
                c.send(req * 10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = http_get(admin, "/metrics")[1].decode()
            if metric(text, "router_connections_closed_total", listener="http", reason="send_timeout") >= 1:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no send_timeout close counted")
    finally:
        c.close()


def test_aiohttp_errors_are_json_and_not_logged_as_errors(strict):
    c = RawConn(strict.http_port)
    try:  # a chunked body with a bad chunk size: aiohttp's to read, answered in JSON
        c.send(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        status, headers, body = read_reply(c)
        assert status == 400 and headers["content-type"].startswith("application/json")
        assert "error" in json.loads(body)
    finally:
        c.close()
    c = RawConn(strict.http_port)
    try:  # a header line over aiohttp's 8,190 bytes, on a path it serves
        c.send(b"GET /admin/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        status, headers, body = read_reply(c)
        assert status == 400 and "error" in json.loads(body)
    finally:
        c.close()
    c = RawConn(strict.http_port)
    try:  # a head past the hot path's 64 KB: 431 in JSON
        c.send(b"GET /v2/health/ready HTTP/1.1\r\n" + b"X-Pad: " + b"b" * 70_000 + b"\r\n\r\n")
        status, _, body = read_reply(c)
        assert status == 431 and "longer than" in json.loads(body)["error"]
    finally:
        c.close()
    assert "Traceback" not in strict.log and " ERROR " not in strict.log


def test_names_echoed_in_errors_are_cut(strict):
    name = "m" * 10_000
    status, body = strict.get(f"/v2/models/{name}")
    assert status == 404 and len(json.loads(body)["error"]) < 200
    c = RawConn(strict.wire_port)
    try:
        frame = msgpack.packb([1, "fraud", "v" * 10_000, None, {"inputs": {}}])
        c.send(len(frame).to_bytes(4, "big") + frame)
        while len(c.buf) < 4 or len(c.buf) < 4 + int.from_bytes(c.buf[:4], "big"):
            c.fill()
        rid, status, _, message, _ = msgpack.unpackb(c.buf[4:])
        assert status == 404 and len(message) < 200
    finally:
        c.close()
