"""One side's tensors (inputs or outputs) as features, and their rows counted a chunk at a time.

A *feature* is one column of a tensor seen as ``[rows, columns]``: column ``j`` of
a 2-D tensor ``x`` is ``"x[j]"``, a 1-D ``[batch]`` tensor is one feature named
``"x"``, a higher-rank tensor is flattened per row (``"x[j]"`` with ``j`` the flat
index) and a 0-d one is one row of one feature. Only the first
:data:`MAX_COLUMNS` columns of a tensor are monitored. Inputs and outputs are
monitored alike, as two separate groups (:class:`_Group`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from time import perf_counter_ns
from typing import Any

import numpy as np

from .reference import Reference
from .stats import DriftThresholds
from .window import Window

__all__ = ["MAX_COLUMNS", "feature_names"]

#: Columns of one tensor that are monitored (the first ones, after flattening each row).
MAX_COLUMNS = 64


def feature_names(name: str, shape: tuple[int, ...], max_columns: int = MAX_COLUMNS) -> list[str]:
    """The monitored features of tensor ``name`` whose rows have trailing shape ``shape`` (after dim 0)."""
    if not shape:
        return [name]
    return [f"{name}[{j}]" for j in range(min(math.prod(shape), max_columns))]


def _columns(x: np.ndarray) -> np.ndarray:
    """``x`` as ``[rows, columns]`` (a 0-d tensor is one row of one column)."""
    if x.ndim == 2:
        return x
    if x.ndim == 0:
        return x.reshape(1, 1)
    return x.reshape(x.shape[0], -1)


#: One pending batch: per tensor its array as observed, or a conformed copy (:meth:`_Group.conform`).
_Batch = tuple[np.ndarray, ...]


class _Group:
    """The tensors of one side (inputs or outputs): their pending batches, reference and window.

    A batch is kept as observed (references to its arrays) when every tensor is
    1-D or 2-D with at most ``max_columns`` columns, else as a copy of its
    monitored columns. Once a chunk's worth of rows is pending they are counted:
    into the reference while it is being collected (the first ``reference_rows``
    live rows), then into the window.
    """

    def __init__(self, names: Sequence[str], reference_rows: int, window_rows: int, chunks: int,
                 max_columns: int) -> None:
        self.names = list(names)
        self.reference_rows = reference_rows
        self.window_rows = window_rows
        self.chunks = chunks
        self.max_columns = max_columns
        self.features: list[str] = []
        self.refs: list[Reference] = []
        self.window: Window | None = None
        #: Rows of the reference (0 while collecting it).
        self.reference_size = 0
        #: Batches not counted: their tensors did not fit the columns fixed by the first data.
        self.skipped = 0
        #: Nanoseconds spent counting into the window since the monitor last read it.
        self.spent_ns = 0
        self._shapes: list[tuple[int, ...]] = []  # per tensor, the trailing shape of the first data
        self._widths: list[int] = []  # per tensor, the monitored columns
        self._laid_out = False
        self._narrow = False
        self._pending: list[_Batch] = []
        self._pending_rows = 0  # the pending batches' rows plus the carried columns
        self._collected: list[np.ndarray] = []  # reference columns gathered so far
        self._carry: np.ndarray | None = None  # counted columns past the last chunk, still pending
        self._limit = reference_rows  # pending rows that trigger a count

    def _layout(self, arrays: Sequence[np.ndarray]) -> None:
        """Fix the features from the first data seen."""
        shapes = [tuple(np.shape(a)[1:]) for a in arrays]
        self.features = [f for n, s in zip(self.names, shapes, strict=True)
                         for f in feature_names(n, s, self.max_columns)]
        self._widths = [min(math.prod(s), self.max_columns) if s else 1 for s in shapes]
        self._shapes = shapes
        self._narrow = all(len(s) == 0 or (len(s) == 1 and s[0] <= self.max_columns) for s in shapes)
        self._laid_out = True

    def add(self, arrays: Sequence[np.ndarray]) -> None:
        """Take one batch (the worker's hot path: a list append, unless a chunk is complete)."""
        if self._narrow:
            try:
                n = arrays[0].shape[0]
            except (IndexError, AttributeError, TypeError):
                pass  # a 0-d or odd first tensor: conformed below
            else:
                self._pending.append(tuple(arrays))
                self._pending_rows += n
                if self._pending_rows >= self._limit:
                    self._flush()
                return
        elif not self._laid_out:
            if not self.names:  # nothing to monitor on this side
                return
            if len(arrays) != len(self.names):
                self.skipped += 1
                return
            self._layout(arrays)
            if self._narrow:
                self.add(arrays)
                return
        batch = self.conform(arrays)
        if batch is None:
            self.skipped += 1
            return
        self._pending.append(batch)
        self._pending_rows += len(batch[0])
        if self._pending_rows >= self._limit:
            self._flush()

    def conform(self, arrays: Sequence[Any]) -> _Batch | None:
        """``arrays`` as float64 copies of the monitored columns (per tensor ``(n,)`` for a 1-D or 0-d
        tensor, else ``(n, width)``); None when they do not fit the layout."""
        if len(arrays) != len(self._shapes):
            return None
        try:
            cols = [_columns(np.asarray(a)) for a in arrays]
            n = cols[0].shape[0]
            out = []
            for c, s, w in zip(cols, self._shapes, self._widths, strict=True):
                if c.shape[0] != n or c.shape[1] < w:
                    return None
                out.append(np.array(c[:, 0] if not s else c[:, :w], dtype=np.float64))
        except (TypeError, ValueError):  # not numbers
            return None
        return tuple(out)

    def _rows(self, batch: _Batch) -> int:
        """Rows of a batch kept as observed whose arrays fit the layout as they are; -1 if they do not."""
        try:
            n = batch[0].shape[0]
            if len(batch) != len(self._shapes) or any(
                    x.shape != (n, *s) or x.dtype.kind not in "biuf" for x, s in zip(batch, self._shapes, strict=True)):
                return -1
        except (IndexError, AttributeError, TypeError):
            return -1
        return int(n)

    def _batch_rows(self) -> int:
        """Rows of the pending batches (as counted when they came), without the carried columns."""
        return self._pending_rows - (0 if self._carry is None else self._carry.shape[1])

    def gather(self, batches: Sequence[_Batch], rows: int = -1, carry: np.ndarray | None = None,
               ) -> tuple[np.ndarray, int]:
        """``(columns, skipped)``: ``carry`` columns then the rows of ``batches``, as float64
        ``(features, rows)``, and how many batches did not fit.

        Args:
            rows: the batches' rows if known (the first tensors' dim 0, summed): every
                batch is then checked only when a tensor's total disagrees or will not cast.
        """
        first = 0 if carry is None else carry.shape[1]
        if rows >= 0:
            cols = np.empty((len(self.features), first + rows))
            try:
                self._fill(cols[:, first:], batches)
            except (ValueError, TypeError):  # some batch does not fit: find which, below
                pass
            else:
                if carry is not None:
                    cols[:, :first] = carry
                return cols, 0
        kept: list[_Batch] = []
        skipped = rows = 0
        for batch in batches:
            n = self._rows(batch)
            if n < 0:
                conformed = self.conform(batch)
                if conformed is None:
                    skipped += 1
                    continue
                batch, n = conformed, len(conformed[0])
            kept.append(batch)
            rows += n
        cols = np.empty((len(self.features), first + rows))
        if carry is not None:
            cols[:, :first] = carry
        self._fill(cols[:, first:], kept)
        return cols, skipped

    def _fill(self, cols: np.ndarray, batches: Sequence[_Batch]) -> None:
        """Copy ``batches`` into ``cols``, one concatenation (and cast) per tensor; ValueError or TypeError
        when they do not fit it."""
        start = 0
        for t, (s, w) in enumerate(zip(self._shapes, self._widths, strict=True)):
            if batches and w:
                np.concatenate([b[t] for b in batches], out=cols[start] if not s else cols[start:start + w].T)
            start += w

    def _flush(self) -> None:
        """Count the pending rows: the reference's first, then one whole chunk of the window at a time."""
        began = perf_counter_ns()
        cols, skipped = self.gather(self._pending, self._batch_rows(), self._carry)
        self.skipped += skipped
        self._pending.clear()
        if self.window is None:
            self._collected.append(cols)
            have = sum(c.shape[1] for c in self._collected)
            if have < self.reference_rows:
                self._carry = None
                self._pending_rows = 0
                self._limit = self.reference_rows - have
                return
            cols = np.concatenate(self._collected, axis=1)
            self._collected.clear()
            self._fix(cols[:, :self.reference_rows])
            cols = cols[:, self.reference_rows:]
        window = self.window
        assert window is not None
        # Rows past the chunk wait for the next one: one count per chunk, not two.
        while cols.shape[1] >= self._limit:
            window.add_columns(cols[:, :self._limit])
            cols = cols[:, self._limit:]
            self._limit = window.chunk_rows - window.fill
        self._carry = cols if cols.shape[1] else None
        self._pending_rows = cols.shape[1]
        self.spent_ns += perf_counter_ns() - began

    def set_reference(self, arrays: Sequence[np.ndarray]) -> None:
        self._layout(arrays)
        batch = self.conform(arrays)
        if batch is None or not len(batch[0]):
            raise ValueError(f"reference of {self.names}: the tensors need the same number of rows, at least 1")
        self._pending.clear()
        self._pending_rows = 0
        self._collected.clear()
        self._carry = None
        self._fix(self.gather([batch])[0])

    def _fix(self, cols: np.ndarray) -> None:
        """Make ``cols`` (``(features, rows)``) the reference and start an empty window."""
        self.refs = [Reference(col) for col in cols]
        self.reference_size = cols.shape[1]
        self.window = Window(self.refs, self.window_rows, self.chunks)
        self._limit = self.window.chunk_rows

    def summary(self, thresholds: DriftThresholds) -> dict[str, Any]:
        features: dict[str, dict[str, Any]] = {}
        pending, skipped = self.gather(self._pending, self._batch_rows(), self._carry)
        skipped += self.skipped
        window = self.window
        if window is None:
            collected = sum(c.shape[1] for c in self._collected) + pending.shape[1]
            return {"reference": 0, "collecting": collected, "window": 0, "skipped": skipped, "features": features}
        rows = window.rows + pending.shape[1]
        psi_, js, ks, finite, nonfinite = window.stats(window.counts(pending))
        judged = finite >= thresholds.min_window
        drifting = judged & ((psi_ >= thresholds.psi_drift) | (js >= thresholds.js_drift) | (ks >= thresholds.ks_drift))
        warning = drifting | (judged & (psi_ >= thresholds.psi_warning))
        for j, name in enumerate(self.features):
            known = not math.isnan(psi_[j])
            # Plain Python types: numpy scalars are not msgpack types.
            features[name] = {"psi": float(psi_[j]) if known else None, "js": float(js[j]) if known else None,
                              "ks": float(ks[j]) if known else None, "nonfinite": int(nonfinite[j]),
                              "warning": bool(warning[j]), "drifting": bool(drifting[j])}
        return {"reference": self.reference_size, "collecting": 0, "window": rows, "skipped": skipped,
                "features": features}
