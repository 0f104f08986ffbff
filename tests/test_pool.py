"""Replica choice and the weight table, without processes."""

from __future__ import annotations

from collections import Counter

import pytest

from router.splitter import WeightTable


class FakeReplica:
    def __init__(self, outstanding: int) -> None:
        self.outstanding = outstanding
        self.live = True


def test_power_of_two_choices_prefers_the_less_loaded_replica():
    from router.config import VersionConfig
    from router.routing import ReplicaSet

    reps = [FakeReplica(0), FakeReplica(50), FakeReplica(50)]
    pool = ReplicaSet("m", VersionConfig("1"), None, reps)  # type: ignore[arg-type]
    pool.refresh()
    picks = Counter(id(pool.pick()) for _ in range(3000))
    # The idle replica wins every draw it takes part in: 2 of 3 pairs contain it.
    assert picks[id(reps[0])] == pytest.approx(2000, abs=150)
    reps[1].live = False
    reps[2].live = False
    pool.refresh()
    assert pool.pick() is reps[0]
    reps[0].live = False
    pool.refresh()
    assert pool.pick() is None


def test_weight_table_shares_and_stickiness():
    t = WeightTable(("1", "2"), (90.0, 10.0))
    c = Counter(t.choose(None) for _ in range(20000))
    assert c["1"] / 20000 == pytest.approx(0.9, abs=0.015)
    keys = [f"user-{i}" for i in range(20000)]
    first = [t.choose(k) for k in keys]
    assert first == [t.choose(k.encode()) for k in keys]
    assert Counter(first)["2"] / len(keys) == pytest.approx(0.1, abs=0.015)


def test_weight_table_edges():
    assert WeightTable((), ()).choose("k") is None
    assert WeightTable(("only",), (3.0,)).choose(None) == "only"
    with pytest.raises(ValueError):
        WeightTable(("a",), (0.0,))
