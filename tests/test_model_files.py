"""Model files in a version directory: which one (model.pt / model.pt2), the checks before a load, and
a ``torch.export`` program served by the same loader as TorchScript. In process; the worker and daemon
sides are in test_integrity.py, the throwaway check in test_validate.py."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from modelkit.nets import MLP, deterministic
from router.proto import link
from router.proto.errors import ConfigError, IntegrityError, ModelLoadFailed
from router.proto.meta import (
    EXPORT_FILE,
    MODEL_FILE,
    PLATFORM_EXPORT,
    PLATFORM_TORCHSCRIPT,
    model_file,
    read_meta,
    sha256_file,
    verify,
)
from router.worker_link import WorkerLink
from runtime.model import load_version, refusal_of

# Real model files: each test scripts or exports a network (seconds of torch), so the module
# runs with the daemon layer.
pytestmark = pytest.mark.daemon

#: The example the helpers write: three rows, so an export sees a batch that is neither 0 nor 1.
EXAMPLE = [[0.5, -0.25, 1.0, 2.0], [0.0, 0.1, -0.2, 0.3], [1.5, -1.0, 0.25, 0.75]]


def small_net() -> torch.nn.Module:
    """mlp-small version 1's network (seed 11), eager: 4 -> 64 -> 3."""
    with deterministic(11):
        return MLP([4, 64, 3]).eval().requires_grad_(False)


def write_dir(d: Path, module: torch.nn.Module, fmt: str, name: str = "m", version: str = "1",
              example: list | None = None, outputs: list[dict] | None = None, **meta: object) -> Path:
    """A version directory holding ``module`` as ``model.pt2`` (``fmt="pt2"``: exported with a dynamic
    batch dimension) or ``model.pt`` (scripted), and its meta.json with the file's sha256 (``meta``
    overrides keys)."""
    d.mkdir(parents=True)
    example = EXAMPLE if example is None else example
    if fmt == "pt2":
        program = torch.export.export(module, (torch.tensor(example, dtype=torch.float32),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        path, platform = d / EXPORT_FILE, PLATFORM_EXPORT
        torch.export.save(program, str(path))
    else:
        path, platform = d / MODEL_FILE, PLATFORM_TORCHSCRIPT
        torch.jit.save(torch.jit.script(module), str(path))
    doc = {"name": name, "version": version, "platform": platform,
           "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
           "outputs": outputs or [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
           "example": {"x": example}, "sha256": sha256_file(path), "size": path.stat().st_size}
    doc.update(meta)
    (d / "meta.json").write_text(json.dumps(doc))
    return d


def flip_byte(path: Path, at: int = 100) -> None:
    """Change one byte of ``path`` in place (what a corrupted copy or a tampered file looks like)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version directory with mlp-small's network as a ``torch.export`` program."""
    return write_dir(tmp_path_factory.mktemp("pt2") / "m" / "1", small_net(), "pt2")


# -- model_file ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [MODEL_FILE, EXPORT_FILE])
def test_model_file_finds_the_one_model_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "sample.npz").write_bytes(b"a reference sample is not a model file")
    assert model_file(tmp_path) == tmp_path / name
    assert model_file(str(tmp_path)) == tmp_path / name


def test_model_file_refuses_none_or_both_naming_the_directory(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / MODEL_FILE).mkdir()  # a directory is not a model file
    with pytest.raises(ConfigError, match=f"no model file in {tmp_path} \\(model.pt or model.pt2\\)"):
        model_file(tmp_path)
    (tmp_path / MODEL_FILE).rmdir()
    (tmp_path / MODEL_FILE).write_bytes(b"x")
    (tmp_path / EXPORT_FILE).write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"two model files in {tmp_path}"):
        model_file(tmp_path)


# -- verify: what every load checks ---------------------------------------------------------------------------


def test_verify_names_both_values_of_each_disagreement(exported, tmp_path):
    meta = read_meta(exported)
    assert verify(exported, meta, "m", "1") == exported / EXPORT_FILE
    assert verify(exported, meta) == exported / EXPORT_FILE  # names not given: not checked
    with pytest.raises(IntegrityError, match="meta.json names version '1' but the directory is version '3'") as e:
        verify(exported, meta, "m", "3")
    assert e.value.reason == "identity"
    with pytest.raises(IntegrityError, match="meta.json names model 'm' but the directory is model 'fraud'"):
        verify(exported, meta, "fraud", "1")

    d = write_dir(tmp_path / "m" / "1", small_net(), "pt")
    good = read_meta(d)
    flip_byte(d / MODEL_FILE)
    with pytest.raises(IntegrityError) as e:
        verify(d, good, "m", "1")
    assert e.value.reason == "integrity"
    assert str(e.value) == f"model.pt sha256 {sha256_file(d / MODEL_FILE)} does not match meta.json's {good.sha256}"
    verify(d, good, "m", "1", integrity=False)  # a staging directory's check

    meta_doc = json.loads((d / "meta.json").read_text())
    del meta_doc["sha256"]
    (d / "meta.json").write_text(json.dumps(meta_doc))
    with pytest.raises(IntegrityError, match="meta.json records no sha256 for model.pt"):
        verify(d, read_meta(d))


def test_verify_refuses_a_platform_that_is_not_the_files(exported, tmp_path):
    doc = json.loads((exported / "meta.json").read_text())
    for name in (EXPORT_FILE, "meta.json"):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    doc["platform"] = PLATFORM_TORCHSCRIPT
    (tmp_path / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="platform 'pytorch_torchscript' but the model file is model.pt2"):
        verify(tmp_path, read_meta(tmp_path))


def test_refusals_carry_a_reason_the_router_counts(tmp_path):
    assert refusal_of(IntegrityError("x", "identity")) == ("identity", "x")
    assert refusal_of(ConfigError("bad meta")) == ("meta", "bad meta")
    assert refusal_of(ModelLoadFailed("cannot load", "load")) == ("load", "cannot load")
    assert refusal_of(RuntimeError("no CUDA")) == ("load", "RuntimeError: no CUDA")
    reason, message = refusal_of(RuntimeError("x" * 10_000))
    assert reason == "load" and len(message) < 4100 and message.endswith("characters)")
    assert {r for r, _ in map(refusal_of, (IntegrityError("", "integrity"), ConfigError(""), OSError()))} \
        <= set(link.REFUSALS)

    d = write_dir(tmp_path / "m" / "1", small_net(), "pt")
    (d / MODEL_FILE).write_bytes(b"not a TorchScript archive")
    doc = json.loads((d / "meta.json").read_text())
    doc["sha256"] = sha256_file(d / MODEL_FILE)
    (d / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadFailed, match="cannot load model.pt on cpu: RuntimeError") as e:
        load_version(d, "m", "1", "cpu")
    assert e.value.reason == "load"


# -- a torch.export program through the loader ----------------------------------------------------------------


@pytest.mark.parametrize("inference", [True, False], ids=["worker", "caller"])
def test_an_exported_program_loads_and_answers_like_the_eager_module(exported, inference, caplog):
    caplog.set_level(logging.INFO, "runtime.model")
    model = load_version(exported, "m", "1", "cpu", optimize=True)
    assert model.exported
    assert "torch.export program: freezing and optimize_for_inference are TorchScript passes" in caplog.text
    net = small_net()
    for rows in (1, 3, 7):  # the batch dimension is dynamic, 1 included
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        if inference:
            with torch.inference_mode():
                (y,) = model.forward([x])
        else:
            (y,) = model.forward([x])
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        assert y.dtype == np.float32 and y.shape == (rows, 3)
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_the_same_loader_still_serves_torchscript(tmp_path):
    d = write_dir(tmp_path / "m" / "1", small_net(), "pt")
    model = load_version(d, "m", "1", "cpu")
    assert not model.exported
    x = np.asarray(EXAMPLE, dtype=np.float32)
    with torch.no_grad():
        expected = small_net()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward([x])[0], expected, rtol=1e-5, atol=1e-6)


