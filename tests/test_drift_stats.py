"""Drift statistics (runtime.drift): PSI, JS and KS against reference computations (numpy and scipy), the
drift flag on shifted and unshifted data of several shapes, the sliding window, the reference from live
rows or from ``sample.npz``, and non-finite values."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from router.proto.errors import ConfigError
from router.proto.meta import SAMPLE_FILE, TensorSpec, parse_meta
from runtime.drift import (
    EPSILON,
    MAX_COLUMNS,
    DriftMonitor,
    DriftThresholds,
    Reference,
    Window,
    feature_names,
    js_distance,
    ks_binned,
    load_sample,
    next_stride,
    psi,
)

Draw = Callable[[np.random.Generator, int], np.ndarray]


def ks_2samp() -> Callable[..., Any]:
    """scipy's two-sample KS test, imported when a test asks: scipy.stats takes 1.5 s to import, more than
    the tests that use it."""
    from scipy.stats import ks_2samp as exact

    return exact

#: Reference distributions: continuous, skewed, count-like integers, a few categories.
SHAPES: dict[str, Draw] = {
    "normal": lambda rng, n: rng.normal(5.0, 2.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.0, n),
    "exponential": lambda rng, n: rng.exponential(3.0, n),
    "poisson": lambda rng, n: rng.poisson(3.0, n).astype(np.float64),
    "categories": lambda rng, n: rng.choice([1.0, 2.0, 5.0, 7.0, 9.0], n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
}

#: The same shapes after a drift that the default thresholds must catch.
SHIFTED: dict[str, Draw] = {
    "normal": lambda rng, n: rng.normal(7.0, 2.0, n),  # mean + 1 sd
    "lognormal": lambda rng, n: 2.0 * rng.lognormal(0.0, 1.0, n),  # scale x 2
    "exponential": lambda rng, n: rng.exponential(6.0, n),  # scale x 2
    "poisson": lambda rng, n: rng.poisson(5.0, n).astype(np.float64),
    "categories": lambda rng, n: rng.choice([1.0, 2.0, 5.0, 7.0, 9.0], n, p=[0.15, 0.3, 0.15, 0.15, 0.25]),
}


def fine_counts(ref: Reference, values: np.ndarray) -> np.ndarray:
    """The fine-bin counts of the finite ``values``, computed without searchsorted: bin ``i`` holds
    ``edges[i - 1] <= v < edges[i]``, so a value's bin is the number of edges at or below it."""
    v = values[np.isfinite(values)]
    index = (v[:, None] >= ref.edges[None, :]).sum(axis=1)
    return np.bincount(index, minlength=ref.edges.size + 1)


def expected_stats(ref: Reference, ref_values: np.ndarray, live_values: np.ndarray) -> tuple[float, float, float]:
    """PSI, JS distance and KS from the definitions, on the reference's bins."""
    ref_fine, live_fine = fine_counts(ref, ref_values), fine_counts(ref, live_values)
    p = np.bincount(ref.coarse, weights=ref_fine) / ref_fine.sum()
    q = np.bincount(ref.coarse, weights=live_fine, minlength=p.size) / live_fine.sum()
    pe, qe = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
    expected_psi = float(np.sum((pe - qe) * np.log(pe / qe)))
    expected_js = float(jensenshannon(p, q, base=2))
    ks = np.abs(np.cumsum(ref_fine) / ref_fine.sum() - np.cumsum(live_fine) / live_fine.sum()).max()
    return expected_psi, expected_js, float(ks)


def window_stats(ref: Reference, live: np.ndarray) -> tuple[float, float, float]:
    """One feature's statistics as a window computes them."""
    window = Window([ref], rows=100_000, chunks=10)
    window.add(live[:, None])
    p, j, k, _, _ = window.stats(window.counts())
    return float(p[0]), float(j[0]), float(k[0])


def monitor(**kwargs: object) -> DriftMonitor:
    """A monitor of one input ``x`` (one column per shape) and one output ``y``, counting every batch."""
    kwargs.setdefault("budget", None)
    return DriftMonitor(["x"], ["y"], **kwargs)  # type: ignore[arg-type]


