"""The shadow-traffic mirror table: the extension and its twin agree exactly, and the picks behave.

``MirrorTable.pick`` decides for each shadow version on its own whether it gets a
copy of a request: a keyed request when ``(mix64(hash64(key) ^ seed_v) >> 11) * 2**-53``
is below the version's fraction (``seed_v`` is ``hash64(name, SHADOW_SEED)``), a
request without a key by the table's splitmix64 generator, one step per version.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
from conftest import BOTH, ROOT, _splitter_c
from hypothesis import given, settings
from hypothesis import strategies as st

from router import _splitter_py, splitter

N_KEYS = 100_000
KEYS = [f"user-{i}" for i in range(N_KEYS)]
EMPTY = ()  # the empty-tuple singleton a pick of nothing returns
GAMMA = 0x9E3779B97F4A7C15
MASK64 = 2**64 - 1


def shares(table, keys) -> list[float]:
    """The share of ``keys`` (or of keyless picks, one per None) mirrored to each version of ``table``."""
    counts = dict.fromkeys(table.versions, 0)
    for k in keys:
        for v in table.pick(k):
            counts[v] += 1
    return [counts[v] / len(keys) for v in table.versions]


def spec_keyed(versions, fractions, key) -> tuple[str, ...]:
    """The keyed pick written out from the definition, with the twin's hash64 and mix64."""
    h, mix64 = _splitter_py.hash64, _splitter_py.mix64
    kh = h(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key)
    seeds = [h(v.encode("utf-8", "surrogateescape"), _splitter_py.SHADOW_SEED) for v in versions]
    return tuple(v for v, s, f in zip(versions, seeds, fractions, strict=True)
                 if (mix64(kh ^ s) >> 11) * 2.0**-53 < f)


def test_extension_is_loaded_unless_forced_off():
    if os.environ.get("ROUTER_NO_EXTENSIONS") == "1":
        assert splitter.MirrorTable is _splitter_py.MirrorTable
        assert splitter.MirrorTableC is None
    else:
        assert _splitter_c is not None, "the compiled router._splitter_c did not build"
        assert splitter.MirrorTable is _splitter_c.MirrorTable
        assert splitter.MirrorTableC is _splitter_c.MirrorTable
    assert splitter.MirrorTablePy is _splitter_py.MirrorTable
    assert {"MirrorTable", "MirrorTableC", "MirrorTablePy"} <= set(splitter.__all__)


def test_twins_share_names_signatures_and_docstrings():
    if _splitter_c is None:
        pytest.skip("extension not built")
    assert _splitter_c.__all__ == _splitter_py.__all__
    assert "MirrorTable" in _splitter_py.__all__
    assert _splitter_c.SHADOW_SEED == _splitter_py.SHADOW_SEED == 0x5348414457
    c, py = _splitter_c.MirrorTable.pick, _splitter_py.MirrorTable.pick
    assert inspect.signature(c) == inspect.signature(py)
    assert inspect.cleandoc(c.__doc__).endswith(inspect.cleandoc(py.__doc__))  # after the embedded signature
    c_doc = inspect.cleandoc(_splitter_c.MirrorTable.__doc__)
    assert c_doc.endswith(inspect.cleandoc(_splitter_py.MirrorTable.__doc__))
    init = "(versions: tuple[str, ...], fractions: tuple[float, ...], seed: int | None = None) -> None"
    assert c_doc.startswith("MirrorTable" + init)
    py_init = str(inspect.signature(_splitter_py.MirrorTable.__init__)).replace("'", "")
    assert py_init == init.replace("(", "(self, ", 1)
    # The compiled table is immutable (readonly attributes).
    t = _splitter_c.MirrorTable(("a",), (0.5,))
    with pytest.raises(AttributeError):
        t.versions = ("b",)
    with pytest.raises(AttributeError):
        t.fractions = (1.0,)


# -- the picks follow the definition -----------------------------------------------------------------------


def test_keyed_pick_is_the_definition(impl):
    versions, fractions = ("1", "2", "canary", "é"), (0.5, 0.25, 0.9, 1.0)
    t = impl.MirrorTable(versions, fractions, seed=1)
    keys = ["", "x", "é", "user-42", "a" * 100, b"\xff\xfe", "\udcff\udcfeabc"] + KEYS[:2000]
    assert [t.pick(k) for k in keys] == [spec_keyed(versions, fractions, k) for k in keys]


