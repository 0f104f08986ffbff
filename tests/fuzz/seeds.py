"""The good inputs the corpus starts from: real frames, request heads, OIP bodies and configs.

``python -m tests.fuzz seed`` writes them as ``corpus/<target>/seed-<name>`` (overwriting the
seeds, leaving what runs found). They follow the tests' own examples (tests/test_framing.py,
tests/test_http_front.py, tests/test_codecs.py) and the repo's config.toml, in the layouts of
:mod:`.targets`.
"""

from __future__ import annotations

import json
import struct
import tomllib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from router.proto import link

from . import targets

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _envelope(rid: int, model: str, version: str | None, key: str | bytes | None, body: dict) -> bytes:
    return msgpack.packb([rid, model, version, key, body])


def _mp_request(n: int = 1) -> dict:
    data = np.arange(n * 8, dtype=np.float32).tobytes()
    return {"inputs": {"features": {"datatype": "FP32", "shape": [n, 8], "data": data}}}


def _frames_input(stream: bytes, max_frame: int = 65536, reads: tuple[int, ...] = ()) -> bytes:
    return (max_frame - 1).to_bytes(2, "big") + bytes([len(reads)]) + bytes(reads) + stream


def _envelopes() -> dict[str, bytes]:
    return {
        "protocol-example": _envelope(7, "fraud", None, "user-42", _mp_request()),  # docs/protocol.md
        "pinned-version": _envelope(2**32 + 5, "fraud", "2", None, _mp_request(2)),
        "bin-key": _envelope(0, "mlp-small", None, b"\xff\x00key", {"inputs": {}}),
        "array16": b"\xdc\x00\x05" + msgpack.packb(2**64 - 1) + msgpack.packb("m") + b"\xc0\xc0\x80",
        "str8-model": b"\x95\x01\xd9\x03abc\xd9\x01v\xc4\x01k\x80",
    }


def _http(method: str = "POST", path: str = "/v2/models/mlp-small/infer", version: str = "1.1",
          headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_ROW = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [-1.0, -0.5, 0.5, 1.0]}]})


def _oip_fraud(n: int = 2, nested: bool = False, **extra: Any) -> dict:
    feats = np.linspace(-1, 1, n * 8, dtype=np.float32).reshape(n, 8)
    ids = np.arange(n * 3, dtype=np.int64).reshape(n, 3) - 3
    body: dict[str, Any] = {"inputs": [
        {"name": "features", "shape": [n, 8], "datatype": "FP32",
         "data": feats.tolist() if nested else feats.reshape(-1).tolist()},
        {"name": "ids", "shape": [n, 3], "datatype": "INT64", "data": ids.reshape(-1).tolist()},
    ]}
    body.update(extra)
    return body


_ODD = {"inputs": [
    {"name": "mask", "datatype": "BOOL", "shape": [2, 2], "data": [True, False, False, True]},
    {"name": "half", "datatype": "FP16", "shape": [3], "data": [1, 2.5, -3]},
    {"name": "pix", "datatype": "UINT8", "shape": [2, 1], "data": [[1], [255]]},
    {"name": "big", "datatype": "UINT64", "shape": [2], "data": [0, 2**64 - 1]},
]}


def _binary(header: dict, *blobs: bytes) -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(2, "big") + head + b"".join(blobs)


