"""What kind of model file a zip is, read from its entries (never from a file name).

TorchScript (``torch.jit.save``) and ``torch.export`` programs (``torch.export.save``) are
both zip files whose entries sit under one directory named after the file
(measured with torch 2.13)::

    model.pt   s/data.pkl  s/code/__torch__.py  s/constants.pkl  s/version  s/byteorder  ...
    model.pt2  s/archive_format ("pt2")  s/models/model.json  s/data/weights/...  s/.data/version

A ``torch.save`` checkpoint has ``data.pkl`` and ``version`` but no ``code/``: the weights of a
module without the module, which no worker can load; it is refused with a message saying so.
A push archive's files sit at its top level, so it is none of these.

Nothing here imports torch: the router reads the zip's directory only.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

from router.proto.errors import BadArchive
from router.proto.meta import EXPORT_FILE, MODEL_FILE

#: Errors :mod:`zipfile` raises for a damaged or unreadable zip (``RuntimeError``: encrypted).
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, struct.error)

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes)
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # 20 bytes, just before the record
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # 56 bytes, just before the locator


def _directory_size(path: Path) -> tuple[int, int]:
    """Entries and bytes of a zip's central directory, as its end records declare them.

    Found the way :mod:`zipfile` finds them (the last end record in the final 64 KiB), since
    zipfile parses ``size`` bytes of entries whatever the count says.
    """
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        start = max(0, end - (_EOCD.size + 0xFFFF + _EOCD64_LOCATOR.size + _EOCD64.size))
        f.seek(start)
        tail = f.read()
    i = tail.rfind(b"PK\x05\x06", 0, len(tail) - _EOCD.size + 4)  # a whole record must follow
    if i < 0:
        raise BadArchive("not a valid zip: no end of central directory record (truncated?)")
    count, size = _EOCD.unpack_from(tail, i)[4:6]
    j = i - _EOCD64_LOCATOR.size
    if j >= 0 and tail.startswith(b"PK\x06\x07", j):
        k = j - _EOCD64.size
        if k < 0 or not tail.startswith(b"PK\x06\x06", k):
            raise BadArchive("not a valid zip: a zip64 locator without its end record")
        count, size = _EOCD64.unpack_from(tail, k)[7:9]
    return count, size


def open_zip(path: Path, max_directory_bytes: int) -> zipfile.ZipFile:
    """Open a zip once its central directory is known to be at most ``max_directory_bytes``.

    :mod:`zipfile` reads the whole directory into objects when it opens a file: a few MB of
    upload could otherwise declare millions of entries and hold the router's memory.

    Raises:
        BadArchive: the zip is damaged, or its directory is larger than allowed.
    """
    count, size = _directory_size(path)
    if size > max_directory_bytes:
        raise BadArchive(f"zip directory of {count} entries and {size} bytes: more than the "
                         f"{max_directory_bytes} bytes allowed")
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise BadArchive(f"not a valid zip: {exc}") from None


def model_kind(zf: zipfile.ZipFile, what: str) -> str | None:
    """The canonical model file name for ``zf`` (``model.pt`` or ``model.pt2``), or None
    when it is not a torch archive at all (a push archive, an ``.npz``, any other zip).

    Args:
        zf: the open zip.
        what: how messages name it (``"the upload"``, an archive entry's name).

    Raises:
        BadArchive: a ``torch.save`` checkpoint, or a ``torch.export`` archive of another format.
    """
    names = zf.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        return None
    prefix = f"{tops.pop()}/"
    have = set(names)
    if f"{prefix}archive_format" in have:
        try:
            with zf.open(f"{prefix}archive_format") as f:
                fmt = f.read(16).strip()  # a few bytes: a compressed entry cannot unpack more here
        except ZIP_ERRORS as exc:
            raise BadArchive(f"{what}: unreadable torch.export archive: {exc}") from None
        if fmt != b"pt2":
            raise BadArchive(f"{what}: a torch.export archive of format {fmt[:16]!r}, not 'pt2'")
        return EXPORT_FILE
    if any(n.startswith(f"{prefix}serialized_exported_program") for n in names):
        return EXPORT_FILE  # torch.export.save before the archive_format entry (torch < 2.5)
    if f"{prefix}data.pkl" in have and f"{prefix}version" in have:
        if any(n.startswith(f"{prefix}code/") for n in names):
            return MODEL_FILE
        raise BadArchive(f"{what} is a torch.save checkpoint (weights without code), which no worker can "
                         "load: save the module with torch.jit.save (.pt) or torch.export.save (.pt2)")
    return None
