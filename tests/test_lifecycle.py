"""The life of a request (router.lifecycle) over the real routing and links, with in-process fake workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeWorker, Replicas, echo_version, fake_store

from router.config import parse_config
from router.lifecycle import Exchange
from router.proto.link import FMT_JSON, FMT_MSGPACK, SHADOW
from router.server import Server


class Front:
    """A front that keeps what it was asked to write, and tells the lifecycle it wrote it."""

    def __init__(self, server: Server, events: list[tuple[str, Any]] | None = None) -> None:
        self.lifecycle = server.lifecycle
        self.replies: list[tuple[int, bytes, str]] = []
        self.events = events if events is not None else []

    def reply(self, ex: Exchange, status: int, header_len: int, payload: bytes) -> None:
        self.replies.append((status, payload, ex.answered))
        self.events.append(("reply", status))
        self.lifecycle.written(ex, status, header_len, payload)

    def send(self, model: str = "fraud", version: str | None = None, key: str | None = None,
             protocol: str = "http") -> None:
        ex = Exchange(self.lifecycle, self, protocol)
        self.lifecycle.submit(ex, model, version, key, FMT_JSON if protocol == "http" else FMT_MSGPACK, 0,
                              b'{"inputs": []}', time.monotonic())


def config(tmp_path: Path, versions: list[dict[str, Any]], **server: Any) -> Any:
    store = fake_store(tmp_path / "store", {"fraud": [str(v["version"]) for v in versions]})
    return parse_config({"server": {"http": "", "msgpack": "", **server}, "store": {"path": str(store)},
                         "models": [{"name": "fraud", "routing_key": "x-user-id", "versions": versions}]})


async def started(tmp_path: Path, versions: list[dict[str, Any]], replicas: Replicas | None = None,
                  **server: Any) -> tuple[Server, Replicas]:
    replicas = replicas or Replicas()
    s = Server(config(tmp_path, versions, **server), replica_factory=replicas)
    await s.deployments.start()
    s.state.started = True
    return s, replicas


async def settle(cond: Callable[[], bool], turns: int = 1000) -> None:
    """Let the loop turn until ``cond()`` (fake workers answer on the next turn; timers need a real wait)."""
    for i in range(turns):
        if cond():
            return
        await asyncio.sleep(0 if i < 100 else 0.001)
    raise AssertionError("condition not reached")


def series(server: Server) -> dict[tuple, list]:
    return server.metrics.request_series


def count(server: Server, model: str, version: str, status: int, protocol: str = "http", route: str = "live") -> int:
    row = series(server).get((model, version, route, protocol, status))
    return 0 if row is None else sum(row[:-1])


def test_a_request_is_answered_once_counted_and_recorded_under_the_version_that_answered(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path, [{"version": "1", "weight": 1}])
        front = Front(s)
        front.send()
        assert s.metrics.in_flight[("fraud", "http")] == 1
        await settle(lambda: bool(front.replies))
        await asyncio.sleep(0.01)
        assert front.replies == [(200, b"version 1", "1")]
        assert s.metrics.in_flight[("fraud", "http")] == 0
        assert count(s, "fraud", "1", 200) == 1
        await s.deployments.stop()

    asyncio.run(main())


@pytest.mark.parametrize("protocol", ["http", "msgpack"])
def test_names_a_client_invents_never_become_label_sets(tmp_path, protocol):
    """Defect: a request naming an unknown version (or model) must not mint a label set."""
    async def main() -> None:
        s, _ = await started(tmp_path, [{"version": "1", "weight": 1}])
        front = Front(s)
        before = set(series(s))
        for i in range(10_000):
            front.send(version=f"v{i}", protocol=protocol)
            front.send(model=f"m{i}", protocol=protocol)
        assert [st for st, _, _ in front.replies] == [404] * 20_000
        assert {a for _, _, a in front.replies} == {""}
        assert set(series(s)) == before
        assert count(s, "fraud", "", 404, protocol) == 10_000  # counted, under the one "" label
        await s.deployments.stop()

    asyncio.run(main())


def test_a_deadline_answers_504_once_and_the_late_reply_is_dropped(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path, [{"version": "1", "weight": 1}], request_timeout_ms=1000,
                                replicas=Replicas(answer=lambda w, k, p: None))
        front = Front(s)
        t0 = time.monotonic()
        front.send()
        worker = reps.of("1")[0].worker
        assert worker is not None and len(worker.held) == 1
        assert s.routing.expire(t0 + 0.5) is True and front.replies == []  # not yet due
        s.routing.expire(t0 + 1.01)
        assert [r[0] for r in front.replies] == [504]
        assert b"deadline exceeded" in front.replies[0][1]
        worker.answer_held()  # the worker wakes up: its reply finds no call
        await asyncio.sleep(0)
        assert len(front.replies) == 1
        assert s.metrics.in_flight[("fraud", "http")] == 0
        assert s.routing.expire(t0 + 2) is False  # nothing in flight any more
        await s.deployments.stop()

    asyncio.run(main())


def test_a_dead_worker_fails_its_requests_at_once_and_traffic_moves_to_the_live_version(tmp_path):
    async def main() -> None:
        hang = {"1"}

        def answer(w: FakeWorker, kind: int, payload: bytes) -> tuple[int, bytes] | None:
            return None if w.version in hang else echo_version(w, kind, payload)

        s, reps = await started(tmp_path, [{"version": "1", "weight": 1}, {"version": "2", "weight": 1}],
                                replicas=Replicas(answer=answer))
        front = Front(s)
        for i in range(40):
            front.send(key=f"user-{i}")
        dead = reps.of("1")[0]
        in_flight = len(dead.worker.held)  # type: ignore[union-attr]
        assert 0 < in_flight < 40
        dead.kill()
        await settle(lambda: len(front.replies) == 40)
        assert sorted(r[0] for r in front.replies) == [200] * (40 - in_flight) + [503] * in_flight
        assert all(b"worker exited" in p for st, p, _ in front.replies if st == 503)
        assert s.routing.active["fraud"].table.versions == ("2",)
        front.replies.clear()
        for i in range(40):
            front.send(key=f"user-{i}")
        await settle(lambda: len(front.replies) == 40)
        assert {(st, a) for st, _, a in front.replies} == {(200, "2")}
        await s.deployments.stop()

    asyncio.run(main())


def test_a_draining_server_refuses_with_503_and_sends_nothing(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path, [{"version": "1", "weight": 1}])
        s.state.draining = True
        front = Front(s)
        front.send()
        assert front.replies == [(503, b"server is shutting down", "")]
        assert reps.of("1")[0].worker.received_frames == []  # type: ignore[union-attr]
        await s.deployments.stop()

    asyncio.run(main())


def test_copies_leave_after_the_live_reply_and_never_for_a_pinned_shadow(tmp_path):
    async def main() -> None:
        events: list[tuple[str, Any]] = []

        def answer(w: FakeWorker, kind: int, payload: bytes) -> tuple[int, bytes]:
            events.append(("copy" if kind & SHADOW else "live", w.version))
            return echo_version(w, kind, payload)

        s, reps = await started(tmp_path, [{"version": "1", "weight": 1}, {"version": "3", "shadow": 1.0}],
                                replicas=Replicas(answer=answer), shadow_flush_us=0)
        front = Front(s, events)
        front.send()
        await settle(lambda: ("copy", "3") in events)
        assert events == [("live", "1"), ("reply", 200), ("copy", "3")]
        await settle(lambda: s.routing.active["fraud"].shadows["3"].outstanding == 0)
        events.clear()
        front.send(version="3")  # pinned to the shadow itself: answered, never mirrored
        await settle(lambda: ("reply", 200) in events)
        await asyncio.sleep(0.01)
        assert events == [("live", "3"), ("reply", 200)]
        await s.deployments.stop()

    asyncio.run(main())


def test_requests_that_reached_a_worker_are_sampled_for_the_prediction_log_and_refusals_never(tmp_path):
    from router.proto.errors import PayloadTooLarge

    async def main() -> None:
        store = fake_store(tmp_path / "store", {"fraud": ["1"]})
        s = Server(parse_config({"server": {"http": "", "msgpack": ""}, "store": {"path": str(store)},
                                 "models": [{"name": "fraud", "log_rate": 1.0,
                                             "versions": [{"version": "1"}]}]}), replica_factory=Replicas())
        await s.deployments.start()
        s.state.started = True
        s.predlog._stopping = True  # no writer process here: a sampled record counts as writer_down
        front = Front(s)
        front.send(version="1")
        await settle(lambda: bool(front.replies))
        ex = Exchange(s.lifecycle, front, "http")
        s.lifecycle.refuse(ex, "fraud", "1", PayloadTooLarge("too large"), time.monotonic())  # pinned, refused
        front.send(version="9")  # an unknown version: 404 before any worker
        assert [r[0] for r in front.replies] == [200, 413, 404]
        assert s.predlog.counts["fraud"].sampled == 1
        assert s.predlog.dropped("fraud")["writer_down"] == 1
        await s.deployments.stop()

    asyncio.run(main())
