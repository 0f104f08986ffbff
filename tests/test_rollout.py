"""From the store to traffic and back, with in-process fake workers: roll a stored version out (a
percent, a weight or a shadow; a new model), drop it from the active set, list stored versions with
their states, and remove one (refused while a pool holds it). The control plane is called directly;
the admin API and the CLI over a real daemon are in test_versions_cli.py."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fakes import IN_PROCESS, FakeReplica, Replicas, fake_store, start_server, without_generation
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_lifecycle import Front, settle

from router import configfile
from router.config import load_config
from router.proto.errors import ConfigError, DeployFailed, NoPreviousPool, NotFound, VersionInUse
from router.server import Server

CONFIG = "# ops notes: keep this comment\n" + IN_PROCESS + """
[[models]]
name = "fraud"   # the fraud endpoint
keep_previous_s = 300

  # the baseline: keep this comment too
  [[models.versions]]
  version = "1"
  weight = 90   # most of the traffic
  max_batch_size = 64

  [[models.versions]]
  version = "2"
  weight = 10
"""


async def started(tmp_path: Path, replicas: Replicas | None = None) -> tuple[Server, Replicas]:
    s, replicas = await start_server(tmp_path, CONFIG, {"fraud": ["1", "2", "3", "4"], "churn": ["1", "2"]},
                                     replicas)
    await s.control.scan_store()
    return s, replicas


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def file_versions(tmp_path: Path, model: str = "fraud") -> list[dict[str, Any]]:
    doc = tomllib.loads((tmp_path / "config.toml").read_text())
    return next(m for m in doc["models"] if m["name"] == model)["versions"]


def gauge(s: Server, name: str, model: str) -> float | None:
    text = generate_latest(s.metrics.registry).decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and sample.labels.get("model") == model:
                return sample.value
    return None


async def answered_by(s: Server, n: int, model: str = "fraud") -> set[str]:
    """The versions that answered ``n`` requests with distinct routing keys."""
    front = Front(s)
    for i in range(n):
        front.send(model, key=f"user-{i}")
    await settle(lambda: len(front.replies) == n)
    assert {status for status, _, _ in front.replies} == {200}
    return {version for _, _, version in front.replies}


# -- rollout -----------------------------------------------------------------------------------------------


def test_a_percent_deploys_the_version_blue_green_and_scales_the_others(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        blue = s.routing.active["fraud"]
        result = await s.control.rollout("fraud", "3", percent=10)
        assert (result.action, result.active) == ("deploy", "green")
        assert result.weights == {"1": 81, "2": 9, "3": 10}
        assert s.deployments.previous["fraud"] is blue  # the old set stays warm for a rollback
        assert len(reps.of("3")) == 1 and reps.of("3")[0].live
        assert await answered_by(s, 400) == {"1", "2", "3"}
        # Written back with the comments and the untouched keys of the kept versions.
        text = (tmp_path / "config.toml").read_text()
        for kept in ("# ops notes: keep this comment", "# the baseline: keep this comment too",
                     "# the fraud endpoint", "weight = 81   # most of the traffic"):
            assert kept in text
        assert file_versions(tmp_path) == [{"version": "1", "weight": 81, "max_batch_size": 64},
                                           {"version": "2", "weight": 9}, {"version": "3", "weight": 10}]
        assert text.endswith('weight = 9\n\n  [[models.versions]]\n  version = "3"\n  weight = 10\n')  # as indented
        # The file says what serves: a reload finds nothing to do.
        assert (await s.control.reload()).changes == []
        await s.deployments.stop()

    run(main())


def test_a_weight_leaves_the_others_and_settings_reach_the_new_version(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        result = await s.control.rollout("fraud", "3", weight=5, settings={"replicas": 2, "max_batch_size": 8})
        assert result.weights == {"1": 90, "2": 10, "3": 5}
        assert [r.vc.max_batch_size for r in reps.of("3")] == [8, 8]
        assert file_versions(tmp_path)[2] == {"version": "3", "weight": 5, "replicas": 2, "max_batch_size": 8}
        await s.deployments.stop()

    run(main())


def test_a_shadow_mirrors_without_taking_live_traffic(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        result = await s.control.rollout("fraud", "3", shadow=0.5)
        assert (result.weights["3"], result.shadow) == (0, {"3": 0.5})
        assert await answered_by(s, 200) == {"1", "2"}
        assert file_versions(tmp_path)[2] == {"version": "3", "weight": 0, "shadow": 0.5}
        # Promoting it afterwards is a traffic change of the active pool: no worker starts.
        made = len(reps.made)
        promoted = await s.control.rollout("fraud", "3", percent=100)
        assert promoted.action == "traffic" and len(reps.made) == made
        assert (promoted.weights, promoted.shadow) == ({"1": 0, "2": 0, "3": 100}, {})
        assert file_versions(tmp_path)[2] == {"version": "3", "weight": 100}  # no `shadow = 0` left behind
        assert await answered_by(s, 50) == {"3"}
        await s.deployments.stop()

    run(main())


def test_a_version_in_the_active_set_only_changes_traffic(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        made, pool = len(reps.made), s.routing.active["fraud"]
        result = await s.control.rollout("fraud", "2", percent=50)
        assert (result.action, result.swap_us) == ("traffic", None)
        assert result.weights == {"1": 50, "2": 50}
        assert s.routing.active["fraud"] is pool and len(reps.made) == made
        assert [v["weight"] for v in file_versions(tmp_path)] == [50, 50]
        # With settings it is a deploy (its workers change).
        again = await s.control.rollout("fraud", "2", weight=10, settings={"max_batch_size": 4})
        assert again.action == "deploy" and reps.of("2")[-1].vc.max_batch_size == 4
        await s.deployments.stop()

    run(main())


@pytest.mark.parametrize("kwargs, words", [
    ({}, "give exactly one of weight, percent or shadow"),
    ({"weight": 1, "shadow": 0.5}, "(got weight and shadow)"),
    ({"percent": 0}, "percent: must be a number in (0, 100], got 0"),
    ({"percent": 101}, "percent: must be a number in (0, 100]"),
    ({"percent": True}, "percent: must be a number"),
    ({"weight": -1}, "rollout.versions[2].weight: must be >= 0"),
    ({"shadow": 2}, "rollout.versions[2].shadow: must be <= 1"),
    ({"weight": 1, "settings": {"replicas": 0}}, "rollout.versions[2].replicas: must be >= 1"),
    ({"weight": 1, "settings": {"bogus": 1}}, "bogus"),
    ({"weight": 1, "settings": {"weight": 3}}, "settings.weight: set by the rollout itself"),
])
def test_a_bad_rollout_names_what_is_wrong_and_changes_nothing(tmp_path, kwargs, words):
    async def main() -> None:
        s, reps = await started(tmp_path)
        before, made, pool = (tmp_path / "config.toml").read_text(), len(reps.made), s.routing.active["fraud"]
        with pytest.raises(ConfigError) as e:
            await s.control.rollout("fraud", "3", **kwargs)
        assert words in str(e.value)
        assert (tmp_path / "config.toml").read_text() == before
        assert len(reps.made) == made and s.routing.active["fraud"] is pool
        await s.deployments.stop()

    run(main())


def test_a_version_not_in_the_store_is_404(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        with pytest.raises(NotFound, match="model 'fraud' has no version '9' in the store"):
            await s.control.rollout("fraud", "9", percent=10)
        with pytest.raises(NotFound, match="'nosuch' is not in the store"):
            await s.control.rollout("nosuch", "1", percent=10)
        await s.deployments.stop()

    run(main())


def test_a_failed_rollout_puts_the_file_back_and_the_active_pool_keeps_serving(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path, Replicas(fail_warmup=("3",)))
        before, pool = (tmp_path / "config.toml").read_text(), s.routing.active["fraud"]
        with pytest.raises(DeployFailed, match="the blue pool keeps serving"):
            await s.control.rollout("fraud", "3", percent=10)
        assert without_generation((tmp_path / "config.toml").read_text()) == without_generation(before)
        assert s.routing.active["fraud"] is pool and "fraud" not in s.deployments.previous
        assert await answered_by(s, 100) == {"1", "2"}
        await s.deployments.stop()

    run(main())


def test_a_model_not_served_yet_starts_with_its_first_version(tmp_path):
    async def main() -> None:
        s, reps = await started(tmp_path)
        front = Front(s)
        front.send("churn")
        await settle(lambda: bool(front.replies))
        assert front.replies[0][0] == 404  # not served before
        with pytest.raises(ConfigError, match="its first version takes live traffic"):
            await s.control.rollout("churn", "1", shadow=0.5)
        result = await s.control.rollout("churn", "2", percent=10)
        assert (result.action, result.weights) == ("create", {"2": 100})
        assert await answered_by(s, 20, "churn") == {"2"}
        assert file_versions(tmp_path, "churn") == [{"version": "2", "weight": 100}]
        assert "# ops notes: keep this comment" in (tmp_path / "config.toml").read_text()
        assert [m["model"] for m in s.control.status().to_json()["models"]] == ["fraud", "churn"]
        assert gauge(s, "router_active_pool", "churn") is not None
        # A second version of the new model goes blue-green like any other.
        second = await s.control.rollout("churn", "1", percent=25)
        assert (second.action, second.weights) == ("deploy", {"2": 75, "1": 25})
        # And a restart serves what the file now says.
        assert [m.name for m in load_config(tmp_path / "config.toml").models] == ["fraud", "churn"]
        await s.deployments.stop()

    run(main())


def test_a_reload_adds_a_model_the_file_gained(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        path = tmp_path / "config.toml"
        path.write_text(path.read_text() + '\n[[models]]\nname = "churn"\n  [[models.versions]]\n  version = "1"\n')
        result = await s.control.reload()
        assert result.deployed == {"churn": ["a new model"]}
        assert await answered_by(s, 10, "churn") == {"1"}
        await s.deployments.stop()

    run(main())


# -- drop ----------------------------------------------------------------------------------------------


def test_drop_takes_a_version_out_of_the_active_set(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        await s.control.rollout("fraud", "3", weight=10)
        result = await s.control.drop("fraud", "1")
        assert (result.action, result.dropped, result.versions) == ("drop", "1", ["2", "3"])
        assert await answered_by(s, 200) == {"2", "3"}
        assert [v["version"] for v in file_versions(tmp_path)] == ["2", "3"]
        with pytest.raises(NotFound, match="does not serve version '1'"):
            await s.control.drop("fraud", "1")
        await s.control.drop("fraud", "2")
        with pytest.raises(ConfigError, match="the only version of model 'fraud'") as e:
            await s.control.drop("fraud", "3")
        assert e.value.status == 409
        await s.deployments.stop()

    run(main())


def test_dropping_the_last_live_version_is_refused(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        await s.control.rollout("fraud", "3", shadow=0.25)
        await s.control.drop("fraud", "2")
        with pytest.raises(ConfigError, match="at least one version needs weight > 0"):
            await s.control.drop("fraud", "1")
        await s.deployments.stop()

    run(main())


# -- list and remove -------------------------------------------------------------------------------------


class HeldReplicas(Replicas):
    """Fakes whose workers of ``held`` versions only become live when ``gate`` is set."""

    def __init__(self, held: str) -> None:
        super().__init__()
        self.held = held
        self.gate = asyncio.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> FakeReplica:
        r = super().__call__(*args, **kwargs)
        if r.vc.version == self.held:
            start = r.start

            def held_start() -> asyncio.Future[None]:
                async def later() -> None:
                    await self.gate.wait()
                    await start()

                return asyncio.ensure_future(later())

            r.start = held_start  # type: ignore[method-assign]
        return r


def states(result: Any) -> dict[str, str]:
    return {v["version"]: v["state"] for v in result.versions}


def test_the_listing_says_where_each_version_is_and_what_it_weighs(tmp_path):
    async def main() -> None:
        reps = HeldReplicas("4")
        s, _ = await started(tmp_path, reps)
        listing = await s.control.versions("fraud")
        assert states(listing) == {"1": "serving", "2": "serving", "3": "stored", "4": "stored"}
        row = listing.versions[0]
        assert (row["weight"], row["meta"]["platform"], "example" not in row["meta"]) == (90, "pytorch_torchscript",
                                                                                          True)
        assert row["bytes"] == sum(f.stat().st_size for f in (tmp_path / "store/fraud/1").iterdir())
        assert listing.bytes == sum(v["bytes"] for v in listing.versions)
        assert gauge(s, "router_store_bytes", "fraud") == listing.bytes
        assert gauge(s, "router_store_versions", "fraud") == 4
        await s.control.rollout("fraud", "3", shadow=0.5)
        await s.control.set_traffic("fraud", {"2": 0})
        assert states(await s.control.versions("fraud")) == {"1": "serving", "2": "idle", "3": "shadow",
                                                             "4": "stored"}
        # While a deploy waits for its workers, the new set is a standby pool.
        deploy = asyncio.ensure_future(s.control.rollout("fraud", "4", percent=50))
        await settle(lambda: any(p.name == "fraud" and "4" in p.versions for p in s.routing.pools))
        assert states(await s.control.versions("fraud"))["4"] == "standby"
        (status,) = s.control.status().models
        assert status["standby"]["versions"] == ["1", "2", "3", "4"] and status["standby"]["live"] < \
            status["standby"]["workers"] == 4  # the warm-up's progress: 4 is held
        # A removal waits for the deploy (one change at a time), then finds the version serving.
        remove = asyncio.ensure_future(s.control.remove("fraud", "4"))
        await asyncio.sleep(0.01)
        assert not remove.done()
        reps.gate.set()
        await deploy
        with pytest.raises(VersionInUse, match="is in the active set"):
            await remove
        assert (tmp_path / "store/fraud/4").is_dir()
        listing = await s.control.versions("fraud")
        assert states(listing)["4"] == "serving"
        await s.control.drop("fraud", "3")
        assert states(await s.control.versions("fraud"))["3"] == "previous"
        (status,) = s.control.status().models
        assert status["standby"] is None and 299 < status["previous"]["expires_in_s"] <= 300
        await s.deployments.stop()

    run(main())


def test_a_released_previous_pool_stops_at_once_and_its_versions_can_be_removed(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        await s.control.rollout("fraud", "3", percent=10)
        await s.control.rollback("fraud")  # 3 is now held by the previous pool alone
        with pytest.raises(VersionInUse, match="previous"):
            await s.control.remove("fraud", "3")
        released = await s.control.release("fraud")
        assert (released.pool, released.versions) == ("green", ["1", "2", "3"])
        (status,) = s.control.status().models
        assert status["previous"] is None
        with pytest.raises(NoPreviousPool):
            await s.control.rollback("fraud")
        await settle(lambda: not s.deployments.stopping)
        assert (await s.control.remove("fraud", "3")).version == "3"
        assert not (tmp_path / "store/fraud/3").exists()
        with pytest.raises(NoPreviousPool, match="no previous pool kept warm to release"):
            await s.control.release("fraud")
        assert [(e["action"], e["result"]) for e in (await s.control.audit_trail(limit=3)).entries] == [
            ("release", "refused"), ("remove", "ok"), ("rollback", "refused")]
        await s.deployments.stop()

    run(main())


def test_remove_is_refused_while_a_pool_holds_the_version_and_frees_the_bytes_after(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path)
        with pytest.raises(VersionInUse, match=r"version '1' is in the active set \(blue pool, serving\): drop "
                                               "it first"):
            await s.control.remove("fraud", "1")
        await s.control.drop("fraud", "1")
        with pytest.raises(VersionInUse, match=r"kept warm in the previous \(blue\) pool for a rollback for "
                                               r"another \d+ s"):
            await s.control.remove("fraud", "1")
        assert (tmp_path / "store/fraud/1").is_dir()
        size = sum(f.stat().st_size for f in (tmp_path / "store/fraud/3").iterdir())
        before = gauge(s, "router_store_bytes", "fraud")
        removed = await s.control.remove("fraud", "3")
        assert (removed.version, removed.bytes) == ("3", size)
        assert not (tmp_path / "store/fraud/3").exists()
        assert gauge(s, "router_store_bytes", "fraud") == before - size
        assert gauge(s, "router_store_versions", "fraud") == 3
        with pytest.raises(NotFound, match="has no version '3' in the store"):
            await s.control.remove("fraud", "3")
        with pytest.raises(NotFound):
            await s.control.rollout("fraud", "3", percent=5)
        await s.deployments.stop()

    run(main())


# -- the file ------------------------------------------------------------------------------------------


def test_write_versions_edits_tables_in_place_and_rewrites_them_for_a_new_order(tmp_path):
    path = tmp_path / "config.toml"
    fake_store(tmp_path / "store", {"fraud": ["1", "2", "3"]})
    path.write_text(CONFIG)
    configfile.write_versions(path, "fraud", [{"version": "1", "weight": 50, "max_batch_size": 64},
                                              {"version": "3", "weight": 50}])
    text = path.read_text()
    assert "# the baseline: keep this comment too" in text and "max_batch_size = 64" in text
    assert 'version = "2"' not in text
    # A key left out that the file gives a non-default value is removed; one at its default stays.
    configfile.write_versions(path, "fraud", [{"version": "1", "weight": 50}, {"version": "3", "weight": 50}])
    assert "max_batch_size" not in path.read_text()
    path.write_text(CONFIG.replace("max_batch_size = 64", "max_batch_size = 32"))
    configfile.write_versions(path, "fraud", [{"version": "1", "weight": 1}])
    assert "max_batch_size = 32" in path.read_text()
    # Another order: the tables are written anew in it (the split's order is the file's).
    configfile.write_versions(path, "fraud", [{"version": "3", "weight": 1}, {"version": "1", "weight": 1}])
    assert [v["version"] for v in file_versions(tmp_path)] == ["3", "1"]


def test_add_model_appends_a_table_and_refuses_a_second_one(tmp_path):
    path = tmp_path / "config.toml"
    fake_store(tmp_path / "store", {"fraud": ["1", "2"], "churn": ["1"]})
    path.write_text(CONFIG)
    configfile.add_model(path, {"name": "churn", "versions": [{"version": "1", "weight": 1.0}]})
    text = path.read_text()
    assert without_generation(text).startswith(CONFIG)
    assert text.endswith('\n\n[[models]]\nname = "churn"\n\n[[models.versions]]\nversion = "1"\nweight = 1\n')
    with pytest.raises(ConfigError, match="already has a \\[\\[models\\]\\] entry named 'churn'"):
        configfile.add_model(path, {"name": "churn", "versions": [{"version": "1"}]})
    assert path.read_text() == text
