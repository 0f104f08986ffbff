"""The chaos soak's clients: paced load on both protocols that records every request's outcome, and slow clients.

Used by :mod:`bench.chaos`. Raw asyncio streams, no client library: the soak
must tell "the server closed an idle connection" (fine: reconnect) from "the
server closed a connection with a request outstanding" (a lost request), which
a client that retries cannot.

Each request ends in exactly one outcome:

* ``200`` -- a well-formed inference reply from a live version;
* ``503`` / ``504`` -- answered, with a reason (HTTP: a JSON ``{"error": "..."}``,
  msgpack TCP: a non-empty error string), counted by reason;
* a failure -- any other status, an error without a reason, a reply that does
  not parse, the connection closed or reset with the request outstanding
  (``lost``), no reply within the client's timeout (``hung``), or no
  connection at all (``connect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .payloads import HTTP_FORMATS, Payload

HOST = "127.0.0.1"
#: Routing keys the load draws from (``x-user-id``; msgpack TCP: item 3 of the envelope).
USERS = 1000
#: First and last few failures kept in full for the report.
KEEP_FAILURES = 20
_DIGITS = re.compile(r"\d+")


@dataclass
class Tally:
    """Outcomes of every request, by protocol (``http``, ``tcp``)."""

    counts: Counter[str] = field(default_factory=Counter)  # "proto outcome" -> n
    reasons: Counter[str] = field(default_factory=Counter)  # "proto status reason" -> n
    latency_ns: dict[str, list[int]] = field(default_factory=lambda: {"http": [], "tcp": []})  # of 2xx replies
    answered_ns: dict[str, list[int]] = field(default_factory=lambda: {"http": [], "tcp": []})  # of every answer
    failures: list[str] = field(default_factory=list)
    failed = 0
    reconnects: Counter[str] = field(default_factory=Counter)  # proto -> closed by the server while idle
    versions: Counter[str] = field(default_factory=Counter)  # version that answered a 200

    def ok(self, proto: str, version: str, ns: int) -> None:
        self.counts[f"{proto} 200"] += 1
        self.versions[version] += 1
        self.latency_ns[proto].append(ns)
        self.answered_ns[proto].append(ns)

    def answered(self, proto: str, status: int, reason: str, ns: int) -> None:
        self.counts[f"{proto} {status}"] += 1
        # Reasons may name a replica, a pid or a time: numbers are masked so that they group.
        self.reasons[f"{proto} {status} {_DIGITS.sub('N', reason)[:100]}"] += 1
        self.answered_ns[proto].append(ns)

    def fail(self, proto: str, kind: str, detail: str) -> None:
        self.counts[f"{proto} failed"] += 1
        self.counts[f"{proto} failed:{kind}"] += 1
        self.failed += 1
        line = f"{time.strftime('%H:%M:%S')} {proto} {kind}: {detail}"
        if len(self.failures) < KEEP_FAILURES:
            self.failures.append(line)
        else:
            self.failures[-1] = line  # keep the first ones and the latest


@dataclass(frozen=True)
class Mix:
    """What the load sends: ``normal`` rows (every version answers) and ``big`` ones (beyond +-1000: live
    versions answer, the failing shadow raises), with a routing key on ``keyed`` of them."""

    normal: Payload
    big: Payload
    big_fraction: float
    keyed_fraction: float
    live_versions: frozenset[str]
    output: str
    out_width: int

    def pick(self, rng: random.Random) -> tuple[Payload, str | None]:
        p = self.big if rng.random() < self.big_fraction else self.normal
        key = f"user-{rng.randrange(USERS)}" if rng.random() < self.keyed_fraction else None
        return p, key


class Load:
    """Paced closed-loop lanes: ``http_lanes`` HTTP connections (one request at a time each) and
    ``tcp_conns`` msgpack TCP connections carrying ``tcp_depth`` lanes each; each lane waits an
    exponential think time of mean ``lanes / rate`` between requests."""

    def __init__(self, http_port: int, wire_port: int, mix: Mix, rate: float, http_lanes: int, tcp_conns: int,
                 tcp_depth: int, timeout: float, seed: int, tally: Tally | None = None) -> None:
        self.http_port = http_port
        self.wire_port = wire_port
        self.mix = mix
        self.timeout = timeout
        self.seed = seed
        self.http_lanes = http_lanes
        self.tcp_conns = tcp_conns
        self.tcp_depth = tcp_depth
        lanes = http_lanes + tcp_conns * tcp_depth
        self.think_s = lanes / rate
        self.tally = tally or Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._wire: list[WireConn] = []

    def start(self) -> None:
        for i in range(self.http_lanes):
            self._tasks.append(asyncio.create_task(self._http_lane(i), name=f"http lane {i}"))
        for c in range(self.tcp_conns):
            conn = WireConn(self.wire_port, self.tally)
            self._wire.append(conn)
            for d in range(self.tcp_depth):
                self._tasks.append(asyncio.create_task(self._tcp_lane(conn, c * self.tcp_depth + d),
                                                       name=f"tcp lane {c}/{d}"))

    async def stop(self) -> None:
        """Stop sending; each lane finishes its request in flight (bounded by its timeout), then closes."""
        self._stop.set()
        for task, r in zip(self._tasks, await asyncio.gather(*self._tasks, return_exceptions=True), strict=True):
            if isinstance(r, BaseException):  # a bug of the harness: counted, so that the soak fails
                self.tally.fail("harness", "crash", f"{task.get_name()}: {r!r}")
        for conn in self._wire:
            await conn.close()

    async def _think(self, rng: random.Random) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), rng.expovariate(1.0 / self.think_s))

    # -- HTTP ----------------------------------------------------------------------------------------------

    async def _http_lane(self, lane: int) -> None:
        rng = random.Random(self.seed * 1000 + lane)
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        t = self.tally
        try:
            while not self._stop.is_set():
                if reader is not None and reader.at_eof():
                    t.reconnects["http"] += 1  # closed by the server with nothing outstanding: fine
                    await _close(writer)
                    reader = writer = None
                if reader is None:
                    try:
                        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.http_port),
                                                                self.timeout)
                    except (OSError, TimeoutError) as exc:
                        t.fail("http", "connect", repr(exc))
                        await self._think(rng)
                        continue
                assert reader is not None and writer is not None
                payload, key = self.mix.pick(rng)
                fmt = HTTP_FORMATS[rng.randrange(len(HTTP_FORMATS))]
                body, headers = payload.http_request(fmt)
                if key is not None:
                    headers = {**headers, "x-user-id": key}
                head = f"POST {payload.http_path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(body)}\r\n"
                req = (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body
                t0 = time.monotonic_ns()
                close = True
                try:
                    async with asyncio.timeout(self.timeout):
                        writer.write(req)
                        status, rheaders, rbody = await _read_response(reader)
                    close = rheaders.get("connection", "").lower() == "close"
                    self._classify_http(fmt, status, rheaders, rbody, time.monotonic_ns() - t0)
                except TimeoutError:
                    t.fail("http", "hung", f"no reply within {self.timeout:.0f} s ({fmt}, key {key})")
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                    t.fail("http", "lost", f"{type(exc).__name__}: {exc} ({fmt}, key {key})")
                if close:
                    await _close(writer)
                    reader = writer = None
                await self._think(rng)
        finally:
            await _close(writer)

    def _classify_http(self, fmt: str, status: int, headers: dict[str, str], body: bytes, ns: int) -> None:
        t = self.tally
        if status == 200:
            from router.client._oip import decode_infer

            try:
                res = decode_infer(200, lambda name: headers.get(name.lower()), body)
                out = res.outputs[self.mix.output]
                if res.model_version not in self.mix.live_versions or out.shape != (1, self.mix.out_width):
                    raise ValueError(f"version {res.model_version!r}, output shape {out.shape}")
            except Exception as exc:  # the client decoder raises several types on garbage
                t.fail("http", "bad-reply", f"200 ({fmt}): {type(exc).__name__}: {exc}: {body[:200]!r}")
                return
            t.ok("http", res.model_version, ns)
        elif status in (503, 504):
            try:
                reason = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                reason = None
            if not isinstance(reason, str) or not reason:
                t.fail("http", "no-reason", f"{status} ({fmt}) without a JSON error: {body[:200]!r}")
            else:
                t.answered("http", status, reason, ns)
        else:
            t.fail("http", "status", f"{status} ({fmt}): {body[:300]!r}")

    # -- msgpack TCP ---------------------------------------------------------------------------------------

    async def _tcp_lane(self, conn: WireConn, lane: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + lane)
        t = self.tally
        while not self._stop.is_set():
            try:
                await conn.connect(self.timeout)
            except (OSError, TimeoutError) as exc:
                t.fail("tcp", "connect", repr(exc))
                await self._think(rng)
                continue
            payload, key = self.mix.pick(rng)
            t0 = time.monotonic_ns()
            try:
                async with asyncio.timeout(self.timeout):
                    status, version, result = await conn.call(payload, key)
            except NotConnected:
                continue
            except TimeoutError:
                t.fail("tcp", "hung", f"no reply within {self.timeout:.0f} s (key {key})")
            except ConnectionError as exc:
                t.fail("tcp", "lost", str(exc))
            else:
                self._classify_tcp(status, version, result, time.monotonic_ns() - t0)
            await self._think(rng)

    def _classify_tcp(self, status: Any, version: Any, result: Any, ns: int) -> None:
        t = self.tally
        if status == 200:
            try:
                out = result["outputs"][self.mix.output]
                if (version not in self.mix.live_versions or out["shape"] != [1, self.mix.out_width]
                        or len(out["data"]) != 4 * self.mix.out_width):
                    raise ValueError(f"version {version!r}, output {out!r}")
            except (KeyError, TypeError, ValueError) as exc:
                t.fail("tcp", "bad-reply", f"200: {type(exc).__name__}: {exc}: {result!r:.200}")
                return
            t.ok("tcp", version, ns)
        elif status in (503, 504):
            if not isinstance(result, str) or not result:
                t.fail("tcp", "no-reason", f"{status} without an error message: {result!r:.200}")
            else:
                t.answered("tcp", status, result, ns)
        else:
            t.fail("tcp", "status", f"{status}: {result!r:.300}")


class NotConnected(Exception):
    """The connection closed before the request could be sent: nothing was lost."""


class WireConn:
    """One msgpack TCP connection shared by several lanes: frames out, replies matched by id."""

    def __init__(self, port: int, tally: Tally) -> None:
        self.port = port
        self.tally = tally
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[tuple[Any, Any, Any]]] = {}
        self.next_id = 1
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        #: Ids whose caller gave up (counted as hung): their late replies are dropped, not counted again.
        self.abandoned: set[int] = set()

    async def connect(self, timeout: float) -> None:
        """Connect unless connected (one lane connects; the others wait for it)."""
        async with self._lock:
            if self.writer is not None:
                return
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), timeout)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, writer), name="tcp reader")

    async def call(self, payload: Payload, key: str | None) -> tuple[Any, Any, Any]:
        """Send one request; its ``(status, version, result)``.

        Raises:
            NotConnected: nothing was sent (the connection closed since :meth:`connect`).
            ConnectionError: the connection closed (or was closed) before the reply came.
        """
        writer = self.writer
        if writer is None:
            raise NotConnected("not connected")
        rid = self.next_id
        self.next_id = rid + 1 if rid < 0xFFFFFFFF else 1
        env = _envelope(rid, payload, key)
        fut: asyncio.Future[tuple[Any, Any, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        try:
            writer.write(len(env).to_bytes(4, "big") + env)
            return await fut
        except asyncio.CancelledError:
            self.abandoned.add(rid)
            raise
        finally:
            self.pending.pop(rid, None)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        why = "closed by the server"
        try:
            while True:
                head = await reader.readexactly(4)
                frame = await reader.readexactly(int.from_bytes(head, "big"))
                try:
                    rid, status, version, result = msgpack.unpackb(frame)[:4]  # then the generation
                except Exception as exc:  # msgpack raises several unrelated types on garbage
                    self.tally.fail("tcp", "bad-reply", f"unparsable reply frame: {exc!r}: {frame[:200]!r}")
                    continue
                fut = self.pending.get(rid) if isinstance(rid, int) else None
                if fut is None and rid in self.abandoned:
                    self.abandoned.discard(rid)
                elif fut is None:
                    self.tally.fail("tcp", "bad-reply",
                                    f"reply for id {rid!r}, not in flight: {status} {result!r:.200}")
                elif not fut.done():
                    fut.set_result((status, version, result))
        except asyncio.IncompleteReadError:
            pass
        except OSError as exc:
            why = f"{type(exc).__name__}: {exc}"
        finally:
            if self.writer is writer:
                self.writer = None
            if self.pending:
                lost = ConnectionError(f"{why} with {len(self.pending)} request(s) outstanding")
                for fut in self.pending.values():
                    if not fut.done():
                        fut.set_exception(lost)
            elif not self._closing:
                self.tally.reconnects["tcp"] += 1
            await _close(writer)

    async def close(self) -> None:
        writer, task = self.writer, self._reader_task
        self._closing = True
        self.writer = None
        await _close(writer)
        if task is not None:
            await task


def _envelope(rid: int, payload: Payload, key: str | None) -> bytes:
    """A request frame's body (docs/protocol.md): ``[id, model, version, key, request]``."""
    return (b"\x95" + msgpack.packb(rid) + msgpack.packb(payload.model) + msgpack.packb(payload.version)
            + msgpack.packb(key) + payload.msgpack_body())


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names) and body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(c[:-2] for c in chunks)
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return status, headers, body


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5.0)
    except (OSError, TimeoutError):
        writer.transport.abort()


