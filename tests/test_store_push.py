"""Pushing versions into the store (router.store): meta.json, immutability, concurrent pushes, crashes,
the streaming upload, the catalog and removal. In-process, with real torch-saved models."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import io
import json
import os
import re
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from storekit import META, MIB, Models, archive, build_models, meta_bytes, snapshot, upload

from router.proto.errors import BadArchive, NotFound, UploadTooLarge, VersionExists
from router.store import (
    PushResult,
    Staged,
    StoreLimits,
    Upload,
    catalog,
    clean_staging,
    commit,
    list_models,
    list_versions,
    model_bytes,
    prepare,
    push,
    receive,
    remove,
    stored_version,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models() -> Models:
    return build_models()


@pytest.fixture
def tmp_store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def signature(staged: Staged) -> dict[str, Any]:
    """Stands in for the validation: gives a bare model file its signature."""
    return {} if "inputs" in staged.meta else dict(META)


def push_bytes(tmp_store: Path, body: bytes, version: str = "1", **kw: Any) -> PushResult:
    return push(upload(tmp_store, body, version=version), **kw)


def staging_entries(tmp_store: Path) -> list[Path]:
    return list((tmp_store / ".staging").iterdir())


# -- meta.json -------------------------------------------------------------------------------------------

def test_meta_json_is_completed_from_the_push(tmp_store: Path, models: Models) -> None:
    r = push_bytes(tmp_store, archive(models, meta=meta_bytes(description="May data")), version="7")
    on_disk = json.loads((r.path / "meta.json").read_text())
    assert on_disk == r.meta
    assert on_disk["name"] == "m" and on_disk["version"] == "7" and on_disk["description"] == "May data"
    assert on_disk["sha256"] == hashlib.sha256(models.pt).hexdigest() and on_disk["size"] == len(models.pt)
    assert on_disk["platform"] == "pytorch_torchscript"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", on_disk["created"])
    assert stat.S_IMODE(r.path.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in r.path.iterdir()} == {0o644}


def test_meta_json_may_repeat_what_the_push_says(tmp_store: Path, models: Models) -> None:
    meta = meta_bytes(name="m", version=3, sha256=hashlib.sha256(models.pt).hexdigest().upper(),
                      size=len(models.pt), platform="pytorch_torchscript", created="1999-01-01T00:00:00Z")
    r = push_bytes(tmp_store, archive(models, meta=meta), version="3")
    assert r.meta["version"] == "3" and r.meta["created"] != "1999-01-01T00:00:00Z"  # created is the store's


@pytest.mark.parametrize("field, value", [("name", "other"), ("version", "2"), ("version", True),
                                          ("sha256", "0" * 64), ("size", 1), ("platform", "pytorch_export")])
def test_meta_json_that_disagrees_with_the_push_is_refused(tmp_store: Path, models: Models, field: str,
                                                           value: object) -> None:
    with pytest.raises(BadArchive, match=f"meta.json gives {field}"):
        push_bytes(tmp_store, archive(models, meta=meta_bytes(**{field: value})))
    assert list_models(tmp_store) == [] and staging_entries(tmp_store) == []


def test_a_bare_model_needs_a_signature(tmp_store: Path, models: Models) -> None:
    with pytest.raises(BadArchive, match="inputs: .*the push has no meta.json"):
        push_bytes(tmp_store, models.pt)
    assert push_bytes(tmp_store, models.pt, validate=signature).created


def test_the_validation_sees_a_complete_candidate_and_may_only_add(tmp_store: Path, models: Models) -> None:
    seen: dict[str, Any] = {}

    def validate(staged: Staged) -> dict[str, Any]:
        seen["files"] = sorted(p.name for p in staged.path.iterdir())
        seen["meta"] = json.loads((staged.path / "meta.json").read_text())
        return {"validated": {"max_abs_diff": 0.0}}

    r = push_bytes(tmp_store, archive(models), validate=validate)
    assert seen["files"] == ["meta.json", "model.pt"] and seen["meta"]["sha256"] == r.meta["sha256"]
    assert r.meta["validated"] == {"max_abs_diff": 0.0}
    for bad in ({"sha256": "0" * 64}, {"example": {"x": [[1.0, 2.0, 3.0]]}}):
        with pytest.raises(ValueError, match="not change"):
            push_bytes(tmp_store, archive(models), version="2", validate=lambda s, bad=bad: bad)
    with pytest.raises(RuntimeError, match="worker says no"):
        push_bytes(tmp_store, archive(models), version="2", validate=lambda s: (_ for _ in ()).throw(
            RuntimeError("worker says no")))
    assert [v.version for v in list_versions(tmp_store, "m")] == ["1"] and staging_entries(tmp_store) == []


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "a\\b", "a\0b", "x" * 256, "\udcff"])
def test_invalid_names_are_refused_before_anything_is_written(tmp_path: Path, models: Models, name: str) -> None:
    for model, version in ((name, "1"), ("m", name)):
        with pytest.raises(BadArchive, match="invalid (model|version) name"):
            receive(tmp_path / "store", model, version, io.BytesIO(models.pt))
        with pytest.raises(NotFound):
            remove(tmp_path / "store", model, version)
    assert not (tmp_path / "store").exists()


# -- immutable, idempotent -------------------------------------------------------------------------------

def test_the_same_push_again_is_the_same_version(tmp_store: Path, models: Models) -> None:
    body = archive(models, sample=True)
    first = push_bytes(tmp_store, body)
    again = push_bytes(tmp_store, body, validate=lambda s: pytest.fail("validated again"))
    assert first.created and not again.created and again.meta == first.meta
    # The same contents in another container (zip, other names, other JSON spacing) are the same version.
    rezipped = archive(models, "zip", sample=True, model_name="net.pt",
                       meta=json.dumps(META, indent=4).encode())
    assert push_bytes(tmp_store, rezipped).created is False
    assert staging_entries(tmp_store) == []


def test_a_bare_model_again_is_the_same_version(tmp_store: Path, models: Models) -> None:
    push_bytes(tmp_store, archive(models))
    assert push_bytes(tmp_store, models.pt).created is False  # it says nothing the stored version contradicts


@pytest.mark.parametrize("change, differs", [
    ({"model": "pt_other"}, "model file"),
    ({"meta": {"description": "another"}}, "meta.json 'description'"),
    ({"sample": True}, "sample.npz"),
])
def test_other_contents_under_a_stored_version_are_a_conflict(tmp_store: Path, models: Models, change: dict,
                                                              differs: str) -> None:
    first = push_bytes(tmp_store, archive(models))
    body = archive(models, model=getattr(models, change.get("model", "pt")),
                   meta=meta_bytes(**change.get("meta", {})), sample=change.get("sample", False))
    with pytest.raises(VersionExists, match=f"already exists with another {differs}") as info:
        push_bytes(tmp_store, body, validate=lambda s: pytest.fail("validated a conflicting push"))
    assert info.value.status == 409
    assert stored_version(tmp_store, "m", "1").meta == first.meta and staging_entries(tmp_store) == []


@pytest.mark.parametrize("same", [True, False], ids=["same-bytes", "other-bytes"])
def test_concurrent_pushes_of_one_version_exactly_one_wins(tmp_store: Path, models: Models, same: bool) -> None:
    n = 8
    bodies = [archive(models, meta=meta_bytes(description="one" if same else f"push {i}")) for i in range(n)]
    staged = [prepare(upload(tmp_store, b)) for b in bodies]  # every one sees no version yet
    assert not any(s.same for s in staged)
    barrier = threading.Barrier(n)
    results: list[PushResult | Exception] = [RuntimeError("not run")] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = commit(staged[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    created = [i for i, r in enumerate(results) if isinstance(r, PushResult) and r.created]
    assert len(created) == 1
    others = [r for i, r in enumerate(results) if i not in created]
    if same:
        assert all(isinstance(r, PushResult) and not r.created for r in others)
    else:
        assert all(isinstance(r, VersionExists) for r in others)
    stored = stored_version(tmp_store, "m", "1").meta
    assert stored is not None and stored["description"] == ("one" if same else f"push {created[0]}")
    assert staging_entries(tmp_store) == []


# -- crashes ---------------------------------------------------------------------------------------------

def test_a_crash_mid_push_leaves_no_version_and_clean_staging_removes_it(tmp_store: Path, models: Models) -> None:
    before = snapshot(tmp_store.parent)
    half = Upload.open(tmp_store, "m", "1")
    half.write_sync(archive(models)[:100])  # died while receiving
    staged = prepare(upload(tmp_store, archive(models)))  # died between validation and the rename
    assert staged.path.is_dir() and len(staging_entries(tmp_store)) == 2
    assert list_models(tmp_store) == [] and snapshot(tmp_store.parent) == before | {"store"}
    with pytest.raises(NotFound):
        stored_version(tmp_store, "m", "1")
    assert clean_staging(tmp_store) == 2
    half.discard()  # (closes the descriptor a dead process would have lost)
    assert staging_entries(tmp_store) == []
    assert push_bytes(tmp_store, archive(models)).created


def test_a_failed_rename_stores_nothing(tmp_store: Path, models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    staged = prepare(upload(tmp_store, archive(models)))

    def rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space"):
        commit(staged)
    monkeypatch.undo()
    assert list_versions(tmp_store, "m") == [] and staging_entries(tmp_store) == []


# -- the streaming upload --------------------------------------------------------------------------------

def test_an_upload_is_written_and_hashed_in_a_thread(tmp_store: Path) -> None:
    body = os.urandom(3 * MIB + 123)
    writers: set[int] = set()
    errors: list[dict[str, Any]] = []

    async def main() -> Upload:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        up = await asyncio.to_thread(Upload.open, tmp_store, "m", "1")
        write_block = up._write_block

        def spy(block: bytes) -> None:
            writers.add(threading.get_ident())
            write_block(block)

        up._write_block = spy  # type: ignore[method-assign]
        for i in range(0, len(body), 65536):
            await up.write(body[i:i + 65536])
            assert len(up._buf) < MIB + 65536  # at most one block and one chunk held
        await up.finish()
        return up

    up = asyncio.run(main())
    assert threading.get_ident() not in writers and writers
    assert up.size == len(body) and up.sha256 == hashlib.sha256(body).hexdigest()
    assert up.path.read_bytes() == body and errors == []
    up.discard()
    assert staging_entries(tmp_store) == []


def test_the_upload_cap_stops_the_stream(tmp_store: Path) -> None:
    limits = StoreLimits(max_upload_bytes=MIB)
    taken = 0

    async def main() -> None:
        nonlocal taken
        up = await asyncio.to_thread(Upload.open, tmp_store, "m", "1", limits)
        try:
            for _ in range(64):
                await up.write(bytes(65536))
                taken += 1
        finally:
            await asyncio.to_thread(up.discard)

    with pytest.raises(UploadTooLarge, match=f"larger than {MIB} bytes"):
        asyncio.run(main())
    assert taken == 16 and staging_entries(tmp_store) == []


# -- the catalog and removal -----------------------------------------------------------------------------

def test_the_catalog_lists_versions_with_metadata_and_bytes(tmp_store: Path, models: Models) -> None:
    for v in ("10", "2", "v1"):
        push_bytes(tmp_store, archive(models, sample=v == "2"), version=v)
    push_bytes(tmp_store, models.pt2, version="1", validate=signature)
    listed = list_versions(tmp_store, "m")
    assert [v.version for v in listed] == ["1", "2", "10", "v1"]
    assert listed[0].meta is not None and listed[0].meta["platform"] == "pytorch_export"
    for v in listed:
        assert v.bytes == sum(p.stat().st_size for p in v.path.iterdir()) and v.problem is None
    assert listed[1].bytes > listed[2].bytes  # "2" holds a sample too
    assert model_bytes(tmp_store, "m") == sum(v.bytes for v in listed)
    assert list_models(tmp_store) == ["m"]
    (listed[3].path / "meta.json").write_text("{")  # damaged by hand: still listed, with its bytes
    assert list_versions(tmp_store, "m")[3].problem is not None
    with pytest.raises(NotFound):
        list_versions(tmp_store, "nope")
    with pytest.raises(NotFound):
        stored_version(tmp_store, "m", "3")


def test_remove_is_atomic(tmp_store: Path, models: Models, monkeypatch: pytest.MonkeyPatch) -> None:
    push_bytes(tmp_store, archive(models), version="1")
    push_bytes(tmp_store, archive(models, sample=True), version="2")
    total = model_bytes(tmp_store, "m")
    deleting: list[Path] = []

    def remove_tree(path: Path) -> bool:  # a deletion that dies half-way
        assert not (tmp_store / "m" / "2").exists()  # the version was gone, whole, before deletion began
        deleting.append(path)
        (path / "model.pt").unlink()
        return False

    monkeypatch.setattr(catalog, "remove_tree", remove_tree)
    removed = remove(tmp_store, "m", "2")
    assert removed.bytes == total - model_bytes(tmp_store, "m") and removed.meta is not None
    assert [v.version for v in list_versions(tmp_store, "m")] == ["1"]
    assert deleting[0].parent == tmp_store / ".trash" and deleting[0].exists()
    monkeypatch.undo()
    assert clean_staging(tmp_store) == 1 and not deleting[0].exists()
    with pytest.raises(NotFound):
        remove(tmp_store, "m", "2")
    with pytest.raises(NotFound):
        remove(tmp_store.parent / "no-store-here", "m", "1")
    remove(tmp_store, "m", "1")
    assert list_versions(tmp_store, "m") == [] and list(Path(tmp_store, ".trash").iterdir()) == []
    assert push_bytes(tmp_store, archive(models, model=models.pt_other), version="1").created  # a name is reusable


# -- the router's process ---------------------------------------------------------------------------------

def test_the_store_imports_only_the_standard_library_and_the_kernel() -> None:
    allowed = set(sys.stdlib_module_names) | {"router"}
    for path in sorted((ROOT / "router" / "store").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("router."):
                    assert name.startswith("router.proto"), f"{path.name} imports {name}: only the kernel"
