"""Builders for the store tests: real torch model files, push archives, hostile archives and bombs."""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from router.store import StoreLimits, Upload, receive

MIB = 1 << 20

META = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    "example": {"x": [[0.5, 0.25, 1.0]]},
}


class Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@dataclass(frozen=True)
class Models:
    """Real model files, as bytes: two TorchScript, one torch.export program, a torch.save checkpoint."""

    pt: bytes
    pt_other: bytes
    pt2: bytes
    checkpoint: bytes
    sample: bytes


@functools.cache  # one build per test run: its first torch.export takes seconds
def build_models() -> Models:
    torch.manual_seed(0)

    def jit(m: torch.nn.Module) -> bytes:
        buf = io.BytesIO()
        torch.jit.save(torch.jit.trace(m, torch.zeros(1, 3)), buf)
        return buf.getvalue()

    lin = torch.nn.Linear(3, 2)
    buf = io.BytesIO()
    torch.export.save(torch.export.export(lin, (torch.zeros(2, 3),)), buf)
    pt2 = buf.getvalue()
    ckpt = io.BytesIO()
    torch.save(lin.state_dict(), ckpt)
    sample = io.BytesIO()
    np.savez(sample, x=np.zeros((4, 3), dtype=np.float32))
    return Models(jit(lin), jit(torch.nn.Linear(3, 2)), pt2, ckpt.getvalue(), sample.getvalue())


def meta_bytes(**fields: object) -> bytes:
    return json.dumps({**META, **fields}).encode()


# -- archives ------------------------------------------------------------------------------------------

Entry = tuple[str, bytes] | tarfile.TarInfo


def tar_gz(entries: Iterable[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A .tar.gz of (name, data) files, or of TarInfo objects as they are (links, devices, ...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e, io.BytesIO(b"\0" * e.size) if e.isreg() else None)
            else:
                name, data = e
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_member(name: str, type_: bytes, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.size = size
    return info


def zip_bytes(entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def zip_info(name: str, mode: int = 0o100644, compression: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    info.compress_type = compression
    return info


def archive(models: Models, fmt: str = "tar.gz", meta: bytes | None = None, sample: bool = False,
            model_name: str = "model.pt", model: bytes | None = None) -> bytes:
    """A good push archive."""
    entries = [(model_name, models.pt if model is None else model)]
    entries.append(("meta.json", meta_bytes() if meta is None else meta))
    if sample:
        entries.append(("reference.npz", models.sample))
    return tar_gz(entries) if fmt == "tar.gz" else zip_bytes(entries)


# -- bombs ---------------------------------------------------------------------------------------------

def deflate_zeros(mib: int, head: bytes = b"") -> tuple[bytes, int, int]:
    """A raw deflate stream of ``head`` then ``mib`` MiB of zeros, built in milliseconds: one
    compressed MiB (closed by a full flush, so it stands alone) repeated. Returns (stream,
    crc32, uncompressed size)."""
    zeros = bytes(MIB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH) if head else b""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return first + block * mib + final, crc, len(head) + mib * MIB


def gzip_tar_bomb(mib: int) -> bytes:
    """A .tar.gz whose one member, model.pt, is ``mib`` MiB of zeros (1 GiB compresses to ~1 MiB)."""
    info = tarfile.TarInfo("model.pt")
    info.size = mib * MIB - 1024  # the rest of the zeros: the end-of-archive blocks
    stream, crc, size = deflate_zeros(mib, info.tobuf(format=tarfile.USTAR_FORMAT))
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + stream + struct.pack("<LL", crc, size & 0xFFFFFFFF)


def zip_bomb(mib: int, name: bytes = b"model.pt") -> bytes:
    """A .zip whose one member is ``mib`` MiB of zeros, deflated (~1000:1)."""
    data, crc, usize = deflate_zeros(mib)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), usize, len(name), 0) + name
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), usize, len(name),
                          0, 0, 0, 0, 0o100644 << 16, 0) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end


# -- pushing -------------------------------------------------------------------------------------------

def upload(store: Path, body: bytes, model: str = "m", version: str = "1",
           limits: StoreLimits | None = None) -> Upload:
    return receive(store, model, version, io.BytesIO(body), *(() if limits is None else (limits,)))


def snapshot(root: Path) -> set[str]:
    """Every path under ``root`` but the store's hidden staging and trash directories and their contents."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".staging", ".trash")]
        rel = Path(dirpath).relative_to(root)
        out.update(str(rel / n) for n in dirnames + filenames)
    return out
