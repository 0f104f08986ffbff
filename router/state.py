"""The little the fronts need to know about the server they serve: whether it is ready or draining, and
the configuration generation its replies carry."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from .proto import GENERATION_HEADER


class ServerState:
    """Shared by the server, the lifecycle and the fronts (not the whole server: uvicorn's narrow state)."""

    __slots__ = ("started", "stopping", "draining", "connections", "generation", "generation_header",
                 "generation_item")

    def __init__(self) -> None:
        #: Every worker went live and the listeners are open.
        self.started = False
        #: SIGTERM came: readiness answers 503 and replies close their connections; requests are still
        #: served (``server.drain_delay_s``) until ``draining``.
        self.stopping = False
        #: Shutting down: readiness and new requests answer 503.
        self.draining = False
        #: Open msgpack and (not handed-off) HTTP connections, closed once drained; each has ``transport``.
        self.connections: set[Any] = set()
        self.set_generation(0)

    def set_generation(self, generation: int) -> None:
        """The configuration generation now applied: what every reply says from now on, made once here."""
        self.generation = generation
        #: The HTTP header line, and the msgpack item of a reply frame, that carry it.
        self.generation_header = f"{GENERATION_HEADER}: {generation}\r\n".encode()
        self.generation_item: bytes = msgpack.packb(generation)

    def close_connections(self) -> None:
        for conn in list(self.connections):
            t: asyncio.BaseTransport | None = conn.transport
            if t is not None:
                t.close()
