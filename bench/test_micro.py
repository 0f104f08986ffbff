"""Micro-benchmarks of the per-request hot paths (pytest-benchmark).

Run: ``.venv/bin/python -m pytest bench/test_micro.py --benchmark-only``
(not collected by a plain ``pytest``: ``testpaths = ["tests"]``).

Covered: the TCP framing, the router <-> worker link, the worker's codecs,
dynamic batching in the worker (assembling and splitting a batch of 32), the
shadow comparison, the model's forward for scale, and a lone request through
the worker end to end (general path against the express path).

Every input is built in a fixture, outside the timed call: the timed callable
is only the function under test. The requests are the fraud/1 ones of
``bench/payloads.py`` (what ``bench/load.py`` sends).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bench._impls import IMPLS, implementation
from bench.payloads import FRAUD
from router.proto import link
from router.proto.link import FMT_JSON, FMT_MSGPACK


@pytest.fixture(params=IMPLS)
def framing(request: pytest.FixtureRequest):
    """``router.proto._framing_c`` (id ``c``) or ``router.proto._framing_py`` (id ``py``)."""
    return implementation(request, "_framing")


@pytest.fixture(scope="module")
def fraud_meta(tmp_path_factory: pytest.TempPathFactory):
    from modelkit.demo import build_demo_store
    from router.proto.meta import read_meta

    store = tmp_path_factory.mktemp("store")
    build_demo_store(store)
    return read_meta(Path(store) / "fraud" / "1"), Path(store) / "fraud" / "1"


FRAME = FRAUD.frame(7)  # one whole request frame (length prefix included)
BODY = FRAME[4:]
PIPELINED = b"".join(FRAUD.frame(i) for i in range(1, 33))  # 32 frames in one read
JSON_BODY = FRAUD.oip_json()
MSGPACK_BODY = FRAUD.msgpack_body()


# -- router.proto.framing -----------------------------------------------------------------------------------------


def test_feed_one_frame(benchmark, framing) -> None:
    scanner = framing.FrameScanner(1 << 24)
    frames = benchmark(scanner.feed, FRAME)
    assert frames == [BODY] and scanner.buffered == 0


def test_feed_32_frames(benchmark, framing) -> None:
    scanner = framing.FrameScanner(1 << 24)
    frames = benchmark(scanner.feed, PIPELINED)
    assert len(frames) == 32 and scanner.buffered == 0


def test_feed_split_frame(benchmark, framing) -> None:
    """A frame arriving in two reads: the buffered path."""
    scanner = framing.FrameScanner(1 << 24)
    first, second = FRAME[:10], FRAME[10:]

    def feed_two() -> list[bytes]:
        scanner.feed(first)
        return scanner.feed(second)

    assert benchmark(feed_two) == [BODY]


def test_parse_request(benchmark, framing) -> None:
    rid, model, version, key, offset = benchmark(framing.parse_request, BODY)
    assert (rid, model, version, key) == (7, "fraud", "1", None) and BODY[offset:] == MSGPACK_BODY


@pytest.fixture(params=IMPLS)
def http(request: pytest.FixtureRequest):
    """``router._http_c`` (id ``c``) or ``router._http_py`` (id ``py``)."""
    return implementation(request, "_http")


# What wrk sends for the fraud scenarios of bench/load.py.
HTTP_REQUEST = (b"POST /v2/models/fraud/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                b"Content-Length: %d\r\nContent-Type: application/json\r\n\r\n" % len(JSON_BODY)) + JSON_BODY


def test_parse_http_head(benchmark, http) -> None:
    end, method, target, minor, headers = benchmark(http.parse_head, HTTP_REQUEST)
    assert (method, target, minor) == ("POST", "/v2/models/fraud/versions/1/infer", 1)
    assert HTTP_REQUEST[end:] == JSON_BODY and headers["content-length"] == str(len(JSON_BODY))


def test_http_match(benchmark) -> None:
    from router.http import _INFER, match

    assert benchmark(match, "POST", "/v2/models/fraud/versions/1/infer") == (_INFER, "fraud", "1")


def test_observe_latency(benchmark) -> None:
    from router.metrics import Metrics

    m = Metrics()
    benchmark(m.observe, "fraud", "1", "http", 200, 0.00025)
    assert sum(m.request_series[("fraud", "1", "live", "http", 200)][:-1]) > 0


# -- router.proto.link --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [MSGPACK_BODY, JSON_BODY], ids=["msgpack-body", "json-body"])
def test_link_pack(benchmark, payload: bytes) -> None:
    frame = benchmark(link.pack, 12345, FMT_MSGPACK, 0, payload)
    assert frame.endswith(payload)


@pytest.mark.parametrize("payload", [MSGPACK_BODY, JSON_BODY], ids=["msgpack-body", "json-body"])
def test_link_unpack(benchmark, payload: bytes) -> None:
    body = link.pack(12345, FMT_MSGPACK, 0, payload)[4:]
    assert benchmark(link.unpack, body) == (12345, FMT_MSGPACK, 0, payload)


# -- runtime.codecs -----------------------------------------------------------------------------------------


BODIES = {"json": (FMT_JSON, JSON_BODY), "msgpack": (FMT_MSGPACK, MSGPACK_BODY)}


@pytest.mark.parametrize("fmt", list(BODIES))
def test_decode_request(benchmark, fraud_meta, fmt: str) -> None:
    from runtime.codecs import decode_request

    meta, _ = fraud_meta
    kind, body = BODIES[fmt]
    req = benchmark(decode_request, kind, body, 0, meta)
    assert req.arrays[0].shape == (1, 8) and req.batch == 1


@pytest.mark.parametrize("fmt", list(BODIES))
def test_encode_response(benchmark, fraud_meta, fmt: str) -> None:
    from runtime.codecs import decode_request, encode_response

    meta, _ = fraud_meta
    kind, body = BODIES[fmt]
    req = decode_request(kind, body, 0, meta)
    outputs = [np.array([[0.984049, 0.015951]], dtype=np.float32)]
    hlen, reply = benchmark(encode_response, req, outputs, meta)
    assert hlen == 0 and reply


@pytest.mark.parametrize("fmt", list(BODIES))
def test_shadow_compare(benchmark, fraud_meta, fmt: str) -> None:
    """A shadow worker's extra work per copy: decode the live reply, compare, pack the statistics."""
    from runtime.codecs import decode_reply, decode_request, encode_response
    from runtime.compare import compare, pack_stats

    meta, _ = fraud_meta
    kind, body = BODIES[fmt]
    req = decode_request(kind, body, 0, meta)
    _, reply = encode_response(req, [np.array([[0.984049, 0.015951]], dtype=np.float32)], meta)
    ours = {"probabilities": np.array([[0.98, 0.02]], dtype=np.float32)}

    def shadow_copy() -> bytes:
        return pack_stats(compare(decode_reply(kind, reply, 0), ours))

    stats = benchmark(shadow_copy)
    assert stats.startswith(b"\x92\x01")  # [rows_total=1, [...]]


