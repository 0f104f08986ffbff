"""Numbers that are not numbers: NaN and the infinities in inputs (a model's ``nonfinite`` policy) and
outputs (always sent; strict JSON, with the proto3 strings "NaN", "Infinity", "-Infinity").

In process: the codecs in every body format and both policies, the express path, a worker over a
socket pair (its shadow comparison too), the client's codecs, the config key and the reload plan,
and the control plane over fake workers. One daemon test checks it over HTTP and msgpack TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from fakes import Replicas, fake_store
from test_codecs import META, ONE_META, dumps, features, ids
from test_express import Affine, body, frame, load

from router.client import HttpClient, WireClient
from router.client._oip import decode_infer, encode_infer
from router.client._tensors import from_json
from router.config import ModelConfig, load_config, parse_config
from router.proto import link
from router.proto.errors import BadRequest, ConfigError
from router.proto.framing import FrameScanner
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import parse_meta
from router.reload import plan
from router.server import Server
from runtime.__main__ import parse_args
from runtime.batcher import Batcher
from runtime.codecs import Request, decode_reply, decode_request, encode_response
from runtime.codecs.tensors import json_dumps
from runtime.compare import compare
from runtime.express import Express, SimpleMsgpack
from runtime.worker import Worker, WorkerSpec

REJECTED = ("input 'features' contains NaN or Infinity (model 'fraud' rejects non-finite numbers: "
            'nonfinite = "reject")')
#: One row of features with each kind of number that is not one.
ODD = np.array([[0.5, math.nan, math.inf, -math.inf, 1.0, 2.0, 3.0, 4.0]], np.float32)


def strict_loads(raw: bytes) -> Any:
    """``json.loads`` as a strict parser reads: the bare tokens NaN, Infinity, -Infinity are errors."""
    def refuse(token: str) -> Any:
        raise ValueError(f"bare {token} is not JSON")
    return json.loads(raw, parse_constant=refuse)


def same_floats(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values, NaN where NaN (and the same dtype)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN == NaN for assert_array_equal


def oip(features_data: Any, n: int = 1) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "shape": [n, 8], "datatype": "FP32", "data": features_data},
                       {"name": "ids", "shape": [n, 3], "datatype": "INT64", "data": ids(n).reshape(-1).tolist()}]}


def bodies(x: np.ndarray) -> dict[str, tuple[int, bytes, int]]:
    """``(fmt, payload, header_len)`` of a request of META carrying ``x`` as features, in each body format."""
    flat = x.reshape(-1).tolist()
    strings = ["NaN" if v != v else "Infinity" if v == math.inf else "-Infinity" if v == -math.inf else v
               for v in flat]
    header = {"inputs": [
        {"name": "features", "shape": list(x.shape), "datatype": "FP32",
         "parameters": {"binary_data_size": x.nbytes}},
        {"name": "ids", "shape": [len(x), 3], "datatype": "INT64", "parameters": {"binary_data_size": len(x) * 24}},
    ]}
    head = dumps(header)
    mp = {"inputs": {"features": {"datatype": "FP32", "shape": list(x.shape), "data": x.tobytes()},
                     "ids": {"datatype": "INT64", "shape": [len(x), 3], "data": ids(len(x)).tobytes()}}}
    return {
        "json bare tokens": (FMT_JSON, json.dumps(oip(flat, len(x))).encode(), 0),  # json writes NaN, Infinity
        "json strings": (FMT_JSON, json_dumps(oip(strings, len(x))), 0),
        "json nested strings": (FMT_JSON, json_dumps(oip([strings[i:i + 8] for i in range(0, len(strings), 8)],
                                                         len(x))), 0),
        "binary": (FMT_BINARY, head + x.tobytes() + ids(len(x)).tobytes(), len(head)),
        "msgpack": (FMT_MSGPACK, msgpack.packb(mp), 0),
    }


FORMATS = list(bodies(ODD))


# -- requests: the codecs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_reject_answers_400_naming_the_input_in_every_format(fmt: str, value: float) -> None:
    x = features(2)
    x[1, 5] = value
    f, payload, hlen = bodies(x)[fmt]
    with pytest.raises(BadRequest) as e:
        decode_request(f, payload, hlen, META, "reject")
    assert str(e.value) == REJECTED and e.value.status == 400
    with pytest.raises(BadRequest, match="contains NaN or Infinity"):
        decode_request(f, payload, hlen, META)  # the default is the config's default


@pytest.mark.parametrize("fmt", FORMATS)
def test_allow_passes_them_to_the_model_in_every_format(fmt: str) -> None:
    req = decode_request(*bodies(ODD)[fmt], META, "allow")
    same_floats(req.arrays[0], ODD)
    np.testing.assert_array_equal(req.arrays[1], ids(1))


def test_finite_inputs_decode_alike_under_both_policies() -> None:
    for f, payload, hlen in bodies(features(3)).values():
        a, b = decode_request(f, payload, hlen, META, "reject"), decode_request(f, payload, hlen, META, "allow")
        same_floats(a.arrays[0], b.arrays[0])
        same_floats(a.arrays[0], features(3))


def test_the_one_pass_msgpack_path_follows_the_policy_too() -> None:
    x = np.zeros((1, 8), np.float32)
    x[0, 0] = math.nan
    payload = msgpack.packb({"inputs": {"features": {"datatype": "FP32", "shape": [1, 8], "data": x.tobytes()}}})
    with pytest.raises(BadRequest) as e:
        decode_request(FMT_MSGPACK, payload, 0, ONE_META)
    assert str(e.value) == REJECTED.replace("'fraud'", "'one'")
    same_floats(decode_request(FMT_MSGPACK, payload, 0, ONE_META, "allow").arrays[0], x)


def test_integer_inputs_are_not_checked_and_an_fp32_overflow_is_an_infinity() -> None:
    big = oip([1, 2, 3, 4, 5, 6, 7, 1e300])  # inf as FP32: the model would see Infinity
    with pytest.raises(BadRequest, match="'features' contains NaN or Infinity"):
        decode_request(FMT_JSON, dumps(big), 0, META)
    assert decode_request(FMT_JSON, dumps(big), 0, META, "allow").arrays[0][0, 7] == math.inf
    ints = oip(features(1).reshape(-1).tolist())
    ints["inputs"][1]["data"] = [2**62, -(2**62), 0]
    assert decode_request(FMT_JSON, dumps(ints), 0, META).arrays[1].tolist() == [[2**62, -(2**62), 0]]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "Nan", "INFINITY", "+Infinity", "1.5", ""])
def test_only_the_three_proto3_strings_are_numbers(bad: str) -> None:
    doc = oip([0.5, bad, 0, 0, 0, 0, 0, 0])
    for policy in ("reject", "allow"):
        with pytest.raises(BadRequest, match=r"^input 'features': data must hold numbers$"):
            decode_request(FMT_JSON, dumps(doc), 0, META, policy)


def test_proto3_strings_are_floats_only_for_fp_tensors() -> None:
    doc = oip(features(1).reshape(-1).tolist())
    doc["inputs"][1]["data"] = [1, "NaN", 3]
    with pytest.raises(BadRequest, match="'ids': data must hold integers in the range of int64"):
        decode_request(FMT_JSON, dumps(doc), 0, META, "allow")


# -- replies -------------------------------------------------------------------------------------------------


ODD_OUTPUTS = [np.array([[0.25, math.nan], [math.inf, -math.inf]], np.float32), np.array([1, 2], np.int64)]


def request(fmt: int, binary: bool = False) -> Request:
    return Request("r", [features(2), ids(2)], [0, 1], [binary, binary], fmt, 2)


def test_json_replies_write_nonfinite_outputs_as_proto3_strings_and_stay_strict_json() -> None:
    hlen, raw = encode_response(request(FMT_JSON), ODD_OUTPUTS, META)
    assert hlen == 0
    reply = strict_loads(raw)  # no bare NaN or Infinity anywhere
    assert reply["outputs"][0]["data"] == [0.25, "NaN", "Infinity", "-Infinity"]
    assert reply["outputs"][1]["data"] == [1, 2]
    # FP16 and FP64 outputs too.
    odd = parse_meta({"name": "odd", "version": "1", "inputs": [{"name": "x", "datatype": "FP16", "shape": [2]}],
                      "outputs": [{"name": "h", "datatype": "FP16", "shape": [2]},
                                  {"name": "d", "datatype": "FP64", "shape": [2]}],
                      "example": {"x": [0, 0]}})
    _, raw = encode_response(Request(None, [np.zeros(2, np.float16)], [0, 1], [False, False], FMT_JSON, 1),
                             [np.array([math.nan, 1], np.float16), np.array([-math.inf, 2])], odd)
    assert [o["data"] for o in strict_loads(raw)["outputs"]] == [["NaN", 1.0], ["-Infinity", 2.0]]


def test_the_json_encoder_never_writes_a_bare_nan() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        json_dumps({"data": [math.nan]})
    with pytest.raises(ValueError):
        json_dumps([math.inf])


@pytest.mark.parametrize("fmt,binary", [(FMT_JSON, False), (FMT_JSON, True), (FMT_BINARY, True), (FMT_MSGPACK, False)])
def test_every_reply_format_decodes_back_to_the_same_floats(fmt: int, binary: bool) -> None:
    hlen, raw = encode_response(request(fmt, binary), ODD_OUTPUTS, META)
    if fmt != FMT_MSGPACK:
        strict_loads(raw[:hlen or len(raw)])
    if binary:  # IEEE floats as they are, after the JSON header
        assert raw[hlen:hlen + 16] == ODD_OUTPUTS[0].tobytes()
    if fmt == FMT_MSGPACK:
        assert msgpack.unpackb(raw)["outputs"]["probabilities"]["data"] == ODD_OUTPUTS[0].tobytes()
    got = decode_reply(fmt, raw, hlen)
    same_floats(got["probabilities"], ODD_OUTPUTS[0])
    same_floats(got["label"], ODD_OUTPUTS[1])


def test_a_live_reply_with_bare_tokens_still_decodes() -> None:
    raw = json.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [3],
                                   "data": [math.nan, math.inf, "-Infinity"]}]}).encode()
    same_floats(decode_reply(FMT_JSON, raw, 0)["y"], np.array([math.nan, math.inf, -math.inf], np.float32))
    with pytest.raises(BadRequest, match="live reply: output 'y': data must hold numbers"):
        decode_reply(FMT_JSON, raw.replace(b'"-Infinity"', b'"-inf"'), 0)


def test_shadow_comparison_of_a_nan_output_read_from_a_json_reply() -> None:
    _, raw = encode_response(request(FMT_JSON), ODD_OUTPUTS, META)
    live = decode_reply(FMT_JSON, raw, 0)
    same = compare(live, {"probabilities": ODD_OUTPUTS[0].copy(), "label": ODD_OUTPUTS[1]})
    assert [d[:3] for d in same] == [("probabilities", 0.0, 0.0), ("label", 0.0, 0.0)]
    finite = compare(live, {"probabilities": np.array([[0.25, 1.0], [math.inf, -math.inf]], np.float32)})
    assert finite[0][:3] == ("probabilities", math.inf, math.inf)  # a NaN on one side only


# -- the express path and the worker ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def inference() -> Iterator[None]:
    with torch.inference_mode():  # as the worker runs
        yield


def general(model: Any, data: bytes, nonfinite: str) -> bytes:
    """The general path's reply frame to one whole frame under ``nonfinite`` (what Worker._handle answers)."""
    rid, kind, hlen, payload = link.unpack(data[4:])
    b = Batcher(model.forward, model.meta, 32)
    try:
        b.add(rid, decode_request(kind, payload, hlen, model.meta, nonfinite))
    except BadRequest as exc:
        return link.pack(rid, exc.status, 0, str(exc).encode())
    (reply,) = b.run()
    return link.pack(*reply)


