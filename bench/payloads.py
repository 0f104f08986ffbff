"""The fixed requests every benchmark sends: one row per request, the demo store's example inputs.

Shared by the harness (HTTP bodies for wrk, probes), the msgpack client and the
micro-benchmarks, so every scenario measures the same bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import msgpack


@dataclass(frozen=True)
class Payload:
    model: str
    version: str | None  # pinned version (None = let the router's traffic split choose)
    input: str
    row: tuple[float, ...]
    output: str
    out_width: int

    @property
    def http_path(self) -> str:
        """The router's OIP path: pinned to the version when there is one."""
        if self.version is None:
            return f"/v2/models/{self.model}/infer"
        return f"/v2/models/{self.model}/versions/{self.version}/infer"

    @property
    def floor_path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    def oip_json(self) -> bytes:
        """The OIP v2 JSON request body (what wrk POSTs)."""
        body = {"inputs": [{"name": self.input, "datatype": "FP32", "shape": [1, len(self.row)],
                            "data": list(self.row)}]}
        return json.dumps(body, separators=(",", ":")).encode()

    def msgpack_body(self) -> bytes:
        """The msgpack inference body (docs/protocol.md), item 4 of a request frame."""
        data = struct.pack(f"<{len(self.row)}f", *self.row)
        return msgpack.packb({"inputs": {self.input: {"datatype": "FP32", "shape": [1, len(self.row)],
                                                      "data": data}}})

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


# fraud/1: the example row of its meta.json; pinned to version 1 (one worker).
FRAUD = Payload("fraud", "1", "features", (3.7728, -0.6088, -0.7934, 0.12, 6.5944, 3.0, 1.8245, 1.0),
                "probabilities", 2)
# mlp-small/1: its example row (linspace(-1, 1, 4)); one version, routed without a pin.
MLP_SMALL = Payload("mlp-small", None, "x", (-1.0, -0.3333, 0.3333, 1.0), "y", 3)

PAYLOADS = {p.model: p for p in (FRAUD, MLP_SMALL)}
