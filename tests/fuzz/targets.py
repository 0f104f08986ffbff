"""Fuzz targets: each takes the fuzzer's bytes and returns None.

A target lets through only the typed errors its code documents (``FrameError``, ``HttpHeadError``,
``BadRequest``, ``ConfigError``); any other exception, an extension that disagrees with its twin, or
a broken invariant is an ``AssertionError`` or the exception itself: a crash to libFuzzer, a failure
to ``tests/test_fuzz.py``. Targets are deterministic and keep no state between inputs.

Input layouts (``corpus/<target>/`` holds files in these layouts):

* ``frames``: 2 bytes max_frame - 1, 1 byte chunk count ``c`` (mod 8), ``c`` chunk sizes, then the
  stream, fed in chunks of those sizes in turn (0: an empty read).
* ``envelope``: a request frame body (``[id, model, version, key, request]``).
* ``http_head``: 1 flag byte (bit 0: insert ~MAX_HEAD bytes of padding, at the position and of the
  size the next 2 bytes say; bit 1: pass a bytearray; bits 2-4: start offset), then the buffer.
* ``oip_json``: an OIP JSON body.
* ``oip_binary``: 2 bytes Inference-Header-Content-Length (big-endian), then the body.
* ``config_toml``: the text of a config.toml, read by ``load_config`` from a file.
* ``config_struct``: choices building a decoded document (dicts, lists, numbers, strings, as
  TOML or the admin API's JSON give them) for ``parse_config`` and ``parse_model``.
"""

from __future__ import annotations

import atexit
import inspect
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from router import _http_py, httpparse
from router.config import (
    AdminConfig,
    Config,
    ModelConfig,
    ServerConfig,
    StoreConfig,
    VersionConfig,
    load_config,
    parse_config,
    parse_model,
    parse_version,
    settings,
)
from router.proto import _framing_py, framing
from router.proto.errors import BadRequest, ConfigError, FrameError, HttpHeadError
from router.proto.link import FMT_BINARY, FMT_JSON
from router.proto.meta import DATATYPES, ModelMeta, parse_meta
from runtime.codecs import decode_request, encode_response

__all__ = ["TARGETS", "TOKENS", "Draw"]