X_NAN = np.array([[1.0, math.nan, math.inf, -2.0]], np.float32)


def test_the_express_path_leaves_a_rejected_input_to_the_general_path(tmp_path: Path) -> None:
    model = load(tmp_path, Affine())
    data = frame(body(X_NAN))
    strict = Express(model)
    assert strict.answer(data) is None and strict.answered == 0
    _, status, _, message = link.unpack(general(model, data, "reject")[4:])
    assert status == 400 and message.decode() == (
        "input 'x' contains NaN or Infinity (model 'm' rejects non-finite numbers: nonfinite = \"reject\")")
    # A remembered layout (the same body length and head) is checked too.
    assert strict.answer(frame(body(np.ones_like(X_NAN)))) is not None
    assert strict.answer(data) is None
    lenient = Express(model, "allow")
    got = lenient.answer(data)
    assert got is not None and got == general(model, data, "allow")
    out = msgpack.unpackb(link.unpack(got[4:])[3])["outputs"]["y"]
    same_floats(np.frombuffer(out["data"], "<f4").reshape(1, 4), X_NAN * 2 + 1)


def test_simple_msgpack_decodes_what_the_general_path_decodes_under_each_policy() -> None:
    payload = msgpack.packb({"inputs": {"features": {"datatype": "FP32", "shape": [1, 8], "data": ODD.tobytes()}}})
    assert SimpleMsgpack(ONE_META).decode(payload) is None
    one = SimpleMsgpack(ONE_META, "allow").decode(payload)
    assert one is not None
    same_floats(one[1], ODD)
    uint8 = parse_meta({"name": "u", "version": "1", "inputs": [{"name": "p", "datatype": "UINT8", "shape": [-1]}],
                        "outputs": [{"name": "q", "datatype": "FP32", "shape": [-1]}], "example": {"p": [1]}})
    assert SimpleMsgpack(uint8).decode(msgpack.packb({"inputs": {"p": {"datatype": "UINT8", "shape": [2],
                                                                        "data": b"\xff\x00"}}})) is not None


