"""The model store, daemon side: receive pushed versions, list them, remove them.

``<store>/<model>/<version>/`` holds one model file (``model.pt`` or ``model.pt2``),
``meta.json`` and optionally ``sample.npz``; versions are immutable and appear whole or not at
all. Modules, one job each:

* :mod:`~router.store.layout`: names, limits, the hidden ``.staging/`` and ``.trash/``;
* :mod:`~router.store.staging`: receiving a push body (:class:`Upload`), :func:`clean_staging`;
* :mod:`~router.store.archive`: safe unpacking of ``.tar.gz`` / ``.zip`` push archives;
* :mod:`~router.store.modelfile`: telling TorchScript and ``torch.export`` files apart;
* :mod:`~router.store.push`: ``meta.json``, immutability, the atomic commit;
* :mod:`~router.store.catalog`: listing and removing versions.

Pure Python (the standard library and :mod:`router.proto`): it runs in the router process.
Everything that touches the disk blocks and says so: from the event loop only
:meth:`Upload.write` and :meth:`Upload.finish` are awaited; the rest runs in a thread
(``asyncio.to_thread``).
"""

from __future__ import annotations

from .catalog import StoredVersion, list_models, list_versions, model_bytes, remove, stored_version
from .layout import DEFAULT_LIMITS, StoreLimits, check_name
from .push import PushResult, Staged, commit, prepare, push
from .staging import Upload, clean_staging, receive

__all__ = [
    "DEFAULT_LIMITS", "PushResult", "Staged", "StoreLimits", "StoredVersion", "Upload", "check_name",
    "clean_staging", "commit", "list_models", "list_versions", "model_bytes", "prepare", "push", "receive",
    "remove", "stored_version",
]
