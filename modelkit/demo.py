"""Deterministic demo models, and the demo model store.

``fraud`` is trained in about a second on synthetic payment data: version
``1`` is a logistic regression, version ``2`` a small MLP that learns the
nonlinear parts of the ground-truth rule and so ranks better (higher AUC).
``mlp-small`` and ``mlp-wide`` are untrained, fixed-seed MLPs for tests and
benchmarks (:mod:`modelkit.nets`), and ``mlp-small`` has fixture versions
(:mod:`modelkit.fixtures`). Every model is built with ``torch.jit.script``,
takes one FP32 batch ``[-1, n]`` and returns one FP32 batch, so the router can
batch requests.

Everything is seeded (numpy ``Generator``, ``torch.manual_seed`` inside a
forked RNG state) and trained on one thread, so two builds on the same machine
and torch version give bit-identical weights.

Usage::

    python -m modelkit.demo --store model-store [--extra]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from router.proto.errors import ConfigError
from router.proto.meta import read_meta

from .fixtures import MLP_SMALL_VARIANTS
from .nets import MLP, deterministic, mlp_small, mlp_wide
from .store import check_version, write_version

__all__ = [
    "FRAUD_CLASSES", "FRAUD_EXAMPLE_ROW", "FRAUD_FEATURES", "FraudModel", "Trained", "build_demo_store",
    "fraud_probability", "main", "make_fraud_data", "mlp_small", "mlp_wide", "roc_auc", "train_fraud",
]

#: Names of the fraud model's input columns, in order.
FRAUD_FEATURES: tuple[str, ...] = (
    "amount_log",
    "hour_sin",
    "hour_cos",
    "merchant_risk",
    "account_age_days_log",
    "txns_last_24h",
    "distance_from_home_log",
    "card_present",
)
#: Names of the fraud model's output columns, in order.
FRAUD_CLASSES: tuple[str, ...] = ("legit", "fraud")

DATA_SEED = 20240611
TRAIN_ROWS = 20_000
HOLDOUT_FRACTION = 0.2
_BATCH = 512
_INTERCEPT = -4.0  # tuned so that about 7% of transactions are fraud

#: One realistic transaction: $42.50 at 14:30, a low-risk merchant, a two-year-old
#: account, 3 transactions today, 5.2 km from home, card present.
FRAUD_EXAMPLE_ROW: list[float] = [
    round(math.log1p(42.5), 4),
    round(math.sin(2 * math.pi * 14.5 / 24), 4),
    round(math.cos(2 * math.pi * 14.5 / 24), 4),
    0.12,
    round(math.log1p(730), 4),
    3.0,
    round(math.log1p(5.2), 4),
    1.0,
]


# --------------------------------------------------------------------------- data


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def fraud_probability(x: np.ndarray) -> np.ndarray:
    """The ground-truth fraud probability of raw feature rows ``x`` ``[n, 8]``.

    Nonlinear on purpose: thresholds (large amounts, risky merchants, many
    transactions) and interactions (night and card-not-present, new account and
    large amount, far from home and card-not-present) that a linear model can
    only approximate.
    """
    x = np.asarray(x, dtype=np.float64)
    amount, hour_sin, hour_cos, risk, age, txns, dist, card = x.T
    hour = np.mod(np.arctan2(hour_sin, hour_cos) * 24 / (2 * np.pi), 24)
    night = (hour < 5).astype(np.float64)
    not_present = 1.0 - card
    z = (
        _INTERCEPT
        + 2.0 * np.maximum(amount - 4.5, 0)
        + 12.0 * np.maximum(risk - 0.25, 0)
        + 2.0 * night * not_present
        + 3.0 * ((age < math.log1p(30)) & (amount > 4.0))
        + 1.0 * np.maximum(txns - 3, 0)
        + 3.0 * not_present * _sigmoid(3 * (dist - 3.5))
        - 1.0 * card
    )
    return _sigmoid(z)


def make_fraud_data(n: int = TRAIN_ROWS, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic payment transactions: raw features ``[n, 8]`` FP32 and labels ``[n]`` int64.

    Columns are :data:`FRAUD_FEATURES`; label 1 is fraud, drawn from
    :func:`fraud_probability` (so the labels are noisy). Deterministic in ``seed``.
    """
    g = np.random.default_rng(seed)
    amount_log = np.log1p(g.lognormal(3.6, 1.1, n))
    profile = 1 + 0.9 * np.sin(2 * np.pi * (np.arange(24) - 9) / 24)  # busiest mid-afternoon
    hour = g.choice(24, n, p=profile / profile.sum()) + g.random(n)
    hour_sin, hour_cos = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    merchant_risk = g.beta(2, 8, n)
    account_age_days_log = np.log1p(g.exponential(700, n))
    txns_last_24h = g.poisson(2.0, n).astype(np.float64)
    distance_from_home_log = np.log1p(g.exponential(15, n))
    card_present = (g.random(n) < 0.7).astype(np.float64)
    x = np.stack(
        [
            amount_log,
            hour_sin,
            hour_cos,
            merchant_risk,
            account_age_days_log,
            txns_last_24h,
            distance_from_home_log,
            card_present,
        ],
        axis=1,
    ).astype(np.float32)
    y = (g.random(n) < fraud_probability(x)).astype(np.int64)
    return x, y


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties get average ranks)."""
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    ranks = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- models


class FraudModel(nn.Module):
    """Standardize raw features with stored mean/std, run ``body``, softmax over [legit, fraud]."""

    def __init__(self, body: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().to(torch.float32))
        self.register_buffer("std", std.detach().clone().to(torch.float32))
        self.body = body

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits ``[n, 2]`` (used for training)."""
        # The buffers are Tensors; torch's stubs type module attributes as Tensor | Module.
        return self.body((features - self.mean) / self.std)  # type: ignore[operator]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=-1)


