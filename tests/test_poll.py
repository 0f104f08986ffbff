"""Busy polling (router.poll): the loop polls after requests, stops once idle, and costs nothing when off.

The in-process tests run the poll on a clock of their own (router.poll's ``time``
replaced), so a window passes when the test says so, not when a busy machine
happens to let it; the daemon's test reads the router's scheduler state. They
assert what happens in which order, never how long it took or how much CPU it
got: what polling costs is measured by ``python -m bench.idle``.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest

import router.poll
from router.client import WireClient
from router.poll import BusyPoll


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The poll's clock, moved by hand: ``clock.now += 0.005``."""
    c = SimpleNamespace(now=1000.0)
    c.monotonic = lambda: c.now
    monkeypatch.setattr(router.poll, "time", c)
    return c


async def turns(n: int = 3) -> None:
    """Let the loop turn ``n`` times (the poll's callback runs once per turn while it polls)."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_zero_window_never_polls():
    poll = BusyPoll(0)
    assert not poll.idle  # so Routing.dispatch never calls start()

    async def main() -> None:
        poll.bind(asyncio.get_running_loop())
        for _ in range(10):
            poll.count += 1
            if poll.idle:
                poll.start()
            await turns()

    run(main())
    assert poll.turns == 0


def test_polls_until_the_window_passes_without_a_request(clock):
    poll = BusyPoll(0.02)
    assert poll.idle

    async def main() -> tuple[list[int], int, int]:
        poll.bind(asyncio.get_running_loop())
        poll.count += 1
        poll.start()
        assert not poll.idle
        seen = [poll.turns]
        # A request every 5 ms for 60 ms, each one pushing the end of the window.
        for _ in range(12):
            clock.now += 0.005
            poll.count += 1
            await turns()
            assert not poll.idle
            seen.append(poll.turns)
        clock.now += 0.019  # nearly a window since the last request: still polling
        await turns()
        assert not poll.idle
        clock.now += 0.002  # now past it: back to sleeping
        await turns()
        assert poll.idle
        stopped = poll.turns
        await turns(10)
        return seen, stopped, poll.turns

    seen, stopped, later = run(main())
    assert all(a < b for a, b in pairwise(seen)), seen  # it turned the loop while requests came
    assert stopped > seen[-1]  # and on through the quiet window
    assert later == stopped  # idle: no more turns


def test_a_request_after_idle_starts_polling_again(clock):
    poll = BusyPoll(0.01)

    async def main() -> list[int]:
        poll.bind(asyncio.get_running_loop())
        seen = []
        for _ in range(2):
            poll.count += 1
            assert poll.idle
            poll.start()
            await turns()
            assert not poll.idle
            clock.now += 0.011
            await turns()
            assert poll.idle
            seen.append(poll.turns)
        return seen

    first, second = run(main())
    assert 0 < first < second


def test_close_stops_polling_for_good():
    poll = BusyPoll(10.0)

    async def main() -> tuple[int, int]:
        poll.bind(asyncio.get_running_loop())
        poll.start()
        await turns()
        poll.close()
        at_close = poll.turns
        poll.start()  # unbound: does nothing
        await turns(10)
        return at_close, poll.turns

    at_close, later = run(main())
    assert at_close > 0 and later == at_close
    assert not poll.idle


def test_start_before_bind_does_nothing():
    poll = BusyPoll(1.0)
    poll.start()
    assert poll.idle and poll.turns == 0


def state(pid: int) -> str:
    """The scheduler state of ``pid``'s main thread: ``R`` running or waiting for a CPU, ``S`` asleep."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def states(pid: int, n: int = 10) -> list[str]:
    """``n`` looks at :func:`state`, 10 ms apart."""
    out = []
    for _ in range(n):
        out.append(state(pid))
        time.sleep(0.01)
    return out


def asleep(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` is found asleep at ten looks in a row; the timeout only bounds a failure.

    A polling router never is: it never blocks, and on a busy machine it waits for a CPU, still
    ``R``. An idle one wakes a few times a second for well under a millisecond."""
    deadline = time.monotonic() + timeout
    while (seen := states(pid)) != ["S"] * 10:
        assert time.monotonic() < deadline, f"not asleep after {timeout} s: {seen}"


def test_the_daemon_polls_after_a_request_and_sleeps_when_idle(start_daemon):
    # Polling is told from sleeping by the router's scheduler state, not by the CPU it gets: other
    # programs can take nearly all of it from a loop that yields at every turn. What polling
    # costs: python -m bench.idle.
    d = start_daemon(busy_poll_us=1_000_000)
    x = np.zeros((1, 8), np.float32)
    with WireClient("127.0.0.1", d.wire_port) as c:
        asleep(d.proc.pid)  # no request yet
        assert c.infer("fraud", {"features": x}).model_name == "fraud"
        # In the second after it the router spins though nothing arrives (idle, it would be asleep)...
        polling = states(d.proc.pid)
        # ...then sleeps again by itself, and still serves.
        asleep(d.proc.pid)
        assert c.infer("fraud", {"features": x}).model_name == "fraud"
    assert polling.count("R") >= 8, polling
    assert "busy polling for 1000000 us after each request" in d.log
