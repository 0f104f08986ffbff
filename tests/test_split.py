"""The weighted-rendezvous splitter: the extension and its twin agree exactly.

Golden XXH64 vectors are the published ones plus values checked against the
reference C library (libxxhash 0.8.1); the routing goldens pin the mapping
itself, since changing it would move every sticky key on upgrade.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import BOTH, ROOT, _splitter_c
from hypothesis import given, settings
from hypothesis import strategies as st

from router import _splitter_py, splitter

N_KEYS = 100_000


@pytest.fixture(scope="module")
def hashed_keys() -> np.ndarray:
    """hash64 of ``user-0`` ... ``user-99999``: the pre-hashed form ``choose_batch`` takes."""
    h = (_splitter_c or _splitter_py).hash64
    return np.array([h(f"user-{i}".encode()) for i in range(N_KEYS)], dtype=np.uint64)


def test_extension_is_loaded_unless_forced_off():
    if os.environ.get("ROUTER_NO_EXTENSIONS") == "1":
        assert splitter.EXTENSION is False
        assert splitter.WeightTable is _splitter_py.WeightTable
        assert splitter.WeightTableC is None
    else:
        assert _splitter_c is not None, "the compiled router._splitter_c did not build"
        assert splitter.EXTENSION is True
        assert splitter.WeightTable is _splitter_c.WeightTable
        assert splitter.WeightTableC is _splitter_c.WeightTable
        assert splitter.hash64 is _splitter_c.hash64
    assert splitter.WeightTablePy is _splitter_py.WeightTable


def test_twins_share_names_signatures_and_docstrings():
    if _splitter_c is None:
        pytest.skip("extension not built")
    assert _splitter_c.__all__ == _splitter_py.__all__
    for name in ("hash64", "mix64"):
        c, py = getattr(_splitter_c, name), getattr(_splitter_py, name)
        assert inspect.signature(c) == inspect.signature(py)
        assert inspect.cleandoc(c.__doc__).endswith(inspect.cleandoc(py.__doc__))  # after the embedded signature
    for name in ("index", "choose", "choose_batch"):
        c, py = getattr(_splitter_c.WeightTable, name), getattr(_splitter_py.WeightTable, name)
        assert inspect.signature(c) == inspect.signature(py)
        assert inspect.cleandoc(c.__doc__).endswith(inspect.cleandoc(py.__doc__))
    c_doc = inspect.cleandoc(_splitter_c.WeightTable.__doc__)
    assert c_doc.endswith(inspect.cleandoc(_splitter_py.WeightTable.__doc__))
    init = "(versions: tuple[str, ...], weights: tuple[float, ...], seed: int | None = None) -> None"
    assert c_doc.startswith("WeightTable" + init)
    py_init = str(inspect.signature(_splitter_py.WeightTable.__init__)).replace("'", "")
    assert py_init == init.replace("(", "(self, ", 1)


# -- hash64 (XXH64) ----------------------------------------------------------------------------------------

XXH64_GOLDEN = [
    # Published vectors.
    (b"", 0, 0xEF46DB3751D8E999),
    (b"a", 0, 0xD24EC4F1A98C6E5B),
    (b"abc", 0, 0x44BC2CF5AD770999),
    (b"Nobody inspects the spammish repetition", 0, 0xFBCEA83C8A378BF1),
    # Checked against libxxhash 0.8.1: every length class (bytes, 4-byte, 8-byte lanes, 32-byte stripes).
    (b"", 1, 0xD5AFBA1336A3BE4B),
    (b"abc", 1, 0xBEA9CA8199328908),
    (b"xxhash", 20141025, 0xB559B98D844E0635),
    (b"The quick brown fox jumps over the lazy dog", 0, 0x0B242D361FDA71BC),
    (bytes(range(3)), 0x9E3779B185EBCA8D, 0xF465322E2768434F),
    (bytes(range(4)), 0, 0xFFCED8604453CC1E),
    (bytes(range(7)), 2**64 - 1, 0x53899EA28B7375FC),
    (bytes(range(8)), 0, 0x884A173614B81B8D),
    (bytes(range(12)), 0x9E3779B185EBCA8D, 0xBF51FB14BCFE7BDC),
    (bytes(range(31)), 0, 0xC346D2B59B4D8EE1),
    (bytes(range(32)), 0, 0xCBF59C5116FF32B4),
    (bytes(range(33)), 2**64 - 1, 0x5677D5193D356C20),
    (bytes(range(63)), 0x9E3779B185EBCA8D, 0x550D67CDCEB02F14),
    (bytes(range(64)), 0, 0xF7C67301DB6713F0),
    (bytes(range(100)), 0, 0x6AC1E58032166597),
]


@pytest.mark.parametrize("data,seed,expected", XXH64_GOLDEN)
def test_hash64_golden(impl, data, seed, expected):
    assert impl.hash64(data, seed) == expected


def test_hash64_seed_is_taken_modulo_2_64_and_data_must_be_bytes(impl):
    assert impl.hash64(b"abc", -1) == impl.hash64(b"abc", 2**64 - 1)
    assert impl.hash64(b"abc", 2**64 + 1) == impl.hash64(b"abc", 1)
    assert impl.hash64(b"abc", np.uint64(7)) == impl.hash64(b"abc", 7)  # any integer (``__index__``)
    for bad in ("abc", bytearray(b"abc"), None):
        with pytest.raises(TypeError):
            impl.hash64(bad)
    for bad_seed in (1.5, "1", None):
        with pytest.raises(TypeError):
            impl.hash64(b"abc", bad_seed)
        with pytest.raises(TypeError):
            impl.mix64(bad_seed)
    with pytest.raises(TypeError):
        impl.WeightTable(("a",), (1.0,), seed=1.5)


def test_mix64_is_splitmix64(impl):
    # splitmix64 seeded with 0: its first two outputs (the published reference sequence).
    gamma = 0x9E3779B97F4A7C15
    assert impl.mix64(gamma) == 0xE220A8397B1DCDAF
    assert impl.mix64(2 * gamma) == 0x6E789E6AA1B965F4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**64 - 1))
def test_twins_agree_on_hash64(data, seed):
    assert len({m.hash64(data, seed) for m in BOTH}) == 1
    assert len({m.mix64(seed) for m in BOTH}) == 1


# -- the routing itself ------------------------------------------------------------------------------------


def test_routing_golden(impl):
    t = impl.WeightTable(("1", "2", "canary"), (70.0, 20.0, 10.0), seed=42)
    assert [t.index(f"user-{i}") for i in range(16)] == [2, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0]
    assert [t.index(None) for _ in range(16)] == [1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    t = impl.WeightTable(("a", "b", "c", "d"), (1, 1, 1, 1))
    assert [t.index(k) for k in ["", "x", "é", b"\xff\xfe", "user-42", "a" * 100]] == [3, 3, 2, 2, 0, 2]


def test_api(impl):
    t = impl.WeightTable(("1", "2"), (3.0, 1.0), seed=1)
    assert len(t) == 2 and t.versions == ("1", "2") and t.weights == (3.0, 1.0)
    assert t.choose("k") == t.versions[t.index("k")]
    # A str key hashes as its UTF-8 bytes, surrogate-escaped bytes included (as aiohttp decodes headers).
    for raw in (b"user-7", "é-ü".encode(), b"\xff\xfeabc"):
        assert t.index(raw.decode("utf-8", "surrogateescape")) == t.index(raw)
    with pytest.raises(TypeError):
        t.choose(42)
    with pytest.raises(TypeError):
        t.index(bytearray(b"k"))
    with pytest.raises(TypeError):
        t.choose_batch(np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError):
        t.choose_batch([1, 2])
    with pytest.raises(ValueError):
        t.choose_batch(np.zeros((2, 2), dtype=np.uint64))
    assert t.choose_batch(np.zeros(0, dtype=np.uint64)).dtype == np.int64


def test_edges(impl):
    empty = impl.WeightTable((), ())
    assert len(empty) == 0
    assert empty.choose("k") is None and empty.choose(None) is None
    assert empty.index("k") == -1
    assert list(empty.choose_batch(np.arange(3, dtype=np.uint64))) == [-1, -1, -1]
    lone = impl.WeightTable(("only",), (0.001,))
    assert {lone.choose(k) for k in ("a", b"b", None, "")} == {"only"}
    assert list(lone.choose_batch(np.arange(5, dtype=np.uint64))) == [0] * 5
    for weights in ((1.0, 0.0), (1.0, -2.0), (1.0, float("nan"))):
        with pytest.raises(ValueError):
            impl.WeightTable(("a", "b"), weights)
    with pytest.raises(ValueError):
        impl.WeightTable(("a", "b"), (1.0,))


def test_weight_zero_is_never_chosen():
    """The pool drops weight-0 versions when it builds the table (and a table refuses them)."""
    from router.routing import Pool

    pools = {
        v: SimpleNamespace(version=v, live=True, vc=SimpleNamespace(weight=w, shadow=s), replicas=[])
        for v, w, s in (("1", 1.0, 0.0), ("dark", 0.0, 0.0), ("2", 1.0, 0.0), ("shadow", 0.0, 0.5))
    }
    route = Pool(SimpleNamespace(name="m", routing_key=None, log_rate=0.0), pools, {})  # type: ignore[arg-type]
    route.rebuild()
    assert route.table.versions == ("1", "2")
    assert route.mirror is not None and route.mirror.versions == ("shadow",)
    picks = {route.table.choose(f"user-{i}") for i in range(2000)} | {route.table.choose(None) for _ in range(2000)}
    assert picks == {"1", "2"}


def test_shares_follow_the_weights(fastest, hashed_keys):
    t = fastest.WeightTable(("1", "2", "3"), (70.0, 20.0, 10.0), seed=3)
    shares = np.bincount(t.choose_batch(hashed_keys), minlength=3) / N_KEYS
    assert shares == pytest.approx([0.7, 0.2, 0.1], abs=0.01)
    draws = Counter(t.index(None) for _ in range(N_KEYS))
    assert [draws[i] / N_KEYS for i in range(3)] == pytest.approx([0.7, 0.2, 0.1], abs=0.01)
    equal = fastest.WeightTable(("a", "b", "c", "d"), (1.0,) * 4)
    assert np.bincount(equal.choose_batch(hashed_keys), minlength=4) / N_KEYS == pytest.approx([0.25] * 4, abs=0.01)


def test_a_key_sticks_across_tables(impl):
    a = impl.WeightTable(("1", "2", "3"), (5.0, 3.0, 2.0), seed=1)
    b = impl.WeightTable(("1", "2", "3"), (5.0, 3.0, 2.0), seed=2)
    keys = [f"session-{i}" for i in range(5000)]
    assert [a.choose(k) for k in keys] == [b.choose(k) for k in keys]
    assert [a.choose(k) for k in keys] == [a.choose(k.encode()) for k in keys]


@pytest.mark.daemon
def test_a_key_sticks_across_processes_and_implementations():
    """A child process forced onto the twin routes 1000 keys as this one does with either implementation."""
    code = (
        "from router.splitter import WeightTable\n"
        "t = WeightTable(('1', '2', '3'), (5.0, 3.0, 2.0))\n"
        "print(','.join(t.choose(f'user-{i}') for i in range(1000)))\n"
    )
    env = {**os.environ, "ROUTER_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip().split(",")
    assert len(out) == 1000
    for m in BOTH:
        t = m.WeightTable(("1", "2", "3"), (5.0, 3.0, 2.0))
        assert out == [t.choose(f"user-{i}") for i in range(1000)]


def test_raising_a_weight_only_moves_keys_into_that_version(fastest, hashed_keys):
    before = fastest.WeightTable(("1", "2", "3"), (70.0, 20.0, 10.0)).choose_batch(hashed_keys)
    # 22.5 / 112.5 = 20% of the traffic for version "3" (was 10%).
    after = fastest.WeightTable(("1", "2", "3"), (70.0, 20.0, 22.5)).choose_batch(hashed_keys)
    moved = before != after
    assert moved.mean() == pytest.approx(0.10, abs=0.01)
    assert (after[moved] == 2).all()
    # And lowering it back moves exactly those keys out again.
    assert (before[moved] != 2).all()


def test_removing_or_adding_a_version_moves_only_its_keys(fastest, hashed_keys):
    full = fastest.WeightTable(("1", "2", "3"), (50.0, 30.0, 20.0)).choose_batch(hashed_keys)
    # Without "2": indices shift, so compare by name.
    names_full = np.array(["1", "2", "3"])[full]
    names_less = np.array(["1", "3"])[fastest.WeightTable(("1", "3"), (50.0, 20.0)).choose_batch(hashed_keys)]
    moved = names_full != names_less
    assert (names_full[moved] == "2").all()
    assert moved.sum() == (names_full == "2").sum()
    # Its keys spread over the others (by their weights), and adding "2" back moves only these keys into it.
    assert set(names_less[moved]) == {"1", "3"}
    assert not (names_full[~moved] == "2").any()


# -- the implementations agree -----------------------------------------------------------------------------

tables = st.integers(1, 8).flatmap(
    lambda n: st.tuples(
        st.lists(st.text(max_size=12), min_size=n, max_size=n, unique=True),
        st.lists(st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False) | st.integers(1, 1000),
                 min_size=n, max_size=n),
    )
)
route_keys = st.lists(st.text(max_size=40) | st.binary(max_size=80), max_size=30)


@settings(max_examples=100, deadline=None)
@given(tables, route_keys, st.integers(-(2**63), 2**64 - 1), st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_twins_agree_on_routing(table, keys, seed, prehashed):
    if _splitter_c is None:
        pytest.skip("extension not built")
    versions, weights = table
    c = _splitter_c.WeightTable(tuple(versions), tuple(weights), seed=seed)
    py = _splitter_py.WeightTable(tuple(versions), tuple(weights), seed=seed)
    assert [c.index(k) for k in keys] == [py.index(k) for k in keys]
    assert [c.choose(k) for k in keys] == [py.choose(k) for k in keys]
    assert [c.index(None) for _ in range(40)] == [py.index(None) for _ in range(40)]
    arr = np.array(prehashed, dtype=np.uint64)
    got = c.choose_batch(arr)
    assert got.dtype == np.int64
    assert got.tolist() == py.choose_batch(arr).tolist()
    # The batch on hash64(key) is the keyed pick.
    hashed = np.array([_splitter_py.hash64(k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k)
                       for k in keys], dtype=np.uint64)
    assert c.choose_batch(hashed).tolist() == [py.index(k) for k in keys]


def test_batch_accepts_strided_and_read_only_keys(impl, hashed_keys):
    t = impl.WeightTable(("1", "2", "3"), (1.0, 2.0, 3.0))
    view = hashed_keys[:2000:3]
    ro = view.copy()
    ro.flags.writeable = False
    expected = t.choose_batch(np.ascontiguousarray(view)).tolist()
    assert t.choose_batch(view).tolist() == expected
    assert t.choose_batch(ro).tolist() == expected
