"""runtime.express: a lone msgpack request answered in one pass, exactly as the general path answers it."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.proto import link
from router.proto.framing import FrameScanner
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK, KIND_WARMUP, SHADOW, STATUS_STATS
from router.proto.meta import ModelMeta, TensorSpec
from runtime.batcher import Batcher
from runtime.codecs import decode_request
from runtime.express import Express
from runtime.model import Model
from runtime.worker import Worker, WorkerSpec


class Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < -100.0).any()):
            raise ValueError("input below -100")
        return x * 2.0 + 1.0


class Double(torch.nn.Module):  # returns float64 where the signature says FP32: cast on the way out
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() / 3.0


class Transposed(torch.nn.Module):  # a view that is not C-contiguous
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.t()


class OneTuple(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x - 0.5,)


class TwoOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def load(tmp_path: Path, module: torch.nn.Module, out_shape: tuple[int, ...] = (-1, 4),
         outputs: int = 1) -> Model:
    path = tmp_path / f"{type(module).__name__}.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    meta = ModelMeta(name="m", version="3", platform="pytorch_torchscript",
                     inputs=(TensorSpec("x", "FP32", (-1, 4)),),
                     outputs=tuple(TensorSpec(f"y{i}" if i else "y", "FP32", out_shape) for i in range(outputs)),
                     example={})
    return Model(path, meta, "cpu", optimize=False)


def body(x: np.ndarray, **extra: object) -> bytes:
    return msgpack.packb({"inputs": {"x": {"datatype": "FP32", "shape": list(x.shape), "data": x.tobytes()}},
                          **extra})


def frame(payload: bytes, rid: int = 7, kind: int = FMT_MSGPACK) -> bytes:
    return link.pack(rid, kind, 0, payload)


def general(model: Model, data: bytes) -> bytes:
    """The general path's reply frame to one whole frame: decode, a batch of one, encode."""
    rid, kind, hlen, payload = link.unpack(data[4:])
    b = Batcher(model.forward, model.meta, 32)
    try:
        b.add(rid, decode_request(kind, payload, hlen, model.meta))
    except Exception as exc:  # what Worker._handle answers
        return link.pack(rid, getattr(exc, "status", 500), 0, str(exc).encode())
    (reply,) = b.run()
    return link.pack(*reply)


@pytest.fixture(autouse=True)
def inference():
    with torch.inference_mode():  # as the worker runs
        yield


X = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)