def test_shadow_send_router_side(benchmark) -> None:
    """The router's work per copy sent: pick the replica, frame the copy, hold it; one write per 32 copies."""
    import asyncio
    from types import SimpleNamespace

    from router.metrics import Metrics
    from router.shadow import ShadowTarget
    from router.worker_link import WorkerLink

    class Transport:
        def __init__(self) -> None:
            self.writes: list[int] = []

        def writelines(self, pieces: list[bytes]) -> None:
            self.writes.append(len(pieces))

        def is_closing(self) -> bool:
            return False

    async def build() -> tuple[ShadowTarget, WorkerLink, Transport]:  # a link needs a running loop
        wl = WorkerLink("fraud/2", 1 << 20, lambda _: None)
        t = Transport()
        wl.connection_made(t)  # type: ignore[arg-type]
        replica = SimpleNamespace(link=wl)
        replicas = SimpleNamespace(version="2", vc=SimpleNamespace(shadow_queue=1 << 30), pick=lambda: replica)
        # flush_s of 10 s: every write is made by the 32nd copy
        return ShadowTarget("fraud", replicas, 1.0, 1 << 30, Metrics(), flush_s=10.0), wl, t  # type: ignore[arg-type]

    async def run() -> Transport:
        st, wl, t = await build()
        body, reply = FRAUD.msgpack_body(), b"\x81\xa7outputs\x80"

        def send_32() -> None:
            for _ in range(32):
                st.offer("msgpack", FMT_MSGPACK, 0, body, 0, reply, 0.0)
            wl.pending.clear()  # no answers come back here
            st.outstanding = 0

        benchmark(send_32)  # inside the loop: holding the first copy of a write arms its flush timer
        return t

    t = asyncio.run(run())
    assert t.writes and set(t.writes) == {3 * 32}  # head, body and live reply of each copy, in one write


def test_shadow_router_side(benchmark) -> None:
    """The router's work per compared copy: unpack the statistics, record result, latency, divergence."""
    import msgpack

    from router.metrics import Metrics

    m = Metrics()
    payload = msgpack.packb([1, [["probabilities", 0.004, 0.2, 1, 1]]])

    def record() -> None:
        _rows, outputs = msgpack.unpackb(payload)
        for name, max_abs, max_rel, agree, rows in outputs:
            m.observe_divergence("fraud", "2", name, max_abs, max_rel, agree, rows)
        m.observe("fraud", "2", "http", 200, 0.0002, route="shadow")

    benchmark(record)
    assert m.divergence_series[("fraud", "2", "probabilities")][2] > 0  # rows agreed


