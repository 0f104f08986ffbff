"""Routing: which worker takes a request. Hot code only; pools are built and swapped by :mod:`router.deployments`.

Words, one meaning each:

* a **replica** is one worker process of one version (:mod:`router.replica`);
* a **replica set** is the replicas of one version in one pool (:class:`ReplicaSet`);
* a **pool** is one model's whole set of versions in one of its two blue/green
  slots, with its routing and mirror tables (:class:`Pool`);
* the **routing** (:class:`Routing`) knows each model's active pool, sends
  requests, and expires deadlines on every pool that still has workers.

A pool's routing table lists only versions that have a live replica, so a
version whose workers are all down (or hung: owing answers and giving none for
``server.hang_timeout_s``) stops receiving traffic at once and gets it back when
a replica is live again. Tables are rebuilt (one assignment) on every
replica state change or traffic change, never per request.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from time import monotonic
from typing import TYPE_CHECKING, Literal

from .config import ModelConfig, VersionConfig
from .cork import Cork
from .poll import BusyPoll
from .proto.errors import NotFound, WorkerUnavailable, shown
from .proto.meta import ModelMeta
from .splitter import MirrorTable, WeightTable
from .worker_link import Call

if TYPE_CHECKING:
    from .predlog import Sampled
    from .replica import Replica
    from .shadow import ShadowTarget

Color = Literal["blue", "green"]


class ReplicaSet:
    """The replicas of one version in one pool; picks the less loaded of two random live ones."""

    def __init__(self, model: str, vc: VersionConfig, meta: ModelMeta, replicas: list[Replica]) -> None:
        self.model = model
        self.vc = vc
        self.version = vc.version
        self.meta = meta
        self.replicas = replicas
        self.live: list[Replica] = []

    def refresh(self) -> None:
        """Re-read which replicas are live (on a replica's state change)."""
        self.live = [r for r in self.replicas if r.live]

    def pick(self) -> Replica | None:
        live = self.live
        n = len(live)
        if n == 0:
            return None
        if n == 1:
            return live[0]
        # Power of two choices: near-optimal balance without scanning every replica.
        a, b = random.sample(live, 2)
        return a if a.outstanding <= b.outstanding else b


class Pool:
    """One model's versions in one blue/green slot, with its live weight table and its shadow mirror table.

    ``mirror`` is None when the model has no shadow (the lifecycle tests just
    that on the hot path); otherwise it picks, per request, the shadow versions
    that get a copy, by routing key when there is one.
    """

    def __init__(self, mc: ModelConfig, versions: dict[str, ReplicaSet], shadows: dict[str, ShadowTarget],
                 color: Color = "blue") -> None:
        self.config = mc
        self.name = mc.name
        self.color: Color = color
        self.replicas = [r for s in versions.values() for r in s.replicas]
        self.routing_key = mc.routing_key
        #: The model's ``log_rate``: the share of requests sampled for the prediction log.
        self.log_rate = mc.log_rate
        self.versions = versions
        self.shadows = shadows
        self.table = WeightTable((), ())
        self.mirror: MirrorTable | None = None
        self._mirroring = True
        self._build_mirror()

    def _build_mirror(self) -> None:
        pairs = [(s.version, s.vc.shadow) for s in self.versions.values() if s.vc.shadow > 0]
        self.mirror = MirrorTable(tuple(v for v, _ in pairs), tuple(f for _, f in pairs)) \
            if pairs and self._mirroring else None

    def stop_mirroring(self) -> None:
        """No more copies (shutdown): live requests in flight finish without them."""
        self._mirroring = False
        self.mirror = None

    def mirror_copy(self, answered: str, key: str | bytes | None, protocol: str, fmt: int,
                    header_len: int, body: bytes, reply_header_len: int, reply: bytes,
                    sampled: Sampled | None = None) -> None:
        """Offer copies of one answered live request to the shadows its key picks.

        Call only after the live reply is written. A request answered by a
        shadow version itself (called pinned) is not mirrored. A request
        ``sampled`` for the prediction log asks the shadows for their outputs too.
        """
        mirror = self.mirror
        if mirror is None:
            return
        answering = self.versions.get(answered)
        if answering is None or answering.vc.shadow > 0:
            return
        picked = mirror.pick(key)
        if picked:
            now = monotonic()
            shadows = self.shadows
            for v in picked:
                shadows[v].offer(protocol, fmt, header_len, body, reply_header_len, reply, now, sampled)

    def active_shadows(self) -> Iterator[ShadowTarget]:
        """The shadow targets of versions that are shadows now (or still have copies out)."""
        for v, s in self.versions.items():
            target = self.shadows[v]
            if s.vc.shadow > 0 or target.outstanding:
                yield target

    def rebuild(self) -> None:
        """Swap in a new table of live versions with weight > 0 (one assignment)."""
        live = [(s.version, s.vc.weight) for s in self.versions.values() if s.live and s.vc.weight > 0]
        self.table = WeightTable(tuple(v for v, _ in live), tuple(w for _, w in live))

    def apply(self, mc: ModelConfig) -> None:
        """Take new weights/shadows for the same versions; workers are untouched.

        Requests see either the old table or the new one: ``rebuild`` swaps it
        with one assignment, and nothing awaits in between.
        """
        for vc in mc.versions:
            self.versions[vc.version].vc = vc
        self.config = mc
        self.routing_key = mc.routing_key
        self.log_rate = mc.log_rate
        self.rebuild()
        self._build_mirror()

    @property
    def ready(self) -> bool:
        return all(s.live for s in self.versions.values())


class Routing:
    """Each model's active pool; sends requests to workers and expires their deadlines.

    Args:
        timeout: seconds a request may take (``server.request_timeout_ms``).
        max_inflight: most requests one worker link holds (``server.max_inflight_per_worker``).
        cork: write coalescing shared by every link and the msgpack front.
        poll: busy polling after each request (idle forever when off).
        hang_timeout: a worker owing answers that gave none for this long leaves routing (0: never).
        hang_restart: one hung this much longer is killed and replaced (0: never).
    """

    def __init__(self, timeout: float, max_inflight: int, cork: Cork, poll: BusyPoll, hang_timeout: float = 0.0,
                 hang_restart: float = 0.0) -> None:
        self.timeout = timeout
        self.hang_timeout = hang_timeout
        self.hang_restart = hang_restart
        self.max_inflight = max_inflight
        self.cork = cork
        self.poll = poll
        #: model -> its active pool. Fronts look a model up once per request, so a
        #: request goes wholly to the old pool or wholly to the new one of a swap.
        self.active: dict[str, Pool] = {}
        #: Every pool that has workers: active, previous (warm for a rollback), standby.
        self.pools: list[Pool] = []

    def dispatch(self, pool: Pool, version: str | None, key: str | bytes | None, kind: int, header_len: int,
                 payload: bytes, call: Call, now: float) -> str:
        """Send a request to a worker of the right version of ``pool``; returns that version.

        ``version`` pins one (None: the weight table chooses, by ``key`` when
        given). ``call.done`` runs exactly once: on the worker's reply, on the
        worker's death (503), or at the deadline (504).

        Raises:
            NotFound: ``version`` is not one of the pool's.
            WorkerUnavailable: no live worker, or every live one is full.
        """
        if version is None:
            v = pool.table.choose(key)
            if v is None:
                raise WorkerUnavailable(f"model {pool.name!r} has no live worker")
            chosen = pool.versions[v]
        else:
            s = pool.versions.get(version)
            if s is None:
                raise NotFound(f"unknown version {shown(version)} of model {pool.name!r}")
            chosen = s
        replica = chosen.pick()
        if replica is None:
            raise WorkerUnavailable(f"version {chosen.version!r} of model {pool.name!r} has no live worker")
        link = replica.link
        if link is None or len(link.pending) >= self.max_inflight:
            raise WorkerUnavailable(f"{replica.name} is overloaded ({self.max_inflight} requests in flight)")
        call.deadline = now + self.timeout
        link.send(kind, header_len, payload, call)
        poll = self.poll
        poll.count += 1
        if poll.idle:
            poll.start()
        return chosen.version

    def expire(self, now: float) -> bool:
        """Answer 504 to the calls past their deadline, and take hung workers out of routing;
        True while any call, live or copy, is in flight."""
        busy = False
        hang = self.hang_timeout
        for pool in self.pools:  # every 5 ms under load: no list built for it
            for r in pool.replicas:
                link = r.link
                if link is None:
                    continue
                if link.pending:
                    link.expire(now)
                    busy = busy or bool(link.pending)
                # owed_from - timeout: when the oldest request it owes since its last answer was sent.
                # Shadows are left out: at idle CPU priority they may starve for good reasons, and
                # their copies time out without touching a live reply.
                if hang and link.owed_from and now - (link.owed_from - self.timeout) > hang and not r.vc.shadow:
                    self._hung(r, now)
        return busy

    def _hung(self, replica: Replica, now: float) -> None:
        link = replica.link
        assert link is not None
        if not link.hung:
            link.hung, link.hung_since = True, now
            replica.hang(now - (link.owed_from - self.timeout))  # its state changes: the tables drop it
        elif self.hang_restart and now - link.hung_since > self.hang_restart:
            link.hung_since = float("inf")  # once
            replica.replace()

    @property
    def ready(self) -> bool:
        """Every model can serve: its active pool routes to at least one live version.

        One replica restarting while another replica or version serves keeps the server
        ready: readiness takes the whole pod out of a Kubernetes Service, every model with it.
        """
        return all(len(p.table) > 0 for p in self.active.values())

    @property
    def shadow_outstanding(self) -> int:
        """Shadow copies sent to workers and not yet answered."""
        return sum(t.outstanding for p in self.pools for t in p.shadows.values())

    @property
    def in_flight(self) -> int:
        """Live requests sent to workers and not yet answered (shadow copies not counted)."""
        return sum(r.outstanding for p in self.pools for r in p.replicas) - self.shadow_outstanding

    def stop_mirroring(self) -> None:
        """No more shadow copies (shutdown)."""
        for p in self.pools:
            p.stop_mirroring()
