"""What a worker holds per model version: :class:`DriftMonitor`, and its sampling of batches.

Cost: :meth:`DriftMonitor.observe` only keeps a batch (references to its arrays);
once a chunk's worth of rows is pending they are counted together, so numpy's
per-call overhead is paid per chunk, not per forward. Counting still costs tens
of nanoseconds a value, so the monitor samples batches to stay within a share of
the worker's time (``budget``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from time import perf_counter_ns
from typing import Any

import numpy as np

from router.proto.meta import ModelMeta

from .group import MAX_COLUMNS, _Group
from .stats import DriftThresholds
from .window import _check_window

__all__ = ["DriftMonitor", "next_stride"]


class DriftMonitor:
    """Drift of one model version's inputs and outputs, as one worker sees them.

    The reference comes from :meth:`set_reference` (a sample pushed with the
    version, see :func:`load_sample`), or else the first ``reference_rows`` live
    rows become it; the window starts after it. Inputs and outputs have a
    reference each: with a sample of inputs only, the outputs' reference is their
    first live rows.

    :meth:`observe` keeps references to the arrays it is given until their chunk
    is counted (at most ``window_rows / chunks`` rows later): they must not be
    modified in place meanwhile. Wide or high-rank tensors are copied instead.

    Sampling: with a ``budget``, one batch in ``stride`` is taken, the stride
    adapting after each counted chunk so that counting costs about ``budget`` of
    the wall time (:func:`next_stride`). An idle or slow-model worker counts every
    batch; a worker saturated with small batches counts fewer, and its window then
    spans ``stride`` times as many rows, a sample of them. Counting every batch of
    32 rows of a 4-input, 3-output model costs about 40 % of the forward of a
    4-64-3 MLP (measured: ~11 against ~28 us), whence the budget; a skipped batch
    costs ~0.1 us. The stride stays 1 until a window's first chunk is counted, so a
    reference from live rows is every row.

    The columns of each tensor are fixed by its first data (reference or live); a
    later batch whose tensors have fewer columns, or disagree on the number of
    rows within the inputs or within the outputs, is skipped and counted.

    Args:
        inputs, outputs: the tensor names, in signature order.
        reference_rows: live rows that make the reference when no sample is set (N).
        window_rows: rows in the sliding window (W).
        chunks: sub-histograms of the window (K): it forgets W / K rows at a time.
        thresholds: when features are flagged (default :class:`DriftThresholds`).
        max_columns: monitored columns per tensor (the first ones).
        budget: the share of wall time counting may take (0.0025: 0.25 %), or None to count every batch.
        max_stride: the most batches one counted batch stands for.

    Raises:
        ValueError: ``reference_rows < 1``, ``chunks < 2``, ``window_rows < chunks``, a
            ``budget`` outside (0, 1] or ``max_stride < 1``.
    """

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], *, reference_rows: int = 1000,
                 window_rows: int = 10_000, chunks: int = 10, thresholds: DriftThresholds | None = None,
                 max_columns: int = MAX_COLUMNS, budget: float | None = 0.0025, max_stride: int = 1024) -> None:
        if reference_rows < 1:
            raise ValueError(f"reference_rows: must be >= 1, got {reference_rows}")
        _check_window(window_rows, chunks)
        if budget is not None and not 0 < budget <= 1:
            raise ValueError(f"budget: must be in (0, 1] or None, got {budget}")
        if max_stride < 1:
            raise ValueError(f"max_stride: must be >= 1, got {max_stride}")
        self.thresholds = thresholds if thresholds is not None else DriftThresholds()
        self.budget = budget
        self.max_stride = max_stride
        self._inputs = _Group(inputs, reference_rows, window_rows, chunks, max_columns)
        self._outputs = _Group(outputs, reference_rows, window_rows, chunks, max_columns)
        self._stride = 1
        self._countdown = 1
        self._since = perf_counter_ns()

    @property
    def stride(self) -> int:
        """One batch in ``stride`` is counted now."""
        return self._stride

    @classmethod
    def for_meta(cls, meta: ModelMeta, **kwargs: Any) -> DriftMonitor:
        """A monitor for the tensors ``meta`` declares; ``kwargs`` as for the constructor."""
        return cls([t.name for t in meta.inputs], [t.name for t in meta.outputs], **kwargs)

    @property
    def skipped(self) -> int:
        """Batches (inputs or outputs) not counted because their shapes did not fit."""
        return self._inputs.skipped + self._outputs.skipped

    def set_reference(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None,
                      ) -> None:
        """Fix the reference from samples keyed by tensor name (rows along dim 0); the windows restart empty.

        Args:
            inputs: every input's sample (other keys are ignored).
            outputs: every output's sample, or None to take the first live rows' outputs.

        Raises:
            KeyError: a tensor is missing (named).
            ValueError: the tensors of one side differ in rows, have none, or are not numbers.
        """
        self._inputs.set_reference(_pick(inputs, self._inputs.names))
        if outputs is not None:
            self._outputs.set_reference(_pick(outputs, self._outputs.names))

    def observe(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """Take one forward's inputs and outputs (in signature order, rows along dim 0), or skip them
        (one batch in :attr:`stride` is taken)."""
        self._countdown -= 1
        if self._countdown:
            return
        self._countdown = self._stride
        inputs_, outputs_ = self._inputs, self._outputs
        inputs_.add(inputs)
        outputs_.add(outputs)
        if (inputs_.spent_ns or outputs_.spent_ns) and self.budget is not None:  # a chunk was just counted
            now = perf_counter_ns()
            self._stride = next_stride(self._stride, inputs_.spent_ns + outputs_.spent_ns, now - self._since,
                                       self.budget, self.max_stride)
            inputs_.spent_ns = outputs_.spent_ns = 0
            self._since = now

    def summary(self) -> dict[str, Any]:
        """The drift now, as plain msgpack types::

            {"drifting": bool, "warning": bool, "stride": int, "skipped": int,
             "inputs": GROUP, "outputs": GROUP}

        ``GROUP`` is ``{"reference": rows (0 while collecting), "collecting": rows
        gathered toward it (0 once fixed), "window": rows, "skipped": batches whose
        shapes did not fit, "features": {name: FEATURE}}``
        and ``FEATURE`` is ``{"psi", "js", "ks": float (None with no finite value in
        the window), "nonfinite": int (in the window), "warning": bool, "drifting": bool}``.
        The top ``drifting`` and ``warning``: any feature's; ``stride``: one batch in
        that many is counted now; ``skipped``: both groups'.
        """
        groups = {"inputs": self._inputs.summary(self.thresholds), "outputs": self._outputs.summary(self.thresholds)}
        entries = [e for g in groups.values() for e in g["features"].values()]
        return {"drifting": any(e["drifting"] for e in entries), "warning": any(e["warning"] for e in entries),
                "stride": self._stride, "skipped": groups["inputs"]["skipped"] + groups["outputs"]["skipped"],
                **groups}


def next_stride(stride: int, spent_ns: int, elapsed_ns: int, budget: float, most: int) -> int:
    """The sampling stride that would have made counting cost ``budget`` of ``elapsed_ns``.

    ``spent_ns`` of counting over ``elapsed_ns`` of wall time at ``stride``: the cost
    scales as ``1 / stride``. The step is at most a factor 2 either way (one chunk's
    timing is noisy: a preemption, the reference's one-off binning), within ``[1, most]``.
    """
    if elapsed_ns <= 0:
        return stride
    want = math.ceil(stride * spent_ns / (elapsed_ns * budget))
    return max(1, min(most, max(stride // 2, min(2 * stride, want))))


def _pick(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise KeyError(f"reference sample has no {', '.join(map(repr, missing))}")
    return [np.asarray(arrays[n]) for n in names]
