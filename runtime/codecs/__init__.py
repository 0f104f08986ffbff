"""The worker's codecs: request bodies to numpy arrays, outputs to reply bodies, and back.

* :mod:`~runtime.codecs.tensors` -- OIP tensors as arrays: wire dtypes (from
  :data:`router.proto.meta.DATATYPES`), buffer and JSON data to arrays, arrays to wire bytes;
* :mod:`~runtime.codecs.plan` -- what coding needs from a model's signature, once per model;
* :mod:`~runtime.codecs.requests` -- :class:`Request`, :func:`decode_request` in the three body
  formats (OIP JSON, OIP binary, msgpack), :func:`example_request` for the warm-up;
* :mod:`~runtime.codecs.replies` -- :func:`encode_response`, and :func:`decode_reply`, its
  inverse, for shadow comparison.

Every malformed or mismatching body raises :class:`router.proto.errors.BadRequest`,
and only that: this code faces arbitrary bytes from the network.
"""

from __future__ import annotations

from .replies import decode_reply, encode_response
from .requests import Request, decode_request, example_request

__all__ = ["Request", "decode_reply", "decode_request", "encode_response", "example_request"]