# -- the model itself, for scale ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # as the worker does
@pytest.mark.parametrize("fmt", list(BODIES))
def test_model_forward(benchmark, fraud_meta, fmt: str) -> None:
    """``runtime.model.Model.forward`` on one decoded row (what a worker runs at concurrency 1)."""
    import torch

    from runtime.codecs import decode_request
    from runtime.model import Model

    meta, version_dir = fraud_meta
    torch.set_num_threads(1)
    model = Model(version_dir / "model.pt", meta, "cpu")
    kind, body = BODIES[fmt]
    arrays = decode_request(kind, body, 0, meta).arrays  # msgpack: a read-only view
    for _ in range(20):  # past TorchScript's profiling runs
        model.forward(arrays)
    out = benchmark(model.forward, arrays)
    assert out[0].shape == (1, 2)


# -- runtime.batcher: dynamic batching in the worker ------------------------------------------------------------

BATCH = 32


@pytest.mark.parametrize("fmt", list(BODIES))
def test_batch_assemble_split(benchmark, fraud_meta, fmt: str) -> None:
    """A worker's batching work for 32 fraud/1 requests, around one forward (a stub here).

    ``Batcher.add`` x 32 (the trailing-shape key of each request), then ``run``:
    concatenate the 32 ``[1, 8]`` inputs into ``[32, 8]``, check the output keeps
    the batch, slice it back into 32 ``[1, 2]`` rows and encode each reply (in the
    request's format; ``test_encode_response`` times one encoding alone). The
    forward returns a precomputed ``[32, 2]`` array: no model time is included.
    """
    from runtime.batcher import Batcher
    from runtime.codecs import decode_request

    meta, _ = fraud_meta
    kind, body = BODIES[fmt]
    reqs = [decode_request(kind, body, 0, meta) for _ in range(BATCH)]
    out = np.tile(np.array([[0.984049, 0.015951]], dtype=np.float32), (BATCH, 1))
    seen: list[tuple[int, ...]] = []

    def forward(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        seen.append(inputs[0].shape)
        return [out]

    batcher = Batcher(forward, meta, max_batch_size=BATCH)

    def assemble_and_split() -> list[tuple[int, int, int, bytes]]:
        for rid, req in enumerate(reqs):
            batcher.add(rid, req)
        return batcher.run()

    replies = benchmark(assemble_and_split)
    assert len(replies) == BATCH and all(r[1] == 200 for r in replies) and len(batcher) == 0
    assert seen[-1] == (BATCH, 8) and [r[0] for r in replies] == list(range(BATCH))


# -- runtime.express: a lone request in the worker, end to end ----------------------------------------------------


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # as the worker does
@pytest.mark.parametrize("path", ["general", "express"])
def test_worker_lone_request(benchmark, fraud_meta, path: str) -> None:
    """One fraud/1 msgpack request as the worker serves it alone: link frame in, reply frame out.

    ``general``: frame scanner, link unpack, ``decode_request``, the batcher's
    pending list and bookkeeping, forward, ``encode_response``, link pack.
    ``express``: ``runtime.express.Express.answer``, one pass. Both include the
    real forward (``test_model_forward`` alone) and give the same bytes.
    """
    import torch

    from router.proto.framing import FrameScanner
    from runtime.batcher import Batcher
    from runtime.codecs import decode_request
    from runtime.express import Express
    from runtime.model import Model

    meta, version_dir = fraud_meta
    torch.set_num_threads(1)
    model = Model(version_dir / "model.pt", meta, "cpu")
    data = link.pack(7, FMT_MSGPACK, 0, MSGPACK_BODY)  # what one recv() brings at concurrency 1
    scanner = FrameScanner(1 << 20)
    batcher = Batcher(model.forward, meta, max_batch_size=32)
    express = Express(model)

    def general() -> bytes:
        for frame in scanner.feed(data):
            rid, kind, hlen, payload = link.unpack(frame)
            batcher.add(rid, decode_request(kind, payload, hlen, meta))
        return b"".join(link.pack(*reply) for reply in batcher.run())

    def fast() -> bytes:
        answer = express.answer(data)
        assert answer is not None
        return answer

    serve = general if path == "general" else fast
    with torch.inference_mode():  # as the worker runs
        for _ in range(20):  # past TorchScript's profiling runs
            serve()
        reply = benchmark(serve)
        assert reply == general() == fast()
    _, status, _, payload = link.unpack(reply[4:])
    assert status == 200 and b"probabilities" in payload
