"""Frame scanning: the one place that picks the compiled or the pure-Python code.

``ROUTER_NO_EXTENSIONS=1`` forces the twin; otherwise the extension is used and
its absence is logged (never a silent fall-back to slow code).
"""

from __future__ import annotations

from . import _framing_py
from ._compat import load_extension

FrameScannerPy = _framing_py.FrameScanner
_impl, EXTENSION = load_extension("_framing", _framing_py)

FrameScanner = _impl.FrameScanner
pack_header = _impl.pack_header
parse_request = _impl.parse_request

__all__ = ["EXTENSION", "FrameScanner", "FrameScannerPy", "pack_header", "parse_request"]