def rows(rng: np.random.Generator, n: int, draws: dict[str, Draw]) -> np.ndarray:
    """``n`` rows of ``x``: one column per shape, in ``SHAPES`` order."""
    return np.stack([draws[name](rng, n) for name in SHAPES], axis=1).astype(np.float32)


def output(x: np.ndarray) -> np.ndarray:
    """A stand-in model: one output column, the sum of the first two inputs."""
    return x[:, :2].sum(axis=1, keepdims=True)


def feed(m: DriftMonitor, x: np.ndarray, batch: int = 64) -> None:
    for start in range(0, len(x), batch):
        part = x[start:start + batch]
        m.observe([part], [output(part)])


# --- the statistics against reference computations ---


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("drift", [False, True], ids=["same", "shifted"])
def test_psi_js_ks_match_reference_computations(shape: str, drift: bool) -> None:
    rng = np.random.default_rng(1)
    ref_values = SHAPES[shape](rng, 2000)
    live = (SHIFTED if drift else SHAPES)[shape](rng, 3000)
    ref = Reference(ref_values)
    assert (ref.counts == fine_counts(ref, ref_values)).all()
    assert (ref.histogram(live) == fine_counts(ref, live)).all()
    want = expected_stats(ref, ref_values, live)
    got = ref.compare(ref.histogram(live))
    assert got is not None
    assert got == pytest.approx(want, abs=1e-6)
    assert window_stats(ref, live) == pytest.approx(want, abs=1e-6)


def test_psi_and_js_functions_on_vectors_with_empty_bins() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(8)), rng.dirichlet(np.ones(8))
        p[rng.integers(8)] = 0.0
        q[rng.integers(8)] = 0.0
        p, q = p / p.sum(), q / q.sum()
        pe, qe = np.maximum(p, EPSILON), np.maximum(q, EPSILON)
        assert psi(p, q) == pytest.approx(float(np.sum((pe - qe) * np.log(pe / qe))), abs=1e-12)
        assert js_distance(p, q) == pytest.approx(float(jensenshannon(p, q, base=2)), abs=1e-9)
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert psi(p, p) == 0.0 and js_distance(p, p) == 0.0


@pytest.mark.parametrize("shape", ["normal", "lognormal", "exponential"])
@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_binned_ks_is_within_the_bin_mass_of_the_exact_ks(shape: str, shift: float) -> None:
    rng = np.random.default_rng(3)
    ref_values, live = SHAPES[shape](rng, 2000), SHAPES[shape](rng, 1500) + shift
    ref = Reference(ref_values)
    live_fine = ref.histogram(live)
    binned = ks_binned(ref.counts, live_fine)
    exact = float(ks_2samp()(ref_values, live).statistic)
    bound = float(np.maximum(ref.counts / ref.counts.sum(), live_fine / live_fine.sum()).max())
    assert bound < 0.02 or shift  # fine bins: about 1 % of the reference each
    assert binned <= exact + 1e-12
    assert exact <= binned + bound + 1e-12


@pytest.mark.parametrize("shape", ["poisson", "categories"])
def test_binned_ks_is_exact_for_categorical_features(shape: str) -> None:
    rng = np.random.default_rng(4)
    ref_values, live = SHAPES[shape](rng, 1000), SHIFTED[shape](rng, 800)
    ref = Reference(ref_values)
    assert ref.categorical
    assert ks_binned(ref.counts, ref.histogram(live)) == pytest.approx(ks_2samp()(ref_values, live).statistic,
                                                                          abs=1e-12)


def test_coarse_bins_are_deciles_of_the_reference() -> None:
    values = np.random.default_rng(5).normal(size=5000)
    ref = Reference(values)
    assert not ref.categorical
    assert ref.bins >= 100  # 101 quantiles, the maximum's own bin, two tails
    assert ref.counts[0] == 0 and ref.counts[-1] == 0  # the tails are outside the reference
    assert (np.diff(ref.coarse) >= 0).all() and ref.n_coarse == 10
    assert ref.expected == pytest.approx(np.full(10, 0.1), abs=0.015)
    # Every live value has a bin, however far out.
    assert ref.histogram(np.array([-1e300, 1e300])).sum() == 2


