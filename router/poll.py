"""Busy polling: keep the event loop awake for a while after each request instead of sleeping.

Between two requests of a client that sends one at a time, the router sleeps
in ``epoll_wait`` and its core goes idle. Waking it again costs more than the
work a small request needs: on a virtual machine a halted virtual CPU waits
for the host to schedule it again (tens of microseconds), and on any machine
the caches have cooled. With ``server.busy_poll_us`` set, the loop keeps
polling for that long after the last request: each turn runs one
``epoll_wait`` with a zero timeout and, when it brought no new request,
``sched_yield``, so a worker on the same core gets the CPU at once, and an idle
core is never left to halt. The
price is CPU while traffic flows (the core shows busy); once no request has
come for the window, the loop sleeps as before, so an idle router costs
nothing.
"""

from __future__ import annotations

import asyncio
import os
import time


class BusyPoll:
    """The polling state of one router.

    :meth:`Routing.dispatch <router.routing.Routing.dispatch>` bumps :attr:`count` for each
    request and calls :meth:`start` when :attr:`idle`; the poll stops by itself
    ``window`` seconds after the last request.

    Args:
        window_s: how long to poll after the last request; 0 never polls.
    """

    __slots__ = ("window", "idle", "count", "turns", "_loop", "_seen", "_until", "_handle")

    def __init__(self, window_s: float) -> None:
        self.window = window_s
        #: True while the loop sleeps and the next request should start polling.
        #: Always False with a window of 0, so :meth:`start` is never called.
        self.idle = window_s > 0
        #: Requests seen (bumped by the caller: one addition on the hot path).
        self.count = 0
        #: Loop turns spent polling, for tests and curiosity.
        self.turns = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seen = 0
        self._until = 0.0
        self._handle: asyncio.Handle | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Poll on ``loop`` (the router's, known once it runs)."""
        self._loop = loop

    def start(self) -> None:
        """Poll from now until ``window`` passes with no request."""
        loop = self._loop
        if loop is None:  # not bound yet (or closed): sleep as usual
            return
        self.idle = False
        self._seen = self.count
        self._until = time.monotonic() + self.window
        self._handle = loop.call_soon(self._turn)

    def close(self) -> None:
        """Stop polling for good (shutdown)."""
        self._loop = None
        self.idle = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _turn(self) -> None:
        if self.count != self._seen:
            # Requests came in the last turn: poll again at once, so that every request
            # already waiting is read and sent before a worker on this core runs (yielding
            # now would cut its batches short: -27 % at HTTP c=32 when every turn yielded).
            self._seen = self.count
            self._until = time.monotonic() + self.window
        elif time.monotonic() > self._until:
            self.idle = True
            self._handle = None
            return
        else:
            # Without a yield a worker sharing this core would wait for the tick.
            os.sched_yield()
        self.turns += 1
        # call_soon: the loop's next turn polls its sockets with a zero timeout.
        self._handle = self._loop.call_soon(self._turn)  # type: ignore[union-attr]
