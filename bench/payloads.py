"""The fixed requests every benchmark sends: one row per request, the demo store's example inputs.

Shared by the harness (HTTP bodies for wrk, probes), the floor's checks, the
msgpack client and the micro-benchmarks, so every scenario measures the same bytes.

HTTP bodies come in the three formats the router accepts (``docs/protocol.md``):

* ``json``: Open Inference Protocol v2 JSON, ``Content-Type: application/json``;
* ``binary``: the OIP binary tensor extension: a JSON header whose input says
  ``"parameters": {"binary_data_size": N}``, followed by the N raw little-endian
  bytes of the tensor; the header's length goes in ``Inference-Header-Content-Length``.
  The request asks for binary outputs (``binary_data_output``), so the reply is
  a JSON header plus raw bytes too;
* ``msgpack``: the msgpack inference body (the same bytes a TCP request frame
  carries as item 4), ``Content-Type: application/msgpack``.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass

import msgpack
import numpy as np

#: The HTTP body formats, in the order the harness reports them.
HTTP_FORMATS = ("json", "binary", "msgpack")
#: Header of the OIP binary tensor extension: the length of the JSON part of a body.
HCL = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Payload:
    model: str
    version: str | None  # pinned version (None = let the router's traffic split choose)
    input: str
    row: tuple[float, ...]
    output: str
    out_width: int

    @property
    def answering_version(self) -> str:
        """The version that answers: the pinned one, else "1" (every benchmarked model routes to "1")."""
        return self.version or "1"

    def pinned(self, version: str) -> Payload:
        """This request, pinned to ``version`` (URL path and msgpack envelope)."""
        return dataclasses.replace(self, version=version)

    @property
    def http_path(self) -> str:
        """The router's OIP path: pinned to the version when there is one."""
        if self.version is None:
            return f"/v2/models/{self.model}/infer"
        return f"/v2/models/{self.model}/versions/{self.version}/infer"

    @property
    def floor_path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    def _tensor_head(self) -> dict:
        return {"name": self.input, "datatype": "FP32", "shape": [1, len(self.row)]}

    def _raw(self) -> bytes:
        return struct.pack(f"<{len(self.row)}f", *self.row)

    def oip_json(self) -> bytes:
        """The OIP v2 JSON request body."""
        body = {"inputs": [{**self._tensor_head(), "data": list(self.row)}]}
        return json.dumps(body, separators=(",", ":")).encode()

    def oip_binary(self) -> tuple[bytes, int]:
        """``(body, header_length)`` of the OIP binary-extension request (binary outputs asked for)."""
        raw = self._raw()
        head = json.dumps({"inputs": [{**self._tensor_head(), "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}}, separators=(",", ":")).encode()
        return head + raw, len(head)

    def msgpack_body(self) -> bytes:
        """The msgpack inference body (docs/protocol.md), item 4 of a request frame."""
        return msgpack.packb({"inputs": {self.input: {"datatype": "FP32", "shape": [1, len(self.row)],
                                                      "data": self._raw()}}})

    def http_request(self, fmt: str) -> tuple[bytes, dict[str, str]]:
        """``(body, headers)`` of an HTTP inference request in body format ``fmt`` (see ``HTTP_FORMATS``)."""
        if fmt == "json":
            return self.oip_json(), {"Content-Type": "application/json"}
        if fmt == "binary":
            body, hlen = self.oip_binary()
            return body, {"Content-Type": "application/octet-stream", HCL: str(hlen)}
        if fmt == "msgpack":
            return self.msgpack_body(), {"Content-Type": "application/msgpack"}
        raise ValueError(f"unknown HTTP body format {fmt!r}")

    def frame_parts(self) -> tuple[bytes, bytes]:
        """``(head, tail)`` of a request frame: ``head + id.to_bytes(4, "big") + tail`` is a whole frame.

        The id is always a msgpack uint32 (0xce + 4 bytes) so every frame has the same size.
        """
        env = (b"\xce" + b"\0\0\0\0" + msgpack.packb(self.model) + msgpack.packb(self.version)
               + msgpack.packb(None) + self.msgpack_body())
        body_len = 1 + len(env)  # 0x95 (fixarray of 5) + the items
        head = body_len.to_bytes(4, "big") + b"\x95\xce"
        tail = env[5:]
        return head, tail

    def frame(self, rid: int) -> bytes:
        head, tail = self.frame_parts()
        return head + rid.to_bytes(4, "big") + tail


def _linspace_row(width: int) -> tuple[float, ...]:
    """The demo MLPs' example row: ``round(linspace(-1, 1, width), 4)`` (``modelkit.demo._mlp_example``)."""
    return tuple(round(float(v), 4) for v in np.linspace(-1.0, 1.0, width))


# fraud/1: the example row of its meta.json; pinned to version 1.
FRAUD = Payload("fraud", "1", "features", (3.7728, -0.6088, -0.7934, 0.12, 6.5944, 3.0, 1.8245, 1.0),
                "probabilities", 2)
# mlp-small/1 (4 -> 64 -> 3): its example row; routed without a pin (version 1 is the only live one).
MLP_SMALL = Payload("mlp-small", None, "x", _linspace_row(4), "y", 3)
# mlp-wide/1 (256 -> 1024 -> 1024 -> 10): its example row of 256 floats; routed without a pin.
MLP_WIDE = Payload("mlp-wide", None, "x", _linspace_row(256), "y", 10)

PAYLOADS = {p.model: p for p in (FRAUD, MLP_SMALL, MLP_WIDE)}
