"""Write coalescing: writes made while one read's frames are dispatched leave together.

One read from a pipelined client can hold dozens of request frames, and one
read from a worker dozens of replies. Dispatched one by one, each would be a
write of its own: a syscall each, and on a link a wake-up of the worker each.
Between :meth:`Cork.open` and :meth:`Cork.close` writers hold their frames
instead, and the outermost ``close`` has each of them write its share at once:
one write per socket per read. A single frame is never held, so a lone
request pays nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Holder(Protocol):
    def flush_held(self) -> None:
        """Write every frame held since the cork opened."""


class Cork:
    """Shared by the links and the msgpack front of one router."""

    __slots__ = ("depth", "_held")

    def __init__(self) -> None:
        #: > 0 while some dispatch holds the cork open: writers hold their frames.
        self.depth = 0
        self._held: list[Holder] = []

    def hold(self, writer: Holder) -> None:
        """Register ``writer``, which just held its first frame, for the flush."""
        self._held.append(writer)

    def open(self) -> None:
        self.depth += 1

    def run(self, handle: Callable[[list[bytes]], None], frames: list[bytes]) -> None:
        """``handle(frames)`` — with the cork open while it runs when there is more than one frame."""
        if len(frames) < 2:
            handle(frames)
            return
        self.depth += 1
        try:
            handle(frames)
        finally:
            self.close()

    def close(self) -> None:
        self.depth -= 1
        if not self.depth and self._held:
            held, self._held = self._held, []
            for writer in held:
                writer.flush_held()


class Holding:
    """Mixin of a writer whose frames wait while its cork is open: the link ends, msgpack connections."""

    cork: Cork
    transport: asyncio.Transport | None
    _held: list[bytes]

    def hold_frame(self, frame: bytes) -> None:
        """Keep ``frame`` for the cork's flush (only while ``cork.depth``); frames leave in order."""
        if not self._held:
            self.cork.hold(self)
        self._held.append(frame)

    def flush_held(self) -> None:
        held, self._held = self._held, []
        t = self.transport
        if held and t is not None and not t.is_closing():  # a lost link: fail_all answers its calls
            t.write(b"".join(held))
