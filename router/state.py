"""The little the fronts need to know about the server they serve: whether it is ready or draining."""

from __future__ import annotations

import asyncio
from typing import Any


class ServerState:
    """Shared by the server, the lifecycle and the fronts (not the whole server: uvicorn's narrow state)."""

    __slots__ = ("started", "draining", "connections")

    def __init__(self) -> None:
        #: Every worker went live and the listeners are open.
        self.started = False
        #: Shutting down: readiness and new requests answer 503.
        self.draining = False
        #: Open msgpack and (not handed-off) HTTP connections, closed once drained; each has ``transport``.
        self.connections: set[Any] = set()

    def close_connections(self) -> None:
        for conn in list(self.connections):
            t: asyncio.BaseTransport | None = conn.transport
            if t is not None:
                t.close()