@dataclass(frozen=True)
class Trained:
    """A trained fraud model and its held-out metrics."""

    module: torch.jit.ScriptModule
    accuracy: float
    auc: float
    holdout_rows: int


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train / held-out split."""
    perm = np.random.default_rng(DATA_SEED + 1).permutation(len(x))
    n_hold = int(len(x) * HOLDOUT_FRACTION)
    hold, train = perm[:n_hold], perm[n_hold:]
    return x[train], y[train], x[hold], y[hold]


def train_fraud(version: str, data: tuple[np.ndarray, np.ndarray] | None = None) -> Trained:
    """Train fraud model ``version`` (``"1"``: logistic regression, ``"2"``: MLP 8-32-16-2).

    Minibatch Adam (batch 512, seeded shuffles) on the training split of
    :func:`make_fraud_data`; returns the scripted model with its accuracy and
    AUC on the held-out split. Takes well under a second per version.
    """
    if version == "1":
        sizes, epochs, lr, seed = [8, 2], 10, 0.02, 1
    elif version == "2":
        sizes, epochs, lr, seed = [8, 32, 16, 2], 40, 0.003, 2
    else:
        raise ValueError(f"unknown fraud version {version!r}")
    x, y = data if data is not None else make_fraud_data()
    x_train, y_train, x_hold, y_hold = _split(x, y)
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    with deterministic(seed):
        model = FraudModel(MLP(sizes), xt.mean(0), xt.std(0).clamp_min(1e-6))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        shuffle = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=shuffle).split(_BATCH):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model.logits(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        model.eval().requires_grad_(False)  # served for inference only
        scripted = torch.jit.script(model)
        with torch.no_grad():
            probs = scripted(torch.from_numpy(x_hold)).numpy()
    accuracy = float((probs.argmax(1) == y_hold).mean())
    return Trained(scripted, accuracy, roc_auc(y_hold, probs[:, 1]), len(y_hold))


# --------------------------------------------------------------------------- store


def _spec(name: str, width: int) -> list[dict]:
    return [{"name": name, "datatype": "FP32", "shape": [-1, width]}]


def _mlp_example(width: int) -> list[list[float]]:
    return [[round(float(v), 4) for v in np.linspace(-1.0, 1.0, width)]]


@dataclass(frozen=True)
class _Demo:
    model: str
    version: str
    write: Callable[[Path, Callable[[], tuple[np.ndarray, np.ndarray]]], Path]


def _write_fraud(version: str) -> Callable[[Path, Callable[[], tuple[np.ndarray, np.ndarray]]], Path]:
    kind = {"1": "logistic regression", "2": "MLP 8-32-16-2 (ReLU)"}[version]

    def write(store: Path, data: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Path:
        t = train_fraud(version, data())
        description = (
            f"Payment fraud, {kind} on synthetic data; raw features in, "
            f"softmax over [legit, fraud] out. Held-out ({t.holdout_rows} rows): "
            f"accuracy {t.accuracy:.4f}, AUC {t.auc:.4f}."
        )
        extra = {
            "features": list(FRAUD_FEATURES),
            "classes": list(FRAUD_CLASSES),
            "metrics": {
                "accuracy": round(t.accuracy, 6),
                "auc": round(t.auc, 6),
                "holdout_rows": t.holdout_rows,
            },
        }
        return write_version(
            store,
            "fraud",
            version,
            t.module,
            _spec("features", 8),
            _spec("probabilities", 2),
            {"features": [list(FRAUD_EXAMPLE_ROW)]},
            description,
            extra,
        )

    return write


def _write_mlp(
    model: str, build: Callable[[], torch.jit.ScriptModule], n_in: int, n_out: int, version: str = "1",
    description: str = "",
) -> Callable[[Path, Callable[[], tuple[np.ndarray, np.ndarray]]], Path]:
    def write(store: Path, data: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Path:
        del data
        return write_version(
            store,
            model,
            version,
            build(),
            _spec("x", n_in),
            _spec("y", n_out),
            {"x": _mlp_example(n_in)},
            description or f"Untrained fixed-seed ReLU MLP {n_in}->...->{n_out} for tests and benchmarks.",
        )

    return write


_FRAUD = [_Demo("fraud", v, _write_fraud(v)) for v in ("1", "2")]
#: Benchmark models, then the fixture versions of mlp-small (shadow candidates, a slow and a faulty one).
_EXTRA = [
    _Demo("mlp-small", "1", _write_mlp("mlp-small", mlp_small, 4, 3)),
    _Demo("mlp-wide", "1", _write_mlp("mlp-wide", mlp_wide, 256, 10)),
    *(_Demo("mlp-small", v.version, _write_mlp("mlp-small", v.build, 4, 3, v.version, v.description))
      for v in MLP_SMALL_VARIANTS),
]


def build_demo_store(
    store: Path, *, extra: bool = False, log: Callable[[str], None] | None = None
) -> list[Path]:
    """Write the demo models into ``store``; return the version directories written.

    Writes ``fraud/1`` and ``fraud/2`` (and with ``extra``, ``mlp-small/1``,
    ``mlp-wide/1`` and the fixture versions of ``mlp-small``,
    :data:`modelkit.fixtures.MLP_SMALL_VARIANTS`) unless they already exist and
    are valid, in which case they are skipped: the call is idempotent. ``log``
    receives one line per version.

    Raises:
        ConfigError: a version exists but is broken; it is left alone (versions
            are immutable): remove it by hand to rebuild it.
    """
    store = Path(store)
    data_cache: list[tuple[np.ndarray, np.ndarray]] = []

    def data() -> tuple[np.ndarray, np.ndarray]:
        if not data_cache:
            data_cache.append(make_fraud_data())
        return data_cache[0]

    written: list[Path] = []
    for demo in _FRAUD + (_EXTRA if extra else []):
        target = store / demo.model / demo.version
        if target.exists():
            check_version(target)
            if log:
                log(f"skipped {demo.model}/{demo.version}: already in {store}")
            continue
        path = demo.write(store, data)
        written.append(path)
        if log:
            meta = read_meta(path)
            log(f"wrote   {demo.model}/{demo.version}: {meta.size} bytes, sha256 {meta.sha256[:12]}")
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI: build the demo model store. Returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m modelkit.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("model-store"), help="model store root")
    parser.add_argument("--extra", action="store_true",
                        help="also write mlp-small (with its fixture versions) and mlp-wide")
    args = parser.parse_args(argv)
    try:
        build_demo_store(args.store, extra=args.extra, log=print)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
