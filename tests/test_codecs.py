"""Tests for runtime.codecs: the worker's request decoding and reply encoding (and the express path's codec)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.proto.errors import BadRequest, ConfigError, InternalError
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import DATATYPES, ModelMeta, parse_meta
from runtime.codecs import Request, decode_request, encode_response, example_request
from runtime.codecs.plan import Plan, plan_of
from runtime.codecs.requests import _decode_msgpack
from runtime.express import SimpleMsgpack

RAW_META: dict[str, Any] = {
    "name": "fraud",
    "version": "3",
    "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [-1, 8]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, 3]},
    ],
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ],
    "example": {"features": [[0.5] * 8], "ids": [[1, 2, 3]]},
}
META = parse_meta(RAW_META)

# Not batchable (fixed first dims), with the less common datatypes.
ODD_META = parse_meta(
    {
        "name": "odd",
        "version": "1",
        "inputs": [
            {"name": "mask", "datatype": "BOOL", "shape": [2, 2]},
            {"name": "half", "datatype": "FP16", "shape": [3]},
            {"name": "pix", "datatype": "UINT8", "shape": [2, -1]},
        ],
        "outputs": [{"name": "out", "datatype": "FP64", "shape": [2]}],
        "example": {"mask": [[True, False], [False, True]], "half": [1, 2, 3], "pix": [[1], [2]]},
    }
)


def features(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def ids(n: int = 2) -> np.ndarray:
    return np.arange(n * 3, dtype=np.int64).reshape(n, 3) - 3


def model_outputs(n: int = 2) -> list[np.ndarray]:
    """Fake outputs for a batch of ``n``: values that float32 can only just represent."""
    probs = (np.arange(n * 2, dtype=np.float32).reshape(n, 2) + np.float32(0.1)) / np.float32(3)
    return [probs, np.arange(n, dtype=np.int64) * 10**12]


def oip_tensor(name: str, arr: np.ndarray, datatype: str, nested: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(arr.shape),
        "datatype": datatype,
        "data": arr.tolist() if nested else arr.reshape(-1).tolist(),
    }


def json_body(n: int = 2, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [oip_tensor("features", features(n), "FP32"), oip_tensor("ids", ids(n), "INT64")]
    }
    body.update(extra)
    return body


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def mp_tensor(arr: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"datatype": datatype, "shape": list(arr.shape), "data": arr.tobytes()}


def mp_body(n: int = 2, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": {"features": mp_tensor(features(n), "FP32"), "ids": mp_tensor(ids(n), "INT64")}
    }
    body.update(extra)
    return body


def binary_body(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, int]:
    head = dumps(header)
    return head + b"".join(blobs), len(head)


def check_arrays(req: Request, n: int = 2) -> None:
    assert req.batch == n
    assert [a.dtype for a in req.arrays] == [np.float32, np.int64]
    assert all(a.flags.c_contiguous for a in req.arrays)
    np.testing.assert_array_equal(req.arrays[0], features(n))
    np.testing.assert_array_equal(req.arrays[1], ids(n))


# -- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload_type", [bytes, memoryview])
def test_msgpack_round_trip(payload_type: type) -> None:
    payload = payload_type(msgpack.packb(mp_body(3, id="req-1", outputs=["label", "probabilities"])))
    req = decode_request(FMT_MSGPACK, payload, 0, META)
    check_arrays(req, 3)
    assert req.id == "req-1"
    assert req.outputs == [1, 0]
    assert req.binary == [False, False]
    assert req.fmt == FMT_MSGPACK

    hlen, body = encode_response(req, model_outputs(3), META)
    assert hlen == 0
    reply = msgpack.unpackb(body)
    assert list(reply) == ["model_name", "model_version", "id", "outputs"]
    assert (reply["model_name"], reply["model_version"], reply["id"]) == ("fraud", "3", "req-1")
    assert list(reply["outputs"]) == ["label", "probabilities"]  # the requested order
    label = reply["outputs"]["label"]
    assert (label["datatype"], label["shape"]) == ("INT64", [3])
    np.testing.assert_array_equal(np.frombuffer(label["data"], "<i8"), model_outputs(3)[1])
    probs = reply["outputs"]["probabilities"]
    assert (probs["datatype"], probs["shape"]) == ("FP32", [3, 2])
    np.testing.assert_array_equal(np.frombuffer(probs["data"], "<f4").reshape(3, 2), model_outputs(3)[0])


def test_msgpack_defaults_to_all_outputs_without_id() -> None:
    req = decode_request(FMT_MSGPACK, msgpack.packb(mp_body(1)), 0, META)
    assert req.id is None
    assert req.outputs == [0, 1]
    reply = msgpack.unpackb(encode_response(req, model_outputs(1), META)[1])
    assert "id" not in reply
    assert list(reply["outputs"]) == ["probabilities", "label"]


@pytest.mark.parametrize("nested", [False, True])
def test_json_round_trip(nested: bool) -> None:
    body = {
        "id": "abc",
        "inputs": [
            oip_tensor("features", features(2), "FP32", nested),
            oip_tensor("ids", ids(2), "INT64", nested),
        ],
    }
    req = decode_request(FMT_JSON, dumps(body), 0, META)
    check_arrays(req, 2)
    assert req.id == "abc"
    assert req.outputs == [0, 1]
    assert req.binary == [False, False]

    hlen, out = encode_response(req, model_outputs(2), META)
    assert hlen == 0
    reply = json.loads(out)
    assert reply["model_name"] == "fraud"
    assert reply["model_version"] == "3"
    assert reply["id"] == "abc"
    probs, label = reply["outputs"]
    assert probs == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": probs["data"],
    }
    # Flat data, and every float32 survives the trip through JSON text exactly.
    assert len(probs["data"]) == 4
    np.testing.assert_array_equal(
        np.asarray(probs["data"], dtype=np.float32).reshape(2, 2), model_outputs(2)[0]
    )
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 10**12]}


def test_json_nested_data_in_any_grouping_is_reshaped_row_major() -> None:
    body = json_body(2)
    body["inputs"][1]["data"] = [[-3, -2], [-1, 0], [1, 2]]  # 3x2 grouping of a [2, 3] tensor
    req = decode_request(FMT_JSON, dumps(body), 0, META)
    np.testing.assert_array_equal(req.arrays[1], ids(2))


def test_json_selected_outputs_and_binary_flags() -> None:
    body = json_body(
        2,
        parameters={"binary_data_output": True},
        outputs=[{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}],
    )
    req = decode_request(FMT_JSON, dumps(body), 0, META)
    assert req.outputs == [1, 0]
    assert req.binary == [False, True]  # per-output false beats request-level true

    hlen, out = encode_response(req, model_outputs(2), META)
    head = json.loads(out[:hlen])
    label, probs = head["outputs"]
    assert "id" not in head
    assert label["data"] == [0, 10**12] and "parameters" not in label
    assert probs["parameters"] == {"binary_data_size": 16} and "data" not in probs
    assert out[hlen:] == model_outputs(2)[0].tobytes()


def test_json_request_may_ask_for_binary_outputs_without_binary_inputs() -> None:
    req = decode_request(FMT_JSON, dumps(json_body(2, parameters={"binary_data_output": True})), 0, META)
    assert req.binary == [True, True]
    hlen, out = encode_response(req, model_outputs(2), META)
    assert hlen > 0
    result = httpclient.InferResult.from_response_body(out, header_length=hlen)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), model_outputs(2)[0])
    np.testing.assert_array_equal(result.as_numpy("label"), model_outputs(2)[1])


def test_binary_round_trip_with_mixed_inputs() -> None:
    f, i = features(4), ids(4)
    header = {
        "id": "mixed",
        "inputs": [
            oip_tensor("ids", i, "INT64"),
            {
                "name": "features",
                "shape": [4, 8],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 128},
            },
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    payload, hlen = binary_body(header, f.tobytes())
    req = decode_request(FMT_BINARY, payload, hlen, META)
    check_arrays(req, 4)
    assert (req.id, req.outputs, req.binary, req.fmt) == ("mixed", [0], [True], FMT_BINARY)

    out_hlen, out = encode_response(req, model_outputs(4), META)
    result = httpclient.InferResult.from_response_body(out, header_length=out_hlen)
    assert result.get_response()["id"] == "mixed"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
    np.testing.assert_array_equal(result.as_numpy("probabilities"), model_outputs(4)[0])


def test_binary_inputs_are_views_and_misaligned_data_is_copied() -> None:
    f, i = features(1), ids(1)
    header = {
        "inputs": [
            {"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
            {"name": "ids", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}},
        ]
    }
    for pad in range(8):  # moves the binary section across every alignment
        header["pad"] = "x" * pad
        payload, hlen = binary_body(header, f.tobytes(), i.tobytes())
        req = decode_request(FMT_BINARY, payload, hlen, META)
        check_arrays(req, 1)
        assert all(a.flags.aligned for a in req.arrays)
        if (hlen % 8) == 0:
            assert np.shares_memory(req.arrays[0], np.frombuffer(payload, np.uint8))


def test_empty_batch_and_empty_binary_outputs() -> None:
    header = {
        "inputs": [
            {"name": "features", "shape": [0, 8], "datatype": "FP32", "parameters": {"binary_data_size": 0}},
            {"name": "ids", "shape": [0, 3], "datatype": "INT64", "data": []},
        ],
        "parameters": {"binary_data_output": True},
    }
    payload, hlen = binary_body(header)
    req = decode_request(FMT_BINARY, payload, hlen, META)
    assert req.batch == 0
    assert [a.shape for a in req.arrays] == [(0, 8), (0, 3)]
    out_hlen, out = encode_response(req, model_outputs(0), META)
    head = json.loads(out[:out_hlen])
    assert [o["parameters"] for o in head["outputs"]] == [{"binary_data_size": 0}] * 2
    assert len(out) == out_hlen
    result = httpclient.InferResult.from_response_body(out, header_length=out_hlen)
    assert result.as_numpy("probabilities").shape == (0, 2)


def test_id_is_echoed_exactly_and_header_length_counts_bytes() -> None:
    rid = 'ünï\u2603 "quoted" \\ \U0001f600'
    req = decode_request(
        FMT_JSON, dumps(json_body(1, id=rid, parameters={"binary_data_output": True})), 0, META
    )
    assert req.id == rid
    hlen, out = encode_response(req, model_outputs(1), META)
    assert json.loads(out[:hlen])["id"] == rid
    assert len(out) == hlen + 8 + 8
    assert httpclient.InferResult.from_response_body(out, header_length=hlen).get_response()["id"] == rid


def test_odd_datatypes_and_non_batchable_meta() -> None:
    mask = np.array([[True, False], [False, True]])
    half = np.array([0.1, 65504, -2.5], dtype=np.float16)
    pix = np.array([[0, 255, 7], [1, 2, 3]], dtype=np.uint8)
    header = {
        "inputs": [
            {"name": "half", "shape": [3], "datatype": "FP16", "parameters": {"binary_data_size": 6}},
            {"name": "mask", "shape": [2, 2], "datatype": "BOOL", "data": [[True, False], [False, True]]},
            {"name": "pix", "shape": [2, 3], "datatype": "UINT8", "data": [0, 255, 7, 1, 2, 3]},
        ]
    }
    payload, hlen = binary_body(header, half.tobytes())
    req = decode_request(FMT_BINARY, payload, hlen, ODD_META)
    assert req.batch == 1
    for got, want in zip(req.arrays, [mask, half, pix], strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)

    mp = {
        "inputs": {
            "mask": mp_tensor(mask, "BOOL"),
            "half": mp_tensor(half, "FP16"),
            "pix": mp_tensor(pix, "UINT8"),
        }
    }
    req = decode_request(FMT_MSGPACK, msgpack.packb(mp), 0, ODD_META)
    assert req.batch == 1
    np.testing.assert_array_equal(req.arrays[0], mask)

    # The reply uses the declared datatype even when the model returned another.
    hlen, out = encode_response(req, [np.array([1.5, 2.25], dtype=np.float32)], ODD_META)
    o = msgpack.unpackb(out)["outputs"]["out"]
    assert o["datatype"] == "FP64"
    np.testing.assert_array_equal(np.frombuffer(o["data"], "<f8"), [1.5, 2.25])


def test_encode_non_contiguous_and_bool_outputs() -> None:
    meta = parse_meta(
        {
            "name": "m",
            "version": "1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "flag", "datatype": "BOOL", "shape": [-1, 2]}],
            "example": {"x": [[0.0, 1.0]]},
        }
    )
    req = decode_request(FMT_JSON, dumps({"inputs": [oip_tensor("x", np.zeros((2, 2)), "FP32")]}), 0, meta)
    flags = np.array([[True, False, True], [False, False, True]])[:, ::2]  # strided view
    assert not flags.flags.c_contiguous
    out = json.loads(encode_response(req, [flags], meta)[1])["outputs"][0]
    assert out["data"] == [True, True, False, True]
    req.binary = [True]
    hlen, out = encode_response(req, [flags], meta)
    assert out[hlen:] == b"\x01\x01\x00\x01"
    result = httpclient.InferResult.from_response_body(out, header_length=hlen)
    np.testing.assert_array_equal(result.as_numpy("flag"), flags)


def test_encode_rejects_wrong_output_count() -> None:
    req = decode_request(FMT_MSGPACK, msgpack.packb(mp_body(1)), 0, META)
    with pytest.raises(InternalError, match="returned 1 outputs"):
        encode_response(req, model_outputs(1)[:1], META)


# -- tritonclient interoperability ------------------------------------------------------------------------


def triton_inputs(n: int, binary: tuple[bool, bool]) -> list[httpclient.InferInput]:
    fi = httpclient.InferInput("features", [n, 8], "FP32")
    fi.set_data_from_numpy(features(n), binary_data=binary[0])
    ii = httpclient.InferInput("ids", [n, 3], "INT64")
    ii.set_data_from_numpy(ids(n), binary_data=binary[1])
    return [fi, ii]


def decode_triton(body: bytes, json_size: int | None) -> Request:
    """Decode as the router would: the header length present means binary format."""
    if json_size is None:
        return decode_request(FMT_JSON, body, 0, META)
    return decode_request(FMT_BINARY, body, json_size, META)


@pytest.mark.parametrize("binary", [(True, True), (False, False), (True, False), (False, True)])
@pytest.mark.parametrize(
    "requested",
    [None, [("label", True)], [("probabilities", False), ("label", True)], [("label", False)]],
)
def test_tritonclient_request_and_reply(binary: tuple[bool, bool], requested: list | None) -> None:
    outputs = (
        None
        if requested is None
        else [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in requested]
    )
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        triton_inputs(3, binary), outputs=outputs, request_id="t-7"
    )
    assert (json_size is not None) == any(binary)
    req = decode_triton(body, json_size)
    check_arrays(req, 3)
    assert req.id == "t-7"
    if requested is None:
        assert (req.outputs, req.binary) == ([0, 1], [True, True])  # tritonclient asks for binary
    else:
        assert req.outputs == [{"probabilities": 0, "label": 1}[n] for n, _ in requested]
        assert req.binary == [b for _, b in requested]

    hlen, out = encode_response(req, model_outputs(3), META)
    assert (hlen > 0) == any(req.binary)
    result = httpclient.InferResult.from_response_body(out, header_length=hlen or None)
    assert result.get_response()["id"] == "t-7"
    assert result.get_response()["model_version"] == "3"
    expected = dict(zip(["probabilities", "label"], model_outputs(3), strict=True))
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == [META.outputs[i].name for i in req.outputs]
    for name in names:
        got = result.as_numpy(name)
        assert got.dtype == expected[name].dtype
        np.testing.assert_array_equal(got, expected[name])


def test_tritonclient_fp16_and_bool_binary_inputs() -> None:
    m = httpclient.InferInput("mask", [2, 2], "BOOL").set_data_from_numpy(np.eye(2, dtype=bool))
    h = httpclient.InferInput("half", [3], "FP16").set_data_from_numpy(np.array([1, 2, 3], np.float16))
    p = httpclient.InferInput("pix", [2, 1], "UINT8").set_data_from_numpy(np.array([[9], [8]], np.uint8))
    body, json_size = httpclient.InferenceServerClient.generate_request_body([m, h, p])
    req = decode_request(FMT_BINARY, body, json_size, ODD_META)
    assert req.id is None
    np.testing.assert_array_equal(req.arrays[0], np.eye(2, dtype=bool))
    np.testing.assert_array_equal(req.arrays[1], np.array([1, 2, 3], np.float16))
    np.testing.assert_array_equal(req.arrays[2], [[9], [8]])


# -- validation -------------------------------------------------------------------------------------------


def with_input(i: int, **changes: Any) -> dict[str, Any]:
    body = json_body(2)
    body["inputs"][i].update(changes)
    return body


BIN_HEADER = {
    "inputs": [
        {"name": "features", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 32}},
        oip_tensor("ids", ids(1), "INT64"),
    ]
}
F1 = features(1).tobytes()


def bin_case(header: dict[str, Any], data: bytes = F1) -> tuple[int, bytes, int]:
    payload, hlen = binary_body(header, data)
    return FMT_BINARY, payload, hlen


def bin_with(**changes: Any) -> dict[str, Any]:
    header = json.loads(json.dumps(BIN_HEADER))
    header["inputs"][0].update(changes)
    return header


def json_case(body: Any) -> tuple[int, bytes, int]:
    return FMT_JSON, dumps(body), 0


def mp_case(body: Any) -> tuple[int, bytes, int]:
    return FMT_MSGPACK, msgpack.packb(body), 0


def mp_with(name: str, **changes: Any) -> dict[str, Any]:
    body = mp_body(2)
    body["inputs"][name].update(changes)
    return body


INVALID = {
    "json-datatype": (
        json_case(with_input(1, datatype="FP32")),
        "input 'ids': expected datatype INT64, got FP32",
    ),
    "json-unknown-datatype": (
        json_case(with_input(0, datatype="FOO")),
        "input 'features': unknown datatype 'FOO'",
    ),
    "json-bytes-datatype": (json_case(with_input(0, datatype="BYTES")), "expected datatype FP32, got BYTES"),
    "json-shape": (
        json_case(with_input(0, shape=[3, 7], data=[0.0] * 21)),
        "input 'features': expected shape [-1, 8], got [3, 7]",
    ),
    "json-rank": (json_case(with_input(0, shape=[16])), "input 'features': expected shape [-1, 8], got [16]"),
    "json-negative-dim": (json_case(with_input(0, shape=[-1, 8])), "'shape' must be a list of integers >= 0"),
    "json-bool-dim": (json_case(with_input(0, shape=[True, 8])), "'shape' must be a list of integers >= 0"),
    "json-count": (json_case(with_input(0, data=[0.0] * 15)), "input 'features': data has 15 elements"),
    "json-ragged": (json_case(with_input(1, data=[[1, 2, 3], [4, 5]])), "input 'ids': malformed data"),
    "json-strings": (json_case(with_input(0, data=["0.5"] * 16)), "input 'features': data must hold numbers"),
    "json-bools-as-floats": (json_case(with_input(0, data=[True] * 16)), "data must hold numbers"),
    "json-floats-as-ints": (json_case(with_input(1, data=[0.5] * 6)), "input 'ids': data must hold integers"),
    "json-int-overflow": (json_case(with_input(1, data=[2**63] * 6)), "data must hold integers in the range"),
    "json-null-data": (json_case(with_input(1, data=None)), "input 'ids': 'data' must be a list"),
    "json-object-data": (json_case(with_input(1, data={"a": 1})), "input 'ids': 'data' must be a list"),
    "json-missing": (json_case({"inputs": json_body(2)["inputs"][:1]}), "missing input 'ids'"),
    "json-unexpected": (
        json_case({"inputs": [*json_body(2)["inputs"], oip_tensor("foo", ids(2), "INT64")]}),
        "unexpected input 'foo'",
    ),
    "json-duplicate": (
        json_case({"inputs": [*json_body(2)["inputs"], json_body(2)["inputs"][0]]}),
        "duplicate input 'features'",
    ),
    "json-batch": (
        json_case(
            {"inputs": [oip_tensor("features", features(2), "FP32"), oip_tensor("ids", ids(3), "INT64")]}
        ),
        "inputs disagree on the batch size (dim 0): 'features' has 2, 'ids' has 3",
    ),
    "json-unknown-output": (json_case(json_body(2, outputs=[{"name": "bar"}])), "unknown output 'bar'"),
    "json-duplicate-output": (
        json_case(json_body(2, outputs=[{"name": "label"}, {"name": "label"}])),
        "duplicate output 'label'",
    ),
    "json-binary-flag-type": (
        json_case(json_body(2, outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}])),
        "parameter 'binary_data' must be true or false",
    ),
    "json-shared-memory-output": (
        json_case(json_body(2, outputs=[{"name": "label", "parameters": {"shared_memory_region": "r"}}])),
        "'shared_memory_region' is not supported",
    ),
    "json-malformed": ((FMT_JSON, b'{"inputs": [', 0), "malformed JSON: "),
    "json-not-utf8": ((FMT_JSON, b"\xff\xfe\xfa", 0), "malformed JSON: "),
    "json-not-object": (json_case([1, 2]), "malformed JSON: "),
    "json-inputs-not-list": (json_case({"inputs": {"features": 1}}), "'inputs' must be a list"),
    "json-id-type": (json_case(json_body(2, id=5)), "'id' must be a string"),
    "json-binary-without-header": (
        json_case(with_input(0, data=None, parameters={"binary_data_size": 64})),
        "has both 'data' and 'binary_data_size'",
    ),
    "json-claims-binary": (
        json_case(
            {"inputs": [BIN_HEADER["inputs"][0], oip_tensor("ids", ids(1), "INT64")]},
        ),
        "unexpected size for input 'features'",
    ),
    "bin-both": (
        bin_case(bin_with(data=[0.0] * 8)),
        "input 'features': has both 'data' and 'binary_data_size'",
    ),
    "bin-neither": (bin_case(bin_with(parameters={})), "input 'features': has neither 'data' nor"),
    "bin-short": (bin_case(BIN_HEADER, F1[:-1]), "unexpected size for input 'features'"),
    "bin-extra": (bin_case(BIN_HEADER, F1 + b"\0"), "unexpected additional input data: 1 bytes"),
    "bin-size-vs-shape": (
        bin_case(bin_with(parameters={"binary_data_size": 28}), F1[:28]),
        "input 'features': binary_data_size 28 does not match shape [1, 8] of FP32 (32 bytes)",
    ),
    "bin-size-type": (bin_case(bin_with(parameters={"binary_data_size": "32"})), "binary_data_size must be"),
    "bin-header-negative": ((FMT_BINARY, dumps(BIN_HEADER) + F1, -1), "Inference-Header-Content-Length -1"),
    "bin-header-too-long": (
        (FMT_BINARY, dumps(BIN_HEADER), 10**6),
        "Inference-Header-Content-Length 1000000",
    ),
    "bin-header-cut": ((FMT_BINARY, dumps(BIN_HEADER) + F1, 10), "malformed JSON: "),
    "bin-bool-byte": (
        (
            FMT_BINARY,
            *binary_body(
                {
                    "inputs": [
                        {
                            "name": "mask",
                            "shape": [2, 2],
                            "datatype": "BOOL",
                            "parameters": {"binary_data_size": 4},
                        },
                        {"name": "half", "shape": [3], "datatype": "FP16", "data": [1, 2, 3]},
                        {"name": "pix", "shape": [2, 0], "datatype": "UINT8", "data": []},
                    ]
                },
                b"\x00\x01\x02\x00",
            ),
        ),
        "input 'mask': BOOL bytes must be 0 or 1",
    ),
    "mp-malformed": ((FMT_MSGPACK, b"\xc1", 0), "malformed msgpack: "),
    "mp-truncated": ((FMT_MSGPACK, msgpack.packb(mp_body(1))[:-3], 0), "malformed msgpack: "),
    "mp-not-map": (mp_case([1]), "malformed msgpack: "),
    "mp-inputs-list": (mp_case({"inputs": []}), "'inputs' must be a map"),
    "mp-datatype": (
        mp_case(mp_with("ids", datatype="INT32")),
        "input 'ids': expected datatype INT64, got INT32",
    ),
    "mp-unknown-datatype": (mp_case(mp_with("ids", datatype=7)), "input 'ids': unknown datatype 7"),
    "mp-shape": (
        mp_case(mp_with("features", shape=[2, 7])),
        "input 'features': expected shape [-1, 8], got [2, 7]",
    ),
    "mp-bytes": (mp_case(mp_with("features", data=b"\0" * 60)), "input 'features': data holds 60 bytes"),
    "mp-str-data": (mp_case(mp_with("features", data="x" * 64)), "'data' must be msgpack bin"),
    "mp-missing": (mp_case({"inputs": {"ids": mp_tensor(ids(1), "INT64")}}), "missing input 'features'"),
    "mp-unexpected": (
        mp_case({"inputs": {**mp_body(1)["inputs"], "foo": mp_tensor(ids(1), "INT64")}}),
        "unexpected input 'foo'",
    ),
    "mp-unknown-output": (mp_case(mp_body(1, outputs=["label", "bar"])), "unknown output 'bar'"),
    "mp-outputs-type": (mp_case(mp_body(1, outputs="label")), "'outputs' must be a list"),
    "mp-batch": (
        mp_case({"inputs": {"features": mp_tensor(features(1), "FP32"), "ids": mp_tensor(ids(2), "INT64")}}),
        "inputs disagree on the batch size",
    ),
    "unknown-format": ((7, b"{}", 0), "unknown body format 7"),
}


@pytest.mark.parametrize(("case", "message"), INVALID.values(), ids=list(INVALID))
def test_invalid_requests(case: tuple[int, bytes, int], message: str) -> None:
    fmt, payload, hlen = case
    meta = ODD_META if message.startswith("input 'mask'") else META
    with pytest.raises(BadRequest) as info:
        decode_request(fmt, payload, hlen, meta)
    assert message in str(info.value)
    assert info.value.status == 400


@pytest.mark.parametrize("where", ["input", "output"])
def test_names_a_client_sends_are_cut_when_echoed(where: str) -> None:
    name = "n" * 10_000
    body = mp_body(1, outputs=[name]) if where == "output" else \
        {"inputs": {**mp_body(1)["inputs"], name: mp_tensor(ids(1), "INT64")}}
    with pytest.raises(BadRequest) as info:
        decode_request(*mp_case(body), META)
    assert f"{where} 'nnnn" in str(info.value) and len(str(info.value)) < 200


def test_the_valid_baselines_of_the_invalid_cases_decode() -> None:
    check_arrays(decode_request(*bin_case(BIN_HEADER), META), 1)
    check_arrays(decode_request(*json_case(json_body(2)), META), 2)
    check_arrays(decode_request(*mp_case(mp_body(2)), META), 2)


def test_json_value_coercions() -> None:
    body = json_body(1)
    body["inputs"][0]["data"] = [1, 2, 3, 4, 5, 6, 7, 1e300]  # ints are numbers; overflow is inf
    req = decode_request(FMT_JSON, dumps(body), 0, META, "allow")  # "reject" refuses the inf: test_nonfinite.py
    assert req.arrays[0].dtype == np.float32
    np.testing.assert_array_equal(req.arrays[0], [[1, 2, 3, 4, 5, 6, 7, np.inf]])
    with pytest.raises(BadRequest, match="must hold booleans"):
        decode_request(
            FMT_JSON,
            dumps({"inputs": [{"name": "mask", "shape": [2, 2], "datatype": "BOOL", "data": [1, 0, 0, 1]}]}),
            0,
            ODD_META,
        )
    with pytest.raises(BadRequest, match="'pix': data must hold integers in the range of uint8"):
        decode_request(
            FMT_JSON,
            dumps(
                {
                    "inputs": [
                        {"name": "mask", "shape": [2, 2], "datatype": "BOOL", "data": [True] * 4},
                        {"name": "half", "shape": [3], "datatype": "FP16", "data": [1, 2, 3]},
                        {"name": "pix", "shape": [2, 1], "datatype": "UINT8", "data": [256, 0]},
                    ]
                }
            ),
            0,
            ODD_META,
        )


# -- warm-up ----------------------------------------------------------------------------------------------


def test_example_request() -> None:
    req = example_request(META)
    assert (req.id, req.outputs, req.binary) == (None, [0, 1], [False, False])
    assert (req.fmt, req.batch) == (FMT_MSGPACK, 1)
    np.testing.assert_array_equal(req.arrays[0], np.full((1, 8), 0.5, np.float32))
    np.testing.assert_array_equal(req.arrays[1], [[1, 2, 3]])
    assert [a.dtype for a in req.arrays] == [np.float32, np.int64]
    reply = msgpack.unpackb(encode_response(req, model_outputs(1), META)[1])
    assert list(reply["outputs"]) == ["probabilities", "label"]

    odd = example_request(ODD_META)
    assert odd.batch == 1
    assert [a.dtype for a in odd.arrays] == [np.bool_, np.float16, np.uint8]
    assert [a.shape for a in odd.arrays] == [(2, 2), (3,), (2, 1)]


def test_example_request_accepts_a_flat_example() -> None:
    raw = json.loads(json.dumps(RAW_META))
    raw["example"] = {"features": [0.25] * 16, "ids": [1, 2, 3, 4, 5, 6]}
    req = example_request(parse_meta(raw))
    assert req.batch == 2
    assert [a.shape for a in req.arrays] == [(2, 8), (2, 3)]


def test_example_request_that_does_not_fit_is_a_config_error() -> None:
    raw = json.loads(json.dumps(RAW_META))
    raw["example"]["features"] = [[0.5] * 7]
    with pytest.raises(ConfigError, match="example: input 'features': expected shape"):
        example_request(parse_meta(raw))


# -- fuzzing ----------------------------------------------------------------------------------------------

# Property searches of the codecs' rules; the coverage-guided fuzzing of the same decoders, with its
# committed corpus, is tests/fuzz/ (tests/test_fuzz.py replays it).
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)
names = st.sampled_from(["features", "ids", "probabilities", "label", "mask", "foo", ""]) | json_values
datatypes = st.sampled_from([*DATATYPES, "BYTES", "BF16", "FOO"]) | json_values
shapes = (
    st.lists(st.integers(-2, 9), max_size=3) | st.sampled_from([[1, 8], [2, 3], [0, 8], [1, 3]]) | json_values
)
scalars = st.floats(width=32) | st.integers(-(2**64), 2**64) | st.booleans() | st.text(max_size=2)
datas = (
    st.lists(scalars, max_size=24)
    | st.lists(st.lists(st.integers(-5, 5), min_size=3, max_size=3), max_size=3)
    | st.lists(st.lists(st.floats(), min_size=8, max_size=8), max_size=2)
    | json_values
)
parameters = st.fixed_dictionaries(
    {},
    optional={
        "binary_data_size": st.integers(-1, 80) | json_values,
        "binary_data": json_values,
        "binary_data_output": st.booleans() | json_values,
    },
)
oip_inputs = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={"data": datas, "parameters": parameters | json_values},
)
oip_requests = st.fixed_dictionaries(
    {"inputs": st.lists(oip_inputs, max_size=3) | json_values},
    optional={
        "id": st.text(max_size=5) | json_values,
        "parameters": parameters | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": names}, optional={"parameters": parameters}), max_size=3
        )
        | json_values,
    },
)
# msgpack has no integers beyond 64 bits.
mp_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)
mp_names = st.sampled_from(["features", "ids", "mask", "half", "pix", "label", "foo", ""])
mp_shapes = (
    st.lists(st.integers(-2, 9), max_size=3) | st.sampled_from([[1, 8], [2, 3], [0, 8], [1, 3]]) | mp_values
)
mp_inputs = st.dictionaries(
    mp_names,
    st.fixed_dictionaries(
        {
            "datatype": st.sampled_from([*DATATYPES, "BYTES", "FOO"]) | mp_values,
            "shape": mp_shapes,
            "data": st.binary(max_size=80) | mp_values,
        }
    )
    | mp_values,
    max_size=3,
)
mp_requests = st.fixed_dictionaries(
    {"inputs": mp_inputs | mp_values},
    optional={"id": st.text(max_size=5) | mp_values, "outputs": st.lists(mp_names, max_size=3) | mp_values},
)


def decode_or_bad_request(fmt: int, payload: bytes, hlen: int, meta: ModelMeta = META) -> Request | None:
    """Decode; only BadRequest may escape, and a decoded request must satisfy the invariants."""
    try:
        req = decode_request(fmt, payload, hlen, meta)
    except BadRequest as exc:
        assert str(exc)
        return None
    assert len(req.arrays) == len(meta.inputs)
    for arr, spec in zip(req.arrays, meta.inputs, strict=True):
        assert arr.dtype == np.dtype(DATATYPES[spec.datatype])
        assert arr.flags.c_contiguous and arr.flags.aligned
        assert len(arr.shape) == len(spec.shape)
        assert all(e in (-1, d) for e, d in zip(spec.shape, arr.shape, strict=True))
        if meta.batchable:
            assert arr.shape[0] == req.batch
    assert len(req.binary) == len(req.outputs) == len(set(req.outputs))
    assert all(0 <= i < len(meta.outputs) for i in req.outputs)
    assert req.id is None or isinstance(req.id, str)
    # A decoded request can always be answered.
    encode_response(req, model_outputs(req.batch), meta)
    return req


@FUZZ
@given(
    fmt=st.sampled_from([FMT_JSON, FMT_BINARY, FMT_MSGPACK]),
    payload=st.binary(max_size=200),
    hlen=st.integers(-5, 210),
)
def test_fuzz_random_bytes(fmt: int, payload: bytes, hlen: int) -> None:
    decode_or_bad_request(fmt, payload, hlen)


@FUZZ
@given(body=json_values)
def test_fuzz_random_json(body: Any) -> None:
    decode_or_bad_request(FMT_JSON, dumps(body), 0)


@FUZZ
@given(body=oip_requests, tail=st.binary(max_size=80), binary=st.booleans(), cut=st.integers(-3, 3))
def test_fuzz_oip_structures(body: dict, tail: bytes, binary: bool, cut: int) -> None:
    head = dumps(body)
    if binary:
        decode_or_bad_request(FMT_BINARY, head + tail, len(head) + cut)
        decode_or_bad_request(FMT_BINARY, head + tail, len(head), ODD_META)
    else:
        decode_or_bad_request(FMT_JSON, head, 0)


@FUZZ
@given(body=mp_requests)
def test_fuzz_msgpack_structures(body: dict) -> None:
    payload = msgpack.packb(body)
    decode_or_bad_request(FMT_MSGPACK, payload, 0)
    decode_or_bad_request(FMT_MSGPACK, payload, 0, ODD_META)


@FUZZ
@given(
    n=st.integers(0, 3),
    binary=st.tuples(st.booleans(), st.booleans()),
    flip=st.integers(0, 400),
    byte=st.integers(0, 255),
)
def test_fuzz_corrupted_tritonclient_bodies(n: int, binary: tuple[bool, bool], flip: int, byte: int) -> None:
    """A valid tritonclient body with one byte changed: decodes to something valid, or is a BadRequest."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(triton_inputs(n, binary))
    assert decode_or_bad_request(FMT_BINARY if json_size else FMT_JSON, body, json_size or 0) is not None
    corrupt = bytearray(body)
    corrupt[flip % len(corrupt)] = byte
    decode_or_bad_request(FMT_BINARY if json_size else FMT_JSON, bytes(corrupt), json_size or 0)


