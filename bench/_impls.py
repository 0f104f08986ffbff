"""Picking the compiled or the pure-Python implementation in the micro-benchmarks."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

IMPLS = ["c", "py"]
#: The package of each compiled module and its twin, when not ``router``.
_PACKAGE = {"_framing": "router.proto"}


def implementation(request: pytest.FixtureRequest, name: str) -> ModuleType:
    """``PACKAGE.{name}_c`` for param ``c`` (skipped when not built), ``PACKAGE.{name}_py`` for ``py``."""
    package = _PACKAGE.get(name, "router")
    if request.param == "py":
        return importlib.import_module(f"{package}.{name}_py")
    try:
        return importlib.import_module(f"{package}.{name}_c")
    except ImportError as exc:
        pytest.skip(f"{package}.{name}_c is not built: {exc}")
