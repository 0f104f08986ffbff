"""Picking the compiled or the pure-Python implementation in the micro-benchmarks."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

IMPLS = ["c", "py"]


def implementation(request: pytest.FixtureRequest, name: str) -> ModuleType:
    """``router.{name}_c`` for param ``c`` (skipped when not built), ``router.{name}_py`` for ``py``."""
    if request.param == "py":
        return importlib.import_module(f"router.{name}_py")
    try:
        return importlib.import_module(f"router.{name}_c")
    except ImportError as exc:
        pytest.skip(f"router.{name}_c is not built: {exc}")
