"""A sliding window of live rows counted in their features' reference bins (:class:`Window`),
and every feature's statistics at once (:meth:`Window.stats`).

Non-finite values (NaN, +-inf) are never binned: the window counts them per feature
(``"nonfinite"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .reference import Reference
from .stats import _js_of, _js_terms, _psi_terms

__all__ = ["Window"]


class Window:
    """A sliding window over the rows of some features: a ring of ``chunks`` sub-histograms.

    Rows fill the newest chunk; the moment it holds ``rows // chunks`` rows, the
    oldest chunk is dropped (its counts subtracted) and becomes the newest, empty.
    The window so holds the last ``rows - rows // chunks`` to ``rows`` rows.

    A block of rows is counted by sorting each feature's values and finding the
    bin edges among them (``np.searchsorted`` of the ~100 edges, then a difference):
    several times cheaper than searching each value among the edges, a binary
    search whose branches random values mispredict at every step.

    The counts of all features live in one vector: feature ``j``'s fine bins, then
    one slot for its non-finite values (see :meth:`feature`).

    Args:
        refs: each feature's :class:`Reference` (its bins), in column order.
        rows: the window's length in rows (W).
        chunks: sub-histograms (K); the window forgets W / K rows at a time.

    Raises:
        ValueError: ``chunks < 2`` or ``rows < chunks``.
    """

    __slots__ = ("refs", "chunk_rows", "rows", "_widths", "_offsets", "_nonfinite", "_size", "_ring", "_ring_rows",
                 "_total", "_head", "_slot_feature", "_ref_size", "_ref_cdf", "_coarse", "_coarse_offsets",
                 "_coarse_feature", "_expected")

    def __init__(self, refs: Sequence[Reference], rows: int = 10_000, chunks: int = 10) -> None:
        _check_window(rows, chunks)
        self.refs = list(refs)
        self.chunk_rows = rows // chunks
        #: Rows in the window now.
        self.rows = 0
        self._widths = np.array([r.bins + 1 for r in self.refs], np.intp)
        ends = np.cumsum(self._widths)
        self._offsets = ends - self._widths
        self._nonfinite = ends - 1
        self._size = int(ends[-1]) if ends.size else 0
        self._ring = np.zeros((chunks, self._size), np.int64)
        self._ring_rows = np.zeros(chunks, np.int64)
        self._total = np.zeros(self._size, np.int64)
        self._head = 0
        self._index_reference()

    def _index_reference(self) -> None:
        """The references laid out like the count vector, for :meth:`stats` (all features in one pass)."""
        features = np.arange(len(self.refs))
        self._slot_feature = np.repeat(features, self._widths)
        self._ref_size = np.array([r.size for r in self.refs], np.float64)
        ref_cdf = np.zeros(self._size)
        coarse = np.empty(self._size, np.intp)
        n_coarse = np.array([r.n_coarse for r in self.refs], np.intp)
        self._coarse_offsets = np.cumsum(n_coarse) - n_coarse
        dump = int(n_coarse.sum())  # the non-finite slots' coarse bin, dropped
        for ref, start, stop, first in zip(self.refs, self._offsets.tolist(), self._nonfinite.tolist(),
                                           self._coarse_offsets.tolist(), strict=True):
            ref_cdf[start:stop] = np.cumsum(ref.counts) / max(ref.size, 1)
            coarse[start:stop] = ref.coarse + first
            coarse[stop] = dump
        self._ref_cdf = ref_cdf
        self._coarse = coarse
        self._coarse_feature = np.repeat(features, n_coarse)
        self._expected = np.concatenate([r.expected for r in self.refs]) if self.refs else np.empty(0)

    @property
    def fill(self) -> int:
        """Rows in the newest chunk (always fewer than ``chunk_rows``)."""
        return int(self._ring_rows[self._head])

    def add(self, block: np.ndarray) -> None:
        """Count ``block``, rows of shape ``(n, features)`` in time order, into the window."""
        self.add_columns(np.array(np.asarray(block).T, dtype=np.float64, order="C"))

    def add_columns(self, cols: np.ndarray) -> None:
        """Count ``cols``, float64 of shape ``(features, n)`` (rows in time order), into the window.

        ``cols`` is sorted in place, a chunk's segment at a time.
        """
        start, n = 0, cols.shape[1]
        while start < n:
            take = min(n - start, self.chunk_rows - self.fill)
            counts = self.count_columns(cols[:, start:start + take])
            self._ring[self._head] += counts
            self._total += counts
            self._ring_rows[self._head] += take
            self.rows += take
            start += take
            if self._ring_rows[self._head] == self.chunk_rows:
                self._expire()

    def _expire(self) -> None:
        """Make the oldest chunk the newest, empty."""
        self._head = (self._head + 1) % len(self._ring)
        old = self._ring[self._head]
        self._total -= old
        self.rows -= int(self._ring_rows[self._head])
        old[:] = 0
        self._ring_rows[self._head] = 0

    def count_columns(self, cols: np.ndarray) -> np.ndarray:
        """The count vector of ``cols`` (float64, ``(features, n)``) alone; sorts each row of ``cols`` in place."""
        m = cols.shape[1]
        cols.sort(axis=1)
        # Per feature, the values below each edge: the cumulative count at the end of each fine bin.
        cum = np.empty(self._size, np.int64)
        for ref, start, row in zip(self.refs, self._offsets.tolist(), cols, strict=True):
            cum[start:start + ref.edges.size] = np.searchsorted(row, ref.edges)
        finite = np.isfinite(cols)
        if finite.all():
            cum[self._nonfinite - 1] = m
        else:  # rare: -inf sorts first (below every edge), +inf and NaN last
            cum -= np.repeat((cols == -np.inf).sum(axis=1), self._widths)
            cum[self._nonfinite - 1] = finite.sum(axis=1)
        cum[self._nonfinite] = m
        counts = np.empty_like(cum)
        np.subtract(cum[1:], cum[:-1], out=counts[1:])
        counts[self._offsets] = cum[self._offsets]  # each feature starts from 0
        return counts

    def counts(self, pending: np.ndarray | None = None) -> np.ndarray:
        """The window's count vector, plus that of ``pending`` columns (not added; sorted in place) if given."""
        if pending is None or not pending.shape[1]:
            return self._total.copy()
        return self._total + self.count_columns(pending)

    def stats(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(psi, js, ks, finite, nonfinite)`` per feature of a count vector from :meth:`counts`.

        The same values as :meth:`Reference.compare` (up to rounding), all features in
        a fixed number of numpy calls. ``psi``, ``js`` and ``ks`` are NaN for a feature
        with no finite value in ``counts`` or in its reference.
        """
        if not self.refs:
            empty = np.empty(0)
            return empty, empty, empty, empty.astype(np.int64), empty.astype(np.int64)
        nonfinite = counts[self._nonfinite]
        finite = np.add.reduceat(counts, self._offsets) - nonfinite
        total = np.maximum(finite, 1).astype(np.float64)
        # KS: each feature's CDF is the running sum since its first slot.
        running = np.cumsum(counts)
        before = running[self._offsets] - counts[self._offsets]
        gap = np.abs(self._ref_cdf - (running - before[self._slot_feature]) / total[self._slot_feature])
        gap[self._nonfinite] = 0.0
        ks = np.maximum.reduceat(gap, self._offsets)
        # PSI and JS on the coarse bins, as psi() and js_distance() compute them.
        p = self._expected
        q = np.bincount(self._coarse, weights=counts, minlength=p.size + 1)[:p.size] / total[self._coarse_feature]
        psi_ = np.add.reduceat(_psi_terms(p, q), self._coarse_offsets)
        js = _js_of(np.add.reduceat(_js_terms(p, q), self._coarse_offsets))
        empty = (finite == 0) | (self._ref_size == 0)
        for a in (psi_, js, ks):
            a[empty] = np.nan
        return psi_, js, ks, finite, nonfinite

    def feature(self, counts: np.ndarray, j: int) -> tuple[np.ndarray, int]:
        """Feature ``j``'s ``(fine-bin counts, non-finite count)`` in a count vector from :meth:`counts`."""
        start, stop = int(self._offsets[j]), int(self._nonfinite[j])
        return counts[start:stop], int(counts[stop])


def _check_window(rows: int, chunks: int) -> None:
    # One chunk would empty the window each time it fills.
    if chunks < 2 or rows < chunks:
        raise ValueError(f"a window needs chunks >= 2 and rows >= chunks, got rows={rows}, chunks={chunks}")