def test_an_exported_program_with_two_outputs(tmp_path):
    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.sum(dim=1, keepdim=True), x * 2.0

    d = write_dir(tmp_path / "m" / "1", Two(), "pt2", outputs=[{"name": "s", "datatype": "FP32", "shape": [-1, 1]},
                                                                 {"name": "d", "datatype": "FP32", "shape": [-1, 4]}])
    x = np.asarray(EXAMPLE, dtype=np.float32)
    s, doubled = load_version(d, "m", "1", "cpu").forward([x])
    np.testing.assert_allclose(s, x.sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(doubled, x * 2.0)


# -- the router's end: a refusal frame instead of the hello ---------------------------------------------------


def test_a_refusal_frame_fails_the_hello_with_its_reason_and_message():
    async def main() -> list[tuple[str, str]]:
        out = []
        for payload in (msgpack.packb({"reason": "integrity", "error": "model.pt sha256 aa does not match bb"}),
                        msgpack.packb({"reason": "made-up", "error": "x"}), b"\xc1 not msgpack"):
            w = WorkerLink("m/1#0", 1 << 20, lambda _: None)
            w.data_received(link.pack(0, link.STATUS_REFUSED, 0, payload))
            exc = w.hello.exception()
            assert isinstance(exc, ModelLoadFailed)
            out.append((exc.reason, str(exc)))
            w.connection_lost(None)  # the worker then exits: still one outcome
        return out

    first, unknown, unreadable = asyncio.run(main())
    assert first == ("integrity", "m/1#0: worker refused the model before it was ready: "
                                  "model.pt sha256 aa does not match bb")
    assert unknown[0] == "load"  # a label value is never what a process made up
    assert unreadable[0] == "load" and "unreadable refusal" in unreadable[1]


def test_a_worker_gone_before_its_hello_is_a_load_failure_that_exited():
    async def main() -> BaseException | None:
        w = WorkerLink("m/1#0", 1 << 20, lambda _: None)
        w.connection_lost(None)
        return w.hello.exception()

    exc = asyncio.run(main())
    assert isinstance(exc, ModelLoadFailed) and exc.reason == "exited"
    assert str(exc) == "m/1#0: worker exited before it was ready"
