"""Traffic split between a model's versions: the one place that picks the
compiled or the pure-Python splitter.

``WeightTable`` is a weighted rendezvous table: a keyed request sticks to the
version with the lowest ``-log(u) / weight`` (``u`` from XXH64 of the key mixed
with the version's seed), so changing one weight or the set of versions moves
only the keys that must move; a request without a key draws by weight from the
table's own generator. ``MirrorTable`` picks the shadow versions that get a
copy of a live request, each version on its own: a keyed request is copied when
a hash of the key and the version's name (seeded with ``SHADOW_SEED``, so
independent of the routing) falls below the version's fraction, a request
without a key by the table's own generator.
``router/_splitter_py.py`` is the specification and ``ext/_splitter.pyx`` its
compiled twin (``router._splitter_c``).

``ROUTER_NO_EXTENSIONS=1`` forces the twin; otherwise the extension is used and
its absence is logged (never a silent fall-back to slow code).
"""

from __future__ import annotations

from . import _splitter_py
from .proto._compat import load_extension

WeightTablePy = _splitter_py.WeightTable
MirrorTablePy = _splitter_py.MirrorTable
_impl, EXTENSION = load_extension("_splitter", _splitter_py)
#: The compiled classes, or None when they are not built or the twins are forced.
WeightTableC = _impl.WeightTable if EXTENSION else None
MirrorTableC = _impl.MirrorTable if EXTENSION else None

WeightTable = _impl.WeightTable
MirrorTable = _impl.MirrorTable
hash64 = _impl.hash64

__all__ = [
    "EXTENSION",
    "MirrorTable",
    "MirrorTableC",
    "MirrorTablePy",
    "WeightTable",
    "WeightTableC",
    "WeightTablePy",
    "hash64",
]
