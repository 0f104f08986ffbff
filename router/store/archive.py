"""Safe unpacking of a pushed upload into a staging directory.

An upload is a ``.tar.gz`` or ``.zip`` push archive, or a bare model file, told apart by
its bytes (gzip ``1f 8b``, zip ``PK 03 04``; a zip is a model file when its entries say so,
:mod:`router.store.modelfile`), never by a file name. A push archive holds at its top level
exactly one model file (any ``*.pt`` or ``*.pt2`` name), optionally ``meta.json`` and
optionally one ``*.npz`` reference sample; directories count only as containers.

What an archive cannot do here:

* name where a file lands: entries are only *classified*; what is written is the canonical
  ``model.pt``/``model.pt2``/``sample.npz``, created with ``O_EXCL | O_NOFOLLOW`` relative to
  the staging directory's descriptor (``meta.json`` is read into memory). Names that would
  escape anyway (absolute, ``..`` or a Unicode look-alike, ``\\``, NUL, control characters)
  are refused, as are duplicates (compared after NFKC and case folding) and hidden files;
* hold anything but regular files: links (symbolic or hard), devices, FIFOs, sparse files
  are refused;
* cost more than the limits (:class:`~router.store.layout.StoreLimits`): entries are counted,
  and every byte is counted as it is unpacked, in ``CHUNK`` blocks, before it is written:
  a bomb is stopped at the cap, never measured afterwards, and no header size is trusted.
  The gzip stream is inflated here (``zlib``, bounded output per call) and tar headers may not
  ask for more than ``_MAX_READ`` bytes at once (a pax header of 1 GB would be read whole into
  memory by :mod:`tarfile`). Zip members may also not inflate past ``max_ratio`` times their
  compressed size, and only stored or deflated members are read (the ``bz2``/``lzma``
  decoders of :mod:`zipfile` have no output bound).

These functions block (disk, inflation): run them in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from router.proto.errors import BadArchive, UploadTooLarge, shown
from router.proto.meta import META_FILE, SAMPLE_FILE

from .layout import CHUNK, StoreLimits
from .modelfile import ZIP_ERRORS, model_kind, open_zip

__all__ = ["TAR_GZ", "ZIP", "Unpacked", "entry_parts", "sniff", "unpack"]

TAR_GZ = "tar.gz"
ZIP = "zip"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
#: The model file while it is unpacked, before its contents name it.
_MODEL_PART = ".model"
#: Largest single read a tar header may make (member data is read in CHUNK blocks).
_MAX_READ = 2 * CHUNK
_BLOCK = 512
#: Padding a tar writer may put after the end-of-archive blocks.
_MAX_TRAILING = 2 * CHUNK
_DRIVE = re.compile(r"[A-Za-z]:")
_ROLES = {"model": "model file (.pt or .pt2)", "meta": META_FILE, "sample": "reference sample (.npz)"}
_WHAT_HOLDS = "a push archive holds one model file (.pt or .pt2), optionally meta.json and one .npz sample"


@dataclass(frozen=True, slots=True)
class Unpacked:
    """What an upload unpacked to, in the staging directory's canonical names."""

    model_file: str  #: ``model.pt`` or ``model.pt2``, named by its contents
    sha256: str  #: of the model file
    size: int  #: of the model file
    meta: dict[str, Any] | None  #: the archive's ``meta.json``, decoded; None without one
    sample_sha256: str | None  #: of ``sample.npz``; None without one


