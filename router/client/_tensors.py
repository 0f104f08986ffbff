"""numpy arrays <-> the tensor encodings of the wire formats (OIP JSON, OIP binary, msgpack).

Everything on the wire is little-endian, C order, no padding (docs/protocol.md,
OIP binary tensor extension); :func:`to_wire` makes an array so, copying only
when it is not already.

JSON has no number for NaN or the infinities: JSON data carries them as the
strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the proto3 JSON mapping of
floats, as the server writes them), both ways.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..proto.meta import DATATYPES, nonfinite_floats

__all__ = ["to_wire", "raw_bytes", "from_buffer", "from_json", "json_data", "json_tensors", "binary_tensors",
           "msgpack_tensors", "msgpack_outputs", "WIRE_DTYPES"]

#: OIP datatype -> little-endian numpy dtype.
WIRE_DTYPES: dict[str, np.dtype] = {dt: np.dtype(name).newbyteorder("<") for dt, name in DATATYPES.items()}
# Keyed by (kind, itemsize) so that both byte orders of a dtype find their datatype.
_BY_KIND: dict[tuple[str, int], str] = {(d.kind, d.itemsize): dt for dt, d in WIRE_DTYPES.items()}


def to_wire(name: str, value: Any) -> tuple[str, np.ndarray]:
    """``value`` as ``(OIP datatype, little-endian C-contiguous array)``.

    Args:
        name: the input's name, for the error message.
        value: a numpy array (anything ``np.asarray`` takes is accepted).

    Raises:
        TypeError: the dtype has no OIP datatype the server serves (complex,
            strings, objects, float128, datetimes...).
    """
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    dt = arr.dtype
    datatype = _BY_KIND.get((dt.kind, dt.itemsize))
    if datatype is None:
        raise TypeError(f"input {name!r}: numpy dtype {dt} has no supported OIP datatype "
                        f"(supported: {', '.join(DATATYPES.values())})")
    wire = WIRE_DTYPES[datatype]
    if dt != wire:  # big-endian (or a big-endian host): byte-swap once here
        arr = arr.astype(wire)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return datatype, arr


def raw_bytes(arr: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array (0-d and empty arrays too), without copying."""
    return arr.reshape(-1).view(np.uint8).data


def from_buffer(buf: bytes, offset: int, nbytes: int, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """View ``nbytes`` of ``buf`` at ``offset`` as an array (read-only unless it had to be copied).

    Raises:
        ValueError: unknown datatype, or a byte count that does not match the shape.
    """
    dtype = _dtype(datatype, name)
    if not isinstance(shape, list):
        raise ValueError(f"output {name!r}: 'shape' must be a list, got {shape!r}")
    count = math.prod(shape)
    if nbytes != count * dtype.itemsize or offset + nbytes > len(buf):
        raise ValueError(f"output {name!r}: {nbytes} bytes of data do not hold shape {shape} of {datatype}")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
    if not arr.flags.aligned:
        # Binary data follows a JSON header of any length; compiled kernels need aligned elements.
        arr = arr.copy()
    return arr


def from_json(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """An OIP JSON ``data`` list (flat or nested) as an array of ``shape``; for FP datatypes the
    strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` are those floats.

    Raises:
        ValueError: unknown datatype, data that does not fill the shape, or another string.
    """
    dtype = _dtype(datatype, name)
    if dtype.kind == "f":
        inferred = np.asarray(data)
        if inferred.dtype.kind == "U":  # strings among the numbers: only these three are floats
            try:
                data = nonfinite_floats(data)
            except ValueError as exc:
                raise ValueError(f"output {name!r}: {exc}") from None
    return np.asarray(data, dtype=dtype).reshape(shape)


def json_data(arr: np.ndarray) -> list:
    """A C-contiguous array as a flat OIP JSON ``data`` list: NaN and infinities as their proto3 strings."""
    # tolist() gives exact Python floats, whose repr round-trips through float32/16.
    data = arr.reshape(-1).tolist()
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        data = [v if math.isfinite(v) else "NaN" if v != v else "Infinity" if v > 0 else "-Infinity" for v in data]
    return data


def _dtype(datatype: str, name: str) -> np.dtype:
    dtype = WIRE_DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"output {name!r}: unsupported datatype {datatype!r} in the reply")
    return dtype


# -- request tensors -----------------------------------------------------------------------------------------


def json_tensors(inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """OIP JSON input tensors with flat ``data`` lists.

    Raises:
        TypeError: an input's dtype is not supported.
    """
    out = []
    for name, value in inputs.items():
        datatype, arr = to_wire(name, value)
        out.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": json_data(arr)})
    return out


def binary_tensors(inputs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[memoryview]]:
    """OIP input tensors carrying ``binary_data_size``, and their raw bytes in the same order.

    Raises:
        TypeError: an input's dtype is not supported.
    """
    specs = []
    blobs = []
    for name, value in inputs.items():
        datatype, arr = to_wire(name, value)
        blob = raw_bytes(arr)
        specs.append({"name": name, "shape": list(arr.shape), "datatype": datatype,
                      "parameters": {"binary_data_size": blob.nbytes}})
        blobs.append(blob)
    return specs, blobs


def msgpack_tensors(inputs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``inputs`` map of a msgpack inference body (data as memoryviews: msgpack packs them as bin).

    Raises:
        TypeError: an input's dtype is not supported.
    """
    out = {}
    for name, value in inputs.items():
        datatype, arr = to_wire(name, value)
        out[name] = {"datatype": datatype, "shape": list(arr.shape), "data": raw_bytes(arr)}
    return out


def msgpack_outputs(raw: Any) -> dict[str, np.ndarray]:
    """Decode the ``outputs`` map of a msgpack inference response.

    Raises:
        ValueError: the map is malformed.
    """
    if not isinstance(raw, dict):
        raise ValueError("msgpack reply: 'outputs' must be a map")
    out = {}
    for name, t in raw.items():
        if not isinstance(t, dict) or not isinstance(t.get("data"), bytes):
            raise ValueError(f"msgpack reply: output {name!r} must be a map with bin 'data'")
        data, datatype, shape = t["data"], t.get("datatype"), t.get("shape")
        if not isinstance(datatype, str) or not isinstance(shape, list):
            raise ValueError(f"msgpack reply: output {name!r} needs a str 'datatype' and a list 'shape'")
        out[name] = from_buffer(data, 0, len(data), datatype, shape, name)
    return out