def test_categorical_bins_hold_one_value_each_and_other_values_apart() -> None:
    ref = Reference(np.array([0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 7.0]))
    assert ref.categorical
    values = np.array([0.0, 1.0, 2.0, 7.0])
    # Odd fine bins hold exactly the reference's values; values it never had go to the even ones.
    assert (np.searchsorted(ref.edges, values, side="right") == [1, 3, 5, 7]).all()
    assert (np.searchsorted(ref.edges, [-1.0, 0.5, 1.5, 3.0, 8.0], side="right") % 2 == 0).all()
    other = ref.n_coarse - 1
    assert (ref.coarse[0::2] == other).all() and ref.expected[other] == 0.0


def test_many_categories_are_grouped_into_at_most_ten_coarse_bins() -> None:
    ref = Reference(np.random.default_rng(6).integers(0, 30, 3000).astype(np.float64))
    assert ref.categorical and ref.bins == 61
    assert ref.n_coarse <= 11  # ten groups of values and "other"


# --- the drift flag ---


def test_fresh_samples_of_the_reference_distribution_do_not_flag() -> None:
    rng = np.random.default_rng(7)
    m = monitor(window_rows=5000)
    sample = rows(rng, 2000, SHAPES)
    m.set_reference({"x": sample, "unknown": np.zeros(3)}, {"y": output(sample)})
    feed(m, rows(rng, 5000, SHAPES))
    summary = m.summary()
    assert summary["inputs"]["reference"] == 2000 and summary["outputs"]["reference"] == 2000
    assert 4500 <= summary["inputs"]["window"] <= 5000
    assert summary["drifting"] is False and summary["warning"] is False
    assert set(summary["inputs"]["features"]) == {f"x[{j}]" for j in range(len(SHAPES))}
    for entry in summary["inputs"]["features"].values():
        assert entry["psi"] < 0.1 and entry["js"] < 0.2 and entry["ks"] < 0.2


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_shifted_feature_flags_and_the_others_do_not(shape: str) -> None:
    rng = np.random.default_rng(8)
    m = monitor(window_rows=2000)
    m.set_reference({"x": rows(rng, 2000, SHAPES)})
    feed(m, rows(rng, 2000, {**SHAPES, shape: SHIFTED[shape]}))
    features = m.summary()["inputs"]["features"]
    flagged = {name for name, e in features.items() if e["drifting"]}
    assert flagged == {f"x[{list(SHAPES).index(shape)}]"}
    assert m.summary()["drifting"] is True


def test_a_wider_spread_with_the_same_mean_flags() -> None:
    rng = np.random.default_rng(9)
    ref = Reference(rng.normal(5.0, 2.0, 2000))
    psi_, js, ks = window_stats(ref, rng.normal(5.0, 4.0, 2000))
    assert psi_ >= DriftThresholds().psi_drift
    assert window_stats(ref, rng.normal(5.0, 2.0, 2000))[0] < DriftThresholds().psi_warning


def test_a_category_never_seen_in_the_reference_flags() -> None:
    rng = np.random.default_rng(10)
    ref = Reference(SHAPES["categories"](rng, 2000))
    live = np.where(rng.random(2000) < 0.15, 4.0, SHAPES["categories"](rng, 2000))
    assert window_stats(ref, live)[0] >= DriftThresholds().psi_drift


def test_a_window_below_min_window_never_flags() -> None:
    rng = np.random.default_rng(11)
    m = monitor(thresholds=DriftThresholds(min_window=200))
    m.set_reference({"x": rows(rng, 1000, SHAPES)})
    feed(m, rows(rng, 150, SHIFTED))
    features = m.summary()["inputs"]["features"]
    assert all(e["psi"] > 0.25 and not e["drifting"] and not e["warning"] for e in features.values())
    feed(m, rows(rng, 100, SHIFTED))
    assert m.summary()["drifting"] is True


