"""Data drift per feature: a version's reference distribution against a sliding window of its live rows.

A *feature* is one column of a model's input or output tensor. Per feature, a worker
compares a reference (a sample pushed with the version, or its first live rows) with a
sliding window of live rows, and flags the features whose distribution moved.

* :mod:`~runtime.drift.stats` -- :func:`psi`, :func:`js_distance`, :func:`ks_binned`
  (:class:`DriftStats`), and :class:`DriftThresholds`: when a feature is flagged;
* :mod:`~runtime.drift.reference` -- :class:`Reference`: a feature's bins, fixed once by its
  reference values, and the reference's counts in them;
* :mod:`~runtime.drift.window` -- :class:`Window`: live rows counted in those bins, a ring of
  chunks that forgets the oldest, and every feature's statistics at once;
* :mod:`~runtime.drift.group` -- :func:`feature_names` (tensors as features) and one side's
  pending batches, counted a chunk at a time into the reference, then the window;
* :mod:`~runtime.drift.monitor` -- :class:`DriftMonitor`, one per version in a worker, sampling
  batches to stay within a share of the worker's time (:func:`next_stride`);
* :mod:`~runtime.drift.sample` -- :func:`load_sample`: a version's ``sample.npz``.

The package imports numpy and :mod:`router.proto` only, never torch: it sees a model's
tensors as the numpy arrays the worker already decoded and encodes (tests/test_runtime_boundary.py
checks what a worker imports).
"""

from __future__ import annotations

from .group import MAX_COLUMNS, feature_names
from .monitor import DriftMonitor, next_stride
from .reference import CATEGORIES, COARSE_BINS, FINE_BINS, Reference
from .sample import load_sample
from .stats import EPSILON, DriftStats, DriftThresholds, js_distance, ks_binned, psi
from .window import Window

__all__ = [
    "CATEGORIES", "COARSE_BINS", "EPSILON", "FINE_BINS", "MAX_COLUMNS", "DriftMonitor", "DriftStats",
    "DriftThresholds", "Reference", "Window", "feature_names", "js_distance", "ks_binned", "load_sample",
    "next_stride", "psi",
]
