"""Shadow mode: compare a shadow version's outputs with the live version's reply.

A shadow worker receives a copy of a live request together with the live
version's reply body, runs its own model on the request, and reports how far its
outputs are from the live ones. The live reply is decoded with
:func:`runtime.codecs.decode_reply` (the inverse of
:func:`runtime.codecs.encode_response`, in the same three body formats), the two
sets of outputs are compared with :func:`compare`, and the result is packed with
:func:`pack_stats`.

Measures, per output present in both (see :func:`compare`): the largest absolute
difference, the largest relative difference ``|s - l| / max(|s|, |l|)`` (in
``[0, 2]``, symmetric), and for classifier-like outputs (``ndim >= 2``, last
dimension >= 2) how many rows have the same argmax along the last axis.

Stats payload (:func:`pack_stats`): the payload of the shadow worker's 200 reply
on the router <-> worker link (``[rid, 200, 0, payload]``, see
:mod:`router.proto.link`) is the msgpack array::

    [rows_total, [[name, max_abs, max_rel, agree, rows], ...]]

with a third element, the shadow's outputs as a msgpack reply body, when the
copy asked for them (``SHADOW_OUTPUTS``: it was sampled for the prediction log).

``rows_total`` (uint) is dim 0 of the first compared output (0 for a 0-d one);
then one entry per compared output, in the live reply's order: ``name`` (str),
``max_abs`` and ``max_rel`` (float64, ``inf`` where a NaN or an infinity
disagrees), ``agree`` and ``rows`` (int, both ``-1`` for outputs that are not
classifier-like). Plain msgpack types only: the router unpacks it without numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgpack
import numpy as np

from router.proto.errors import BadRequest

__all__ = ["Diff", "Diffs", "compare", "pack_stats"]

#: One compared output: ``(name, max_abs, max_rel, agree, rows)``.
Diff = tuple[str, float, float, int, int]

_F64 = np.dtype(np.float64)
_INF = math.inf


class Diffs(list[Diff]):
    """What :func:`compare` returns: a list of :data:`Diff`, plus ``rows_total`` for :func:`pack_stats`."""

    __slots__ = ("rows_total",)

    def __init__(self, rows_total: int = 0) -> None:
        super().__init__()
        self.rows_total = rows_total


def compare(live: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> Diffs:
    """Compare the shadow's outputs with the live ones, output by output.

    Arrays are compared as float64. Per position: both NaN or equal (equal
    infinities included) is no difference; differing values where either is NaN
    or infinite count as ``inf`` for both measures; otherwise the absolute
    difference is ``|s - l|`` and the relative one ``|s - l| / max(|s|, |l|)``.

    Returns:
        One :data:`Diff` ``(name, max_abs, max_rel, agree, rows)`` per output name
        present in both, in ``live``'s order (plain Python numbers). Empty arrays
        give ``0.0``. For arrays with ``ndim >= 2`` and a last dimension >= 2,
        ``rows`` is the number of rows (all dims but the last) and ``agree`` the
        number whose argmax along the last axis is the same; else both are ``-1``.
        ``rows_total`` is dim 0 of the first compared output (0 for a 0-d one).

    Raises:
        BadRequest: no output name is shared, or a shared output's shapes differ.
    """
    diffs: Diffs | None = None
    # One errstate for all outputs: inf - inf, 0 / 0 and overflow are handled below, not warnings.
    with np.errstate(all="ignore"):
        for name, lv in live.items():
            if name not in shadow:
                continue
            lo = np.asarray(lv)
            so = np.asarray(shadow[name])
            if lo.shape != so.shape:
                raise BadRequest(f"output {name!r}: shapes differ: live {list(lo.shape)}, shadow {list(so.shape)}")
            if diffs is None:
                diffs = Diffs(lo.shape[0] if lo.ndim else 0)
            max_abs, max_rel = _differences(lo.astype(_F64, copy=False), so.astype(_F64, copy=False))
            if lo.ndim >= 2 and lo.shape[-1] >= 2:
                # argmax on the original dtypes: float64 would tie large distinct integers.
                rows = lo.size // lo.shape[-1]
                agree = int(np.count_nonzero(lo.argmax(-1) == so.argmax(-1)))
            else:
                agree = rows = -1
            diffs.append((name, max_abs, max_rel, agree, rows))
    if diffs is None:
        raise BadRequest(f"no output in common: live has {sorted(live)}, shadow has {sorted(shadow)}")
    return diffs


def _differences(lv: np.ndarray, sv: np.ndarray) -> tuple[float, float]:
    """``(max_abs, max_rel)`` of two float64 arrays of one shape (rules in :func:`compare`)."""
    if not lv.size:
        return 0.0, 0.0
    if not lv.ndim:  # ufuncs return scalars for 0-d inputs, and out= needs arrays
        lv, sv = lv.reshape(1), sv.reshape(1)
    # In place where possible: fresh temporaries dominate the cost for big arrays.
    d = np.subtract(sv, lv)
    np.abs(d, out=d)
    max_abs = float(d.max())  # NaN if any NaN: max propagates it
    if max_abs == 0.0:
        return 0.0, 0.0
    if max_abs < _INF:
        # Everything is finite (a NaN or an infinity makes max_abs NaN or inf), and
        # where max(|s|, |l|) is 0 so is d: fmax skips those 0/0 NaNs.
        m = np.abs(sv)
        np.maximum(m, np.abs(lv), out=m)
        np.divide(d, m, out=d)
        return max_abs, float(np.fmax.reduce(d, axis=None))
    # Rare: NaN or infinities, or finite values whose difference overflows.
    lnan, snan = np.isnan(lv), np.isnan(sv)
    differ = ~((lv == sv) | (lnan & snan))
    if not differ.any():
        return 0.0, 0.0
    lv, sv = lv[differ], sv[differ]
    if not (np.isfinite(lv).all() and np.isfinite(sv).all()):
        return _INF, _INF  # a differing NaN or infinity (equal ones and NaN pairs were dropped above)
    m = np.maximum(np.abs(sv), np.abs(lv))  # > 0: the values differ
    # Scaled before subtracting, so that an overflowing |s - l| still gives max_rel <= 2.
    return float(np.abs(sv - lv).max()), float(np.abs(sv / m - lv / m).max())


def pack_stats(diffs: Sequence[Diff], rows_total: int | None = None, outputs: bytes | None = None) -> bytes:
    """Pack :func:`compare`'s result as the shadow worker's reply payload (layout in the module docstring).

    Args:
        diffs: the result of :func:`compare`, or any sequence of :data:`Diff`.
        rows_total: overrides ``diffs.rows_total``; required when ``diffs`` is a
            plain sequence.
        outputs: the shadow's outputs as a msgpack reply body, for a copy sampled
            for the prediction log: a third element of the array.

    Raises:
        TypeError: ``rows_total`` is neither given nor carried by ``diffs``.
    """
    if rows_total is None:
        rows_total = getattr(diffs, "rows_total", None)
        if rows_total is None:
            raise TypeError("pack_stats: rows_total is required when diffs does not come from compare()")
    # Plain Python numbers: numpy scalars are not msgpack types.
    entries = [[str(n), float(a), float(r), int(g), int(k)] for n, a, r, g, k in diffs]
    return msgpack.packb([int(rows_total), entries] if outputs is None else [int(rows_total), entries, outputs])
