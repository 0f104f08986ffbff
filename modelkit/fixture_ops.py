"""TorchScript operators for fixture models, registered when this module is imported.

``torch.ops.router.sleep_us(x, us)`` returns ``x`` after sleeping ``us``
microseconds without using the CPU. TorchScript has no sleep of its own; this
one lets a test or a benchmark stand up a slow model (a shadow that takes
20 ms, a version that misses its deadline) that behaves like a real model on
another device: slow, but leaving the core to the others.

Workers do not register it: a worker serving such a model must be started with
``ROUTER_WORKER_PRELOAD=modelkit.fixture_ops`` (see :func:`runtime.model.preload`).
"""

from __future__ import annotations

import time

import torch

__all__ = ["sleep_us"]


@torch.library.custom_op("router::sleep_us", mutates_args=())
def sleep_us(x: torch.Tensor, us: int) -> torch.Tensor:
    """Sleep ``us`` microseconds, then return a copy of ``x``."""
    time.sleep(us / 1e6)
    return x.clone()


@sleep_us.register_fake
def _(x: torch.Tensor, us: int) -> torch.Tensor:
    return torch.empty_like(x)