def test_the_worker_command_line_carries_the_policy() -> None:
    base = ["--fd", "3", "--parent-pid", "1", "--model-dir", "d", "--name", "m", "--version", "1"]
    assert parse_args(base).nonfinite == "reject"
    assert parse_args([*base, "--nonfinite", "allow"]).nonfinite == "allow"
    with pytest.raises(SystemExit):
        parse_args([*base, "--nonfinite", "ignore"])


def serve(tmp_path: Path, nonfinite: str, frames: list[bytes]) -> list[tuple[int, int, bytes]]:
    """Send each frame in its own write to a worker serving Affine under ``nonfinite``; ``(rid, status, payload)``
    of each reply, in order."""
    model = load(tmp_path, Affine())
    ours, theirs = socket.socketpair()
    spec = WorkerSpec(fd=theirs.fileno(), parent_pid=os.getpid(), model_dir=str(tmp_path), name="m", version="3",
                      device="cpu", cpus=(), threads=1, max_batch_size=32, max_batch_delay_us=0,
                      max_frame=1 << 20, nonfinite=nonfinite)
    worker = Worker(spec, theirs, model, model.meta)
    assert worker.express is not None

    def run() -> None:
        # As runtime.worker.run: the router closing its end while the worker writes ends the worker.
        with torch.inference_mode(), contextlib.suppress(BrokenPipeError, ConnectionResetError):
            worker.serve()

    thread = threading.Thread(target=run)
    thread.start()
    replies = []
    scanner = FrameScanner(1 << 20)
    try:
        ours.settimeout(10)
        for f in frames:
            ours.sendall(f)
            got: list[bytes] = []
            while not got:  # the worker's statistics frames (rid 0) are not replies
                got = [g for g in scanner.feed(ours.recv(1 << 16)) if link.unpack(g)[0] != 0]
            replies += [link.unpack(g)[:2] + (link.unpack(g)[3],) for g in got]
    finally:
        ours.close()
        thread.join(10)
    assert not thread.is_alive()
    return replies


