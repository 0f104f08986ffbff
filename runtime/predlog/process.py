"""The writer's loop: read records, decode them into rows, write them; report totals to the router.

Writer -> router frames (length-prefixed, :func:`router.proto.framing.pack_header`) are msgpack maps of
running totals per model: ``{"written": {model: records}, "failed": {model: records}, "bytes": {model:
bytes on disk}, "files": {model: files}}``, sent at most once a second and only after a change.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

import msgpack

from router.proto.framing import FrameScanner, pack_header

from ..lifeline import die_with_parent
from .files import LogFiles, Policy
from .records import MetaOf, read_meta_cached, rows_of, unpack

log = logging.getLogger("runtime.predlog")

_RECV_SIZE = 1 << 20
#: Seconds between reports (and the longest the loop sleeps: rotation and flushing run on it).
REPORT_S = 1.0


class Writer:
    """Records in, rows out, totals back.

    Args:
        sock: connected to the router.
        files: where rows go.
        meta_of: each version's signature.
        max_frame: largest record accepted (the router's ``max_body_bytes`` times two, plus the head).
    """

    def __init__(self, sock: socket.socket, files: LogFiles, meta_of: MetaOf, max_frame: int) -> None:
        self.sock = sock
        self.files = files
        self.meta_of = meta_of
        self.scanner = FrameScanner(max_frame)
        self._reported: bytes = b""

    def handle(self, frame: bytes) -> None:
        """One record: its rows queued, or counted as failed when it does not decode."""
        model = None
        try:
            record = unpack(frame)
            model = record[3] if len(record) > 3 and isinstance(record[3], str) else None
            rows = rows_of(record, self.meta_of)
        except Exception as exc:  # a malformed record is a router bug: count it, say so, go on
            log.error("prediction log: a record could not be decoded: %r", exc)
            if model is not None:
                self.files.totals_of(model).failed += 1
            return
        self.files.add(rows.model, rows.version, rows.schema, rows.columns)

    def report(self) -> None:
        """Send the totals if they changed since the last report."""
        t = self.files.totals
        payload = msgpack.packb({
            "written": {m: v.written for m, v in t.items()},
            "failed": {m: v.failed for m, v in t.items()},
            "bytes": {m: v.bytes for m, v in t.items()},
            "files": {m: v.files for m, v in t.items()},
        })
        if payload != self._reported:
            self._reported = payload
            self.sock.sendall(pack_header(len(payload)) + payload)

    def serve(self) -> None:
        """Until the router closes the socket: then what waits is written and every file closed."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        next_tick = time.monotonic() + REPORT_S
        try:
            while True:
                left = next_tick - time.monotonic()
                if left > 0 and poller.poll(max(1, int(left * 1000))):
                    data = self.sock.recv(_RECV_SIZE)
                    if not data:
                        return
                    for frame in self.scanner.feed(data):
                        self.handle(frame)
                    if time.monotonic() < next_tick:
                        continue
                self.files.tick()
                self.report()
                next_tick = time.monotonic() + REPORT_S
        finally:
            self.files.close()
            try:
                self.report()
            except OSError:
                pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.predlog",
                                description="model-router prediction log writer (started by the router)")
    p.add_argument("--fd", type=int, required=True, help="the socket connected to the router")
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--path", type=Path, required=True, help="the log's directory ([predlog] path)")
    p.add_argument("--store", type=Path, required=True, help="the model store (each version's meta.json)")
    d = Policy()
    p.add_argument("--file-bytes", type=int, default=d.file_bytes)
    p.add_argument("--file-s", type=float, default=d.file_s)
    p.add_argument("--retain-s", type=float, default=d.retain_s)
    p.add_argument("--retain-bytes", type=int, default=d.retain_bytes)
    p.add_argument("--max-frame", type=int, default=64 << 20)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("ROUTER_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)-5s predlog[%(process)d] %(message)s", stream=sys.stderr)
    die_with_parent(a.parent_pid)
    # Below serving: on a busy machine the writer falls behind and records drop (counted) rather than
    # the router and its workers giving up CPU to it.
    os.nice(10)
    # The router owns shutdown: it closes the socket (or sends SIGTERM), and the writer closes its files.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # files are closed on the way out
    files = LogFiles(a.path, Policy(a.file_bytes, a.file_s, a.retain_s, a.retain_bytes))
    files.sweep()
    sock = socket.socket(fileno=a.fd)
    try:
        Writer(sock, files, read_meta_cached(a.store), a.max_frame).serve()
    except (BrokenPipeError, ConnectionResetError):
        files.close()
    return 0