def _binary_bodies() -> dict[str, bytes]:
    feats = np.linspace(-1, 1, 16, dtype=np.float32)
    ids = np.arange(6, dtype=np.int64)
    mixed = _oip_fraud(2)
    mixed["inputs"][0] = {"name": "features", "shape": [2, 8], "datatype": "FP32",
                          "parameters": {"binary_data_size": feats.nbytes}}
    both = _oip_fraud(2, outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    for i, arr in enumerate((feats, ids)):
        both["inputs"][i] = {**both["inputs"][i], "parameters": {"binary_data_size": arr.nbytes}}
        del both["inputs"][i]["data"]
    odd = {"inputs": [dict(t) for t in _ODD["inputs"]]}
    blobs = [b"\x01\x00\x00\x01", np.array([1, 2.5, -3], "<f2").tobytes()]
    for t, blob in zip(odd["inputs"], blobs, strict=False):
        del t["data"]
        t["parameters"] = {"binary_data_size": len(blob)}
    return {
        "mixed": _binary(mixed, feats.tobytes()),
        "all-binary-outputs": _binary({**both, "parameters": {"binary_data_output": True}}, feats.tobytes(),
                                      ids.tobytes()),
        "odd-datatypes": _binary(odd, *blobs),
        "json-only": _binary(_oip_fraud(1)),
    }


def _toml_configs() -> dict[str, bytes]:
    return {
        "repo-config": (ROOT / "config.toml").read_bytes(),
        "minimal": b'[store]\npath = "s"\n[[models]]\nname = "m"\n[[models.versions]]\nversion = "1"\n',
        "shadow-admin": (b'[server]\nhttp = "[::1]:0"\nmsgpack = ""\nshadow_priority = "normal"\n'
                         b'drain_timeout_s = 2.5\n[admin]\ntoken_file = "token"\n[[models]]\nname = "fraud"\n'
                         b'routing_key = "X-User-Id"\nkeep_previous_s = 0\n[[models.versions]]\nversion = 1\n'
                         b'cpus = [0]\nthreads = 2\nmax_batch_delay_us = 500\n[[models.versions]]\nversion = "2"\n'
                         b'shadow = 0.25\nshadow_queue = 8\ndevice = "cuda:0"\noptimize = false\n'),
    }


def encode_document(value: Any, depth: int = 0, top: bool = True) -> bytes:
    """The ``config_struct`` input whose choices build ``value`` (a decoded document): the inverse of
    ``targets._table`` / ``targets._value``."""
    if top:
        return _encode_table(value, depth)
    if value is None:
        return b"\x00"
    if type(value) is bool:
        return bytes([1, int(value)])
    if type(value) is int:
        raw = value.to_bytes(9, "big", signed=True).lstrip(b"\0") or b"\0"
        if raw[0] & 0x80:  # keep the sign
            raw = b"\0" + raw
        return bytes([3, len(raw) - 1]) + raw
    if type(value) is float:
        return b"\x05" + struct.pack(">d", value)
    if type(value) is str:
        if value in targets._STRINGS:
            return bytes([6, targets._STRINGS.index(value)])
        raw = value.encode()
        assert len(raw) < 16, value
        return bytes([7, len(raw)]) + raw
    if type(value) is list and value and all(type(v) is dict for v in value):
        return bytes([9, len(value)]) + b"".join(_encode_table(v, depth + 1) for v in value)
    if type(value) is list:
        return bytes([8, len(value)]) + b"".join(encode_document(v, depth + 1, False) for v in value)
    if type(value) is dict:
        return b"\x0a" + _encode_table(value, depth + 1)
    raise TypeError(f"no choice builds {value!r}")


def _encode_table(table: dict, depth: int) -> bytes:
    assert len(table) < 16, table
    out = bytearray([len(table)])
    for key, value in table.items():
        if key in targets._KEYS:
            out.append(targets._KEYS.index(key))
        else:
            raw = key.encode()
            assert len(raw) < 8, key
            out += bytes([0xF0 | len(raw)]) + raw
        out += encode_document(value, depth, False)
    return bytes(out)


def seeds() -> dict[str, dict[str, bytes]]:
    """Target -> seed name -> input."""
    envelopes = _envelopes()
    stream = b"".join(_frame(e) for e in envelopes.values())
    link_stream = (link.pack(1, link.FMT_MSGPACK, 0, msgpack.packb(_mp_request()))
                   + link.pack(2, 200, 0, b"\x80") + link.pack(2**32 - 1, link.KIND_WARMUP, 0, b""))
    configs = _toml_configs()
    documents = {name: tomllib.loads(text.decode()) for name, text in configs.items()}
    return {
        "frames": {
            "one-read": _frames_input(stream),
            "small-reads": _frames_input(stream, reads=(1, 3, 0, 7)),
            "link-frames": _frames_input(link_stream, reads=(5, 40)),
            "zero-length": _frames_input(_frame(b"a") + b"\0\0\0\0" + _frame(b"never"), reads=(3,)),
            "oversized": _frames_input(_frame(b"ok") + (101).to_bytes(4, "big") + b"x" * 101, max_frame=100),
            "partial": _frames_input(stream[:-3], reads=(2,)),
        },
        "envelope": envelopes,
        "http_head": {
            "post-infer": b"\0" + _http(headers={"Content-Length": str(len(_ROW)), "Content-Type":
                                                 "application/json", "X-User-ID": "\u00e9t\u00e9"},
                                        body=_ROW.encode()),
            "get-ready": b"\0" + _http("GET", "/v2/health/ready", "1.0"),
            "pipelined": b"\x10" + b"junk" + _http("GET", "/metrics") + _http("DELETE", "/b", headers={"X": "y"}),
            "repeated": b"\x02" + b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\nAccept: a\r\naccept: b\r\n"
                                 b"Content-Length:  12 \r\n\r\nBODY",
            "chunked": b"\0" + _http(headers={"Transfer-Encoding": "chunked", "Expect": "100-continue"}),
            "near-431": b"\x01\x20\x80" + _http(headers={"X-Long": ""}),
            "bare-lf": b"\0GET / HTTP/1.1\nHost: a\r\n\r\n",
        },
        "oip_json": {
            "flat": json.dumps(_oip_fraud(2)).encode(),
            "nested-id-outputs": json.dumps(_oip_fraud(1, nested=True, id="req-1", outputs=[
                {"name": "probabilities"}, {"name": "label", "parameters": {"binary_data": True}}])).encode(),
            "empty-batch": json.dumps(_oip_fraud(0, parameters={"binary_data_output": True})).encode(),
            "odd-datatypes": json.dumps(_ODD).encode(),
            "nonfinite": json.dumps(_oip_fraud(1)).replace("-1.0", "NaN").replace("1.0", '"Infinity"').encode(),
        },
        "oip_binary": _binary_bodies(),
        "config_toml": configs,
        "config_struct": {name: encode_document(doc) for name, doc in documents.items()},
    }


def write() -> None:
    """Write every seed into ``corpus/<target>/seed-<name>``, checking the config documents' encoding."""
    for target, named in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in named.items():
            (folder / f"seed-{name}").write_bytes(data)
    for name, text in _toml_configs().items():
        doc = tomllib.loads(text.decode())
        assert targets._table(targets.Draw(encode_document(doc)), 0) == doc, name