def test_thresholds_are_configurable_and_checked() -> None:
    rng = np.random.default_rng(12)
    ref_rows = rows(rng, 1000, SHAPES)
    live = rows(rng, 1000, {**SHAPES, "normal": lambda r, n: r.normal(5.6, 2.0, n)})  # a 0.3 sd shift
    strict, lax = monitor(thresholds=DriftThresholds(psi_drift=0.1, psi_warning=0.05)), monitor()
    for m in (strict, lax):
        m.set_reference({"x": ref_rows})
        feed(m, live)
    assert strict.summary()["inputs"]["features"]["x[0]"]["drifting"] is True
    assert lax.summary()["inputs"]["features"]["x[0]"]["drifting"] is False
    with pytest.raises(ValueError, match="psi_warning"):
        DriftThresholds(psi_warning=0.3)
    with pytest.raises(ValueError, match="min_window"):
        DriftThresholds(min_window=0)
    with pytest.raises(ValueError, match="chunks"):
        DriftMonitor(["x"], ["y"], chunks=1)


# --- the window, the reference from live rows, odd values and shapes ---


def test_the_window_forgets_drifted_rows_once_they_scroll_out() -> None:
    rng = np.random.default_rng(13)
    m = monitor(window_rows=2000, chunks=10)
    sample = rows(rng, 2000, SHAPES)
    m.set_reference({"x": sample}, {"y": output(sample)})
    feed(m, rows(rng, 2000, SHIFTED))
    assert m.summary()["drifting"] is True
    feed(m, rows(rng, 1000, SHAPES))
    assert m.summary()["drifting"] is True  # half the window still drifted
    feed(m, rows(rng, 2000, SHAPES))
    summary = m.summary()
    assert summary["drifting"] is False
    assert 1800 <= summary["inputs"]["window"] <= 2000


def test_the_window_counts_exactly_its_last_rows() -> None:
    rng = np.random.default_rng(14)
    ref = Reference(rng.normal(size=1000))
    window = Window([ref], rows=1000, chunks=4)
    values = rng.normal(size=3210)
    for start in range(0, values.size, 97):  # batches that straddle chunk boundaries
        window.add(values[start:start + 97, None])
        seen = min(start + 97, values.size)
        assert 750 <= window.rows <= 1000 or seen < 750
        live, nonfinite = window.feature(window.counts(), 0)
        assert (live == fine_counts(ref, values[seen - window.rows:seen])).all() and nonfinite == 0


def test_the_first_live_rows_become_the_reference() -> None:
    rng = np.random.default_rng(15)
    m = monitor(reference_rows=1000, window_rows=2000)
    feed(m, rows(rng, 960, SHAPES), batch=32)
    collecting = m.summary()
    assert collecting["inputs"] == {"reference": 0, "collecting": 960, "window": 0, "skipped": 0, "features": {}}
    assert collecting["drifting"] is False
    feed(m, rows(rng, 2000, SHAPES), batch=32)
    summary = m.summary()
    assert summary["inputs"]["reference"] == 1000 and summary["outputs"]["reference"] == 1000
    assert summary["inputs"]["window"] == 1960
    assert summary["drifting"] is False and set(summary["outputs"]["features"]) == {"y[0]"}
    feed(m, rows(rng, 2000, SHIFTED), batch=32)
    assert m.summary()["drifting"] is True


def test_outputs_take_live_rows_when_the_sample_has_inputs_only() -> None:
    rng = np.random.default_rng(16)
    m = monitor(reference_rows=500)
    m.set_reference({"x": rows(rng, 800, SHAPES)})
    feed(m, rows(rng, 700, SHAPES))
    summary = m.summary()
    assert summary["inputs"]["reference"] == 800 and summary["inputs"]["window"] == 700
    assert summary["outputs"]["reference"] == 500 and summary["outputs"]["window"] == 200


