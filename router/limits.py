"""Connection limits: a cap per listener, a file-handle budget, and the sweep that closes slow connections.

No client may hold the router's resources for free. Each listener admits at
most its cap of connections and closes the rest at once (counted); the caps are
fitted inside the process's file-handle limit with a reserve left over, so a
flood of connections never stops a worker restart or the admin listener.
Once a second the sweep asks every open connection whether it is overdue:

* ``head_timeout_s``: a request head must arrive whole within this time of its first
  byte (each byte resetting a timer would let one byte every few seconds hold it forever);
* ``body_timeout_s`` + 1 s per ``body_min_rate`` bytes received: a body must keep moving
  (Apache's ``RequestReadTimeout body=...,MinRate=...``);
* ``send_timeout_s``: a client that reads none of its replies for this long is cut off
  (nginx's ``send_timeout``: the time the write buffer stays full);
* ``keepalive_timeout_s`` / ``msgpack_idle_timeout_s``: an idle connection closes.

The fronts keep only timestamps the hot path already has; the sweep does the arithmetic.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .config import ServerConfig
    from .state import ServerState

log = logging.getLogger("router.limits")

#: Why the sweep closed a connection (the ``reason`` label).
REASONS = ("head_timeout", "body_timeout", "send_timeout", "idle")


class Listener:
    """One listener's open connections, its cap, and what it refused or closed."""

    __slots__ = ("name", "cap", "open", "refused", "closed")

    def __init__(self, name: str, cap: int) -> None:
        self.name = name
        self.cap = cap
        self.open = 0
        #: Connections closed at once because ``open`` was at ``cap``.
        self.refused = 0
        #: Connections the sweep closed, by reason.
        self.closed = dict.fromkeys(REASONS, 0)

    def admit(self) -> bool:
        """Count a new connection in; False (and counted as refused) when the listener is full."""
        if self.open >= self.cap:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The sweep's limits, in seconds (0: never)."""

    head: float
    body: float
    body_rate: float  # bytes per second that earn a slow body one more second
    send: float
    keepalive: float
    msgpack_idle: float

    @classmethod
    def of(cls, s: ServerConfig) -> Timeouts:
        return cls(s.head_timeout_s, s.body_timeout_s, float(s.body_min_rate), s.send_timeout_s,
                   s.keepalive_timeout_s, s.msgpack_idle_timeout_s)

    @property
    def interval(self) -> float:
        """How often to sweep: a quarter of the shortest limit, between 50 ms and 1 s."""
        limits = [t for t in (self.head, self.body, self.send, self.keepalive, self.msgpack_idle) if t > 0]
        return max(0.05, min([1.0, *(t / 4 for t in limits)]))


class Swept(Protocol):
    """What a front's connection offers the sweep."""

    def overdue(self, now: float, t: Timeouts) -> str | None:
        """The reason (one of :data:`REASONS`) this connection must close now, or None."""

    def time_out(self, reason: str) -> None:
        """Close for ``reason`` (telling the client why where the protocol can)."""


def fit_caps(wanted: dict[str, int], reserve: int) -> dict[str, int]:
    """The connection caps the file-handle limit allows, ``reserve`` handles kept free.

    Raises the soft ``RLIMIT_NOFILE`` toward the hard one as far as the caps need;
    where even that is too few, lowers every cap in proportion and says so.
    """
    need = sum(wanted.values()) + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the file-handle limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return dict(wanted)
    room = max(soft - reserve, len(wanted))
    scale = room / sum(wanted.values())
    # In proportion, but a small listener (the admin one) keeps a few places of its own.
    caps = {name: max(min(cap, 16), int(cap * scale)) for name, cap in wanted.items()}
    log.warning("file-handle limit %d (hard %s) leaves room for %d connection(s) after a reserve of %d: "
                "caps lowered to %s (raise `ulimit -n` to keep the configured ones)", soft,
                "unlimited" if hard == resource.RLIM_INFINITY else hard, room, reserve,
                ", ".join(f"{n} {c}" for n, c in caps.items()))
    return caps


async def sweep(state: ServerState, timeouts: Timeouts) -> None:
    """Close overdue connections, forever (a task of the server's)."""
    interval = timeouts.interval
    while True:
        await asyncio.sleep(interval)
        now = monotonic()
        for conn in list(state.connections):
            reason = conn.overdue(now, timeouts)
            if reason is not None:
                conn.listener.closed[reason] += 1
                conn.time_out(reason)


class ConnectionMetrics(Collector):
    """``router_connections``, ``router_connections_refused_total`` and ``router_connections_closed_total``."""

    def __init__(self, listeners: Iterable[Listener]) -> None:
        self.listeners = listeners  # a live view: the server fills it in as it starts

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        g = GaugeMetricFamily("router_connections", "Open client connections, by listener.", labels=["listener"])
        r = CounterMetricFamily("router_connections_refused", "Connections closed at once because the listener "
                                "was at its cap (server.max_connections).", labels=["listener"])
        c = CounterMetricFamily("router_connections_closed", "Connections the router closed: too slow a head or "
                                "body, replies not read, or idle.", labels=["listener", "reason"])
        for lst in self.listeners:
            g.add_metric([lst.name], lst.open)
            r.add_metric([lst.name], lst.refused)
            for reason, n in lst.closed.items():
                c.add_metric([lst.name, reason], n)
        yield g
        yield r
        yield c