def test_keyless_pick_is_splitmix64_one_step_per_version(impl):
    versions, fractions = ("a", "b", "c"), (0.5, 0.1, 0.8)
    t = impl.MirrorTable(versions, fractions, seed=-5)
    state, expected = -5 & MASK64, []
    for _ in range(500):
        picked = []
        for v, f in zip(versions, fractions, strict=True):
            state = (state + GAMMA) & MASK64  # one step per version, picked or not
            if (_splitter_py.mix64(state) >> 11) * 2.0**-53 < f:
                picked.append(v)
        expected.append(tuple(picked))
    assert [t.pick(None) for _ in range(500)] == expected


def test_mirror_golden(impl):
    """Pins the mapping: changing it would change which sessions a running shadow sees."""
    t = impl.MirrorTable(("1", "2", "canary"), (0.5, 0.3, 1.0), seed=42)
    assert [t.pick(f"user-{i}") for i in range(8)] == [
        ("1", "canary"), ("1", "canary"), ("1", "canary"), ("canary",),
        ("1", "2", "canary"), ("2", "canary"), ("1", "canary"), ("1", "canary"),
    ]
    assert [t.pick(None) for _ in range(8)] == [
        ("2", "canary"), ("1", "2", "canary"), ("1", "canary"), ("2", "canary"),
        ("canary",), ("1", "2", "canary"), ("1", "canary"), ("1", "canary"),
    ]


def test_api(impl):
    t = impl.MirrorTable(("1", "2"), (0.5, 1), seed=1)
    assert len(t) == 2 and t.versions == ("1", "2") and t.fractions == (0.5, 1)
    assert type(t.versions) is tuple and type(t.fractions) is tuple
    # A str key hashes as its UTF-8 bytes, surrogate-escaped bytes included (as aiohttp decodes headers).
    for raw in (b"user-7", "é-ü".encode(), b"\xff\xfeabc"):
        assert t.pick(raw.decode("utf-8", "surrogateescape")) == t.pick(raw)
    # A lone surrogate that no byte escapes to cannot be a routing key, in either implementation.
    with pytest.raises(UnicodeEncodeError):
        t.pick("\ud800")


def test_single_pick_is_one_prebuilt_tuple_and_none_is_the_empty_tuple(impl):
    t = impl.MirrorTable(("shadow",), (0.5,), seed=1)
    picked = next(k for k in KEYS if t.pick(k))
    skipped = next(k for k in KEYS if not t.pick(k))
    first = t.pick(picked)
    assert first == ("shadow",)
    assert t.pick(picked) is first and t.pick(picked.encode()) is first
    assert t.pick(skipped) is EMPTY
    # Keyless picks share the same objects.
    results = [t.pick(None) for _ in range(200)]
    assert {id(r) for r in results} == {id(first), id(EMPTY)}
    # Several versions picked: a tuple in table order (each call its own).
    several = impl.MirrorTable(("a", "b", "c"), (1.0, 0.5, 1.0))
    assert {several.pick(k) for k in KEYS[:200]} == {("a", "c"), ("a", "b", "c")}


def test_empty_table(impl):
    empty = impl.MirrorTable((), ())
    assert len(empty) == 0 and empty.versions == () and empty.fractions == ()
    for k in ("k", b"k", "", "é", None):
        assert empty.pick(k) is EMPTY
    with pytest.raises(TypeError):
        empty.pick(1)


