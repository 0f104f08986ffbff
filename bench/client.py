"""Load generator for the msgpack TCP protocol (and the TCP echo reference): blocking sockets, no asyncio.

``python -m bench.client --port P --mode msgpack --model fraud [--version V] --depth 1 --duration 5``

* ``--depth 1``: one request at a time; every round trip is timed (p50/p99 latency).
* ``--depth N``: N requests in flight on one connection (pipelined); each reply
  is answered at once by a new request, so N stay in flight (throughput).
* ``--mode echo``: send a frame of the same size as the msgpack request to an
  echo server and wait for the same bytes back: the cost of the network hop.

Every reply is decoded and checked (id in flight, status 200, answering
version, the output tensor's shape and size); anything else counts as an
error. Prints one JSON object on stdout; exits 1 when any request failed.
The run is bounded: sending stops at ``--duration``, in-flight replies are
awaited for at most ``--timeout`` seconds more.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time

import msgpack

from .payloads import PAYLOADS, Payload

_RECV = 1 << 20


class Closed(Exception):
    pass


class FrameReader:
    """Blocking reader of length-prefixed frames."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def frames(self) -> list[bytes]:
        """Block until at least one whole frame arrived; return every whole frame buffered."""
        recv = self.sock.recv
        buf = self.buf
        while True:
            data = recv(_RECV)
            if not data:
                raise Closed("server closed the connection")
            buf = buf + data if buf else data
            out = []
            pos = 0
            end = len(buf)
            while end - pos >= 4:
                n = int.from_bytes(buf[pos:pos + 4], "big")
                if end - pos - 4 < n:
                    break
                out.append(buf[pos + 4:pos + 4 + n])
                pos += 4 + n
            buf = buf[pos:] if pos else buf
            if out:
                self.buf = buf
                return out


class Checker:
    """Validates replies; counts errors and keeps the first few messages."""

    def __init__(self, mode: str, payload: Payload, request_body_len: int) -> None:
        self.mode = mode
        self.p = payload
        self.errors = 0
        self.messages: list[str] = []
        self.body_len = request_body_len
        self.version = payload.answering_version
        self.out_bytes = payload.out_width * 4

    def fail(self, msg: str) -> None:
        self.errors += 1
        if len(self.messages) < 5:
            self.messages.append(msg)

    def reply_id(self, body: bytes) -> int | None:
        """The id of a reply (the request's id for echo), or None after recording an error."""
        if self.mode == "echo":
            if len(body) != self.body_len:
                self.fail(f"echo returned {len(body)} bytes, sent {self.body_len}")
                return None
            return int.from_bytes(body[2:6], "big")
        try:
            rid, status, version, result = msgpack.unpackb(body)[:4]  # then the generation
        except Exception as exc:
            self.fail(f"unparsable reply frame: {exc!r}")
            return None
        if status != 200:
            self.fail(f"status {status}: {result!r}")
            return rid if isinstance(rid, int) else None
        try:
            out = result["outputs"][self.p.output]
            ok = (version == self.version and out["shape"] == [1, self.p.out_width]
                  and out["datatype"] == "FP32" and len(out["data"]) == self.out_bytes)
        except (KeyError, TypeError) as exc:
            self.fail(f"reply without the expected output: {exc!r}")
            return rid
        if not ok:
            self.fail(f"unexpected reply: version {version!r}, output {out!r}")
        return rid


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile (as wrk reports them) of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def run(host: str, port: int, mode: str, payload: Payload, depth: int, duration: float,
        warmup: float, timeout: float) -> dict:
    head, tail = payload.frame_parts()
    checker = Checker(mode, payload, len(head) - 4 + 4 + len(tail))
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = FrameReader(sock)
    sendall = sock.sendall
    ns = time.perf_counter_ns
    sent_at: dict[int, int] = {}
    next_id = 1
    lat: list[int] = []
    done = 0
    t_stop_warm = ns() + int(warmup * 1e9)
    t_end = t_stop_warm + int(duration * 1e9)
    measuring = warmup <= 0
    t_start = ns() if measuring else 0
    t_last = t_start

    def make(n: int) -> bytes:
        nonlocal next_id
        parts = []
        now = ns()
        for _ in range(n):
            rid = next_id
            next_id = rid + 1 if rid < 0xFFFFFFFF else 1
            sent_at[rid] = now
            parts.append(head + rid.to_bytes(4, "big") + tail)
        return b"".join(parts)

    try:
        sendall(make(depth))
        while sent_at:
            bodies = reader.frames()
            now = ns()
            for body in bodies:
                rid = checker.reply_id(body)
                t0 = sent_at.pop(rid, None) if rid is not None else None
                if t0 is None:
                    if rid is not None:
                        checker.fail(f"reply for id {rid}, which is not in flight")
                    continue
                if measuring and t0 >= t_start:
                    lat.append(now - t0)
                    done += 1
                    t_last = now
            if not measuring and now >= t_stop_warm:
                measuring = True
                t_start = now
            if now < t_end and len(sent_at) < depth:
                sendall(make(depth - len(sent_at)))
    except (OSError, Closed) as exc:  # socket.timeout included: the reply never came
        checker.fail(f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()
    if sent_at and not checker.errors:
        checker.fail(f"{len(sent_at)} request(s) unanswered")
    lat.sort()
    elapsed = (t_last - t_start) / 1e9
    return {
        "mode": mode, "model": payload.model, "depth": depth, "frame_bytes": len(head) + 4 + len(tail),
        "requests": done, "errors": checker.errors, "error_messages": checker.messages,
        "seconds": round(elapsed, 4),
        "rps": done / elapsed if elapsed > 0 else 0.0,
        "p50_us": percentile(lat, 50) / 1e3, "p90_us": percentile(lat, 90) / 1e3,
        "p99_us": percentile(lat, 99) / 1e3, "max_us": (lat[-1] / 1e3) if lat else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("msgpack", "echo"), default="msgpack")
    p.add_argument("--model", choices=sorted(PAYLOADS), default="fraud",
                   help="the request to send (echo: only its size matters)")
    p.add_argument("--version", default=None, help="pin the request to this version (default: the payload's)")
    p.add_argument("--depth", type=int, default=1, help="requests in flight (1 = one at a time)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds run before measuring")
    p.add_argument("--timeout", type=float, default=10.0, help="socket timeout (s)")
    a = p.parse_args(argv)
    if a.depth < 1:
        p.error("--depth must be >= 1")
    payload = PAYLOADS[a.model] if a.version is None else PAYLOADS[a.model].pinned(a.version)
    res = run(a.host, a.port, a.mode, payload, a.depth, a.duration, a.warmup, a.timeout)
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")
    return 1 if res["errors"] or not res["requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