@pytest.mark.parametrize("module", [Affine(), Double(), OneTuple()], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("extra", [{}, {"id": "req-1"}, {"outputs": []}, {"id": "", "outputs": []}])
@pytest.mark.parametrize("rows", [0, 1, 3])
def test_the_reply_is_the_general_paths_byte_for_byte(tmp_path, module, extra, rows):
    model = load(tmp_path, module)
    express = Express(model)
    data = frame(body(X[:rows], **extra))
    got = express.answer(data)
    assert got is not None and express.answered == 1
    assert got == general(model, data)
    rid, status, _, payload = link.unpack(got[4:])
    reply = msgpack.unpackb(payload)
    assert (rid, status, reply["model_version"], reply.get("id")) == (7, 200, "3", extra.get("id"))
    assert reply["outputs"]["y"]["shape"] == [rows, 4]


def test_a_strided_or_large_output_is_still_the_general_paths_reply(tmp_path):
    t = load(tmp_path, Transposed(), out_shape=(4, -1))
    data = frame(body(X))
    assert Express(t).answer(data) == general(t, data)
    out = msgpack.unpackb(link.unpack(Express(t).answer(data)[4:])[3])["outputs"]["y"]  # type: ignore[index]
    np.testing.assert_array_equal(np.frombuffer(out["data"], "<f4").reshape(out["shape"]), X.T)
    big = np.ones((2000, 4), np.float32)  # 32 KB out: sent from a view, not a copy
    a = load(tmp_path, Affine())
    data = frame(body(big))
    assert Express(a).answer(data) == general(a, data)


def test_a_model_error_is_the_general_paths_500(tmp_path):
    model = load(tmp_path, Affine())
    data = frame(body(np.full((1, 4), -500, np.float32)))
    got = Express(model).answer(data)
    assert got is not None and got == general(model, data)
    _, status, _, message = link.unpack(got[4:])
    assert status == 500 and b"input below -100" in message


def test_everything_else_goes_the_general_way(tmp_path):
    model = load(tmp_path, Affine())
    express = Express(model)
    one = frame(body(X[:1]))
    assert express.answer(one) is not None
    cases = {
        "two frames in one read": one + one,
        "part of a frame": one[:-1],
        "a frame and a half": one + one[:10],
        "JSON body": frame(b'{"inputs": []}', kind=FMT_JSON),
        "binary body": frame(b'{"inputs": []}', kind=FMT_BINARY),
        "shadow copy": frame(body(X[:1]), kind=FMT_MSGPACK | SHADOW),
        "warm-up": frame(b"", kind=KIND_WARMUP),
        "garbage msgpack": frame(b"\xc1"),
        "not a map": frame(msgpack.packb([1, 2])),
        "named outputs": frame(body(X[:1], outputs=["y"])),
        "wrong width": frame(body(np.ones((1, 3), np.float32))),
        "short data": frame(msgpack.packb({"inputs": {"x": {"datatype": "FP32", "shape": [1, 4], "data": b"1234"}}})),
        "wrong datatype": frame(msgpack.packb({"inputs": {"x": {"datatype": "FP64", "shape": [1, 4],
                                                                "data": bytes(32)}}})),
        "float dims": frame(msgpack.packb({"inputs": {"x": {"datatype": "FP32", "shape": [1.0, 4],
                                                            "data": bytes(16)}}})),
        "bool dims": frame(msgpack.packb({"inputs": {"x": {"datatype": "FP32", "shape": [True, 4],
                                                           "data": bytes(16)}}})),
        "integer id": frame(body(X[:1], id=5)),
        "bad head": b"\x00\x00\x00\x02\x94\x00",
        "empty": b"",
    }
    for what, data in cases.items():
        assert express.answer(data) is None, what
    assert express.answered == 1


def test_only_models_with_one_input_and_one_output_get_one(tmp_path):
    assert Express.of(load(tmp_path, Affine())) is not None
    assert Express.of(load(tmp_path, TwoOut(), outputs=2)) is None


rows_st = st.integers(0, 3)


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """Bodies at most a step or two from a valid request: most are answered, the rest must be left alone."""
    rows = draw(rows_st)
    width = draw(st.sampled_from([4, 4, 4, 3, -1]))
    shape: list = [rows, width]
    if draw(st.integers(0, 5)) == 0:
        shape = draw(st.lists(st.integers(-1, 5) | st.booleans() | st.floats(0, 4), max_size=3))
    size = max(rows, 0) * 4 * 4 + draw(st.sampled_from([0, 0, 0, 4, -4]))
    tensor: dict = {"datatype": draw(st.sampled_from(["FP32", "FP32", "FP32", "FP16", 3])), "shape": shape,
                    "data": np.random.default_rng(rows).standard_normal(max(size, 0) // 4).astype("<f4").tobytes()}
    if draw(st.integers(0, 3)) == 0:
        tensor["extra"] = 1
    doc: dict = {"inputs": {draw(st.sampled_from(["x", "x", "x", "x", "z"])): tensor}}
    for key, choices in (("id", ["a", "", 9, None]), ("outputs", [[], ["y"], None, "y"]),
                         ("parameters", [{}, {"k": 1}])):
        if draw(st.booleans()):
            doc[key] = draw(st.sampled_from(choices))
    return msgpack.packb(doc)


@pytest.fixture(scope="module")
def affine(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return load(tmp_path_factory.mktemp("affine"), Affine())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=near_valid())
def test_fuzz_an_answer_is_always_the_general_paths(affine, payload):
    data = frame(payload)
    got = Express(affine).answer(data)
    if got is not None:
        assert got == general(affine, data)


def test_the_worker_answers_lone_requests_express_and_the_rest_as_before(tmp_path):
    model = load(tmp_path, Affine())
    ours, theirs = socket.socketpair()
    spec = WorkerSpec(fd=theirs.fileno(), parent_pid=os.getpid(), model_dir=str(tmp_path), name="m", version="3",
                      device="cpu", cpus=(), threads=1, max_batch_size=32, max_batch_delay_us=0,
                      max_frame=1 << 20)
    worker = Worker(spec, theirs, model, model.meta)
    assert worker.express is not None

    def serve() -> None:
        # As runtime.worker.run: the router closing its end while the worker writes ends the worker.
        with torch.inference_mode(), contextlib.suppress(BrokenPipeError, ConnectionResetError):
            worker.serve()

    thread = threading.Thread(target=serve)
    thread.start()
    scanner = FrameScanner(1 << 20)

    def replies(n: int) -> list[bytes]:
        """The next ``n`` reply frames, whole; the worker's statistics frames (rid 0) between them skipped."""
        got: list[bytes] = []
        while len(got) < n:
            got += [link.pack(*link.unpack(f)) for f in scanner.feed(ours.recv(1 << 16))
                    if link.unpack(f)[:2] != (0, STATUS_STATS)]
        return got

    try:
        ours.settimeout(10)
        lone = frame(body(X[:2]), rid=11)
        ours.sendall(lone)
        assert replies(1) == [general(model, lone)]
        assert worker.express.answered == 1
        # Two frames in one write: read together, they go the general way (and may batch).
        a, b = frame(body(X[:1]), rid=12), frame(body(X[1:3]), rid=13)
        ours.sendall(a + b)
        assert replies(2) == [general(model, a), general(model, b)]
        assert worker.express.answered == 1
        assert worker.stats.batch[-1] == 5  # rows: 2 express, then 1 and 2 (or 3 batched)
    finally:
        ours.close()
        thread.join(10)
    assert not thread.is_alive()


def test_a_worker_with_a_batching_window_has_no_express_path(tmp_path):
    model = load(tmp_path, Affine())
    ours, theirs = socket.socketpair()
    with ours, theirs:
        spec = WorkerSpec(fd=theirs.fileno(), parent_pid=os.getpid(), model_dir=str(tmp_path), name="m",
                          version="3", device="cpu", cpus=(), threads=1, max_batch_size=32,
                          max_batch_delay_us=500, max_frame=1 << 20)
        assert Worker(spec, theirs, model, model.meta).express is None