def test_validation(impl):
    with pytest.raises(ValueError, match="differ in length"):
        impl.MirrorTable(("a", "b"), (0.5,))
    with pytest.raises(ValueError, match="differ in length"):
        impl.MirrorTable((), (0.5,))
    for bad, shown in ((0.0, "0.0"), (0, "0.0"), (-0.5, "-0.5"), (1.0000001, "1.0000001"), (2, "2.0"),
                       (float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")):
        with pytest.raises(ValueError, match=r"fraction of version 'b' must be in \(0, 1\], not " + shown):
            impl.MirrorTable(("a", "b"), (1.0, bad))
    with pytest.raises(TypeError):
        impl.MirrorTable(("a",), (0.5,), seed=1.5)
    t = impl.MirrorTable(("a",), (0.5,))
    for bad_key, name in ((42, "int"), (bytearray(b"k"), "bytearray"), (memoryview(b"k"), "memoryview"),
                          (1.5, "float")):
        with pytest.raises(TypeError, match=f"routing key must be str, bytes or None, not {name}"):
            t.pick(bad_key)
    # The extremes that are allowed.
    assert impl.MirrorTable(("a",), (5e-324,)).pick("k") == ()
    assert impl.MirrorTable(("a",), (1,)).pick("k") == ("a",)


# -- shares, stickiness, independence ----------------------------------------------------------------------


def test_keyed_shares_follow_the_fractions(fastest):
    t = fastest.MirrorTable(("1", "2", "3"), (0.1, 0.5, 0.37), seed=3)
    assert shares(t, KEYS) == pytest.approx([0.1, 0.5, 0.37], abs=0.01)


def test_keyless_shares_follow_the_fractions(fastest):
    t = fastest.MirrorTable(("1", "2", "3"), (0.1, 0.5, 0.37), seed=3)
    assert shares(t, [None] * N_KEYS) == pytest.approx([0.1, 0.5, 0.37], abs=0.01)


def test_keyless_sequence_is_the_seed(impl):
    def run(seed):
        t = impl.MirrorTable(("a", "b", "c"), (0.5, 0.5, 0.2), seed=seed)
        return [t.pick(None) for _ in range(1000)]

    assert run(7) == run(7)
    assert run(7) == run(7 + 2**64)  # the seed is taken modulo 2**64
    assert run(7) != run(8)


def test_a_key_sticks_across_tables(impl):
    a = impl.MirrorTable(("s1", "s2", "s3"), (0.3, 0.6, 0.05), seed=1)
    b = impl.MirrorTable(("s1", "s2", "s3"), (0.3, 0.6, 0.05), seed=2)
    keys = KEYS[:5000]
    picks = [a.pick(k) for k in keys]
    assert picks == [b.pick(k) for k in keys]
    assert picks == [a.pick(k.encode()) for k in keys]
    assert picks == [a.pick(k) for k in keys]  # and the keyless generator does not disturb them
    assert len(set(picks)) > 4  # the keys do spread over several answers


def test_a_version_decides_on_its_own(impl):
    """A version's picks depend only on its name and fraction, not on the others in the table."""
    alone = impl.MirrorTable(("s2",), (0.4,))
    among = impl.MirrorTable(("s1", "s2", "s3"), (0.9, 0.4, 0.1))
    keys = KEYS[:5000]
    assert ["s2" in alone.pick(k) for k in keys] == ["s2" in among.pick(k) for k in keys]


def test_fraction_one_always_picks(impl):
    t = impl.MirrorTable(("always", "half"), (1.0, 0.5))
    assert all(t.pick(k)[0] == "always" for k in KEYS[:20_000])
    assert all(t.pick(None)[0] == "always" for _ in range(20_000))


def test_raising_a_fraction_only_adds_keys(fastest):
    low = fastest.MirrorTable(("shadow",), (0.2,))
    high = fastest.MirrorTable(("shadow",), (0.5,))
    at_low = {k for k in KEYS[:20_000] if low.pick(k)}
    at_high = {k for k in KEYS[:20_000] if high.pick(k)}
    assert at_low <= at_high
    assert len(at_low) / 20_000 == pytest.approx(0.2, abs=0.015)
    assert len(at_high) / 20_000 == pytest.approx(0.5, abs=0.015)


@pytest.mark.parametrize("shadow", ["1", "2", "shadow"])
def test_mirroring_is_independent_of_routing(fastest, shadow):
    """Among the keys routed to one version, a shadow still copies its fraction of them.

    The shadow is named after each routed version too: its mirror hash is seeded
    with ``SHADOW_SEED``, not with the routing's 0, so it is not the hash that
    decided the route.
    """
    route = fastest.WeightTable(("1", "2"), (50, 50))
    mirror = fastest.MirrorTable((shadow,), (0.3,))
    routed = [k for k in KEYS if route.choose(k) == "1"]
    assert len(routed) / N_KEYS == pytest.approx(0.5, abs=0.01)
    mirrored = sum(1 for k in routed if mirror.pick(k))
    assert mirrored / len(routed) == pytest.approx(0.3, abs=0.015)


@pytest.mark.daemon
def test_a_key_sticks_across_processes_and_implementations():
    """A child process forced onto the twin mirrors 1000 keys as this one does with either implementation."""
    code = (
        "from router.splitter import MirrorTable\n"
        "t = MirrorTable(('a', 'b'), (0.5, 0.3))\n"
        "print(';'.join(','.join(t.pick(f'user-{i}')) for i in range(1000)))\n"
    )
    env = {**os.environ, "ROUTER_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip().split(";")
    assert len(out) == 1000
    for m in BOTH:
        t = m.MirrorTable(("a", "b"), (0.5, 0.3))
        assert out == [",".join(t.pick(f"user-{i}")) for i in range(1000)]


# -- the implementations agree -----------------------------------------------------------------------------

# Names and str keys: any code point, and the lone surrogates that surrogateescape turns back into bytes.
chars = st.characters(exclude_categories=["Cs"]) | st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)
ascii_text = st.text(st.characters(max_codepoint=127), max_size=40)  # the compiled twin's no-encode path
fractions = (st.floats(0.0, 1.0, exclude_min=True) | st.just(1.0) | st.sampled_from([5e-324, 0.5, 1 - 2**-53])
             | st.integers(1, 1))
mirror_tables = st.integers(0, 8).flatmap(
    lambda n: st.tuples(
        st.lists(st.text(chars, max_size=12), min_size=n, max_size=n, unique=True),
        st.lists(fractions, min_size=n, max_size=n),
    )
)
mirror_keys = st.lists(ascii_text | st.text(chars, max_size=40) | st.binary(max_size=80), max_size=30)


@settings(max_examples=150, deadline=None)
@given(mirror_tables, mirror_keys, st.integers(-(2**63), 2**64 - 1))
def test_twins_agree_on_mirroring(table, keys, seed):
    if _splitter_c is None:
        pytest.skip("extension not built")
    versions, fracs = table
    c = _splitter_c.MirrorTable(tuple(versions), tuple(fracs), seed=seed)
    py = _splitter_py.MirrorTable(tuple(versions), tuple(fracs), seed=seed)
    assert c.versions == py.versions and c.fractions == py.fractions and len(c) == len(py)
    got = [c.pick(k) for k in keys]
    assert got == [py.pick(k) for k in keys]
    assert got == [spec_keyed(versions, fracs, k) for k in keys]
    # Keyless: the same sequence from the same seed, interleaved with keyed picks (which leave it alone).
    assert [c.pick(None) for _ in range(40)] == [py.pick(None) for _ in range(40)]
    assert [c.pick(k) for k in keys] == got
    assert [c.pick(None) for _ in range(10)] == [py.pick(None) for _ in range(10)]


@settings(max_examples=100, deadline=None)
@given(st.text(chars, min_size=1, max_size=12), fractions, st.lists(st.integers(0, 2**64 - 1), max_size=20))
def test_twins_agree_with_one_version(name, fraction, seeds):
    """One version: the 1-tuple path, keyed and keyless, over many generator states."""
    if _splitter_c is None:
        pytest.skip("extension not built")
    for seed in seeds:
        c = _splitter_c.MirrorTable((name,), (fraction,), seed=seed)
        py = _splitter_py.MirrorTable((name,), (fraction,), seed=seed)
        assert [c.pick(None) for _ in range(20)] == [py.pick(None) for _ in range(20)]
        key = seed.to_bytes(8, "little")
        assert c.pick(key) == py.pick(key)


def test_twins_agree_on_bad_keys():
    if _splitter_c is None:
        pytest.skip("extension not built")
    for m in BOTH:
        t = m.MirrorTable(("a",), (0.5,))
        for bad in (42, bytearray(b"k"), ["k"]):
            with pytest.raises(TypeError):
                t.pick(bad)
        with pytest.raises(UnicodeEncodeError):
            t.pick("x\ud800")