def sniff(path: Path, limits: StoreLimits) -> str:
    """What an upload is, from its bytes: ``TAR_GZ``, ``ZIP`` (a push archive), or the canonical
    name of a bare model file (``model.pt``, ``model.pt2``).

    Raises:
        BadArchive: empty, or none of these (a ``torch.save`` checkpoint is named as such).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise BadArchive("the upload is empty")
    if head.startswith(_GZIP_MAGIC):
        return TAR_GZ
    if head == _ZIP_MAGIC:
        with open_zip(path, limits.max_zip_directory_bytes) as zf:
            return model_kind(zf, "the upload") or ZIP
    raise BadArchive("the upload is not a .tar.gz or .zip push archive, nor a TorchScript (.pt) or "
                     "torch.export (.pt2) model file")


def unpack(path: Path, fmt: str, dest: Path, limits: StoreLimits) -> Unpacked:
    """Unpack the push archive at ``path`` (``fmt`` from :func:`sniff`) into the empty directory ``dest``.

    On error ``dest`` may hold part of what was unpacked, never more than
    ``limits.max_unpacked_bytes``; the caller removes it.

    Raises:
        BadArchive: naming what is wrong and the entry.
        UploadTooLarge: too many bytes unpacked (a bomb), or a ``meta.json`` over its limit.
        OSError: writing to ``dest`` failed (a full disk): not the upload's fault.
    """
    with _Sink(dest, limits) as sink:
        if fmt == TAR_GZ:
            _unpack_tar(path, sink, limits)
        elif fmt == ZIP:
            _unpack_zip(path, sink, limits)
        else:
            raise ValueError(f"not an archive format: {fmt!r}")
        return sink.result()


def entry_parts(name: str) -> list[str]:
    """The path components of an archive entry's name, ``.`` and empty ones dropped.

    Raises:
        BadArchive: an empty or absolute name, a ``..`` component (or one that NFKC turns into
            ``.``, ``..`` or a separator, such as fullwidth dots), ``\\``, NUL, control or
            undecodable characters.
    """
    if not name:
        raise BadArchive("an entry with an empty name")
    if "\\" in name or not name.isprintable():  # NUL, controls, bidi overrides, surrogates (undecodable)
        raise BadArchive(f"entry {shown(name)}: its name holds '\\', NUL, a control or an undecodable character")
    if name.startswith("/") or _DRIVE.match(name):
        raise BadArchive(f"entry {shown(name)}: an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    for p in parts:
        folded = unicodedata.normalize("NFKC", p)
        if p == ".." or folded in (".", "..") or "/" in folded or "\\" in folded:
            raise BadArchive(f"entry {shown(name)}: '..' or a look-alike of a path separator in its path")
    return parts


def _role(base: str) -> str | None:
    key = unicodedata.normalize("NFKC", base).casefold()
    if key == META_FILE:
        return "meta"
    if key.endswith((".pt", ".pt2")):
        return "model"
    if key.endswith(".npz"):
        return "sample"
    return None


class _Sink:
    """Checks entries as they come and writes the accepted ones under their canonical names."""

    def __init__(self, dest: Path, limits: StoreLimits) -> None:
        self.dest = dest
        self.limits = limits
        self.entries = 0
        self.unpacked = 0
        self.seen: dict[str, str] = {}  # folded name -> entry name
        self.found: dict[str, tuple[str, str, int]] = {}  # role -> (entry name, sha256, size)
        self.meta = bytearray()
        self.dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.dfd)

    def entry(self, name: str, is_dir: bool) -> str | None:
        """Count and check one entry: its role when it is a file to unpack, None for a directory."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise BadArchive(f"more than {self.limits.max_entries} entries ({_WHAT_HOLDS})")
        parts = entry_parts(name)
        if is_dir:
            return None
        if len(parts) != 1:
            raise BadArchive(f"entry {shown(name)}: not at the archive's top level ({_WHAT_HOLDS})")
        base = parts[0]
        if base.startswith("."):
            raise BadArchive(f"entry {shown(name)}: a hidden file (macOS tar adds '._' files: "
                             "set COPYFILE_DISABLE=1)")
        key = unicodedata.normalize("NFKC", base).casefold()
        if key in self.seen:
            raise BadArchive(f"entry {shown(name)}: a duplicate of entry {shown(self.seen[key])}")
        self.seen[key] = name
        role = _role(base)
        if role is None:
            raise BadArchive(f"entry {shown(name)}: unexpected ({_WHAT_HOLDS})")
        if role in self.found:
            raise BadArchive(f"entry {shown(name)}: a second {_ROLES[role]} beside {shown(self.found[role][0])}")
        self.found[role] = (name, "", 0)
        return role

    def copy(self, role: str, name: str, read: Callable[[int], bytes], compressed: int | None) -> None:
        """Unpack one file, ``CHUNK`` bytes at a time, each counted before it is written.

        Args:
            compressed: a zip member's compressed size (for the ratio check), else None.
        """
        h = hashlib.sha256()
        size = 0
        fd = -1
        if role != "meta":
            target = _MODEL_PART if role == "model" else SAMPLE_FILE
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self.dfd)
            os.fchmod(fd, 0o644)  # whatever the umask: a stored version is world-readable, like modelkit's
        try:
            while block := read(CHUNK):
                size += len(block)
                self.unpacked += len(block)
                if self.unpacked > self.limits.max_unpacked_bytes:
                    raise UploadTooLarge(f"the archive unpacks to more than {self.limits.max_unpacked_bytes} "
                                         f"bytes (at entry {shown(name)})")
                if compressed is not None and size > max(self.limits.ratio_free_bytes,
                                                         compressed * self.limits.max_ratio):
                    raise BadArchive(f"entry {shown(name)}: inflates to over {self.limits.max_ratio} times its "
                                     f"compressed size of {compressed} bytes")
                if role == "meta":
                    if size > self.limits.max_meta_bytes:
                        raise UploadTooLarge(f"entry {shown(name)}: meta.json over {self.limits.max_meta_bytes} "
                                             "bytes")
                    self.meta += block
                    continue
                h.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            if fd >= 0:
                os.close(fd)
        self.found[role] = (name, h.hexdigest(), size)

    def result(self) -> Unpacked:
        if "model" not in self.found:
            raise BadArchive(f"no model file (.pt or .pt2) at the archive's top level ({_WHAT_HOLDS})")
        name, sha256, size = self.found["model"]
        part = self.dest / _MODEL_PART
        with open(part, "rb") as f:
            magic = f.read(4)
        kind = None
        if magic == _ZIP_MAGIC:
            with open_zip(part, self.limits.max_zip_directory_bytes) as zf:
                kind = model_kind(zf, f"entry {shown(name)}")
        if kind is None:
            raise BadArchive(f"entry {shown(name)}: not a TorchScript (torch.jit.save) or torch.export "
                             "(torch.export.save) model file")
        os.rename(_MODEL_PART, kind, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        sample = self.found.get("sample")
        if sample is not None:
            with open(self.dest / SAMPLE_FILE, "rb") as f:
                if f.read(4) not in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
                    raise BadArchive(f"entry {shown(sample[0])}: not an .npz file (numpy.savez)")
        meta = None
        if "meta" in self.found:
            try:
                meta = json.loads(bytes(self.meta).decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                raise BadArchive(f"entry {shown(self.found['meta'][0])}: not valid UTF-8 JSON: {exc}") from None
            if not isinstance(meta, dict):
                raise BadArchive(f"entry {shown(self.found['meta'][0])}: must be a JSON object")
        return Unpacked(kind, sha256, size, meta, sample[1] if sample else None)


# -- tar.gz --------------------------------------------------------------------------------------------

_TAR_TYPES = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


def _unpack_tar(path: Path, sink: _Sink, limits: StoreLimits) -> None:
    last = "(none)"
    with open(path, "rb") as raw:
        src = _Inflated(raw, limits.max_unpacked_bytes + (limits.max_entries + 2) * (_MAX_READ + 2 * _BLOCK))
        try:
            with tarfile.open(fileobj=src, mode="r:") as tf:  # type: ignore[call-overload]  # duck-typed file
                for m in tf:
                    if m.isdir():
                        sink.entry(m.name, is_dir=True)
                        continue
                    if m.issparse() or not m.isreg():
                        kind = _TAR_TYPES.get(m.type, f"entry of type {m.type!r}")
                        raise BadArchive(f"entry {shown(m.name)}: a {kind}; only regular files and directories "
                                         "are taken")
                    role = sink.entry(m.name, is_dir=False)
                    assert role is not None
                    f = tf.extractfile(m)
                    assert f is not None  # a regular file
                    sink.copy(role, m.name, f.read, compressed=None)
                    last = m.name
        except (tarfile.TarError, EOFError) as exc:
            raise BadArchive(f"not a valid tar archive inside the gzip stream: {exc}") from None
        # tarfile ends quietly at a header it cannot read once past the first: only an end-of-archive
        # block (512 NULs, the last thing it read) says nothing was cut off or garbled.
        if src.last != bytes(_BLOCK):
            raise BadArchive(f"the tar archive is truncated or corrupt after entry {shown(last)}")
        # Read the gzip stream to its end, so zlib checks its CRC-32 and length: a damaged byte in
        # the model's data would otherwise go unnoticed. What follows the tar's end is padding to a
        # record (10 KiB by default, 1 MiB for `tar -b 2048`): more is not inflated.
        trailing = 0
        while block := src.read(CHUNK):
            trailing += len(block)
            if trailing > _MAX_TRAILING:
                raise BadArchive(f"more than {_MAX_TRAILING} bytes after the end of the tar archive")


class _Inflated:
    """A gzip file's inflated bytes as a forward-only file for :mod:`tarfile`, within a budget.

    Output per ``zlib`` call is bounded by the bytes asked for, each read by ``_MAX_READ``,
    and all of them by ``budget``. Concatenated gzip members are one stream (as ``gzip`` reads
    them). ``last`` is what the latest read returned.
    """

    def __init__(self, raw: BinaryIO, budget: int) -> None:
        self.raw = raw
        self.budget = budget
        self.pos = 0
        self.last = b""
        self._z = zlib.decompressobj(31)  # gzip wrapper, checked (CRC-32, size) by zlib
        self._input = b""
        self._ended = False

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET or pos < self.pos:
            raise BadArchive("a tar archive that needs to be read backwards")
        while self.pos < pos:  # tarfile skips padding this way
            if not self.read(min(pos - self.pos, _MAX_READ)):
                break
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > _MAX_READ:
            raise BadArchive(f"a tar header over {_MAX_READ} bytes (a pax or GNU long-name header)")
        out = bytearray()
        try:
            while len(out) < n and not self._ended:
                if self._z.eof:
                    rest = self._z.unused_data or self.raw.read(CHUNK)
                    if not rest:
                        self._ended = True
                        break
                    self._z = zlib.decompressobj(31)  # the next gzip member
                    self._input = rest
                    continue
                if not self._input:
                    self._input = self.raw.read(CHUNK)
                    if not self._input:
                        raise BadArchive("the gzip stream is truncated")
                out += self._z.decompress(self._input, n - len(out))
                self._input = self._z.unconsumed_tail
        except zlib.error as exc:
            raise BadArchive(f"not a valid gzip stream: {exc}") from None
        self.pos += len(out)
        if self.pos > self.budget:
            raise UploadTooLarge(f"the archive unpacks to more than {self.budget} bytes")
        self.last = bytes(out)
        return self.last


# -- zip -----------------------------------------------------------------------------------------------

_ZIP_TYPES = {stat.S_IFLNK: "symbolic link", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
              stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket"}


def _unpack_zip(path: Path, sink: _Sink, limits: StoreLimits) -> None:
    with open_zip(path, limits.max_zip_directory_bytes) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise BadArchive(f"{len(infos)} entries, more than {limits.max_entries} ({_WHAT_HOLDS})")
        todo: list[tuple[str, zipfile.ZipInfo]] = []
        for info in infos:  # every entry is checked before anything is written
            name = info.orig_filename  # zipfile cuts .filename at a NUL; the original keeps it
            ftype = stat.S_IFMT(info.external_attr >> 16)  # 0 when made on a system without modes
            if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = _ZIP_TYPES.get(ftype, f"entry of mode {oct(ftype)}")
                raise BadArchive(f"entry {shown(name)}: a {kind}; only regular files and directories are taken")
            is_dir = name.endswith("/") or ftype == stat.S_IFDIR
            if is_dir and info.file_size:
                raise BadArchive(f"entry {shown(name)}: a directory with {info.file_size} bytes of data")
            if info.flag_bits & 0x1:
                raise BadArchive(f"entry {shown(name)}: encrypted")
            if not is_dir and info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise BadArchive(f"entry {shown(name)}: compression method {info.compress_type}; "
                                 "only stored or deflated entries are taken")
            role = sink.entry(name, is_dir)
            if role is not None:
                todo.append((role, info))
        for role, info in todo:
            try:
                with zf.open(info) as f:
                    sink.copy(role, info.orig_filename, f.read, compressed=info.compress_size)
            except ZIP_ERRORS as exc:
                raise BadArchive(f"entry {shown(info.orig_filename)}: unreadable: {exc}") from None