def test_nonfinite_values_are_counted_and_not_binned() -> None:
    rng = np.random.default_rng(17)
    values = rng.normal(size=1000)
    ref = Reference(np.concatenate([values, [np.nan, np.inf]]))
    assert ref.size == 1000 and ref.nonfinite == 2 and (ref.counts == fine_counts(ref, values)).all()
    live = rng.normal(size=500)
    live[[3, 50, 400]] = [np.nan, np.inf, -np.inf]
    window = Window([ref, ref], rows=1000, chunks=2)
    window.add(np.stack([live, np.zeros(500)], axis=1))
    counts = window.counts()
    binned, nonfinite = window.feature(counts, 0)
    assert nonfinite == 3 and binned.sum() == 497 and (binned == fine_counts(ref, live)).all()
    assert window.feature(counts, 1)[1] == 0 and window.feature(counts, 1)[0].sum() == 500
    psi_, js, ks, finite, nonfinite_ = window.stats(counts)
    assert list(finite) == [497, 500] and list(nonfinite_) == [3, 0]
    assert float(psi_[0]) == pytest.approx(expected_stats(ref, values, live)[0], abs=1e-9)

    m = monitor()
    m.set_reference({"x": np.arange(300, dtype=np.float32)})
    x = np.arange(300, dtype=np.float32)
    x[:5] = np.nan
    m.observe([x], [np.zeros(300)])
    entry = m.summary()["inputs"]["features"]["x"]
    assert entry["nonfinite"] == 5 and entry["drifting"] is False


def test_a_feature_without_finite_values_reports_none() -> None:
    m = monitor()
    m.set_reference({"x": np.arange(10.0)})
    m.observe([np.full(300, np.nan)], [np.zeros(300)])
    entry = m.summary()["inputs"]["features"]["x"]
    assert entry == {"psi": None, "js": None, "ks": None, "nonfinite": 300, "warning": False, "drifting": False}


def test_a_constant_reference_feature_works() -> None:
    ref = Reference(np.full(500, 3.7))
    assert ref.categorical and ref.size == 500
    assert window_stats(ref, np.full(300, 3.7)) == (0.0, 0.0, 0.0)
    for other in (2.0, 5.0):
        psi_, js, ks = window_stats(ref, np.full(300, other))
        assert psi_ > 1 and js == pytest.approx(1.0) and ks == pytest.approx(1.0)


def test_features_of_1d_2d_and_higher_rank_tensors() -> None:
    assert feature_names("p", ()) == ["p"]
    assert feature_names("x", (3,)) == ["x[0]", "x[1]", "x[2]"]
    assert feature_names("img", (3, 32, 32)) == [f"img[{j}]" for j in range(MAX_COLUMNS)]
    rng = np.random.default_rng(18)
    m = DriftMonitor(["a", "img"], ["p"], reference_rows=200, budget=None)
    for _ in range(5):
        a, img = rng.normal(size=(64, 2)), rng.normal(size=(64, 3, 32, 32)).astype(np.float32)
        m.observe([a, img], [rng.random(64)])
    summary = m.summary()
    assert list(summary["inputs"]["features"]) == ["a[0]", "a[1]", *(f"img[{j}]" for j in range(MAX_COLUMNS))]
    assert list(summary["outputs"]["features"]) == ["p"]
    assert summary["inputs"]["window"] == 120 and summary["skipped"] == 0


def test_batches_that_do_not_fit_are_skipped_and_counted() -> None:
    m = monitor()
    m.set_reference({"x": np.zeros((100, 3))}, {"y": np.zeros((100, 1))})
    m.observe([np.ones((8, 3))], [np.ones((8, 1))])
    m.observe([np.ones((8, 2))], [np.ones((8, 1))])  # a column short
    m.observe([np.ones((8, 3)), np.ones((8, 3))], [np.ones((8, 1))])  # an extra tensor
    m.observe([np.array(["a"] * 24).reshape(8, 3)], [np.ones((8, 1))])  # not numbers
    summary = m.summary()
    assert summary["skipped"] == summary["inputs"]["skipped"] == 3
    assert summary["inputs"]["window"] == 8 and summary["outputs"]["window"] == 32
    m.observe([np.ones((1000, 3))], [np.ones((1000, 1))])  # a chunk is counted: the skipped batches stay counted
    assert m.summary()["skipped"] == 3 and m.skipped == 3


