"""Chooses between a compiled extension and its pure-Python twin, in one place."""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger("router")

#: True when the environment forces the pure-Python twins.
NO_EXTENSIONS = os.environ.get("ROUTER_NO_EXTENSIONS", "") not in ("", "0")


def load_extension(name: str, twin: ModuleType) -> tuple[ModuleType, bool]:
    """Return ``(module, is_compiled)`` for ``{package}.{name}_c`` (the twin's package), or the twin.

    The twin is used when ``ROUTER_NO_EXTENSIONS=1`` or when the extension is not
    built; the latter is logged as a warning so slow code never runs unnoticed.
    """
    if NO_EXTENSIONS:
        return twin, False
    try:
        return importlib.import_module(f"{twin.__package__}.{name}_c"), True
    except ImportError as exc:
        log.warning("compiled %s.%s_c unavailable (%s): using the pure-Python twin", twin.__package__, name, exc)
        return twin, False