def json_frame(x: np.ndarray, rid: int) -> bytes:
    doc = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    return link.pack(rid, FMT_JSON, 0, json.dumps(doc).encode())


def test_a_worker_applies_the_policy_it_was_started_with(tmp_path: Path) -> None:
    frames = [frame(body(X_NAN), rid=1), json_frame(X_NAN, 2), frame(body(X_NAN[:, ::-1].copy()), rid=3)]
    strict = serve(tmp_path, "reject", frames)
    assert [(rid, status) for rid, status, _ in strict] == [(1, 400), (2, 400), (3, 400)]
    assert all(b"contains NaN or Infinity (model 'm' rejects" in p for _, _, p in strict)
    lenient = serve(tmp_path, "allow", frames)
    assert [(rid, status) for rid, status, _ in lenient] == [(1, 200), (2, 200), (3, 200)]
    same_floats(np.frombuffer(msgpack.unpackb(lenient[0][2])["outputs"]["y"]["data"], "<f4"),
                (X_NAN * 2 + 1).reshape(-1))
    assert strict_loads(lenient[1][2])["outputs"][0]["data"] == [3.0, "NaN", "Infinity", -3.0]


def test_a_shadow_worker_compares_a_nan_output_it_read_from_a_json_reply(tmp_path: Path) -> None:
    req = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                  "data": [1.0, "NaN", "Infinity", -2.0]}]}).encode()
    reply = json_dumps({"model_name": "m", "model_version": "1", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [3.0, "NaN", "Infinity", -3.0]}]})
    shadow = link.pack_shadow_head(5, FMT_JSON, 0, len(req), 0, len(reply)) + req + reply
    ((rid, status, stats),) = serve(tmp_path, "allow", [shadow])
    assert (rid, status) == (5, 200)
    # NaN against NaN, infinity against infinity: no difference; the arg-max (the first NaN) agrees.
    assert msgpack.unpackb(stats) == [1, [["y", 0.0, 0.0, 1, 1]]]


