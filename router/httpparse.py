"""HTTP request-head parsing: the one place that picks the compiled or the pure-Python parser.

``router/_http_py.py`` is the specification and ``ext/_http.pyx`` its compiled
twin (``router._http_c``). ``ROUTER_NO_EXTENSIONS=1`` forces the twin.
"""

from __future__ import annotations

from . import _http_py
from .proto._compat import load_extension

parse_head_py = _http_py.parse_head
_impl, EXTENSION = load_extension("_http", _http_py)

parse_head = _impl.parse_head
MAX_HEAD: int = _http_py.MAX_HEAD

__all__ = ["EXTENSION", "MAX_HEAD", "parse_head", "parse_head_py"]