def test_the_summary_is_plain_msgpack() -> None:
    rng = np.random.default_rng(19)
    m = monitor()
    m.set_reference({"x": rows(rng, 500, SHAPES)})
    feed(m, rows(rng, 300, SHAPES))
    summary = m.summary()
    assert msgpack.unpackb(msgpack.packb(summary), strict_map_key=False) == summary
    entry = summary["inputs"]["features"]["x[0]"]
    assert {type(entry[k]) for k in ("psi", "js", "ks")} == {float} and type(entry["nonfinite"]) is int


# --- sampling ---


def test_next_stride_follows_the_budget_within_a_factor_two() -> None:
    assert next_stride(1, spent_ns=100, elapsed_ns=10_000, budget=0.01, most=1024) == 1  # at the budget
    assert next_stride(4, spent_ns=1000, elapsed_ns=10_000, budget=0.01, most=1024) == 8  # 10x over: capped
    assert next_stride(8, spent_ns=10, elapsed_ns=10_000_000, budget=0.01, most=1024) == 4  # idle: halves
    assert next_stride(1000, spent_ns=10**6, elapsed_ns=10**6, budget=0.01, most=1024) == 1024
    assert next_stride(1, spent_ns=0, elapsed_ns=10**9, budget=0.01, most=1024) == 1
    assert next_stride(3, spent_ns=5, elapsed_ns=0, budget=0.01, most=1024) == 3


def test_a_tight_budget_samples_batches() -> None:
    rng = np.random.default_rng(20)
    m = DriftMonitor(["x"], ["y"], reference_rows=100, window_rows=1000, budget=1e-6, max_stride=4)
    sample = rows(rng, 200, SHAPES)
    m.set_reference({"x": sample}, {"y": output(sample)})
    feed(m, rows(rng, 4000, SHAPES), batch=10)
    summary = m.summary()
    assert m.stride == summary["stride"] == 4
    assert summary["inputs"]["window"] <= 1000 and summary["drifting"] is False


# --- sample.npz ---

SPECS = (TensorSpec("x", "FP32", (-1, 4)), TensorSpec("n", "INT64", (-1,)))


def test_load_sample_reads_inputs_by_name(tmp_path: Path) -> None:
    assert load_sample(tmp_path, SPECS) is None
    np.savez(tmp_path / SAMPLE_FILE, x=np.zeros((5, 4), np.float32), n=np.arange(5), extra=np.zeros(2))
    sample = load_sample(tmp_path, SPECS)
    assert sample is not None and sorted(sample) == ["n", "x"] and sample["x"].shape == (5, 4)
    meta = parse_meta({"name": "m", "version": "1", "inputs": [s.to_json() for s in SPECS],
                       "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
                       "example": {"x": [[0.0] * 4], "n": [0]}})
    m = DriftMonitor.for_meta(meta, budget=None)
    m.set_reference(sample)
    assert m.summary()["inputs"]["reference"] == 5
    assert list(m.summary()["inputs"]["features"]) == ["x[0]", "x[1]", "x[2]", "x[3]", "n"]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((5, 3)), "n": np.arange(5)}, "'x'.*shape \\[5, 3\\]"),
    ({"x": np.zeros(5), "n": np.arange(5)}, "'x'.*shape \\[5\\]"),
    ({"x": np.zeros((5, 4)), "n": np.arange(4)}, "'n'.*4 rows"),
    ({"x": np.zeros((5, 4)), "n": np.array(["a"] * 5)}, "'n'.*not numeric"),
    ({"x": np.zeros((5, 4))}, "input 'n'"),
    ({"x": np.zeros((0, 4)), "n": np.arange(0)}, "no rows"),
])
def test_load_sample_names_the_key_that_does_not_fit(tmp_path: Path, arrays: dict[str, np.ndarray],
                                                     message: str) -> None:
    np.savez(tmp_path / SAMPLE_FILE, **arrays)  # type: ignore[arg-type]  # numpy's stubs type **kwds as allow_pickle
    with pytest.raises(ConfigError, match=message):
        load_sample(tmp_path, SPECS)


def test_load_sample_refuses_what_is_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / SAMPLE_FILE).write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=SAMPLE_FILE):
        load_sample(tmp_path, SPECS)