def all_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys/indices) into a nested dict/list structure, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += all_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += all_paths(v, (*prefix, i))
    return out


def mutate(obj: Any, path: tuple, replacement: Any, delete: bool) -> Any:
    """``obj`` with the value at ``path`` replaced (or removed from its container)."""
    if not path:
        return replacement
    head, rest = path[0], path[1:]
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    if not rest and delete:
        del copy[head]
    else:
        copy[head] = mutate(obj[head], rest, replacement, delete)
    return copy


@FUZZ
@given(
    draw=st.data(),
    fmt=st.sampled_from([FMT_JSON, FMT_MSGPACK]),
    n=st.integers(0, 2),
    delete=st.booleans(),
)
def test_fuzz_mutated_valid_requests(draw: st.DataObject, fmt: int, n: int, delete: bool) -> None:
    """One field of a valid request replaced by anything, or removed."""
    extra = (
        {"id": "x", "outputs": ["label"]}
        if fmt == FMT_MSGPACK
        else {
            "id": "x",
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
        }
    )
    body = (mp_body if fmt == FMT_MSGPACK else json_body)(n, **extra)
    path = draw.draw(st.sampled_from(all_paths(body)))
    replacement = draw.draw(mp_values if fmt == FMT_MSGPACK else json_values)
    body = mutate(body, path, replacement, delete)
    payload = msgpack.packb(body) if fmt == FMT_MSGPACK else dumps(body)
    decode_or_bad_request(fmt, payload, 0)


