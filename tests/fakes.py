"""In-process stand-ins for worker processes, to test routing, the lifecycle and deployments without processes.

As uvicorn tests its protocols against mock transports: a real
:class:`router.worker_link.WorkerLink` talks to a :class:`FakeTransport`
whose other end is a :class:`FakeWorker` that parses the real link frames and
answers them on the next loop turn, as a worker process would. A
:class:`FakeReplica` has the interface of :class:`router.replica.Replica`
(start, stop, live, link, state) and is handed to the server as its
``replica_factory``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from router.proto import link as frames
from router.proto.framing import FrameScanner
from router.proto.link import KIND_WARMUP, SHADOW
from router.replica import ReplicaState
from router.worker_link import WorkerLink

#: What a fake worker answers to a request: (status, payload), or None to leave it unanswered (hung).
Answer = Callable[["FakeWorker", int, bytes], "tuple[int, bytes] | None"]


def echo_version(worker: FakeWorker, kind: int, payload: bytes) -> tuple[int, bytes]:
    """Reply 200 with the answering version's name (copies: one identical comparison)."""
    if kind & SHADOW:
        return 200, msgpack.packb([1, [["y", 0.0, 0.0, 1, 1]]])
    return 200, f"version {worker.version}".encode()


class FakeTransport(asyncio.Transport):
    """The router's side of a socket whose other end is a :class:`FakeWorker`."""

    def __init__(self, worker: FakeWorker) -> None:
        super().__init__()
        self.worker = worker
        self.closing = False
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.worker.received(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.worker.link.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FakeWorker:
    """Answers link frames as a worker would, by ``answer``; records the kinds it received."""

    def __init__(self, link: WorkerLink, version: str, answer: Answer) -> None:
        self.link = link
        self.version = version
        self.answer = answer
        self.scanner = FrameScanner(1 << 30)
        #: (rid, kind) of every frame received, in order.
        self.received_frames: list[tuple[int, int]] = []
        #: Requests received and left unanswered (the answer rule returned None).
        self.held: list[int] = []

    def received(self, data: bytes) -> None:
        for body in self.scanner.feed(data):
            rid, kind, _hlen, payload = frames.unpack(body)
            self.received_frames.append((rid, kind))
            out = (200, b"") if kind == KIND_WARMUP else self.answer(self, kind, payload)
            if out is None:
                self.held.append(rid)
                continue
            status, reply = out
            frame = frames.pack(rid, status, 0, reply)
            asyncio.get_running_loop().call_soon(self._deliver, frame)

    def answer_held(self, status: int = 200, payload: bytes = b"late") -> None:
        """Answer every held request now (a late reply, or a hung worker that wakes up)."""
        held, self.held = self.held, []
        for rid in held:
            self.link.data_received(frames.pack(rid, status, 0, payload))

    def _deliver(self, frame: bytes) -> None:
        if self.link.transport is not None:
            self.link.data_received(frame)


class FakeReplica:
    """A replica without a process: live once its fake worker answered the warm-up.

    Args:
        fail_warmup: the warm-up is answered 500 (a model that cannot load).
        nonfinite: the model's policy the real worker would be started with (kept, not applied).
    """

    def __init__(self, model: str, vc: Any, index: int, model_dir: Path, on_state: Callable[[Any], None],
                 answer: Answer = echo_version, fail_warmup: bool = False, nonfinite: str = "reject") -> None:
        self.model = model
        self.nonfinite = nonfinite
        self.vc = vc
        self.index = index
        self.model_dir = model_dir
        self.on_state = on_state
        self.answer = answer
        self.fail_warmup = fail_warmup
        self.name = f"{model}/{vc.version}#{index}"
        self.link: WorkerLink | None = None
        self.worker: FakeWorker | None = None
        self.state = ReplicaState.NEW
        self.info: dict = {"device": vc.device, "cpus": list(vc.cpus)}
        self.restarts = 0
        self.replaced = False
        self.pid: int | None = None

    @property
    def live(self) -> bool:
        return self.state is ReplicaState.LIVE

    @property
    def outstanding(self) -> int:
        return len(self.link.pending) if self.link is not None else 0

    def _set(self, state: ReplicaState) -> None:
        was = self.live
        self.state = state
        if was != self.live:
            self.on_state(self)

    def start(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self.link = WorkerLink(self.name, 1 << 30, self._lost, on_resume=self._resumed)
        self.worker = FakeWorker(self.link, self.vc.version, self.answer)
        self.link.connection_made(FakeTransport(self.worker))
        self._set(ReplicaState.STARTING)
        if self.fail_warmup:
            ready.set_exception(RuntimeError(f"{self.name}: warm-up failed (500): the model raised"))
        else:
            self._set(ReplicaState.LIVE)
            ready.set_result(None)
        return ready

    def kill(self) -> None:
        """The worker dies: its link closes (in-flight requests fail with 503)."""
        assert self.link is not None and self.link.transport is not None
        self.link.transport.close()

    def _lost(self, _link: WorkerLink) -> None:
        if self.state is not ReplicaState.STOPPED:
            self._set(ReplicaState.RESTARTING)

    def hang(self, silent_s: float) -> None:
        """As :meth:`router.replica.Replica.hang`: out of routing while it owes answers."""
        if self.state is ReplicaState.LIVE:
            self._set(ReplicaState.HUNG)

    def replace(self) -> None:
        """As :meth:`router.replica.Replica.replace`: the hung worker is killed (a new one is the supervisor's)."""
        if self.state is ReplicaState.HUNG:
            self.replaced = True
            self.kill()

    def _resumed(self, _link: WorkerLink) -> None:
        if self.state is ReplicaState.HUNG:
            self._set(ReplicaState.LIVE)

    async def stop(self) -> None:
        self._set(ReplicaState.STOPPED)
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()
            await asyncio.sleep(0)


def fake_store(root: Path, versions: dict[str, list[str]]) -> Path:
    """A store whose versions have a ``meta.json`` (one FP32 input ``x``, one output ``y``) and a dummy model file."""
    for model, vs in versions.items():
        for v in vs:
            d = root / model / v
            d.mkdir(parents=True, exist_ok=True)
            (d / "model.pt").write_bytes(b"not a model: fake workers never load it")
            (d / "meta.json").write_text(json.dumps({
                "name": model, "version": v, "platform": "pytorch_torchscript",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
                "example": {"x": [[0.0, 0.0, 0.0, 0.0]]}, "sha256": v * 8}))
    return root


class Replicas:
    """A replica factory for :class:`router.server.Server` that keeps every fake it made.

    Args:
        answer: how their workers answer.
        fail_warmup: versions whose replicas fail their warm-up.
    """

    def __init__(self, answer: Answer = echo_version, fail_warmup: tuple[str, ...] = ()) -> None:
        self.answer = answer
        self.fail_warmup = set(fail_warmup)
        self.made: list[FakeReplica] = []

    def __call__(self, model: str, vc: Any, index: int, model_dir: Path,
                 on_state: Callable[[Any], None], *, nonfinite: str = "reject", drift: Any = None) -> FakeReplica:
        r = FakeReplica(model, vc, index, model_dir, on_state, self.answer, vc.version in self.fail_warmup,
                        nonfinite)
        self.made.append(r)
        return r

    def of(self, version: str) -> list[FakeReplica]:
        """The replicas made for ``version``, oldest first."""
        return [r for r in self.made if r.vc.version == version]


#: The head of an in-process daemon's config.toml: no listeners, its store ``store/`` beside the file.
IN_PROCESS = '[server]\nhttp = ""\nmsgpack = ""\n\n[store]\npath = "store"\n'


async def start_server(tmp_path: Path, config: str, versions: dict[str, list[str]],
                       replicas: Replicas | None = None) -> tuple[Any, Replicas]:
    """A started :class:`router.server.Server` over fake workers: ``config`` written to
    ``tmp_path/config.toml``, a fake store of ``versions`` (model -> version names) beside it."""
    from router.config import load_config
    from router.server import Server

    fake_store(tmp_path / "store", versions)
    (tmp_path / "config.toml").write_text(config)
    replicas = replicas or Replicas()
    s = Server(load_config(tmp_path / "config.toml"), replica_factory=replicas)
    await s.deployments.start()
    s.state.started = True
    return s, replicas


def without_generation(text: str) -> str:
    """A config text without the ``generation`` line every write adds or bumps: a change that failed puts the
    rest back as it was, one generation on."""
    import re

    return re.sub(r"(?m)^generation = \d+.*\n\n?", "", text)
