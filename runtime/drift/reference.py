"""A feature's bins, fixed once by its reference values (:class:`Reference`):

- fine bins (:data:`FINE_BINS`) at the reference's quantiles, deduplicated, plus
  two open tails below its minimum and above its maximum, so every live value has
  a bin; a feature with at most :data:`CATEGORIES` distinct values gets one bin
  per value instead, the values between them being "other";
- coarse bins: the fine bins merged into at most :data:`COARSE_BINS` bins of about
  equal reference mass (deciles; the tails join the outer deciles); for a
  categorical feature, its values grouped the same way (in value order: a value
  holding a tenth of the mass or more keeps a bin of its own) plus one "other" bin.
  Grouping keeps PSI's sampling noise, which grows with the number of bins, the
  same for every feature: with one bin per value, 30 values and 200 live rows,
  PSI would pass 0.25 one time in seven on data that has not drifted.

Non-finite reference values (NaN, +-inf) are dropped, never binned. Values are binned
as float64: integers beyond 2**53 (INT64, UINT64) lose precision.
"""

from __future__ import annotations

import numpy as np

from .stats import DriftStats, js_distance, ks_binned, psi

__all__ = ["CATEGORIES", "COARSE_BINS", "FINE_BINS", "Reference"]

#: Fine (quantile) bins of a continuous feature, before deduplication.
FINE_BINS = 100
#: Coarse bins for PSI and JS: deciles, the usual choice for PSI.
COARSE_BINS = 10
#: A feature with at most this many distinct reference values gets one bin per value.
CATEGORIES = 32


def _equal_mass(counts: np.ndarray, parts: int) -> np.ndarray:
    """Consecutive bins grouped into at most ``parts`` groups of about equal mass: each bin's group
    (0, 1, ...), the part of the mass in which the bin starts."""
    before = np.cumsum(counts) - counts
    # Integer arithmetic: no float rounding at the 0.1 steps.
    ids = np.minimum(before * parts // max(int(counts.sum()), 1), parts - 1)
    return np.unique(ids, return_inverse=True)[1].astype(np.intp).reshape(-1)


class Reference:
    """The bins of one feature, fixed by its reference values, and the reference's counts in them.

    Fine bin ``i`` holds the values ``v`` with ``edges[i - 1] <= v < edges[i]``
    (``edges[-1]`` taken as -inf, ``edges[len(edges)]`` as +inf): its index is
    ``np.searchsorted(edges, v, side="right")``, and there are ``len(edges) + 1``.

    Args:
        values: the reference values (any shape; non-finite ones are dropped and counted in ``nonfinite``).
        fine_bins: quantile bins of a continuous feature, before deduplication.
        coarse_bins: the most coarse bins (of about equal reference mass; a categorical feature adds "other").
        categories: at most this many distinct values make the feature categorical.

    Attributes:
        edges: float64 inner edges, non-decreasing.
        counts: int64 reference count per fine bin.
        coarse: intp coarse bin of each fine bin (non-decreasing for a continuous feature).
        n_coarse: number of coarse bins.
        expected: float64 reference proportion per coarse bin.
        categorical: one bin per distinct value (odd fine bins), the bins between are "other".
        size: finite reference values.
        nonfinite: non-finite reference values (dropped).
    """

    __slots__ = ("edges", "counts", "coarse", "n_coarse", "expected", "categorical", "size", "nonfinite")

    def __init__(self, values: np.ndarray, *, fine_bins: int = FINE_BINS, coarse_bins: int = COARSE_BINS,
                 categories: int = CATEGORIES) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        finite = v[np.isfinite(v)]
        self.size = int(finite.size)
        self.nonfinite = int(v.size - finite.size)
        distinct = np.unique(finite)
        self.categorical = distinct.size <= categories
        if self.categorical:
            # [v, next float after v) holds exactly v; the bins between the values are "other".
            edges = np.empty(2 * distinct.size)
            edges[0::2] = distinct
            edges[1::2] = np.nextafter(distinct, np.inf)
        else:
            quantiles = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, fine_bins + 1)))
            # The maximum gets a bin of its own, so the upper tail, like the lower, is outside the reference.
            edges = np.append(quantiles, np.nextafter(quantiles[-1], np.inf))
        self.edges = edges
        self.counts = np.bincount(np.searchsorted(edges, finite, side="right"), minlength=edges.size + 1)
        if self.categorical:
            # The values grouped like a continuous feature's fine bins, the "other" bins together last.
            ids = np.empty(edges.size + 1, np.intp)
            ids[1::2] = _equal_mass(self.counts[1::2], coarse_bins)
            ids[0::2] = ids[1::2].max() + 1 if distinct.size else 0
            self.coarse = ids
        else:
            self.coarse = _equal_mass(self.counts, coarse_bins)
        self.n_coarse = int(self.coarse.max()) + 1
        self.expected = self.coarsen(self.counts)
        if self.size:
            self.expected /= self.size

    @property
    def bins(self) -> int:
        """Number of fine bins."""
        return self.edges.size + 1

    def histogram(self, values: np.ndarray) -> np.ndarray:
        """Fine-bin counts of the finite ``values`` (non-finite ones are left out)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        return np.bincount(np.searchsorted(self.edges, v, side="right"), minlength=self.bins)

    def coarsen(self, counts: np.ndarray) -> np.ndarray:
        """Fine-bin ``counts`` summed into the coarse bins (float64)."""
        return np.bincount(self.coarse, weights=counts, minlength=self.n_coarse)

    def compare(self, live: np.ndarray) -> DriftStats | None:
        """PSI and JS (coarse bins) and KS (fine bins) of live fine-bin counts against the reference.

        Returns:
            None when either side has no values.
        """
        total = int(live.sum())
        if not total or not self.size:
            return None
        observed = self.coarsen(live) / total
        return DriftStats(psi(self.expected, observed), js_distance(self.expected, observed),
                          ks_binned(self.counts, live))
