"""Hung workers leave routing (server.hang_timeout_s) and are replaced if they stay hung (hang_restart_s).

In-process: fake workers that hold their answers, and the routing's sweep called at chosen
times. With processes: a worker stopped with SIGSTOP under load, as the probe did it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from conftest import children_of
from fakes import FakeWorker, Replicas, echo_version
from test_lifecycle import Front, settle, started

from router.replica import ReplicaState


def holding(version: str):
    """Workers of ``version`` hold every answer (a stopped process); the others answer."""
    def answer(worker: FakeWorker, kind: int, payload: bytes) -> tuple[int, bytes] | None:
        return None if worker.version == version else echo_version(worker, kind, payload)
    return answer


TWO = [{"version": "1", "weight": 50}, {"version": "2", "weight": 50}]


def test_a_worker_that_answers_nothing_leaves_routing_and_comes_back_when_it_answers(tmp_path):
    async def main() -> None:
        replicas = Replicas(answer=holding("1"))
        s, _ = await started(tmp_path, TWO, replicas, hang_timeout_s=3, hang_restart_s=15)
        front = Front(s)
        for i in range(20):
            front.send(key=f"user-{i}")
        await settle(lambda: len(front.replies) >= 5)
        hung = replicas.of("1")[0]
        assert hung.outstanding > 0 and s.routing.active["fraud"].table.versions == ("1", "2")
        t0 = time.monotonic()
        s.routing.expire(t0 + 1)  # requests past their deadline get 504; it is not hung yet
        assert hung.state is ReplicaState.LIVE and hung.link.owed_from
        s.routing.expire(t0 + 3.5)
        assert hung.state is ReplicaState.HUNG
        assert s.routing.active["fraud"].table.versions == ("2",)
        assert s.answers.ready()[0] == 200  # version 2 serves the model: the server stays ready
        assert s.metrics.registry.get_sample_value("router_worker_hangs_total", {
            "model": "fraud", "version": "1", "replica": "0", "pool": "blue"}) == 1
        before = len(front.replies)
        for i in range(20):
            front.send(key=f"user-{i}")
        await settle(lambda: len(front.replies) == before + 20)
        assert {v for _, _, v in front.replies[before:]} == {"2"}  # all of them, at once
        hung.worker.answer = echo_version
        hung.worker.answer_held()  # it wakes up (SIGCONT): its first answer puts it back
        assert hung.state is ReplicaState.LIVE and not hung.link.owed_from
        assert s.routing.active["fraud"].table.versions == ("1", "2")
        await s.deployments.stop()

    asyncio.run(main())


def test_requests_expiring_do_not_hide_a_hang_and_a_late_answer_does(tmp_path):
    """The clock runs from the oldest request owed since the last answer: 504s do not restart it
    (a hang longer than the request timeout is still found), an answer, even a late one, does."""
    async def main() -> None:
        replicas = Replicas(answer=holding("1"))
        s, _ = await started(tmp_path, [{"version": "1"}], replicas, hang_timeout_s=3, request_timeout_ms=1000)
        front = Front(s)
        front.send()
        r = replicas.of("1")[0]
        first = r.link.owed_from
        s.routing.expire(time.monotonic() + 1.5)  # 504 for it; the worker still owes
        await settle(lambda: len(front.replies) == 1)
        assert front.replies[0][0] == 504 and r.link.owed_from == first
        front.send()  # a later request does not restart the clock
        assert r.link.owed_from == first
        r.worker.answer_held()  # a late answer: alive after all
        assert r.link.owed_from == 0.0
        s.routing.expire(time.monotonic() + 10)
        assert r.state is ReplicaState.LIVE
        await s.deployments.stop()

    asyncio.run(main())


def test_a_worker_still_hung_is_replaced_and_a_model_with_none_left_is_not_ready(tmp_path):
    async def main() -> None:
        replicas = Replicas(answer=holding("1"))
        s, _ = await started(tmp_path, [{"version": "1"}], replicas, hang_timeout_s=3, hang_restart_s=15)
        front = Front(s)
        front.send()
        r = replicas.of("1")[0]
        t0 = time.monotonic()
        s.routing.expire(t0 + 4)
        assert r.state is ReplicaState.HUNG
        status, body = s.answers.ready()
        assert status == 503 and "no live worker to route to: fraud" in json.loads(body)["error"]
        s.routing.expire(t0 + 4 + 14)
        assert not r.replaced
        s.routing.expire(t0 + 4 + 16)
        assert r.replaced
        await settle(lambda: r.state is ReplicaState.RESTARTING)
        await s.deployments.stop()

    asyncio.run(main())


# -- with processes ----------------------------------------------------------------------------------------


def infer(d: Any, key: str) -> tuple[int, str]:
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                                   "data": [0.1] * 8}]}).encode()
    status, headers, reply = d.post("/v2/models/fraud/infer", body, {"x-user-id": key, "Content-Type":
                                                                     "application/json"})
    return status, json.loads(reply).get("model_version", "") if status == 200 else reply.decode()


def worker_of(d: Any, version: str) -> int:
    for pid in children_of(d.proc.pid):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--version" in cmd and cmd[cmd.index(b"--version") + 1] == version.encode():
            return pid
    raise AssertionError(f"no worker of version {version}")


def metric(d: Any, name: str, **labels: str) -> float:
    text = d.get("/metrics")[1].decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


def test_a_stopped_worker_leaves_routing_then_is_replaced(start_daemon):
    d = start_daemon(models=[{"name": "fraud", "routing_key": "x-user-id", "versions": [
        {"version": "1", "weight": 50}, {"version": "2", "weight": 50}]}],
        hang_timeout_s=1, hang_restart_s=4, request_timeout_ms=500)
    stopped = worker_of(d, "1")
    os.kill(stopped, signal.SIGSTOP)
    try:
        # Until the hang is seen, version 1's share waits out its deadline (504, with a reason).
        answers = [infer(d, f"user-{i}") for i in range(40)]
        assert all(s == 200 or (s == 504 and "deadline" in v) for s, v in answers)
        deadline = time.monotonic() + 30
        while metric(d, "router_worker_hangs_total", model="fraud", version="1") < 1:
            assert time.monotonic() < deadline, d.log[-2000:]
            infer(d, "user-x")
        # Now every request is answered at once by version 2, and the server stays ready.
        answers = [infer(d, f"user-{i}") for i in range(40)]
        assert answers == [(200, "2")] * 40
        assert d.get("/v2/health/ready")[0] == 200
        # Still stopped after hang_restart_s: killed and replaced by a new worker, back in routing.
        while metric(d, "router_worker_restarts_total", model="fraud", version="1") < 1:
            assert time.monotonic() < deadline + 30, d.log[-2000:]
            time.sleep(0.1)
        assert worker_of(d, "1") != stopped
        assert {infer(d, f"user-{i}")[1] for i in range(40)} == {"1", "2"}
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "still hung; killing it" in d.log
    d.workers = [p for p in d.workers if p != stopped]


def test_a_shadow_that_answers_nothing_is_not_taken_for_hung(tmp_path):
    """A shadow at idle CPU priority may starve for good reasons; its copies time out instead."""
    async def main() -> None:
        replicas = Replicas(answer=holding("2"))
        s, _ = await started(tmp_path, [{"version": "1", "weight": 1}, {"version": "2", "weight": 0, "shadow": 1.0}],
                             replicas, hang_timeout_s=3)
        front = Front(s)
        for _ in range(5):
            front.send()
        shadow = replicas.of("2")[0]
        await settle(lambda: shadow.outstanding > 0)
        s.routing.expire(time.monotonic() + 100)
        assert shadow.state is ReplicaState.LIVE
        await s.deployments.stop()

    asyncio.run(main())