class Draw:
    """Reads the fuzzer's bytes as a sequence of choices; past the end every choice is 0."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        pos = self.pos
        self.pos = pos + 1
        return self.data[pos] if pos < len(self.data) else 0

    def uint(self, size: int) -> int:
        """A big-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def _outcome(fn: Callable[..., Any], errors: type[Exception] | tuple[type[Exception], ...], *args: Any,
             **kwargs: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``("error", status)`` for the typed errors; anything else propagates."""
    try:
        return "ok", fn(*args, **kwargs)
    except errors as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return "error", exc.status  # type: ignore[union-attr]


# -- framing: the scanner and the envelope -----------------------------------------------------------------

#: The twin, and the extension when the facade chose it (``ROUTER_NO_EXTENSIONS=1`` fuzzes the twin alone).
FRAMING = [_framing_py] + ([framing._impl] if framing.EXTENSION else [])


def _frames_model(stream: bytes, max_frame: int) -> tuple[list[bytes], int | None, int]:
    """What any scanner must make of ``stream``, however it is cut into reads: the frames, the
    error status (None: no error), and the bytes left buffered. A header is judged as soon as its
    four bytes are in, so the cuts change nothing."""
    out = []
    pos = 0
    while len(stream) - pos >= 4:
        n = int.from_bytes(stream[pos:pos + 4], "big")
        if n == 0:
            return out, 400, 0
        if n > max_frame:
            return out, 413, 0
        if len(stream) - pos - 4 < n:
            break
        out.append(stream[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out, None, len(stream) - pos


def _scan(impl: Any, max_frame: int, chunks: list[bytes]) -> tuple[list[bytes], int | None, int, bool]:
    """Feed ``chunks`` to a scanner of ``impl``: (frames, error status, bytes buffered, whether the
    frames before an error were reported).

    Works with both error styles of ``FrameScanner.feed``: raising ``FrameError`` (carrying the
    frames completed before the bad header in ``frames``, or not), and returning those frames while
    setting ``scanner.error``, after which every read gives [].
    """
    scanner = impl.FrameScanner(max_frame)
    got: list[bytes] = []
    status = None
    for chunk in chunks:
        if status is not None:  # after an error reported by attribute: nothing more comes out
            assert scanner.feed(chunk) == [], "frames after an error"
            assert scanner.error is not None, "the error was forgotten"
            continue
        try:
            out = scanner.feed(chunk)
        except FrameError as exc:
            before = getattr(exc, "frames", None)
            if before is not None:
                got.extend(before)
            return got, exc.status, 0, before is not None  # the stream cannot go on
        assert type(out) is list and all(type(f) is bytes for f in out), out
        got.extend(out)
        error = getattr(scanner, "error", None)
        if error is not None:
            assert isinstance(error, FrameError), error
            status = error.status
    return got, status, scanner.buffered if status is None else 0, True


def frames(data: bytes) -> None:
    """``FrameScanner.feed`` over random reads, against :func:`_frames_model` and each other."""
    d = Draw(data)
    max_frame = 1 + d.uint(2)
    sizes = [d.byte() for _ in range(d.byte() % 8)]
    stream = d.rest()
    chunks = []
    pos = empties = 0
    i = 0
    while pos < len(stream):
        size = sizes[i % len(sizes)] if sizes else len(stream)
        i += 1
        if size == 0:
            empties += 1
            if empties > 8:  # only zeros: the rest in one read
                size = len(stream)
        chunks.append(stream[pos:pos + size])
        pos += size
    want, want_status, want_left = _frames_model(stream, max_frame)
    for impl in FRAMING:
        got, status, left, complete = _scan(impl, max_frame, chunks)
        where = f"{impl.__name__}, max_frame {max_frame}, reads {[len(c) for c in chunks]}"
        assert status == want_status, f"{where}: status {status}, expected {want_status}"
        if complete:
            assert got == want, f"{where}: frames {got!r}, expected {want!r}"
        else:  # the frames of the read that hit the error were not reported
            assert got == want[:len(got)], f"{where}: frames {got!r}, expected a prefix of {want!r}"
        assert left == want_left, f"{where}: {left} bytes buffered, expected {want_left}"


_MAP = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


def _msgpack_envelope(body: bytes) -> tuple[int, str, str | None, str | bytes | None, int] | None:
    """The envelope as msgpack-python reads it, or None when it is not ``[uint, str, str|nil,
    str|bin|nil, map]``. Only fixarray and array16 headers count: parse_request refuses an array32 header
    (no encoder writes one for 5 items)."""
    if not body or body[0] not in (0x95, 0xDC):
        return None
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    try:
        if unpacker.read_array_header() != 5:
            return None
        rid, model, version, key = (unpacker.unpack() for _ in range(4))
    except Exception:  # msgpack raises several unrelated types on garbage
        return None
    offset = unpacker.tell()
    if (type(rid) is not int or not 0 <= rid < 2**64 or type(model) is not str
            or not (version is None or type(version) is str) or not (key is None or type(key) in (str, bytes))
            or offset >= len(body) or body[offset] not in _MAP):
        return None
    return rid, model, version, key, offset


def envelope(data: bytes) -> None:
    """``parse_request``: extension and twin agree, and agree with msgpack-python."""
    results = [_outcome(impl.parse_request, FrameError, data) for impl in FRAMING]
    assert all(r == results[0] for r in results), f"extension and twin disagree: {results}"
    kind, value = results[0]
    assert kind == "ok" or value == 400, value
    want = _msgpack_envelope(data)
    assert (kind, value) == ("ok", want) or (kind == "error" and want is None), (
        f"parse_request gives {value!r}, msgpack reads {want!r}")


# -- the HTTP head parser ---------------------------------------------------------------------------------

#: The twin, and the extension when the facade chose it.
HEAD_PARSERS = [_http_py.parse_head] + ([httpparse.parse_head] if httpparse.EXTENSION else [])
MAX_HEAD = _http_py.MAX_HEAD


def http_head(data: bytes) -> None:
    """``parse_head``: extension and twin give equal results or the same status, and the result is a head."""
    d = Draw(data)
    flags = d.byte()
    if flags & 1:  # heads on either side of the 431 limit
        at, size = d.byte(), MAX_HEAD - 128 + d.byte()
        rest = d.rest()
        at = at % (len(rest) + 1)
        buf: bytes | bytearray = rest[:at] + b"a" * size + rest[at:]
    else:
        buf = d.rest()
    if flags & 2:
        buf = bytearray(buf)  # the front passes what it has buffered: bytes or a bytearray
    start = min((flags >> 2) & 7, len(buf))
    results = [_outcome(parse, HttpHeadError, buf, start) for parse in HEAD_PARSERS]
    assert all(r == results[0] for r in results), f"extension and twin disagree: {results}"
    kind, value = results[0]
    stop = buf.find(b"\r\n\r\n", start)
    if kind == "error":
        assert value in (400, 431), value
        assert (value == 431) == (len(buf) - start > MAX_HEAD if stop < 0 else stop + 4 - start > MAX_HEAD)
    elif value is None:
        assert stop < 0 and len(buf) - start <= MAX_HEAD
    else:
        end, method, target, minor, headers = value
        assert end == stop + 4 and end - start <= MAX_HEAD
        assert method.isascii() and method.isupper() and target.startswith("/") and minor in (0, 1)
        assert all(k == k.lower() and k.isascii() and k for k in headers)


# -- the worker's OIP decoders ------------------------------------------------------------------------------

#: Two signatures: batchable with FP32 and INT64 (the demo's shape), and fixed with the odd datatypes.
METAS = [
    parse_meta({
        "name": "fraud", "version": "3",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 8]},
                   {"name": "ids", "datatype": "INT64", "shape": [-1, 3]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
        "example": {"features": [[0.5] * 8], "ids": [[1, 2, 3]]},
    }),
    parse_meta({
        "name": "odd", "version": "1",
        "inputs": [{"name": "mask", "datatype": "BOOL", "shape": [2, 2]},
                   {"name": "half", "datatype": "FP16", "shape": [3]},
                   {"name": "pix", "datatype": "UINT8", "shape": [2, -1]},
                   {"name": "big", "datatype": "UINT64", "shape": [-1]}],
        "outputs": [{"name": "out", "datatype": "FP64", "shape": [2]}],
        "example": {"mask": [[True, False], [False, True]], "half": [1, 2, 3], "pix": [[1], [2]], "big": [1]},
    }),
]
# The NaN policy is new: fuzz both values where decode_request takes it.
_POLICIES: list[dict[str, str]] = [{}]
if "nonfinite" in inspect.signature(decode_request).parameters:
    _POLICIES.append({"nonfinite": "allow"})


def _decode(fmt: int, payload: bytes, header_len: int) -> None:
    """Decode against every signature and policy: only BadRequest may escape, and what decodes can be answered."""
    for meta in METAS:
        for policy in _POLICIES:
            try:
                req = decode_request(fmt, payload, header_len, meta, **policy)
            except BadRequest as exc:
                assert str(exc)
                continue
            _check_request(req, meta)


def _check_request(req: Any, meta: ModelMeta) -> None:
    assert len(req.arrays) == len(meta.inputs)
    for arr, spec in zip(req.arrays, meta.inputs, strict=True):
        assert arr.dtype == np.dtype(DATATYPES[spec.datatype]) and arr.flags.c_contiguous and arr.flags.aligned
        assert len(arr.shape) == len(spec.shape) and all(e in (-1, d) for e, d in zip(spec.shape, arr.shape,
                                                                                      strict=True))
        assert not meta.batchable or arr.shape[0] == req.batch
    assert len(req.binary) == len(req.outputs) == len(set(req.outputs))
    assert all(0 <= i < len(meta.outputs) for i in req.outputs)
    assert req.id is None or type(req.id) is str
    outputs = []
    for spec in meta.outputs:
        shape = [req.batch if d == -1 else d for d in spec.shape]
        outputs.append(np.zeros(shape, DATATYPES[spec.datatype]))
    encode_response(req, outputs, meta)


def oip_json(data: bytes) -> None:
    """``decode_request(FMT_JSON, ...)``: only BadRequest."""
    _decode(FMT_JSON, data, 0)


def oip_binary(data: bytes) -> None:
    """``decode_request(FMT_BINARY, ...)``: only BadRequest."""
    d = Draw(data)
    header_len = d.uint(2)
    _decode(FMT_BINARY, d.rest(), header_len)


# -- the config loader --------------------------------------------------------------------------------------

_scratch: Path | None = None


def _config_file() -> Path:
    """The file ``config_toml`` writes, one per process: in ``$ROUTER_FUZZ_TMP`` (the driver sets it:
    libFuzzer ends the process without running ``atexit``), else in a directory removed at exit."""
    global _scratch
    if _scratch is None:
        folder = os.environ.get("ROUTER_FUZZ_TMP")
        if folder:
            _scratch = Path(folder)
        else:
            _scratch = Path(tempfile.mkdtemp(prefix="router-fuzz-"))
            atexit.register(shutil.rmtree, _scratch, True)
    return _scratch / f"config-{os.getpid()}.toml"


def _check_models(models: tuple[ModelConfig, ...]) -> None:
    # The admin API writes versions back with to_table(): reading that back gives the same version.
    for m in models:
        for v in m.versions:
            assert parse_version(v.to_table(), "v") == v, v


def config_toml(data: bytes) -> None:
    """``load_config`` on a file holding ``data``: only ConfigError (TOML and encoding errors included)."""
    path = _config_file()
    path.write_bytes(data)
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert str(exc)
        return
    _check_models(config.models)


_TABLES = (Config, ServerConfig, ModelConfig, VersionConfig, StoreConfig, AdminConfig)
#: Every key of every table, so documents reach the rules behind them.
_KEYS = sorted({key for cls in _TABLES for key in settings(cls)})
_STRINGS = ["", "x", "1", "a/b", "cpu", "cuda:0", "cuda:", "cuda:x", "127.0.0.1:8080", "[::1]:0", ":80",
            "h:65536", "h:-1", "h:x", "idle", "normal", "reject", "allow", "model-store", "X-User-Id"]
_FLOATS = [0.0, -0.0, 0.5, -1.0, 1e308, math.inf, -math.inf, math.nan, 2.0**53, 1e-300]
_INTS = [0, 1, -1, 64, 65, 1023, 1024, 65535, 65536, 2**31 - 1, 2**31, 3_600_000, 2**63 - 1, -(2**63), 2**64]


def _value(d: Draw, depth: int) -> Any:
    """One value of a decoded document. Keys are strings and integers stay within what TOML (64 bits)
    and JSON (4300 digits) give: parse_config's callers never pass anything else."""
    kind = d.byte() % (12 if depth < 5 else 8)
    if kind == 0:
        return None  # JSON null
    if kind == 1:
        return bool(d.byte() & 1)
    if kind == 2:
        return _INTS[d.byte() % len(_INTS)]
    if kind == 3:
        return int.from_bytes(d.take(1 + d.byte() % 9), "big", signed=True)
    if kind == 4:
        return _FLOATS[d.byte() % len(_FLOATS)]
    if kind == 5:
        return struct.unpack(">d", d.take(8).ljust(8, b"\0"))[0]
    if kind == 6:
        return _STRINGS[d.byte() % len(_STRINGS)]
    if kind == 7:
        return d.take(d.byte() % 16).decode("utf-8", "replace")
    if kind == 8:
        return [_value(d, depth + 1) for _ in range(d.byte() % 4)]
    if kind == 9:
        return [_table(d, depth + 1) for _ in range(d.byte() % 4)]  # an array of tables
    return _table(d, depth + 1)


def _table(d: Draw, depth: int) -> dict[str, Any]:
    out = {}
    for _ in range(d.byte() % 16):
        b = d.byte()
        key = _KEYS[b % len(_KEYS)] if b < 0xF0 else d.take(b & 7).decode("utf-8", "replace")
        out[key] = _value(d, depth)
    return out


def config_struct(data: bytes) -> None:
    """``parse_config`` and ``parse_model`` on a built document: only ConfigError."""
    raw = _table(Draw(data), 0)
    for parse in (lambda: parse_config(raw).models, lambda: (parse_model(raw, "model"),)):
        try:
            models = parse()
        except ConfigError as exc:
            assert str(exc)
            continue
        _check_models(models)


# -- dictionaries: the words a target's code compares with, which mutations alone find slowly ---------------

_JSON_WORDS = ["inputs", "outputs", "name", "datatype", "shape", "data", "parameters", "binary_data_size",
               "binary_data", "binary_data_output", "id", "shared_memory_region", "classification", *DATATYPES,
               "BYTES", "BF16", *sorted({t.name for m in METAS for t in m.inputs + m.outputs}), "NaN", "Infinity",
               "-Infinity"]
_JSON = [json.dumps(w).encode() for w in _JSON_WORDS] + [
    b"NaN", b"Infinity", b"-Infinity", b"true", b"false", b"null", b"-1", b"1e400", b"18446744073709551615", b"[[",
]
#: Target name -> libFuzzer dictionary entries (the driver writes them to a ``-dict`` file).
TOKENS: dict[str, list[bytes]] = {
    "envelope": [b"\x95", b"\xdc\x00\x05", b"\xcf", b"\xce", b"\xd9", b"\xda", b"\xdb", b"\xc4", b"\xc5", b"\xc6",
                 b"\xc0", b"\x80", b"\xde", b"\xdf"],
    "http_head": [b"GET ", b"POST ", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"\r\n", b"\r\n\r\n", b"Host: ",
                  b"Content-Length: ", b"Transfer-Encoding: chunked", b"Expect: 100-continue", b"/v2/models/m/infer"],
    "oip_json": _JSON,
    "oip_binary": _JSON,
    "config_toml": [f"{key} = ".encode() for key in _KEYS] + [
        b"[server]\n", b"[store]\n", b"[admin]\n", b"[[models]]\n", b"[[models.versions]]\n", b'"cpu"',
        b'"cuda:0"', b'"127.0.0.1:8080"', b"true", b"false", b"nan", b"inf", b"1979-05-27T07:32:00Z", b"'''",
        b'"""', b"0x", b"1e3",
    ],
}

#: Target name -> function; the names are the directories of ``corpus/``.
TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": frames,
    "envelope": envelope,
    "http_head": http_head,
    "oip_json": oip_json,
    "oip_binary": oip_binary,
    "config_toml": config_toml,
    "config_struct": config_struct,
}
