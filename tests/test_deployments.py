"""Deployments and the control plane over them, with in-process fake workers: swaps, rollbacks, traffic, the file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from fakes import Replicas, fake_store, without_generation
from prometheus_client.parser import text_string_to_metric_families
from test_lifecycle import Front, settle

from router.config import load_config
from router.proto.errors import ConfigError, DeployFailed, NoPreviousPool, NotFound
from router.replica import ReplicaState
from router.server import Server

CONFIG = """\
# ops notes: keep this comment
[server]
http = ""
msgpack = ""

[store]
path = "store"

[[models]]
name = "fraud"
keep_previous_s = {keep}

  [[models.versions]]
  version = "1"
  weight = 90

  [[models.versions]]
  version = "2"
  weight = 10

  [[models.versions]]
  version = "3"
  weight = 0
  shadow = 0.5
"""


async def started(tmp_path: Path, keep: float = 300, replicas: Replicas | None = None) -> tuple[Server, Replicas]:
    fake_store(tmp_path / "store", {"fraud": ["1", "2", "3", "4", "5"]})
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(keep=keep))
    replicas = replicas or Replicas()
    s = Server(load_config(path), replica_factory=replicas)
    await s.deployments.start()
    s.state.started = True
    return s, replicas


def shadow_queue_series(s: Server) -> dict[tuple[str, str], float]:
    from prometheus_client import generate_latest

    text = generate_latest(s.metrics.registry).decode()
    fam = next(f for f in text_string_to_metric_families(text) if f.name == "router_shadow_queue")
    return {(x.labels["model"], x.labels["version"]): x.value for x in fam.samples}


def test_a_deploy_swaps_pools_and_a_rollback_swaps_back(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        blue = s.routing.active["fraud"]
        result = await s.control.deploy("fraud", [{"version": "4", "weight": 1}])
        assert (result.active, result.versions) == ("green", ["4"])
        assert s.routing.active["fraud"].color == "green" and s.deployments.previous["fraud"] is blue
        front = Front(s)
        front.send()
        await settle(lambda: bool(front.replies))
        assert front.replies[0][2] == "4"
        assert all(r.live for r in blue.replicas)  # kept warm
        back = await s.control.rollback("fraud")
        assert (back.active, back.versions) == ("blue", ["1", "2", "3"])
        assert s.routing.active["fraud"] is blue
        # The file says what serves, comments kept.
        text = s.config.source.read_text()  # type: ignore[union-attr]
        assert text.startswith("# ops notes: keep this comment\n")
        assert [v.version for v in load_config(s.config.source).models[0].versions] == ["1", "2", "3"]  # type: ignore[arg-type]
        await s.deployments.stop()

    asyncio.run(main())


def test_a_failed_deploy_changes_nothing_and_leaves_no_stale_shadow_queue(tmp_path):
    """Defect: router_shadow_queue reports only the active pool after a failed deploy and after a rollback."""
    async def main() -> None:
        s, reps = await started(tmp_path, replicas=Replicas(fail_warmup=("5",)))
        before = s.config.source.read_text()  # type: ignore[union-attr]
        assert shadow_queue_series(s) == {("fraud", "3"): 0}
        with pytest.raises(DeployFailed, match="blue pool keeps serving"):
            await s.control.deploy("fraud", [{"version": "1", "weight": 1}, {"version": "5", "weight": 0,
                                                                              "shadow": 1.0}])
        assert s.routing.active["fraud"].color == "blue"
        assert without_generation(s.config.source.read_text()) == before  # type: ignore[union-attr]
        assert all(r.state is ReplicaState.STOPPED for r in reps.of("5"))
        assert len(s.routing.pools) == 1  # the standby is gone
        assert shadow_queue_series(s) == {("fraud", "3"): 0}
        # A deploy with shadow 4, then a rollback: only the active pool's shadow is reported each time.
        await s.control.deploy("fraud", [{"version": "1", "weight": 1}, {"version": "4", "weight": 0,
                                                                          "shadow": 1.0}])
        assert shadow_queue_series(s) == {("fraud", "4"): 0}
        await s.control.rollback("fraud")
        assert shadow_queue_series(s) == {("fraud", "3"): 0}
        await s.deployments.stop()

    asyncio.run(main())


def test_the_previous_pool_is_stopped_after_keep_previous_s_and_then_cannot_be_rolled_back_to(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path, keep=0.05)
        await s.control.deploy("fraud", [{"version": "4", "weight": 1}])
        blue = s.deployments.previous["fraud"]
        await settle(lambda: blue not in s.routing.pools, turns=100_000)
        assert "fraud" not in s.deployments.previous
        assert all(r.state is ReplicaState.STOPPED for r in blue.replicas)
        with pytest.raises(NoPreviousPool):
            await s.control.rollback("fraud")
        await s.deployments.stop()

    asyncio.run(main())


def test_traffic_changes_swap_tables_without_new_workers_and_are_written_back(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        made = len(reps.made)
        res = await s.control.set_traffic("fraud", {"2": 100, "1": 0})
        assert res.weights == {"1": 0, "2": 100, "3": 0} and res.live == ["2"]
        assert len(reps.made) == made
        front = Front(s)
        for i in range(20):
            front.send(key=f"user-{i}")
        await settle(lambda: len(front.replies) == 20)
        assert {a for _, _, a in front.replies} == {"2"}
        text = s.config.source.read_text()  # type: ignore[union-attr]
        assert text.startswith("# ops notes")
        assert {v.version: v.weight for v in load_config(s.config.source).models[0].versions} == \
            {"1": 0, "2": 100, "3": 0}  # type: ignore[arg-type]
        await s.deployments.stop()

    asyncio.run(main())


@pytest.mark.parametrize("weights,shadow,words", [
    ({"1": -1}, None, "weights.1: must be >= 0"),
    ({"1": "lots"}, None, "weights.1: must be a number"),
    ({"9": 1}, None, "weights.9: unknown version"),
    (None, {"3": 1.5}, "shadow.3: must be <= 1"),
    ({"1": 0, "2": 0}, None, "at least one version needs weight > 0"),
    (None, {"1": 0.5}, "'1'"),  # live and shadow at once: the loader's rule, naming the version
])
def test_invalid_traffic_is_refused_with_the_loaders_message_and_changes_nothing(tmp_path, weights, shadow, words):
    async def main() -> None:
        s, _ = await started(tmp_path)
        before = s.config.source.read_text()  # type: ignore[union-attr]
        with pytest.raises(ConfigError) as err:
            await s.control.set_traffic("fraud", weights, shadow)
        assert words in str(err.value)
        assert s.config.source.read_text() == before  # type: ignore[union-attr]
        assert s.control.traffic("fraud").weights == {"1": 90, "2": 10, "3": 0}
        await s.deployments.stop()

    asyncio.run(main())


def test_unknown_models_and_an_unwritable_file(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        for op in (s.control.set_traffic("nope", {"1": 1}), s.control.rollback("nope"),
                   s.control.deploy("nope", [{"version": "1"}])):
            with pytest.raises(NotFound, match="unknown model 'nope'"):
                await op
        s.config.source.write_text("[[models]]\nname = 'other'\n")  # type: ignore[union-attr]
        # A change begins from what the file says now: a file that does not validate refuses it.
        with pytest.raises(ConfigError) as err:
            await s.control.set_traffic("fraud", {"1": 1})
        assert err.value.status == 400 and "models[0].versions" in str(err.value)
        assert s.control.traffic("fraud").weights["1"] == 90
        await s.deployments.stop()

    asyncio.run(main())


def test_a_reload_naming_a_version_without_its_model_file_is_400_and_changes_nothing(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        (tmp_path / "store" / "fraud" / "4" / "model.pt").unlink()  # meta.json stays: only the model is gone
        text = s.config.source.read_text()  # type: ignore[union-attr]
        s.config.source.write_text(text.replace('version = "3"', 'version = "4"'))  # type: ignore[union-attr]
        with pytest.raises(ConfigError, match=r"models\[0\]\.versions\[2\]: no model file") as e:
            await s.control.reload()
        assert e.value.status == 400
        assert [v for v in s.routing.active["fraud"].versions] == ["1", "2", "3"]
        await s.deployments.stop()

    asyncio.run(main())


def test_the_log_says_deployed_only_for_deploys_that_succeeded(tmp_path, caplog):
    async def main() -> None:
        s, _ = await started(tmp_path, replicas=Replicas(fail_warmup=("5",)))
        text = s.config.source.read_text()  # type: ignore[union-attr]
        s.config.source.write_text(text.replace('version = "3"', 'version = "5"'))  # type: ignore[union-attr]
        with caplog.at_level(logging.INFO, logger="router.control"), pytest.raises(DeployFailed):
            await s.control.reload()
        assert s.routing.active["fraud"].color == "blue"
        reloaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reloaded")]
        assert reloaded and not any("deployed fraud" in m for m in reloaded), reloaded
        assert "nothing applied (a deploy failed)" in reloaded[0]
        await s.deployments.stop()

    asyncio.run(main())


def test_a_rollback_needs_a_previous_pool_that_can_route_not_every_worker_of_it(tmp_path):
    """A shadow (or one replica) of the previous pool restarting does not stop a rollback; nothing live to
    route to does, and the message says so."""
    async def main() -> None:
        s, reps = await started(tmp_path)
        await s.control.deploy("fraud", [{"version": "4", "weight": 1}])
        blue = s.deployments.previous["fraud"]
        reps.of("3")[0].kill()  # the blue pool's shadow
        await settle(lambda: not reps.of("3")[0].live)
        await s.control.rollback("fraud")
        assert s.routing.active["fraud"] is blue
        await s.control.deploy("fraud", [{"version": "5", "weight": 1}])
        for r in blue.replicas:
            if r.live:
                r.kill()
        await settle(lambda: not any(r.live for r in blue.replicas))
        with pytest.raises(NoPreviousPool, match="previous \\(blue\\) pool of model 'fraud' has no live worker"):
            await s.control.rollback("fraud")
        await s.deployments.stop()

    asyncio.run(main())
