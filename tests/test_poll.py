"""Busy polling (router.poll): the loop polls after requests, stops once idle, and costs nothing when off."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from router.client import WireClient
from router.poll import BusyPoll


def run(coro):
    return asyncio.run(coro)


def test_a_zero_window_never_polls():
    poll = BusyPoll(0)
    assert not poll.idle  # so Pools.submit never calls start()

    async def main() -> None:
        poll.bind(asyncio.get_running_loop())
        for _ in range(10):
            poll.count += 1
            if poll.idle:
                poll.start()
            await asyncio.sleep(0.001)

    run(main())
    assert poll.turns == 0


def test_polls_until_the_window_passes_without_a_request():
    poll = BusyPoll(0.02)
    assert poll.idle

    async def main() -> tuple[int, int, int]:
        poll.bind(asyncio.get_running_loop())
        poll.count += 1
        poll.start()
        assert not poll.idle
        t0 = time.monotonic()
        # Requests every 5 ms for 60 ms: each one pushes the end of the window.
        while time.monotonic() - t0 < 0.06:
            await asyncio.sleep(0.005)
            poll.count += 1
            assert not poll.idle
        during = poll.turns
        await asyncio.sleep(0.1)  # two windows without a request: back to sleeping
        stopped = poll.turns
        await asyncio.sleep(0.05)
        return during, stopped, poll.turns

    during, stopped, later = run(main())
    assert poll.idle
    assert during > 10  # it really turned the loop while requests came
    assert stopped >= during
    assert later == stopped  # idle: no more turns


def test_a_request_after_idle_starts_polling_again():
    poll = BusyPoll(0.01)

    async def main() -> list[int]:
        poll.bind(asyncio.get_running_loop())
        seen = []
        for _ in range(2):
            poll.count += 1
            assert poll.idle
            poll.start()
            await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.01)
        poll.close()
        at_close = poll.turns
        poll.start()  # unbound: does nothing
        await asyncio.sleep(0.02)
        return at_close, poll.turns

    at_close, later = run(main())
    assert at_close > 0 and later == at_close
    assert not poll.idle


def test_start_before_bind_does_nothing():
    poll = BusyPoll(1.0)
    poll.start()
    assert poll.idle and poll.turns == 0


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_over(pid: int, seconds: float) -> float:
    c0 = cpu_s(pid)
    time.sleep(seconds)
    return cpu_s(pid) - c0


def test_the_daemon_polls_after_a_request_and_sleeps_when_idle(start_daemon):
    d = start_daemon(busy_poll_us=600_000)
    x = np.zeros((1, 8), np.float32)
    with WireClient("127.0.0.1", d.wire_port) as c:
        assert cpu_over(d.proc.pid, 0.3) < 0.1  # no request yet: asleep
        assert c.infer("fraud", {"features": x}).model_name == "fraud"
        # Within the window the router spins (yielding): it burns CPU though nothing arrives.
        busy = cpu_over(d.proc.pid, 0.4)
        time.sleep(0.4)  # past the window
        idle = cpu_over(d.proc.pid, 0.4)
        assert c.infer("fraud", {"features": x}).model_name == "fraud"  # and it still serves
    assert busy > 0.1, busy
    assert idle < 0.08, idle
    assert "busy polling for 600000 us after each request" in d.log
