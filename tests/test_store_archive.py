"""Unpacking pushed uploads (router.store.archive): what is taken, and every way an archive could
write outside its staging directory, hold what is not a regular file, or cost more than the limits.

Real archives (tarfile, zipfile, hand-made bombs) and real torch-saved models; in-process.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from storekit import (
    META,
    MIB,
    Models,
    archive,
    build_models,
    gzip_tar_bomb,
    meta_bytes,
    snapshot,
    tar_gz,
    tar_member,
    upload,
    zip_bomb,
    zip_bytes,
    zip_info,
)

from router.proto.errors import BadArchive, UploadTooLarge
from router.store import StoreLimits, list_models, push
from router.store.archive import TAR_GZ, ZIP, entry_parts, sniff, unpack
from router.store.layout import CHUNK, tree_bytes


@pytest.fixture(scope="module")
def models() -> Models:
    return build_models()


def _signature(staged: object) -> dict[str, object]:
    """A stand-in for the validation: gives a bare model file its signature."""
    return dict(META)


def push_body(tmp_path: Path, body: bytes, limits: StoreLimits | None = None, validate: object = None):
    store = tmp_path / "store"
    return push(upload(store, body, limits=limits), validate)  # type: ignore[arg-type]


def refused(tmp_path: Path, body: bytes, match: str, cls: type[Exception] = BadArchive,
            limits: StoreLimits | None = None) -> None:
    """The push is refused with ``cls`` and leaves nothing anywhere: no version, nothing outside
    the store, an empty staging directory."""
    (tmp_path / "store").mkdir(parents=True, exist_ok=True)
    before = snapshot(tmp_path)
    with pytest.raises(cls, match=match) as info:
        push_body(tmp_path, body, limits)
    assert type(info.value) is cls
    assert snapshot(tmp_path) == before
    assert list((tmp_path / "store" / ".staging").iterdir()) == []
    assert list_models(tmp_path / "store") == []


# -- what is taken ---------------------------------------------------------------------------------------

def stored_files(result) -> list[str]:
    return sorted(p.name for p in result.path.iterdir())


def test_a_tar_gz_is_stored_under_canonical_names(tmp_path: Path, models: Models) -> None:
    r = push_body(tmp_path, archive(models, sample=True, model_name="fraud-v3.pt"))
    assert r.created and stored_files(r) == ["meta.json", "model.pt", "sample.npz"]
    assert (r.path / "model.pt").read_bytes() == models.pt
    assert (r.path / "sample.npz").read_bytes() == models.sample
    assert r.meta["platform"] == "pytorch_torchscript"


def test_a_zip_with_an_export_program_is_stored_as_model_pt2(tmp_path: Path, models: Models) -> None:
    r = push_body(tmp_path, archive(models, "zip", model_name="ranker.PT2", model=models.pt2, sample=True))
    assert stored_files(r) == ["meta.json", "model.pt2", "sample.npz"]
    assert r.meta["platform"] == "pytorch_export"


def test_the_model_file_is_named_by_its_contents_not_its_name(tmp_path: Path, models: Models) -> None:
    r = push_body(tmp_path, archive(models, model_name="model.pt", model=models.pt2))
    assert stored_files(r) == ["meta.json", "model.pt2"]


def test_entries_under_dot_and_directory_entries_are_taken(tmp_path: Path, models: Models) -> None:
    # `tar -C dir -czf x.tgz .` writes "./" and "./model.pt"; meta.json padded to exactly two tar blocks.
    meta = meta_bytes()
    meta += b" " * (1024 - len(meta))
    body = tar_gz([tar_member(".", tarfile.DIRTYPE), ("./model.pt", models.pt), ("./meta.json", meta)])
    assert stored_files(push_body(tmp_path, body)) == ["meta.json", "model.pt"]


@pytest.mark.parametrize("which", ["pt", "pt2"])
def test_a_bare_model_file_is_stored_under_its_canonical_name(tmp_path: Path, models: Models, which: str) -> None:
    body = models.pt if which == "pt" else models.pt2
    r = push_body(tmp_path, body, validate=_signature)
    assert stored_files(r) == ["meta.json", f"model.{which}"]
    assert (r.path / f"model.{which}").read_bytes() == body


def test_sniff_reads_bytes_not_names(tmp_path: Path, models: Models) -> None:
    limits = StoreLimits()
    cases = {TAR_GZ: archive(models), ZIP: archive(models, "zip"), "model.pt": models.pt, "model.pt2": models.pt2}
    for want, body in cases.items():
        path = tmp_path / "upload.bin"
        path.write_bytes(body)
        assert sniff(path, limits) == want


# -- not an archive, or a damaged one --------------------------------------------------------------------

def test_a_torch_save_checkpoint_is_refused_by_name(tmp_path: Path, models: Models) -> None:
    refused(tmp_path, models.checkpoint, "torch.save checkpoint")
    refused(tmp_path, archive(models, model=models.checkpoint), "torch.save checkpoint")


@pytest.mark.parametrize("body, match", [
    (b"", "empty"),
    (b"just some text, no archive", "not a .tar.gz or .zip"),
    (b"PK\x05\x06" + bytes(18), "not a .tar.gz or .zip"),  # an empty zip
    (b"\x1f\x8b\x08\x00garbage", "gzip"),
    (gzip.compress(b"not a tar archive " * 100), "not a valid tar archive"),
])
def test_non_archives_are_refused(tmp_path: Path, body: bytes, match: str) -> None:
    refused(tmp_path, body, match)


def test_a_plain_tar_is_refused(tmp_path: Path, models: Models) -> None:
    refused(tmp_path, gzip.decompress(archive(models)), "not a .tar.gz or .zip")


def test_damaged_archives_are_refused(tmp_path: Path, models: Models) -> None:
    tgz, zp = archive(models), archive(models, "zip")
    refused(tmp_path, tgz[: len(tgz) // 2], "gzip stream is truncated")
    refused(tmp_path, zp[: len(zp) - 30], "not a valid zip")
    flipped = bytearray(tgz)
    flipped[len(flipped) // 2] ^= 0xFF
    refused(tmp_path, bytes(flipped), "gzip|tar")
    stored = bytearray(zip_bytes([("model.pt", models.pt), ("meta.json", meta_bytes())], zipfile.ZIP_STORED))
    stored[100] ^= 0xFF  # inside model.pt's data: its CRC no longer matches
    refused(tmp_path, bytes(stored), "unreadable")


def test_a_tar_cut_short_inside_a_whole_gzip_is_refused(tmp_path: Path, models: Models) -> None:
    tar = gzip.decompress(archive(models))
    meta_header = tar.find(b"meta.json") // 512 * 512
    refused(tmp_path, gzip.compress(tar[:meta_header]), "truncated or corrupt after entry 'model.pt'")
    refused(tmp_path, gzip.compress(tar[:meta_header + 300]), "truncated or corrupt")  # half a header
    refused(tmp_path, gzip.compress(tar[:meta_header + 512 + 10]), "not a valid tar")  # half meta.json's data


def test_what_follows_the_tar_is_checked(tmp_path: Path, models: Models) -> None:
    tar = gzip.decompress(archive(models))
    refused(tmp_path, gzip.compress(tar + bytes(3 * MIB)), "after the end of the tar archive")
    refused(tmp_path, archive(models) + b"junk after the gzip stream", "not a valid gzip stream")
    assert push_body(tmp_path, gzip.compress(tar + bytes(MIB))).created  # `tar -b 2048` pads to 1 MiB


@pytest.mark.parametrize("entries, match", [
    ([("model.pt", b"not a zip at all")], "not a TorchScript"),
    ([("model.pt", zip_bytes([("a.txt", b"x")]))], "not a TorchScript"),
    ([("model.pt", None), ("meta.json", b"{not json")], "not valid UTF-8 JSON"),
    ([("model.pt", None), ("meta.json", b"\xff\xfe")], "not valid UTF-8 JSON"),
    ([("model.pt", None), ("meta.json", b"[1, 2]")], "must be a JSON object"),
    ([("model.pt", None), ("meta.json", b"[" * 100_000)], "not valid UTF-8 JSON"),
    ([("model.pt", None), ("x.npz", b"not an npz")], "not an .npz"),
    ([("model.pt", None), ("meta.json", meta_bytes(inputs=[]))], "inputs: must be a non-empty list"),
])
def test_bad_contents_are_refused(tmp_path: Path, models: Models, entries: list, match: str) -> None:
    entries = [(n, models.pt if d is None else d) for n, d in entries]
    refused(tmp_path, tar_gz(entries), match)
    refused(tmp_path, zip_bytes(entries), match)


# -- what an archive must hold ---------------------------------------------------------------------------

@pytest.mark.parametrize("names, match", [
    (["meta.json"], "no model file"),
    (["a.pt", "b.pt2"], "a second model file"),
    (["model.pt", "x.npz", "y.npz"], "a second reference sample"),
    (["model.pt", "README.md"], "unexpected"),
    (["model.pt", "._model.pt"], "hidden file"),
    (["dir/model.pt"], "not at the archive's top level"),
    (["model.pt", "__MACOSX/._model.pt"], "not at the archive's top level"),
    (["model.pt", "model.pt"], "duplicate"),
    (["model.pt", "meta.json", "META.JSON"], "duplicate"),
    (["model.pt", "meta.json", "ｍｅｔａ.json"], "duplicate"),  # fullwidth letters: NFKC folds them
])
def test_archive_layout_rules(tmp_path: Path, models: Models, names: list[str], match: str) -> None:
    data = {".pt": models.pt, "pt2": models.pt2, "npz": models.sample, "son": meta_bytes(), ".md": b"hi"}
    entries = [(n, data.get(n.lower()[-3:], b"x")) for n in names]
    refused(tmp_path, tar_gz(entries), match)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the duplicate it writes
        refused(tmp_path, zip_bytes(entries), match)


def test_too_many_entries(tmp_path: Path, models: Models) -> None:
    limits = StoreLimits(max_entries=4)
    dirs = [tar_member(f"d{i}", tarfile.DIRTYPE) for i in range(4)]
    refused(tmp_path, tar_gz([*dirs, ("model.pt", models.pt)]), "more than 4 entries", limits=limits)
    refused(tmp_path, zip_bytes([*((f"d{i}/", b"") for i in range(4)), ("model.pt", models.pt)]),
            "5 entries, more than 4", limits=limits)


# -- attacks: names --------------------------------------------------------------------------------------

ESCAPES = ["/etc/x.pt", "../x.pt", "a/../../x.pt", "./../x.pt", "a/../model.pt", "..\\x.pt", "C:x.pt",
           "．．/x.pt", "a\nb.pt", "model.pt\x00/../../x", "\u202emodel.pt"]


@pytest.mark.parametrize("name", [n for n in ESCAPES if "\x00" not in n])  # a tar header ends a name at NUL
def test_names_that_could_escape_are_refused_in_tar(tmp_path: Path, models: Models, name: str) -> None:
    refused(tmp_path, tar_gz([(name, models.pt), ("meta.json", meta_bytes())]), "entry")


@pytest.mark.parametrize("name", ESCAPES)
def test_names_that_could_escape_are_refused_in_zip(tmp_path: Path, models: Models, name: str) -> None:
    info = zip_info("placeholder")
    info.filename = name  # ZipInfo() cuts at NUL; the bytes written keep the whole name
    refused(tmp_path, zip_bytes([(info, models.pt), ("meta.json", meta_bytes())]), "entry")


def test_an_undecodable_name_is_refused(tmp_path: Path, models: Models) -> None:
    body = tar_gz([("\udcffmodel.pt", models.pt)], fmt=tarfile.GNU_FORMAT)  # raw byte 0xff in the header
    refused(tmp_path, body, "undecodable")


def test_entry_parts_normalises_only_harmless_forms() -> None:
    assert entry_parts("./a//b/./c") == ["a", "b", "c"]
    assert entry_parts("model.pt") == ["model.pt"]
    for bad in ESCAPES[:8] + ["", "a/‥/b"]:
        with pytest.raises(BadArchive):
            entry_parts(bad)


# -- attacks: what is not a regular file -----------------------------------------------------------------

@pytest.mark.parametrize("member, match", [
    (tar_member("model.pt", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    (tar_member("model.pt", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    (tar_member("link", tarfile.SYMTYPE, "/tmp"), "symbolic link"),  # then link/model.pt
    (tar_member("model.pt", tarfile.CHRTYPE), "character device"),
    (tar_member("model.pt", tarfile.BLKTYPE), "block device"),
    (tar_member("model.pt", tarfile.FIFOTYPE), "FIFO"),
    (tar_member("model.pt", b"V"), "entry of type b'V'"),  # a GNU volume header
    (tar_member("model.pt", tarfile.CONTTYPE, size=0), "not a TorchScript"),  # contiguous: a regular file
])
def test_tar_members_that_are_not_regular_files_are_refused(tmp_path: Path, models: Models,
                                                            member: tarfile.TarInfo, match: str) -> None:
    refused(tmp_path, tar_gz([member, ("link/model.pt", models.pt)] if member.name == "link" else [member]), match)


@pytest.mark.parametrize("mode, match", [(0o120777, "symbolic link"), (0o010644, "FIFO"),
                                         (0o020644, "character device"), (0o140644, "socket")])
def test_zip_members_that_are_not_regular_files_are_refused(tmp_path: Path, models: Models, mode: int,
                                                            match: str) -> None:
    refused(tmp_path, zip_bytes([(zip_info("model.pt", mode), b"/etc/passwd"), ("meta.json", meta_bytes())]), match)


def test_zip_methods_without_an_output_bound_are_refused(tmp_path: Path, models: Models) -> None:
    body = zip_bytes([(zip_info("model.pt", compression=zipfile.ZIP_BZIP2), models.pt)])
    refused(tmp_path, body, "compression method 12")


def test_a_zip_directory_entry_with_data_is_refused(tmp_path: Path, models: Models) -> None:
    refused(tmp_path, zip_bytes([("model.pt", models.pt), ("d/", b"data")]), "directory with 4 bytes")


# -- attacks: size ---------------------------------------------------------------------------------------

CAP = 8 * MIB


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    body = gzip_tar_bomb(1024)  # 1 GiB of zeros
    assert len(body) < 1.1 * MIB
    return body


def test_a_gzip_bomb_is_stopped_at_the_cap_while_unpacking(tmp_path: Path, gzip_bomb: bytes) -> None:
    src, dest = tmp_path / "upload", tmp_path / "dest"
    src.write_bytes(gzip_bomb)
    dest.mkdir()
    with pytest.raises(UploadTooLarge, match=f"more than {CAP} bytes"):
        unpack(src, TAR_GZ, dest, StoreLimits(max_unpacked_bytes=CAP))
    assert tree_bytes(dest) <= CAP  # counted before each CHUNK is written: never past the cap
    assert tree_bytes(dest) > CAP - CHUNK
    refused(tmp_path / "push", gzip_bomb, "more than", UploadTooLarge, StoreLimits(max_unpacked_bytes=CAP))


@pytest.fixture(scope="module")
def zip_of_zeros() -> bytes:
    body = zip_bomb(1024)
    assert len(body) < 1.1 * MIB
    return body


def test_a_zip_bomb_is_stopped_by_its_compression_ratio(tmp_path: Path, zip_of_zeros: bytes) -> None:
    src, dest = tmp_path / "upload", tmp_path / "dest"
    src.write_bytes(zip_of_zeros)
    dest.mkdir()
    limits = StoreLimits(max_ratio=4, max_unpacked_bytes=1 << 40)
    with pytest.raises(BadArchive, match="inflates to over 4 times"):
        unpack(src, ZIP, dest, limits)
    assert tree_bytes(dest) <= 4 * len(zip_of_zeros)


def test_a_zip_bomb_is_stopped_at_the_cap(tmp_path: Path, zip_of_zeros: bytes) -> None:
    src, dest = tmp_path / "upload", tmp_path / "dest"
    src.write_bytes(zip_of_zeros)
    dest.mkdir()
    with pytest.raises(UploadTooLarge):
        unpack(src, ZIP, dest, StoreLimits(max_ratio=10**6, max_unpacked_bytes=CAP))
    assert tree_bytes(dest) <= CAP
    refused(tmp_path / "push", zip_of_zeros, "more than", UploadTooLarge, StoreLimits(max_unpacked_bytes=CAP))


def test_a_zip_directory_too_large_to_parse_is_refused(tmp_path: Path, models: Models) -> None:
    body = zip_bytes([("model.pt", models.pt), *((f"d{i}/", b"") for i in range(100))])
    refused(tmp_path, body, "zip directory of 101 entries", limits=StoreLimits(max_zip_directory_bytes=2048))


def test_a_huge_pax_header_is_refused_before_it_is_read(tmp_path: Path, models: Models) -> None:
    info = tarfile.TarInfo("model.pt")
    info.size = len(models.pt)
    info.pax_headers = {"comment": "x" * (3 * MIB)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(models.pt))
    refused(tmp_path, buf.getvalue(), "tar header over")


def test_a_tar_member_larger_than_its_data_is_refused(tmp_path: Path, models: Models) -> None:
    tar = bytearray(gzip.decompress(archive(models)))
    tar[124:136] = b"%011o\0" % (len(models.pt) * 1000)  # model.pt's size field claims more than follows
    tar[148:156] = b"        "
    tar[148:156] = b"%06o\0 " % sum(tar[:512])
    refused(tmp_path, gzip.compress(bytes(tar)), "not a valid tar")


def test_a_large_meta_json_is_refused(tmp_path: Path, models: Models) -> None:
    meta = json.dumps({**META, "description": "x" * 5000}).encode()
    refused(tmp_path, archive(models, meta=meta), "meta.json over 4096 bytes", UploadTooLarge,
            StoreLimits(max_meta_bytes=4096))


def test_the_upload_cap_holds_while_streaming(tmp_path: Path, models: Models) -> None:
    (tmp_path / "store").mkdir()
    with pytest.raises(UploadTooLarge, match="larger than 1000 bytes"):
        upload(tmp_path / "store", models.pt, limits=StoreLimits(max_upload_bytes=1000))
    assert list((tmp_path / "store" / ".staging").iterdir()) == []