# -- the client ----------------------------------------------------------------------------------------------


def test_the_client_reads_proto3_strings_and_writes_strict_json() -> None:
    same_floats(from_json([1, "NaN", "Infinity", "-Infinity"], "FP32", [2, 2], "y"),
                np.array([[1, math.nan], [math.inf, -math.inf]], np.float32))
    with pytest.raises(ValueError, match="'nan' is not a number"):
        from_json([1, "nan"], "FP64", [2], "y")
    # Its request is strict JSON that a worker decodes to the same floats (the model allowing them).
    raw, headers = encode_infer({"features": ODD, "ids": ids(1)}, None, None, "json")
    assert strict_loads(raw)["inputs"][0]["data"][1:4] == ["NaN", "Infinity", "-Infinity"]
    same_floats(decode_request(FMT_JSON, raw, 0, META, "allow").arrays[0], ODD)
    # And it reads the worker's replies in every format.
    for fmt, binary in ((FMT_JSON, False), (FMT_BINARY, True)):
        hlen, body_ = encode_response(request(fmt, binary), ODD_OUTPUTS, META)
        hdrs = {"inference-header-content-length": str(hlen)} if hlen else {}
        result = decode_infer(200, lambda name, h=hdrs: h.get(name.lower()), body_)
        same_floats(result.outputs["probabilities"], ODD_OUTPUTS[0])


# -- config, reload and the control plane ------------------------------------------------------------------


def doc(**model: Any) -> dict[str, Any]:
    return {"models": [{"name": "fraud", "versions": [{"version": "1"}], **model}]}


def test_the_config_key_takes_reject_or_allow_and_defaults_to_reject() -> None:
    assert parse_config(doc()).models[0].nonfinite == "reject"
    assert ModelConfig("m", None, ()).nonfinite == "reject"
    assert parse_config(doc(nonfinite="allow")).models[0].nonfinite == "allow"
    for bad in ("ignore", "Allow", True, 1, ["allow"]):
        with pytest.raises(ConfigError) as e:
            parse_config(doc(nonfinite=bad))
        assert str(e.value) == f"models[0].nonfinite: must be one of 'reject', 'allow', got {bad!r}"


def test_a_reload_that_changes_the_policy_deploys_the_model() -> None:
    running = parse_config(doc(routing_key="x-user"))
    digests = {("fraud", "1"): "d"}
    p = plan(running, parse_config(doc(routing_key="x-user", nonfinite="allow")), digests, digests)
    assert p.deploy == {"fraud": ("fraud: nonfinite 'reject' -> 'allow'",)} and p.live == () and p.refused == ()
    # The other model-level keys are planned as before: live, no deploy.
    p = plan(running, parse_config(doc(routing_key="x-other", keep_previous_s=60)), digests, digests)
    assert p.live == ("fraud: routing_key 'x-user' -> 'x-other'", "fraud: keep_previous_s 300 -> 60")
    assert p.deploy == {}


CONFIG = """\
[server]
http = ""
msgpack = ""

[store]
path = "store"

[[models]]
name = "fraud"
nonfinite = "{policy}"

  [[models.versions]]
  version = "1"
  weight = 90

  [[models.versions]]
  version = "2"
  weight = 10
"""