# Single-input models take the one-pass msgpack path (runtime.codecs.requests.one_input) when the
# request is valid and asks for every output; it must agree with the general path on everything.
ONE_META = parse_meta({
    "name": "one", "version": "1",
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    "example": {"features": [[0.5] * 8]},
})
ONE_FIXED_META = parse_meta({  # not batchable: batch is 1 whatever dim 0 says
    "name": "one-fixed", "version": "1",
    "inputs": [{"name": "pix", "datatype": "UINT8", "shape": [2, -1]}],
    "outputs": [{"name": "out", "datatype": "FP64", "shape": [2]}],
    "example": {"pix": [[1], [2]]},
})
one_requests = st.fixed_dictionaries(
    {"inputs": st.dictionaries(
        st.sampled_from(["features", "pix", "ids"]),
        st.fixed_dictionaries(
            {"datatype": st.sampled_from(["FP32", "UINT8", "FP64", "BOOL"]) | mp_values,
             "shape": st.lists(st.integers(-1, 4) | st.booleans(), max_size=3) | mp_values,
             "data": st.binary(max_size=40).map(lambda b: b * 2) | mp_values},
            optional={"extra": mp_values},
        ) | mp_values,
        max_size=2,
    ) | mp_values},
    optional={"id": st.text(max_size=5) | mp_values,
              "outputs": st.sampled_from([[], ["probabilities"], ["out"], ["nope"]]) | mp_values,
              "parameters": mp_values},
)



