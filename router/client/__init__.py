"""Python clients for model-router: numpy in, numpy out.

* :class:`HttpClient` / :class:`AsyncHttpClient` -- the Open Inference Protocol
  v2 over HTTP, with JSON, binary-tensor or msgpack bodies;
* :class:`WireClient` / :class:`AsyncWireClient` -- the length-prefixed msgpack
  TCP protocol (docs/protocol.md), pipelined, replies matched by id.

Server errors raise the typed classes of :mod:`router.proto.errors` (``BadRequest``,
``NotFound``, ``PayloadTooLarge``, ``InternalError``, ``WorkerUnavailable``,
``DeadlineExceeded``; all ``InferenceError`` with ``.status`` and ``.message``).
This package imports neither torch nor the worker runtime.
"""

from __future__ import annotations

from ..proto.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceError,
    InternalError,
    NotFound,
    PayloadTooLarge,
    WorkerUnavailable,
)
from ._result import InferResult
from .http import AsyncHttpClient, HttpClient
from .wire import AsyncWireClient, WireClient

__all__ = [
    "AsyncHttpClient",
    "AsyncWireClient",
    "BadRequest",
    "DeadlineExceeded",
    "HttpClient",
    "InferResult",
    "InferenceError",
    "InternalError",
    "NotFound",
    "PayloadTooLarge",
    "WireClient",
    "WorkerUnavailable",
]
