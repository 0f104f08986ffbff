"""The pod contract, with two router processes on one machine sharing one store and one config.toml (as
pods share a volume): the same key gets the same version from both; a change made on one is served by
both (the other watches the file); a push on one is deployable on the other; two changes made at once
on the two both land; SIGTERM flips readiness at once and drains with no failed request while the
other serves; a killed router loses no change it accepted. Replies carry the generation that served."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, free_port
from storekit import archive, build_models
from test_shadow import wait_for

from router.proto import GENERATION_HEADER

pytestmark = pytest.mark.daemon

BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32",
                               "data": [0.1, -0.2, 0.3, 0.0, 1.5, -1.0, 0.2, 0.4]}]}).encode()


def config_text(store: Path, drain_delay_s: float = 0) -> str:
    return (f"[server]\ndrain_delay_s = {drain_delay_s}\n\n[store]\npath = {json.dumps(str(store))}\n\n"
            '[[models]]\nname = "fraud"\nrouting_key = "x-user-id"\n'
            '  [[models.versions]]\n  version = "1"\n  weight = 50\n'
            '  [[models.versions]]\n  version = "2"\n  weight = 50\n')


class Pair:
    """Two routers serving one config file."""

    def __init__(self, root: Path, store: Path, drain_delay_s: float = 0) -> None:
        self.config = root / "config.toml"
        self.config.write_text(config_text(store, drain_delay_s))
        self.routers = [self.start(), self.start()]

    def start(self) -> Daemon:
        d = Daemon(self.config, free_port(), free_port(), dict(os.environ))
        d.wait_ready()
        return d

    def stop(self) -> None:
        for d in self.routers:
            d.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[Pair]:
    """Two routers for the tests that change traffic and push (each starts from what the last left)."""
    p = Pair(tmp_path_factory.mktemp("pair"), store)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def own_pair(tmp_path: Path, store: Path) -> Iterator[Pair]:
    """Two routers that keep serving for 2 s after SIGTERM (``drain_delay_s``), for the test that stops one."""
    p = Pair(tmp_path, store, drain_delay_s=2)
    try:
        yield p
    finally:
        p.stop()


def generation(p: Pair) -> int:
    return tomllib.loads(p.config.read_text()).get("generation", 0)


def infer(d: Daemon, key: str) -> tuple[str, int]:
    """The version that answered a keyed request, and the generation its reply carried."""
    status, headers, body = d.post("/v2/models/fraud/infer", BODY, {"Content-Type": "application/json",
                                                                     "x-user-id": key})
    assert status == 200, body
    return json.loads(body)["model_version"], int(headers[GENERATION_HEADER])


def weights(d: Daemon) -> dict[str, float]:
    status, body = d.call("GET", "/admin/models/fraud/traffic")
    assert status == 200, body
    return body["weights"]


def file_weights(p: Pair) -> dict[str, float]:
    doc = tomllib.loads(p.config.read_text())
    return {v["version"]: v["weight"] for v in doc["models"][0]["versions"]}


def test_both_routers_route_a_key_alike_and_serve_a_change_made_on_either(pair):
    a, b = pair.routers
    wait_for(lambda: weights(a) == weights(b), timeout=30)
    for i in range(40):
        assert infer(a, f"user-{i}")[0] == infer(b, f"user-{i}")[0]
    g = generation(pair)
    assert infer(a, "x")[1] == infer(b, "x")[1] == g

    status, _ = a.call("PUT", "/admin/models/fraud/traffic", {"weights": {"1": 0, "2": 100}})
    assert status == 200
    assert file_weights(pair) == {"1": 0, "2": 100} and generation(pair) == g + 1
    assert infer(a, "u")[1] == g + 1  # a's replies carry the new generation at once
    wait_for(lambda: weights(b) == {"1": 0, "2": 100}, timeout=30)
    assert "changed: applying it" in b.log  # b applied it because the file changed: no call reached b
    assert all(infer(b, f"user-{i}") == ("2", g + 1) for i in range(20))

    # ... and the other way round.
    status, _ = b.call("PUT", "/admin/models/fraud/traffic", {"weights": {"1": 100, "2": 0}})
    assert status == 200
    wait_for(lambda: weights(a) == {"1": 100, "2": 0}, timeout=30)
    assert all(infer(a, f"user-{i}") == ("1", g + 2) for i in range(20))


def test_a_push_on_one_router_is_rolled_out_from_the_other_and_served_by_both(pair):
    a, b = pair.routers
    status, body = a.call("POST", "/admin/models/tiny/versions/1", archive(build_models()),
                          {"Content-Type": "application/octet-stream"}, timeout=120)
    assert status == 201, body
    status, body = b.call("POST", "/admin/models/tiny/versions/1/rollout", {"percent": 100})
    assert status == 201, body  # b found it in the shared store, and started the new model

    def served(d: Daemon) -> bool:
        tiny = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                       "data": [1.0, 2.0, 3.0]}]}).encode()
        return d.post("/v2/models/tiny/infer", tiny, {"Content-Type": "application/json"})[0] == 200

    assert served(b)
    wait_for(lambda: served(a), timeout=60)  # a saw the new [[models]] table and started it too


def test_two_changes_made_at_once_on_the_two_routers_both_land(pair):
    a, b = pair.routers
    g = generation(pair)
    results: dict[str, int] = {}

    def put(d: Daemon, name: str, body: dict) -> None:
        results[name] = d.call("PUT", "/admin/models/fraud/traffic", body)[0]

    for round_ in range(3):
        wa, wb = 10 + round_, 20 + round_
        threads = [threading.Thread(target=put, args=(a, "a", {"weights": {"1": wa}})),
                   threading.Thread(target=put, args=(b, "b", {"weights": {"2": wb}}))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {"a": 200, "b": 200}
        # Neither is lost: each began from the file the other wrote, under the file's lock.
        assert file_weights(pair) == {"1": wa, "2": wb}
        for d in (a, b):
            wait_for(lambda d=d, want={"1": wa, "2": wb}: weights(d) == want, timeout=30)
    assert generation(pair) == g + 6  # one per change: none overwrote another
    wait_for(lambda: infer(a, "g")[1] == infer(b, "g")[1] == g + 6, timeout=30)


class Service:
    """A client behind a load balancer, as a Kubernetes Service is one: requests go to the routers whose
    readiness answers 200 (looked at every 50 ms); a reply that says ``Connection: close`` ends its
    connection, and the next request picks again."""

    def __init__(self, routers: list[Daemon]) -> None:
        self.routers = routers
        self.ready = set(range(len(routers)))
        self.statuses: dict[int, int] = {}
        self.by_router = [0] * len(routers)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._probe), threading.Thread(target=self._load)]

    def __enter__(self) -> Service:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _probe(self) -> None:
        while not self.stop.is_set():
            for i, d in enumerate(self.routers):
                try:
                    ok = d.get("/v2/health/ready", timeout=1)[0] == 200
                except OSError:
                    ok = False
                (self.ready.add if ok else self.ready.discard)(i)
            time.sleep(0.05)

    def _load(self) -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        n = 0
        while not self.stop.is_set():
            ready = sorted(self.ready)
            if not ready:
                time.sleep(0.01)
                continue
            i = ready[n % len(ready)]
            n += 1
            conn = conns.get(i)
            if conn is None:
                conn = conns[i] = http.client.HTTPConnection("127.0.0.1", self.routers[i].http_port, timeout=10)
            try:
                conn.request("POST", "/v2/models/fraud/infer", BODY, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
            except OSError as exc:
                self.errors.append(f"router {i}: {exc!r}")
                conns.pop(i).close()
                continue
            self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
            self.by_router[i] += 1
            if r.getheader("Connection", "").lower() == "close":
                conns.pop(i).close()
        for c in conns.values():
            c.close()


def test_sigterm_flips_readiness_at_once_and_drains_with_no_failed_request(own_pair):
    a, b = own_pair.routers
    with Service([a, b]) as service:
        wait_for(lambda: min(service.by_router) >= 20, timeout=60)
        a.send(signal.SIGTERM)
        # Not ready from the signal on, while it still answers (drain_delay_s = 2 keeps it serving meanwhile).
        status, body = wait_for(lambda: (r := a.get("/v2/health/ready"))[0] == 503 and r, timeout=30)
        assert b"shutting down" in body and a.proc.poll() is None
        served_before = service.by_router[1]
        wait_for(lambda: a.proc.poll() is not None, timeout=60)
        wait_for(lambda: service.by_router[1] >= served_before + 50, timeout=60)  # the other serves on
    assert a.proc.returncode == 0
    assert service.errors == [] and set(service.statuses) == {200}, (service.errors, service.statuses)
    assert "not ready; serving for 2.0 s more" in a.log


def test_a_killed_router_loses_no_change_it_accepted(pair):
    """Last of the tests on the shared pair: it kills router a (and starts another in its place)."""
    a, b = pair.routers
    status, _ = a.call("PUT", "/admin/models/fraud/traffic", {"weights": {"1": 25, "2": 75}})
    assert status == 200
    a.proc.send_signal(signal.SIGKILL)  # at once: the change was in the file before the answer
    a.proc.wait(30)
    assert file_weights(pair) == {"1": 25, "2": 75}
    wait_for(lambda: weights(b) == {"1": 25, "2": 75}, timeout=30)
    again = pair.start()
    pair.routers[0] = again
    assert weights(again) == {"1": 25, "2": 75}


def test_gitops_a_configmap_swap_is_applied_and_changes_through_the_api_are_refused(tmp_path):
    """config.toml from a ConfigMap: a link to ``..data/config.toml``, ``..data`` a link to a timestamped
    folder that the kubelet replaces (in process, over fake workers: the swap and the apply are explicit)."""
    import asyncio

    from fakes import Replicas, fake_store

    from router.config import load_config
    from router.proto.errors import ConfigFileError
    from router.server import Server

    store = fake_store(tmp_path / "store", {"fraud": ["1", "2"]})
    mount = tmp_path / "etc-router"
    mount.mkdir()

    def publish(n: int, weights: tuple[int, int]) -> None:
        """What the kubelet does on a ConfigMap update: a new folder, then one rename of the ``..data`` link."""
        folder = mount / f"..2026_12_03_{n}"
        folder.mkdir()
        (folder / "config.toml").write_text(
            f'generation = {n}\n[server]\nhttp = ""\nmsgpack = ""\n[store]\npath = {json.dumps(str(store))}\n'
            '[admin]\nread_only = true\n[[models]]\nname = "fraud"\n'
            f'  [[models.versions]]\n  version = "1"\n  weight = {weights[0]}\n'
            f'  [[models.versions]]\n  version = "2"\n  weight = {weights[1]}\n')
        tmp = mount / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, mount / "..data")

    publish(1, (90, 10))
    (mount / "config.toml").symlink_to("..data/config.toml")

    async def main() -> None:
        s = Server(load_config(mount / "config.toml"), replica_factory=Replicas())
        assert s.config.source == mount / "config.toml"  # its own name, not the folder it points into now
        await s.deployments.start()
        s.shared.seen()  # type: ignore[union-attr]
        assert s.state.generation == 1
        with pytest.raises(ConfigFileError, match="read-only here") as e:
            await s.control.set_traffic("fraud", {"1": 50})
        assert e.value.status == 409
        for change in (s.control.rollback("fraud"), s.control.deploy("fraud", [{"version": "1"}]),
                       s.control.rollout("fraud", "2", percent=50), s.control.drop("fraud", "2")):
            with pytest.raises(ConfigFileError, match="GitOps mode"):
                await change
        publish(2, (30, 70))
        assert s.shared.changed()  # type: ignore[union-attr]
        await s.control.apply_file_change()
        assert s.control.traffic("fraud").weights == {"1": 30, "2": 70}
        assert s.state.generation == 2 and s.state.generation_header == b"Router-Config-Generation: 2\r\n"
        assert not s.shared.changed()  # type: ignore[union-attr]
        await s.deployments.stop()

    asyncio.run(main())