def test_the_policy_reaches_every_worker_through_traffic_changes_deploys_and_reloads(tmp_path: Path) -> None:
    async def main() -> None:
        fake_store(tmp_path / "store", {"fraud": ["1", "2", "3"]})
        path = tmp_path / "config.toml"
        path.write_text(CONFIG.format(policy="allow"))
        reps = Replicas()
        s = Server(load_config(path), replica_factory=reps)
        await s.deployments.start()
        s.state.started = True
        try:
            assert [r.nonfinite for r in reps.made] == ["allow", "allow"]
            await s.control.set_traffic("fraud", {"1": 50})  # a traffic change keeps the policy
            assert s.routing.active["fraud"].config.nonfinite == "allow"
            await s.control.deploy("fraud", [{"version": "3", "weight": 1}])  # so does a deploy
            assert [r.nonfinite for r in reps.of("3")] == ["allow"]
            assert s.routing.active["fraud"].config.nonfinite == "allow"
            # The file written back still says "allow", and a reload of it changes nothing.
            assert load_config(path).models[0].nonfinite == "allow"
            assert (await s.control.reload()).deployed == {}
            path.write_text(path.read_text().replace('nonfinite = "allow"', 'nonfinite = "reject"'))
            result = await s.control.reload()
            assert result.deployed == {"fraud": ["fraud: nonfinite 'allow' -> 'reject'"]}
            assert [r.nonfinite for r in reps.of("3")] == ["allow", "reject"]
            assert s.routing.active["fraud"].config.nonfinite == "reject"
        finally:
            await s.deployments.stop()

    asyncio.run(main())


# -- a real daemon --------------------------------------------------------------------------------------------


def test_a_daemon_rejects_or_allows_nan_per_model_over_http_and_msgpack(start_daemon) -> None:
    d = start_daemon(models=[{"name": "fraud", "versions": [{"version": "1"}]},
                             {"name": "mlp-small", "nonfinite": "allow", "versions": [{"version": "1"}]}])
    fraud = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                    "data": [0.5, "NaN", 0, 0, 0, 0, 0, 0]}]}).encode()
    status, _, raw = d.post("/v2/models/fraud/infer", fraud, {"Content-Type": "application/json"})
    assert status == 400
    assert strict_loads(raw) == {"error": "input 'features' contains NaN or Infinity (model 'fraud' rejects "
                                          'non-finite numbers: nonfinite = "reject")'}
    for data in (b"[0.5, NaN, Infinity, -1]", b'[0.5, "NaN", "Infinity", -1]'):
        mlp = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": %s}]}' % data
        status, _, raw = d.post("/v2/models/mlp-small/infer", mlp, {"Content-Type": "application/json"})
        assert status == 200, raw
        out = strict_loads(raw)["outputs"][0]
        assert out["shape"] == [1, 3] and all(v in ("NaN", "Infinity", "-Infinity") for v in out["data"]), out
    x = np.array([[0.5, math.nan, 1.0, -1.0]], np.float32)
    with HttpClient(d.url) as http:
        for fmt in ("json", "binary", "msgpack"):
            assert np.isnan(http.infer("mlp-small", {"x": x}, format=fmt).outputs["y"]).all(), fmt
            with pytest.raises(BadRequest, match="'features' contains NaN or Infinity"):
                http.infer("fraud", {"features": np.full((1, 8), math.inf, np.float32)}, format=fmt)
    with WireClient("127.0.0.1", d.wire_port) as wire:
        assert np.isnan(wire.infer("mlp-small", {"x": x}).outputs["y"]).all()
        with pytest.raises(BadRequest) as e:
            wire.infer("fraud", {"features": np.full((1, 8), math.nan, np.float32)})
        assert str(e.value) == REJECTED
    # The raw msgpack TCP reply frame: status 400 and the message.
    frame_body = msgpack.packb([9, "fraud", None, None, {"inputs": {"features": {
        "datatype": "FP32", "shape": [1, 8], "data": np.full((1, 8), math.nan, np.float32).tobytes()}}}])
    with socket.create_connection(("127.0.0.1", d.wire_port), timeout=10) as sock:
        sock.sendall(len(frame_body).to_bytes(4, "big") + frame_body)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            buf += sock.recv(65536)
    rid, status, _, message, _ = msgpack.unpackb(buf[4:])
    assert (rid, status, message) == (9, 400, REJECTED)