# -- slow clients ------------------------------------------------------------------------------------------


@dataclass
class SlowTally:
    """What happened to the slow clients: held to the end, or closed by the server (both are fine)."""

    counts: Counter[str] = field(default_factory=Counter)


async def trickle(port: int, data: bytes, seconds: float, proto: str, tally: SlowTally) -> None:
    """Connect and send ``data`` one byte per second for ``seconds`` (never all of it), then close."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        tally.counts[f"trickle {proto} connect failed: {type(exc).__name__}"] += 1
        return
    outcome = "held"
    try:
        end = time.monotonic() + seconds
        for i in range(len(data) - 1):
            if time.monotonic() >= end:
                break
            writer.write(data[i:i + 1])
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                # A reply or an EOF while trickling: the server gave up on us (a 408 or a close).
                got = await asyncio.wait_for(reader.read(4096), 1.0)
                outcome = f"answered {got[:12]!r}" if got else "closed by server"
                break
    except OSError:
        outcome = "closed by server"
    finally:
        await _close(writer)
    tally.counts[f"trickle {proto} {outcome}"] += 1


async def idle(port: int, seconds: float, proto: str, tally: SlowTally) -> None:
    """Open a connection, send nothing for ``seconds``, close."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        tally.counts[f"idle {proto} connect failed: {type(exc).__name__}"] += 1
        return
    outcome = "held"
    try:
        got = await asyncio.wait_for(reader.read(4096), seconds)
        outcome = "closed by server" if not got else f"answered {got[:12]!r}"
    except TimeoutError:
        pass
    except OSError:
        outcome = "closed by server"
    finally:
        await _close(writer)
    tally.counts[f"idle {proto} {outcome}"] += 1
