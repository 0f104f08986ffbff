"""Fixture models: ``mlp-small`` variants that exist for tests and benchmarks of shadow mode.

Each is written into the demo store by ``build_demo_store(extra=True)``
(:mod:`modelkit.demo`) as a version of ``mlp-small``:

* ``2`` -- other weights (seed 13): a shadow that disagrees;
* ``copy`` -- version 1 bit for bit: a shadow that agrees;
* ``slow`` -- version 1 answering after a 20 ms sleep off the CPU
  (``torch.ops.router.sleep_us``, :mod:`modelkit.fixture_ops`: a worker serving
  it needs ``ROUTER_WORKER_PRELOAD=modelkit.fixture_ops``);
* ``faulty`` -- version 1 that raises on inputs beyond +-1000.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import fixture_ops  # noqa: F401  (registers torch.ops.router.sleep_us, which SlowMLP scripts against)
from .nets import MLP, deterministic, mlp_small

__all__ = ["MLP_SMALL_VARIANTS", "FaultyMLP", "SlowMLP", "Variant", "faulty_mlp_small", "slow_mlp_small"]


class SlowMLP(nn.Module):
    """``body`` that answers only after sleeping ``delay_us`` (off the CPU, like a model on another device)."""

    def __init__(self, body: nn.Module, delay_us: int) -> None:
        super().__init__()
        self.body = body
        self.delay_us = delay_us

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.router.sleep_us(self.body(x), self.delay_us)


class FaultyMLP(nn.Module):
    """``body`` that raises on any input beyond +-1000 (its example input passes, so it warms up)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 1000.0).any()):
            raise RuntimeError("input beyond +-1000")
        return self.body(x)


def _wrapped_mlp_small(wrap: Callable[[nn.Module], nn.Module]) -> torch.jit.ScriptModule:
    """``mlp-small`` version 1's network (seed 11) inside ``wrap``, scripted."""
    with deterministic(11):
        body = MLP([4, 64, 3]).eval().requires_grad_(False)
    return torch.jit.script(wrap(body).eval())


def slow_mlp_small(delay_us: int = 20_000) -> torch.jit.ScriptModule:
    """``mlp-small`` version 1 answering after ``delay_us`` (default 20 ms)."""
    return _wrapped_mlp_small(lambda body: SlowMLP(body, delay_us))


def faulty_mlp_small() -> torch.jit.ScriptModule:
    """``mlp-small`` version 1 that raises on inputs beyond +-1000."""
    return _wrapped_mlp_small(FaultyMLP)


@dataclass(frozen=True)
class Variant:
    """One fixture version of ``mlp-small``: its name, how to build it, its ``meta.json`` description."""

    version: str
    build: Callable[[], torch.jit.ScriptModule]
    description: str


#: The fixture versions of ``mlp-small``, in the order the demo store writes them.
MLP_SMALL_VARIANTS: tuple[Variant, ...] = (
    Variant("2", lambda: mlp_small(seed=13), "mlp-small with other weights (seed 13): a shadow that disagrees."),
    Variant("copy", mlp_small, "mlp-small version 1, bit for bit: a shadow that agrees."),
    Variant("slow", slow_mlp_small, "mlp-small version 1 answering after a 20 ms sleep."),
    Variant("faulty", faulty_mlp_small, "mlp-small version 1 that raises on inputs beyond +-1000."),
)
