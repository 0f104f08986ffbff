"""Tests for shadow comparison: decoding live replies (runtime.codecs.decode_reply) and comparing them with a
shadow's outputs (runtime.compare)."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.proto.errors import BadRequest
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import ModelMeta, parse_meta
from runtime.codecs import Request, decode_reply, encode_response
from runtime.compare import Diffs, compare, pack_stats

META = parse_meta(
    {
        "name": "clf",
        "version": "2",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "z", "datatype": "INT64", "shape": [-1]},
        ],
        "example": {"x": [[0.0] * 4]},
    }
)

# Not batchable (fixed shapes), with the less common datatypes, a 0-d and an empty output.
ODD_META = parse_meta(
    {
        "name": "odd",
        "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
        "outputs": [
            {"name": "b", "datatype": "BOOL", "shape": [2, 2]},
            {"name": "h", "datatype": "FP16", "shape": [3]},
            {"name": "u", "datatype": "UINT64", "shape": [3]},
            {"name": "i", "datatype": "INT8", "shape": [2]},
            {"name": "d", "datatype": "FP64", "shape": [4]},
            {"name": "s", "datatype": "FP32", "shape": []},
            {"name": "e", "datatype": "UINT16", "shape": [0, 2]},
        ],
        "example": {"x": [0.0]},
    }
)


def outputs(n: int = 2) -> list[np.ndarray]:
    """Fake model outputs for a batch of ``n``: float32 values with long decimal expansions, big ints."""
    y = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32) / np.float32(3)
    z = (np.arange(n, dtype=np.int64) - 1) * 10**12 + 7
    return [y, z]


def odd_outputs() -> list[np.ndarray]:
    return [
        np.array([[True, False], [False, True]]),
        np.array([0.1, 65504, -2.5], dtype=np.float16),
        np.array([0, 1, 2**64 - 1], dtype=np.uint64),  # numpy infers [0, 1, 2**64 - 1] as float64
        np.array([-128, 127], dtype=np.int8),
        np.array([np.nan, np.inf, -np.inf, 1 / 3]),
        np.array(np.float32(-1.1)),
        np.zeros((0, 2), dtype=np.uint16),
    ]


def request(fmt: int, n: int, order: list[int], binary: list[bool], meta: ModelMeta = META) -> Request:
    """A decoded request as codecs builds it (only what encode_response reads matters)."""
    x = np.zeros((n, 4) if meta is META else (1,), dtype=np.float32)
    return Request("r-1", [x], order, binary, fmt, n)


def reply(fmt: int, n: int = 2, order: list[int] | None = None, binary: list[bool] | None = None) -> tuple[bytes, int]:
    order = [0, 1] if order is None else order
    binary = [False] * len(order) if binary is None else binary
    hlen, body = encode_response(request(fmt, n, order, binary), outputs(n), META)
    return body, hlen


def assert_same_bits(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype.newbyteorder("<"), name
        assert got[name].shape == arr.shape, name
        assert got[name].tobytes() == arr.tobytes(), name


# -- decode_reply: round trips ----------------------------------------------------------------------------

ROUND_TRIPS = {
    "json": (FMT_JSON, [0, 1], [False, False]),
    "json-y-binary": (FMT_JSON, [0, 1], [True, False]),
    "json-z-binary": (FMT_JSON, [0, 1], [False, True]),
    "json-all-binary": (FMT_JSON, [0, 1], [True, True]),
    "json-reordered-mixed": (FMT_JSON, [1, 0], [True, False]),
    "json-one-output": (FMT_JSON, [1], [False]),
    "binary-all-binary": (FMT_BINARY, [0, 1], [True, True]),
    "binary-no-binary": (FMT_BINARY, [0, 1], [False, False]),
    "binary-mixed": (FMT_BINARY, [1, 0], [False, True]),
    "msgpack": (FMT_MSGPACK, [0, 1], [False, False]),
    "msgpack-reordered": (FMT_MSGPACK, [1, 0], [False, False]),
    "msgpack-one-output": (FMT_MSGPACK, [0], [False]),
}


@pytest.mark.parametrize("payload_type", [bytes, memoryview])
@pytest.mark.parametrize("n", [1, 5, 0])
@pytest.mark.parametrize(("fmt", "order", "binary"), ROUND_TRIPS.values(), ids=list(ROUND_TRIPS))
def test_round_trip(fmt: int, order: list[int], binary: list[bool], n: int, payload_type: type) -> None:
    body, hlen = reply(fmt, n, order, binary)
    assert (hlen > 0) == any(binary)
    got = decode_reply(fmt, payload_type(body), hlen)
    names = [META.outputs[i].name for i in order]
    assert_same_bits(got, {name: outputs(n)[i] for name, i in zip(names, order, strict=True)})


def test_json_float32_survives_exactly() -> None:
    y = (np.arange(6, dtype=np.float32).reshape(2, 3) + np.float32(0.1)) / np.float32(3)
    hlen, body = encode_response(request(FMT_JSON, 2, [0], [False]), [y, np.zeros(2, np.int64)], META)
    assert hlen == 0 and b"0.0333333" in body  # really sent as decimal text
    got = decode_reply(FMT_JSON, body, hlen)["y"]
    assert got.dtype == np.float32 and got.tobytes() == y.tobytes()


@pytest.mark.parametrize(
    ("fmt", "binary"),
    [(FMT_JSON, False), (FMT_JSON, True), (FMT_BINARY, True), (FMT_MSGPACK, False)],
)
def test_odd_datatypes_round_trip(fmt: int, binary: bool) -> None:
    n = len(ODD_META.outputs)
    req = request(fmt, 1, list(range(n)), [binary] * n, ODD_META)
    hlen, body = encode_response(req, odd_outputs(), ODD_META)
    got = decode_reply(fmt, body, hlen)
    assert_same_bits(got, {t.name: a for t, a in zip(ODD_META.outputs, odd_outputs(), strict=True)})
    assert got["s"].shape == () and got["e"].shape == (0, 2)


def test_json_nested_data_in_any_grouping() -> None:
    body = {
        "model_name": "clf",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2], [3, 4.5], [5, 6]]},
            {"name": "z", "datatype": "INT64", "shape": [2], "data": [[7], [-8]]},
            {"name": "c", "datatype": "UINT64", "shape": [1], "data": [2**63]},
            {"name": "t", "datatype": "INT64", "shape": [2], "data": [3.0, -4]},  # integral floats are fine
        ],
    }
    got = decode_reply(FMT_JSON, json.dumps(body).encode(), 0)
    np.testing.assert_array_equal(got["y"], [[1, 2, 3], [4.5, 5, 6]])
    assert got["y"].dtype == np.float32
    np.testing.assert_array_equal(got["z"], [7, -8])
    assert got["c"].dtype == np.uint64 and int(got["c"][0]) == 2**63
    assert got["t"].dtype == np.int64 and got["t"].tolist() == [3, -4]


def test_binary_data_is_a_view_unless_misaligned() -> None:
    y = outputs(3)[0]
    for rid in ("", "a", "ab", "abc", "abcd"):  # moves the binary section across alignments
        req = Request(rid, [np.zeros((3, 4), np.float32)], [0], [True], FMT_BINARY, 3)
        hlen, body = encode_response(req, [y, np.zeros(3, np.int64)], META)
        got = decode_reply(FMT_BINARY, body, hlen)["y"]
        assert got.flags.aligned and got.tobytes() == y.tobytes()
        shares = np.shares_memory(got, np.frombuffer(body, np.uint8))
        assert shares == (hlen % 4 == 0)
        assert not got.flags.writeable or not shares


def test_msgpack_data_is_not_copied_again() -> None:
    body, _ = reply(FMT_MSGPACK, 4)
    got = decode_reply(FMT_MSGPACK, body, 0)
    assert not got["y"].flags.owndata and not got["y"].flags.writeable


def test_header_len_zero_means_all_json_in_either_oip_format() -> None:
    body, hlen = reply(FMT_BINARY, 2)
    assert hlen == 0
    assert_same_bits(decode_reply(FMT_BINARY, body, 0), dict(zip("yz", outputs(2), strict=True)))
    # A header length covering the whole body is just as fine.
    assert_same_bits(decode_reply(FMT_JSON, body, len(body)), dict(zip("yz", outputs(2), strict=True)))


def test_msgpack_ignores_header_len() -> None:
    body, _ = reply(FMT_MSGPACK, 2)
    assert_same_bits(decode_reply(FMT_MSGPACK, body, 123), dict(zip("yz", outputs(2), strict=True)))


# -- decode_reply: malformed replies ----------------------------------------------------------------------


def json_reply(**changes: Any) -> dict[str, Any]:
    """The JSON reply for a batch of 2 with all data inline; ``changes`` update output ``y``."""
    body, _ = reply(FMT_JSON, 2)
    obj = json.loads(body)
    obj["outputs"][0].update(changes)
    return obj


def json_case(obj: Any) -> tuple[int, bytes, int]:
    return FMT_JSON, json.dumps(obj).encode(), 0


def bin_case(header: Any, data: bytes, fmt: int = FMT_BINARY) -> tuple[int, bytes, int]:
    head = json.dumps(header).encode()
    return fmt, head + data, len(head)


def y_binary(size: Any = 24, **changes: Any) -> dict[str, Any]:
    """A binary reply header whose output ``y`` ([2, 3] FP32) is binary."""
    return json_reply(data=None, parameters={"binary_data_size": size}, **changes) | {"id": "h"}


def drop_data(obj: dict[str, Any]) -> dict[str, Any]:
    del obj["outputs"][0]["data"]
    return obj


Y = outputs(2)[0].tobytes()


def mp_reply(**changes: Any) -> dict[str, Any]:
    """The msgpack reply for a batch of 2; ``changes`` update output ``y``."""
    body, _ = reply(FMT_MSGPACK, 2)
    obj = msgpack.unpackb(body)
    obj["outputs"]["y"].update(changes)
    return obj


def mp_case(obj: Any) -> tuple[int, bytes, int]:
    return FMT_MSGPACK, msgpack.packb(obj), 0


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"outputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


BOOL_HEADER = {"outputs": [{"name": "b", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}}]}
MP_BOOL = {"outputs": {"b": {"datatype": "BOOL", "shape": [3], "data": b"\x00\x01\x02"}}}

INVALID = {
    "unknown-format": ((7, b"{}", 0), "live reply: unknown body format 7"),
    "json-malformed": ((FMT_JSON, b'{"outputs": [', 0), "live reply: malformed JSON: "),
    "json-not-utf8": ((FMT_JSON, b"\xff\xfe\xfa", 0), "live reply: malformed JSON: "),
    "json-empty": ((FMT_JSON, b"", 0), "live reply: malformed JSON: "),
    "json-not-object": (json_case([1, 2]), "live reply: malformed JSON: the reply must be an object"),
    "json-no-outputs": (json_case({"model_name": "clf"}), "live reply: 'outputs' must be a list of tensors"),
    "json-outputs-map": (json_case({"outputs": {"y": {}}}), "live reply: 'outputs' must be a list of tensors"),
    "json-entry-not-object": (json_case({"outputs": [1]}), "live reply: each entry of 'outputs' must be an object"),
    "json-no-name": (json_case(json_reply(name=None)), "live reply: output name must be a string, got None"),
    "json-duplicate": (json_case(json_reply(name="z")), "live reply: duplicate output 'z'"),
    "json-unknown-datatype": (json_case(json_reply(datatype="FOO")), "live reply: output 'y': unknown datatype 'FOO'"),
    "json-bytes-datatype": (json_case(json_reply(datatype="BYTES")), "output 'y': unknown datatype 'BYTES'"),
    "json-datatype-type": (json_case(json_reply(datatype=5)), "output 'y': unknown datatype 5"),
    "json-negative-dim": (
        json_case(json_reply(shape=[-1, 3])),
        "live reply: output 'y': 'shape' must be a list of integers >= 0, got [-1, 3]",
    ),
    "json-bool-dim": (json_case(json_reply(shape=[True, 3])), "'shape' must be a list of integers >= 0, got [True"),
    "json-no-shape": (json_case(json_reply(shape=None)), "'shape' must be a list of integers >= 0, got None"),
    "json-count": (
        json_case(json_reply(data=[0.5] * 5)),
        "live reply: output 'y': 5 elements of data for shape [2, 3] (6 expected)",
    ),
    "json-ragged": (json_case(json_reply(data=[[1, 2, 3], [4, 5]])), "live reply: output 'y': malformed data"),
    "json-strings": (json_case(json_reply(data=["0.5"] * 6)), "output 'y': data must hold numbers"),
    "json-bools-as-floats": (json_case(json_reply(data=[True] * 6)), "output 'y': data must hold numbers"),
    "json-nulls": (json_case(json_reply(data=[None] * 6)), "output 'y': data must hold numbers"),
    "json-null-data": (json_case(json_reply(data=None)), "output 'y': 'data' must be a list"),
    "json-scalar-data": (json_case(json_reply(data=0.5)), "output 'y': 'data' must be a list"),
    "json-floats-as-ints": (
        json_case(tensor("z", "INT64", [2], [0.5, 1])),
        "output 'z': data must hold integers in the range of int64",
    ),
    "json-int64-overflow": (
        json_case(tensor("z", "INT64", [2], [-1, 2**63])),
        "output 'z': data must hold integers in the range of int64",
    ),
    "json-beyond-uint64": (json_case(tensor("z", "INT64", [1], [2**64])), "output 'z': data must hold integers"),
    "json-uint64-negative": (
        json_case(tensor("u", "UINT64", [2], [-1, 5])),
        "output 'u': data must hold integers in the range of uint64",
    ),
    "json-int8-range": (
        json_case(tensor("i", "INT8", [2], [1, 300])),
        "output 'i': data must hold integers in the range of int8",
    ),
    "json-ints-as-bools": (json_case(tensor("b", "BOOL", [2], [1, 0])), "output 'b': data must hold booleans"),
    "json-params-type": (json_case(json_reply(parameters=[1])), "output 'y': 'parameters' must be an object"),
    "json-both": (
        json_case(json_reply(parameters={"binary_data_size": 24})),
        "output 'y': has both 'data' and 'binary_data_size'",
    ),
    "json-neither": (json_case(drop_data(json_reply())), "output 'y': has neither 'data' nor 'binary_data_size'"),
    "json-claims-binary-without-header": (
        json_case(drop_data(json_reply(parameters={"binary_data_size": 24}))),
        "live reply: output 'y': binary_data_size 24, but only 0 bytes of binary data left",
    ),
    "bin-size-type": (
        bin_case(drop_data(y_binary("24")), Y),
        "output 'y': binary_data_size must be an integer >= 0, got '24'",
    ),
    "bin-size-negative": (bin_case(drop_data(y_binary(-24)), Y), "binary_data_size must be an integer >= 0, got -24"),
    "bin-size-vs-shape": (
        bin_case(drop_data(y_binary(12)), Y[:12]),
        "live reply: output 'y': binary_data_size 12 for shape [2, 3] FP32 (24 expected)",
    ),
    "bin-short": (
        bin_case(drop_data(y_binary()), Y[:20]),
        "live reply: output 'y': binary_data_size 24, but only 20 bytes of binary data left",
    ),
    "bin-extra": (
        bin_case(drop_data(y_binary()), Y + b"\0"),
        "live reply: 1 bytes of binary data after the last binary output",
    ),
    "bin-extra-in-json-format": (
        bin_case(drop_data(y_binary()), Y + b"\0\0", FMT_JSON),
        "live reply: 2 bytes of binary data after the last binary output",
    ),
    "bin-header-len-too-long": (
        (FMT_BINARY, b"{}", 1000),
        "live reply: JSON header length 1000 is outside the body of 2 bytes",
    ),
    "bin-header-len-negative": ((FMT_BINARY, b"{}", -1), "live reply: JSON header length -1 is outside the body"),
    "bin-header-len-float": ((FMT_JSON, b"{}", 1.0), "live reply: JSON header length 1.0 is outside the body"),
    "bin-header-cut": (
        (FMT_BINARY, json.dumps(drop_data(y_binary())).encode() + Y, 10),
        "live reply: malformed JSON: ",
    ),
    "bin-bool-byte": (bin_case(BOOL_HEADER, b"\x00\x01\x02"), "live reply: output 'b': BOOL bytes must be 0 or 1"),
    "mp-malformed": ((FMT_MSGPACK, b"\xc1", 0), "live reply: malformed msgpack: "),
    "mp-empty": ((FMT_MSGPACK, b"", 0), "live reply: malformed msgpack: "),
    "mp-truncated": ((FMT_MSGPACK, reply(FMT_MSGPACK)[0][:-3], 0), "live reply: malformed msgpack: "),
    "mp-extra-data": ((FMT_MSGPACK, reply(FMT_MSGPACK)[0] + b"\x00", 0), "live reply: malformed msgpack: "),
    "mp-int-key": ((FMT_MSGPACK, msgpack.packb({1: 2}), 0), "live reply: malformed msgpack: "),
    "mp-not-map": (mp_case([1]), "live reply: malformed msgpack: the reply must be a map"),
    "mp-no-outputs": (mp_case({"model_name": "clf"}), "live reply: 'outputs' must be a map of output name -> tensor"),
    "mp-outputs-list": (mp_case({"outputs": []}), "'outputs' must be a map of output name -> tensor"),
    "mp-bytes-name": (mp_case({"outputs": {b"y": {}}}), "live reply: output name must be a string, got b'y'"),
    "mp-tensor-not-map": (
        mp_case({"outputs": {"y": [1]}}),
        "live reply: output 'y': must be a map with datatype, shape and data",
    ),
    "mp-unknown-datatype": (mp_case(mp_reply(datatype="INT128")), "output 'y': unknown datatype 'INT128'"),
    "mp-no-datatype": (mp_case(mp_reply(datatype=None)), "output 'y': unknown datatype None"),
    "mp-shape": (mp_case(mp_reply(shape=[2, "3"])), "output 'y': 'shape' must be a list of integers >= 0"),
    "mp-str-data": (mp_case(mp_reply(data="x" * 24)), "live reply: output 'y': 'data' must be msgpack bin"),
    "mp-no-data": (mp_case(mp_reply(data=None)), "live reply: output 'y': 'data' must be msgpack bin"),
    "mp-size": (
        mp_case(mp_reply(data=Y[:12])),
        "live reply: output 'y': 12 bytes of data for shape [2, 3] FP32 (24 expected)",
    ),
    "mp-size-vs-shape": (
        mp_case(mp_reply(shape=[3, 3])),
        "live reply: output 'y': 24 bytes of data for shape [3, 3] FP32 (36 expected)",
    ),
    "mp-bool-byte": (mp_case(MP_BOOL), "live reply: output 'b': BOOL bytes must be 0 or 1"),
}


@pytest.mark.parametrize(("case", "message"), INVALID.values(), ids=list(INVALID))
def test_invalid_replies(case: tuple[int, bytes, int], message: str) -> None:
    fmt, payload, hlen = case
    with pytest.raises(BadRequest) as info:
        decode_reply(fmt, payload, hlen)
    assert message in str(info.value)
    assert info.value.status == 400


def test_the_valid_baselines_of_the_invalid_cases_decode() -> None:
    want = dict(zip("yz", outputs(2), strict=True))
    assert_same_bits(decode_reply(*json_case(json_reply())), want)
    assert_same_bits(decode_reply(*bin_case(drop_data(y_binary()), Y)), want)
    assert_same_bits(decode_reply(*mp_case(mp_reply())), want)
    assert decode_reply(*bin_case(BOOL_HEADER, b"\x00\x01\x01"))["b"].tolist() == [False, True, True]
    assert decode_reply(FMT_JSON, b'{"outputs": []}', 0) == {}


def test_every_cut_and_byte_flip_is_decoded_or_a_bad_request() -> None:
    bodies = [
        (FMT_JSON, *reply(FMT_JSON, 2, [1, 0], [True, False])),
        (FMT_BINARY, *reply(FMT_BINARY, 2, [0, 1], [True, True])),
        (FMT_MSGPACK, *reply(FMT_MSGPACK, 2)),
    ]
    for fmt, body, hlen in bodies:
        for cut in range(len(body)):
            check_decodes_or_bad_request(fmt, body[:cut], min(hlen, cut))
        for pos in range(len(body)):
            for byte in (0x00, 0x22, 0x5D, 0xFF):
                check_decodes_or_bad_request(fmt, body[:pos] + bytes([byte]) + body[pos + 1 :], hlen)


def check_decodes_or_bad_request(fmt: int, payload: bytes, hlen: int) -> None:
    try:
        arrays = decode_reply(fmt, payload, hlen)
    except BadRequest:
        return
    assert all(isinstance(a, np.ndarray) for a in arrays.values())


@settings(max_examples=200, deadline=None)
@given(
    fmt=st.sampled_from([FMT_JSON, FMT_BINARY, FMT_MSGPACK]),
    payload=st.binary(max_size=64),
    hlen=st.integers(-2, 70),
)
def test_fuzz_random_bytes(fmt: int, payload: bytes, hlen: int) -> None:
    check_decodes_or_bad_request(fmt, payload, hlen)


# -- compare ----------------------------------------------------------------------------------------------


def test_equal_outputs_give_zero_and_full_agreement() -> None:
    live = decode_reply(FMT_JSON, *reply(FMT_JSON, 4))
    shadow = dict(zip("yz", outputs(4), strict=True))
    diffs = compare(live, shadow)
    assert diffs == [("y", 0.0, 0.0, 4, 4), ("z", 0.0, 0.0, -1, -1)]
    assert isinstance(diffs, Diffs) and diffs.rows_total == 4


def test_known_differences() -> None:
    live = {
        "y": np.array([[1, 2, 4], [4, 1, -1]], dtype=np.float32),
        "z": np.array([10, -20, 0], dtype=np.int64),
    }
    shadow = {
        "z": np.array([10, -30, 0], dtype=np.int64),
        "y": np.array([[1, 2.5, 4], [3, 5, -1]], dtype=np.float32),
    }
    # y: |d| = [0, .5, 0, 1, 4, 0]; rel = .5/2.5, 1/4, 4/5; argmax live [2, 0], shadow [2, 1].
    # z: |d| = 10 at -20 vs -30, rel 10/30.
    diffs = compare(live, shadow)
    assert diffs == [("y", 4.0, 0.8, 1, 2), ("z", 10.0, pytest.approx(1 / 3, abs=0, rel=1e-15), -1, -1)]
    assert diffs.rows_total == 2
    # Symmetric in live and shadow, apart from the order of the entries.
    assert compare(shadow, live) == [diffs[1], diffs[0]]
    for entry in diffs:
        assert [type(v) for v in entry] == [str, float, float, int, int]


@pytest.mark.parametrize(
    ("live", "shadow", "max_abs", "max_rel"),
    [
        ([1.0, -2.0], [-1.0, -2.0], 2.0, 2.0),  # a sign flip is the largest relative difference
        ([0.0, 0.0], [0.0, 1e-30], 1e-30, 1.0),  # 0/0 counts as 0, x vs 0 as 1
        ([-0.0], [0.0], 0.0, 0.0),
        ([3.0, 100.0], [3.0, 101.0], 1.0, 1 / 101),
        ([np.nan, 1.0], [np.nan, 1.0], 0.0, 0.0),  # both NaN: no difference
        ([np.nan, 1.0, 2.0], [np.nan, 1.0, 3.0], 1.0, 1 / 3),
        ([np.nan, 1.0], [0.0, 1.0], math.inf, math.inf),  # exactly one NaN
        ([1.0, 1.0], [1.0, np.nan], math.inf, math.inf),
        ([np.inf, -np.inf, 1.0], [np.inf, -np.inf, 1.0], 0.0, 0.0),  # equal infinities
        ([np.inf, 1.0], [np.inf, 2.0], 1.0, 0.5),
        ([np.inf], [-np.inf], math.inf, math.inf),  # infinities that differ
        ([np.inf, 0.0], [1e300, 0.0], math.inf, math.inf),
        ([-1e308, 1.0], [1e308, 1.0], math.inf, 2.0),  # |s - l| overflows float64; max_rel does not
        ([], [], 0.0, 0.0),
    ],
)
def test_difference_rules(live: list[float], shadow: list[float], max_abs: float, max_rel: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from inf - inf, 0 / 0 or overflow
        for a, b in ((live, shadow), (shadow, live)):
            ((_, got_abs, got_rel, agree, rows),) = compare({"o": np.array(a)}, {"o": np.array(b)})
            assert (got_abs, got_rel, agree, rows) == (max_abs, pytest.approx(max_rel, rel=1e-15), -1, -1)


def test_bool_and_integer_outputs_are_compared_as_float64() -> None:
    live = {"b": np.array([[True, False], [False, True]]), "u": np.array([2**53, 7], dtype=np.uint64)}
    shadow = {"b": np.array([[True, False], [True, False]]), "u": np.array([2**53, 8], dtype=np.int64)}
    assert compare(live, shadow) == [("b", 1.0, 1.0, 1, 2), ("u", 1.0, 1 / 8, -1, -1)]


def test_argmax_agreement_rows() -> None:
    rng = np.random.default_rng(0)
    live = rng.standard_normal((2, 3, 4))
    shadow = live.copy()
    shadow[0, 1] = shadow[0, 1, ::-1]  # reversing a row moves its argmax (4 distinct values)
    shadow[1, 2] += 10.0  # a constant shift does not
    ((_, _, _, agree, rows),) = compare({"p": live}, {"p": shadow})
    assert (agree, rows) == (5, 6)
    # Not classifier-like: a last dimension of 1, a 1-d or 0-d array.
    for shape in [(4, 1), (4,), ()]:
        assert compare({"p": np.zeros(shape)}, {"p": np.ones(shape)}) == [("p", 1.0, 1.0, -1, -1)]
    # An empty batch still has rows: none.
    assert compare({"p": np.zeros((0, 3))}, {"p": np.zeros((0, 3))}) == [("p", 0.0, 0.0, 0, 0)]


def test_argmax_uses_the_original_dtypes() -> None:
    # As float64, 2**53 and 2**53 + 1 tie and argmax would pick index 0.
    live = {"p": np.array([[2**53, 2**53 + 1]], dtype=np.int64)}
    shadow = {"p": np.array([[0, 1]], dtype=np.int64)}
    assert compare(live, shadow)[0][3:] == (1, 1)


def test_only_shared_names_in_live_order_and_rows_total() -> None:
    live = {"a": np.zeros(()), "b": np.zeros((3, 2)), "c": np.ones(5)}
    shadow = {"c": np.ones(5), "b": np.zeros((3, 2)), "extra": np.zeros(1)}
    diffs = compare(live, shadow)
    assert [d[0] for d in diffs] == ["b", "c"]
    assert diffs.rows_total == 3  # dim 0 of "b", the first compared output
    assert compare({"a": np.zeros(())}, {"a": np.zeros(())}).rows_total == 0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(BadRequest, match=r"output 'y': shapes differ: live \[2, 3\], shadow \[2, 4\]"):
        compare({"y": np.zeros((2, 3))}, {"y": np.zeros((2, 4))})
    with pytest.raises(BadRequest, match=r"output 'z': shapes differ: live \[3\], shadow \[\]"):
        compare({"y": np.zeros(2), "z": np.zeros(3)}, {"y": np.zeros(2), "z": np.zeros(())})


def test_no_shared_name_raises() -> None:
    with pytest.raises(BadRequest, match=r"no output in common: live has \['a', 'y'\], shadow has \['b'\]") as info:
        compare({"y": np.zeros(1), "a": np.zeros(1)}, {"b": np.zeros(1)})
    assert info.value.status == 400
    with pytest.raises(BadRequest, match="no output in common"):
        compare({}, {"b": np.zeros(1)})


# -- pack_stats -------------------------------------------------------------------------------------------


def test_pack_stats_unpacks_to_plain_types() -> None:
    live = {"y": np.array([[1, 2, 4], [4, 1, -1]], dtype=np.float32), "z": np.array([1.0, np.nan])}
    shadow = {"y": np.array([[1, 2.5, 4], [3, 5, -1]], dtype=np.float32), "z": np.array([1.0, 2.0])}
    raw = msgpack.unpackb(pack_stats(compare(live, shadow)))
    assert raw == [2, [["y", 4.0, 0.8, 1, 2], ["z", math.inf, math.inf, -1, -1]]]
    rows_total, entries = raw
    assert type(rows_total) is int
    for entry in entries:
        assert [type(v) for v in entry] == [str, float, float, int, int]


def test_pack_stats_of_a_plain_sequence() -> None:
    diffs = [("y", np.float64(0.25), np.float32(0.5), np.int64(3), 4)]  # numpy scalars become plain numbers
    assert msgpack.unpackb(pack_stats(diffs, rows_total=np.int64(4))) == [4, [["y", 0.25, 0.5, 3, 4]]]
    assert msgpack.unpackb(pack_stats([], 0)) == [0, []]
    with pytest.raises(TypeError, match="rows_total is required"):
        pack_stats(diffs)
    # An explicit rows_total wins over the one compare() carries.
    diffs = compare({"y": np.zeros((3, 2))}, {"y": np.zeros((3, 2))})
    assert msgpack.unpackb(pack_stats(diffs, 7))[0] == 7


def test_live_reply_to_stats_end_to_end() -> None:
    for fmt, binary in [(FMT_JSON, [False, False]), (FMT_BINARY, [True, False]), (FMT_MSGPACK, [False, False])]:
        body, hlen = reply(fmt, 3, [0, 1], binary)
        y, z = outputs(3)
        shadow = {"y": y + np.float32(0.5), "z": z}
        stats = msgpack.unpackb(pack_stats(compare(decode_reply(fmt, body, hlen), shadow)))
        assert stats[0] == 3
        (name, max_abs, max_rel, agree, rows), z_entry = stats[1]
        assert (name, agree, rows) == ("y", 3, 3)
        assert max_abs == pytest.approx(0.5, rel=1e-6) and 0 < max_rel <= 2
        assert z_entry == ["z", 0.0, 0.0, -1, -1]