@st.composite
def near_valid_one_requests(draw: st.DrawFn) -> dict:
    """Bodies one step from valid for ONE_META or ONE_FIXED_META: most take the one-pass path."""
    name, datatype, width = draw(st.sampled_from([("features", "FP32", 8), ("pix", "UINT8", 3)]))
    rows = draw(st.integers(0, 3))
    shape: list = [rows, draw(st.sampled_from([width, width, width - 1]))]
    size = rows * shape[1] * (4 if datatype == "FP32" else 1) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    tensor = {"datatype": draw(st.sampled_from([datatype, datatype, "FP64"])), "shape": shape,
              "data": bytes(max(size, 0))}
    body: dict = {"inputs": {name: tensor}}
    if draw(st.booleans()):
        body["id"] = draw(st.sampled_from(["a", "", 7]))
    if draw(st.booleans()):
        body["outputs"] = draw(st.sampled_from([[], ["probabilities"], ["out"], None]))
    return body


def general_path(payload: bytes, meta: ModelMeta) -> Request | str:
    plan = Plan(meta)
    plan.only = None  # no one-pass path: the general decoder alone
    try:
        return _decode_msgpack(payload, plan)
    except BadRequest as exc:
        return str(exc)


def same_request(a: Request | str, b: Request | str) -> None:
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert (a.id, a.outputs, a.binary, a.fmt, a.batch) == (b.id, b.outputs, b.binary, b.fmt, b.batch)
    assert len(a.arrays) == len(b.arrays)
    for x, y in zip(a.arrays, b.arrays, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@FUZZ
@given(body=one_requests | near_valid_one_requests(), meta=st.sampled_from([ONE_META, ONE_FIXED_META]))
def test_fuzz_the_one_pass_msgpack_path_agrees_with_the_general_one(body: dict, meta: ModelMeta) -> None:
    payload = msgpack.packb(body)
    try:
        got: Request | str = decode_request(FMT_MSGPACK, payload, 0, meta)
    except BadRequest as exc:
        got = str(exc)
    same_request(got, general_path(payload, meta))


def test_the_one_pass_msgpack_path_takes_valid_requests() -> None:
    x = features(3)
    simple = SimpleMsgpack(ONE_META)
    for extra in ({}, {"id": "r1"}, {"outputs": []}):
        body = msgpack.packb({"inputs": {"features": {"datatype": "FP32", "shape": [3, 8], "data": x.tobytes()}},
                              **extra})
        one = simple.decode(body)
        assert one is not None and one[0] == extra.get("id")
        np.testing.assert_array_equal(one[1], x)
        req = decode_request(FMT_MSGPACK, body, 0, ONE_META)
        assert req.batch == 3 and req.id == extra.get("id")
        same_request(req, general_path(body, ONE_META))
    # What it leaves to the general path: other outputs, garbage, BOOL inputs, several inputs or outputs.
    asks = msgpack.packb({"inputs": {"features": {"datatype": "FP32", "shape": [1, 8], "data": x[:1].tobytes()}},
                          "outputs": ["probabilities"]})
    assert simple.decode(asks) is None and simple.decode(b"\xc1") is None and simple.decode(b"\x91\x01") is None
    assert plan_of(ODD_META).only is None and plan_of(META).only is None
    for meta in (ODD_META, META):
        with pytest.raises(ValueError, match="one input and one output"):
            SimpleMsgpack(meta)


#: One codec per model for the whole fuzz run, so that the layouts it learns meet later bodies.
SIMPLE = {meta.name: SimpleMsgpack(meta) for meta in (ONE_META, ONE_FIXED_META)}


def body_of(x: np.ndarray, **extra: Any) -> bytes:
    return msgpack.packb({"inputs": {"features": {"datatype": "FP32", "shape": list(x.shape), "data": x.tobytes()}},
                          **extra})


def flip_tail(payload: bytes, n: int) -> bytes:
    """``payload`` with its last ``n`` bytes inverted: another tensor, if the tail is the data."""
    return payload[:len(payload) - n] + bytes(b ^ 0xFF for b in payload[len(payload) - n:])


@FUZZ
@given(body=one_requests | near_valid_one_requests(), meta=st.sampled_from([ONE_META, ONE_FIXED_META]),
       tail=st.integers(1, 12))
def test_fuzz_simple_msgpack_decodes_only_what_the_general_path_decodes_the_same(body: dict, meta: ModelMeta,
                                                                                  tail: int) -> None:
    payload = msgpack.packb(body)
    # The body, then the same body with other bytes at its end: a remembered layout must
    # serve only bodies that really are that layout with other data.
    for p in (payload, flip_tail(payload, min(tail, len(payload))), payload):
        one = SIMPLE[meta.name].decode(p)
        if one is None:
            continue
        general = general_path(p, meta)
        assert isinstance(general, Request) and general.id == one[0] and general.outputs == [0]
        (arr,) = general.arrays
        assert one[1].dtype == arr.dtype and one[1].shape == arr.shape and one[1].tobytes() == arr.tobytes()


def test_a_remembered_layout_decodes_later_bodies_without_msgpack(monkeypatch) -> None:
    simple = SimpleMsgpack(ONE_META)
    x = features(2)
    first = simple.decode(body_of(x))
    assert first is not None and first[0] is None
    calls = count_unpackb(monkeypatch)
    y = features(2, seed=5)
    got = simple.decode(body_of(y))
    assert got is not None and got[0] is None and not calls
    np.testing.assert_array_equal(got[1], y)
    # Another shape, an id, other keys, the same keys in another order (the same length): decoded
    # in full, and right.
    reordered = msgpack.packb({"inputs": {"features": {"shape": [2, 8], "datatype": "FP32", "data": y.tobytes()}}})
    assert len(reordered) == len(body_of(y))
    for other in (body_of(features(3)), body_of(x, id="r"), body_of(x, outputs=[]), reordered):
        one = simple.decode(other)
        assert one is not None
        same_request(decode_request(FMT_MSGPACK, other, 0, ONE_META),
                     Request(one[0], [one[1]], [0], [False], FMT_MSGPACK, one[1].shape[0]))
    assert len(calls) >= 3


def count_unpackb(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = msgpack.unpackb
    monkeypatch.setattr(msgpack, "unpackb", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_layout_whose_tail_is_not_the_data_is_not_remembered(monkeypatch) -> None:
    # "data" first, "shape" last: the body's last bytes are the shape, not the tensor.
    x = features(1)
    simple = SimpleMsgpack(ONE_META)

    def body(rows: int) -> bytes:
        return msgpack.packb({"inputs": {"features": {"data": x.tobytes(), "datatype": "FP32", "shape": [rows, 8]}}})

    calls = count_unpackb(monkeypatch)
    one = simple.decode(body(1))
    assert one is not None and one[1].shape == (1, 8)
    assert len(calls) == 2  # the body, then the probe with its tail flipped
    # Same length and the same leading bytes, another shape: a layout taken from the first
    # body would hand back [1, 8] for it.
    assert len(body(1)) == len(body(0)) and simple.decode(body(0)) is None  # 32 bytes for a [0, 8]: invalid
    assert decode_or_bad_request(FMT_MSGPACK, body(0), 0, ONE_META) is None
    # Such a body is decoded in full each time, and not probed again.
    calls.clear()
    for _ in range(3):
        again = simple.decode(body(1))
        assert again is not None and again[1].shape == (1, 8)
    assert len(calls) == 3


def test_two_layouts_of_one_length_keep_the_first_and_decode_the_other_once_each(monkeypatch) -> None:
    x, y = features(2), features(2, seed=3)
    reordered = msgpack.packb({"inputs": {"features": {"shape": [2, 8], "datatype": "FP32", "data": y.tobytes()}}})
    simple = SimpleMsgpack(ONE_META)
    calls = count_unpackb(monkeypatch)
    for _ in range(3):
        a, b = simple.decode(body_of(x)), simple.decode(reordered)
        assert a is not None and b is not None
        np.testing.assert_array_equal(a[1], x)
        np.testing.assert_array_equal(b[1], y)
    # The first body: decode and probe once, then remembered; the other: one decode each time.
    assert len(calls) == 2 + 3


def test_msgpack_bins_are_aligned_for_every_served_dtype() -> None:
    # The one-pass path builds arrays on msgpack's bytes without the alignment check
    # the general path makes: it relies on this.
    for n in (1, 3, 8, 100, 511, 512, 513, 4096, 1 << 20):
        data = msgpack.unpackb(msgpack.packb({"d": bytes(n)}))["d"]
        assert np.frombuffer(data, np.uint8).ctypes.data % 16 == 0, n


@FUZZ
@given(
    rows=st.integers(0, 600),
    rid=st.none() | st.text(max_size=40),
    dtype=st.sampled_from(["float32", "float64", "float16"]),
    strided=st.booleans(),
    meta=st.sampled_from([ONE_META, ONE_FIXED_META]),
)
def test_msgpack_reply_of_a_single_output_model_is_the_reply_map(
    rows: int, rid: str | None, dtype: str, strided: bool, meta: ModelMeta
) -> None:
    """The constant-pieces encoding (runtime.codecs.plan.Plan.reply_parts) writes what packing the map writes."""
    spec = meta.outputs[0]
    width = 2 if spec.shape == (-1, 2) else None
    base = np.random.default_rng(rows).standard_normal((rows * 2, width or 1)).astype(dtype)
    out = base[::2] if strided else base[:rows]  # strided: not C-contiguous
    if width is None:
        out = out.reshape(-1)[:2] if rows else np.zeros(2, dtype)
    req = Request(rid, [], list(range(1)), [False], FMT_MSGPACK, rows)
    req.outputs = plan_of(meta).every_output  # what decoding gives a request for every output
    hlen, body = encode_response(req, [out], meta)
    simple = SIMPLE[meta.name]  # shared: the second encoding of a shape uses the remembered reply head
    assert simple.encode(rid, out) == body and simple.encode(rid, out) == body
    wire = np.ascontiguousarray(out.astype(np.dtype(DATATYPES[spec.datatype]).newbyteorder("<")))
    expect: dict[str, Any] = {"model_name": meta.name, "model_version": meta.version}
    if rid is not None:
        expect["id"] = rid
    expect["outputs"] = {spec.name: {"datatype": spec.datatype, "shape": list(wire.shape), "data": wire.tobytes()}}
    assert hlen == 0 and body == msgpack.packb(expect)
