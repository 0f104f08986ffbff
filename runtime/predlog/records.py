"""Records from the router, decoded into rows of the prediction log.

A record is a msgpack array (the layout is :data:`FIELDS`, packed by :mod:`router.predlog`)::

    [route, request_id, time, model, version, protocol, key, status, latency_s,
     fmt, header_len, body, reply_header_len, reply, live_version, shadow_reply]

``route`` is ``"live"`` or ``"shadow"``. ``body`` is the caller's request as it came, ``reply`` the
live version's reply (or, when ``status`` is not 200 on the live route, the error message). A shadow
record adds the live version it was compared with and ``shadow_reply``: the shadow's outputs as a
msgpack reply body on 200, else its error message. The router never decodes any of it: it happens
here, in the log's own process.

One request becomes one row per batch row (dim 0), so that ``input.<name>`` columns stack into a
training matrix; a model that does not batch gives one row per request. Tensors whose signature has
one dimension are scalar columns, others lists (the row's values, flattened).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa

from router.proto.errors import BadRequest, ConfigError
from router.proto.link import FMT_MSGPACK
from router.proto.meta import DATATYPES, ModelMeta, TensorSpec

from ..codecs import decode_reply, decode_request

#: The record's fields, in order.
FIELDS = ("route", "request_id", "time", "model", "version", "protocol", "key", "status", "latency_s", "fmt",
          "header_len", "body", "reply_header_len", "reply", "live_version", "shadow_reply")

#: The columns every file has, before the tensors'.
BASE = pa.schema([
    ("request_id", pa.string()),
    ("client_id", pa.string()),
    ("time", pa.timestamp("us", tz="UTC")),
    ("model", pa.string()),
    ("version", pa.string()),
    ("route", pa.string()),
    ("live_version", pa.string()),
    ("protocol", pa.string()),
    ("key_hash", pa.string()),
    ("status", pa.int16()),
    ("latency_ms", pa.float64()),
    ("row", pa.int32()),
    ("error", pa.string()),
])

#: ``(model, version) -> meta`` (None when the version's meta.json cannot be read).
MetaOf = Callable[[str, str], ModelMeta | None]


def _scalar(t: TensorSpec, batchable: bool) -> bool:
    """Whether one row of ``t`` is one value: ``[-1]`` or ``[-1, 1]`` for a batching model."""
    return all(d == 1 for d in (t.shape[1:] if batchable else t.shape))


def _arrow_type(t: TensorSpec, batchable: bool) -> pa.DataType:
    dt = "float32" if t.datatype == "FP16" else DATATYPES[t.datatype]  # half floats are read as float32
    scalar = pa.from_numpy_dtype(np.dtype(dt))
    return scalar if _scalar(t, batchable) else pa.list_(scalar)


def schema_of(meta: ModelMeta) -> pa.Schema:
    """The log's schema for one version: :data:`BASE`, then ``input.<name>`` per input, ``output.<name>``
    per output and ``live.<name>`` per output (the live outputs a shadow was compared with; null on live rows)."""
    b = meta.batchable
    fields = list(BASE)
    fields += [pa.field(f"input.{t.name}", _arrow_type(t, b)) for t in meta.inputs]
    fields += [pa.field(f"output.{t.name}", _arrow_type(t, b)) for t in meta.outputs]
    fields += [pa.field(f"live.{t.name}", _arrow_type(t, b)) for t in meta.outputs]
    return pa.schema(fields)


def key_hash(key: str | bytes | None) -> str | None:
    """A short hash of the routing key: it groups a caller's rows without keeping who the caller is."""
    if key is None:
        return None
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class Rows:
    """One record as rows: ``columns`` in ``schema`` order, ``len(columns[i]) == n`` for each."""

    __slots__ = ("model", "version", "schema", "columns", "n")

    def __init__(self, model: str, version: str, schema: pa.Schema, columns: list[list], n: int) -> None:
        self.model = model
        self.version = version
        self.schema = schema
        self.columns = columns
        self.n = n


