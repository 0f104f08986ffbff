"""Micro-benchmarks of the splitter (pytest-benchmark).

Run: ``.venv/bin/python -m pytest bench/test_splitter.py --benchmark-only -q``
(not collected by a plain ``pytest``: ``testpaths = ["tests"]``).

Tables and keys are built in fixtures, outside the timed call. The batch rate
is keys/s = batch size / median seconds (in ``test_choose_batch``'s
``extra_info`` as ``keys_per_s``).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench._impls import IMPLS, implementation
from router import _splitter_py

VERSIONS = ("1", "2", "canary")
WEIGHTS = (70.0, 20.0, 10.0)
KEY = "user-1234567"
SHADOW = ("shadow",)
SHADOW_FRACTION = (0.5,)
BATCH = {"c": 1_000_000, "py": 20_000}  # the twin is a Python loop: a smaller batch keeps the run short


@pytest.fixture(params=IMPLS)
def splitter(request: pytest.FixtureRequest):
    """``router._splitter_c`` (id ``c``) or ``router._splitter_py`` (id ``py``)."""
    return implementation(request, "_splitter")


@pytest.fixture
def table(splitter):
    return splitter.WeightTable(VERSIONS, WEIGHTS, seed=1)


def test_choose_str_key(benchmark, table) -> None:
    assert benchmark(table.choose, KEY) in VERSIONS


def test_choose_bytes_key(benchmark, table) -> None:
    assert benchmark(table.choose, KEY.encode()) in VERSIONS


def test_choose_no_key(benchmark, table) -> None:
    assert benchmark(table.choose, None) in VERSIONS


@pytest.fixture
def mirror(splitter):
    return splitter.MirrorTable(SHADOW, SHADOW_FRACTION, seed=1)


def test_pick_str_key(benchmark, mirror) -> None:
    """Keyed mirror pick, one shadow version at 0.5 (``KEY`` is picked: the prebuilt 1-tuple)."""
    assert benchmark(mirror.pick, KEY) == SHADOW


def test_hash64_key(benchmark, splitter) -> None:
    assert benchmark(splitter.hash64, KEY.encode()) == _splitter_py.hash64(KEY.encode())


def test_choose_batch(benchmark, splitter, table) -> None:
    n = BATCH[splitter.__name__.rsplit("_", 1)[-1]]
    keys = np.random.default_rng(7).integers(0, 2**64, size=n, dtype=np.uint64)
    out = benchmark(table.choose_batch, keys)
    assert out.shape == (n,) and out.dtype == np.int64
    benchmark.extra_info["keys"] = n
    benchmark.extra_info["keys_per_s"] = n / benchmark.stats.stats.median
