"""The networks the demo and fixture models are made of, built reproducibly.

Everything is seeded (``torch.manual_seed`` inside a forked RNG state) and
built on one thread, so two builds on the same machine and torch version give
bit-identical weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["MLP", "deterministic", "mlp_small", "mlp_wide", "random_mlp"]


class MLP(nn.Module):
    """A plain ReLU MLP: ``Linear -> ReLU -> ... -> Linear``."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch's RNG and use one thread; restore the caller's RNG state and thread count after."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def random_mlp(sizes: list[int], seed: int) -> torch.jit.ScriptModule:
    """A scripted, untrained :class:`MLP` of ``sizes`` whose weights depend only on ``seed``."""
    with deterministic(seed):
        model = MLP(sizes).eval().requires_grad_(False)
        return torch.jit.script(model)


def mlp_small(seed: int = 11) -> torch.jit.ScriptModule:
    """``mlp-small``: a fixed-seed, untrained 4 -> 64 -> 3 ReLU MLP (``x`` [-1, 4] -> ``y`` [-1, 3])."""
    return random_mlp([4, 64, 3], seed=seed)


def mlp_wide() -> torch.jit.ScriptModule:
    """``mlp-wide``: a fixed-seed, untrained 256 -> 1024 -> 1024 -> 10 ReLU MLP.

    Input ``x`` [-1, 256], output ``y`` [-1, 10]; about 1.3 M parameters.
    """
    return random_mlp([256, 1024, 1024, 10], seed=12)