def rows_of(record: Sequence[Any], meta_of: MetaOf) -> Rows:
    """Decode one record (:data:`FIELDS`) into rows.

    A body or reply that does not decode (the request was refused as malformed, say) leaves its columns
    null: the row still says what happened (status, error, latency).

    Raises:
        ValueError: the record does not have the layout of :data:`FIELDS` (a router bug).
    """
    if len(record) != len(FIELDS):
        raise ValueError(f"a prediction log record has {len(FIELDS)} fields, got {len(record)}")
    (route, request_id, when, model, version, protocol, key, status, latency, fmt, hlen, body, reply_hlen, reply,
     live_version, shadow_reply) = record
    meta = meta_of(model, version)
    error: str | None = None
    client_id: str | None = None
    inputs: list[np.ndarray] | None = None
    outputs: dict[str, np.ndarray] | None = None
    live: dict[str, np.ndarray] | None = None
    if meta is not None:
        try:
            req = decode_request(fmt, body, hlen, meta, "allow")
            client_id, inputs = req.id, req.arrays
        except BadRequest:
            pass
    if route == "live":
        if status == 200:
            outputs = _reply(fmt, reply, reply_hlen)
        else:
            error = _text(reply)
    else:
        live = _reply(fmt, reply, reply_hlen)
        if status == 200 and shadow_reply is not None:
            outputs = _reply(FMT_MSGPACK, shadow_reply, 0)
        elif status != 200:
            error = _text(shadow_reply)
    specs_in: tuple[TensorSpec, ...] = ()
    specs_out: tuple[TensorSpec, ...] = ()
    if meta is None:  # no signature to decode with: the row still says what happened
        n, batchable = 1, False
    else:
        batchable, specs_in, specs_out = meta.batchable, meta.inputs, meta.outputs
        n = _rows(inputs, outputs, live) if batchable else 1
    base: list[Any] = [request_id, client_id, datetime.fromtimestamp(when, UTC), model, version, route, live_version,
                       protocol, key_hash(key), status, latency * 1000.0]
    columns: list[list] = [[v] * n for v in base]
    columns.append(list(range(n)))
    columns.append([error] * n)
    for k, t in enumerate(specs_in):
        columns.append(_cells(inputs[k] if inputs is not None else None, _scalar(t, batchable), n, batchable))
    for values in (outputs, live):
        for t in specs_out:
            arr = values.get(t.name) if values is not None else None
            columns.append(_cells(arr, _scalar(t, batchable), n, batchable))
    return Rows(model, version, schema_of(meta) if meta is not None else BASE, columns, n)


def _reply(fmt: int, payload: bytes | None, hlen: int) -> dict[str, np.ndarray] | None:
    if payload is None:
        return None
    try:
        return decode_reply(fmt, payload, hlen)
    except BadRequest:
        return None


def _text(payload: bytes | None) -> str | None:
    return None if payload is None else bytes(payload).decode(errors="replace")


def _rows(*groups: Sequence[np.ndarray] | dict[str, np.ndarray] | None) -> int:
    """Rows of a batching model's record: dim 0 of its tensors when they agree, else 1."""
    dims = {a.shape[0] for g in groups if g for a in (g.values() if isinstance(g, dict) else g) if a.ndim}
    return dims.pop() if len(dims) == 1 and next(iter(dims)) > 0 else 1


def _cells(arr: np.ndarray | None, scalar: bool, n: int, batchable: bool) -> list:
    """One column's values for ``n`` rows: row ``i`` of ``arr`` (flattened; the whole tensor for a model
    that does not batch), or nulls where ``arr`` is missing or does not have the rows."""
    if arr is None:
        return [None] * n
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if not batchable:
        flat = arr.reshape(-1)
        return [(flat[0].item() if flat.size == 1 else None) if scalar else flat]
    if arr.ndim == 0 or arr.shape[0] != n:
        return [None] * n
    if scalar:
        return arr.reshape(n).tolist() if arr.size == n else [None] * n
    return list(arr.reshape(n, -1))


def read_meta_cached(store: Path) -> MetaOf:
    """A :data:`MetaOf` over the model store at ``store``, reading each version's meta.json once."""
    from router.proto.meta import read_meta

    cache: dict[tuple[str, str], ModelMeta | None] = {}

    def meta_of(model: str, version: str) -> ModelMeta | None:
        key = (model, version)
        if key not in cache:
            try:
                cache[key] = read_meta(store / model / version)
            except (ConfigError, OSError):
                cache[key] = None
        return cache[key]

    return meta_of


def unpack(frame: bytes) -> list[Any]:
    """A record frame's fields (msgpack), raising ValueError on garbage."""
    try:
        record = msgpack.unpackb(frame)
    except Exception as exc:  # msgpack raises several types on garbage
        raise ValueError(f"undecodable prediction log record: {exc!r}") from None
    if not isinstance(record, list):
        raise ValueError("a prediction log record is a msgpack array")
    return record
