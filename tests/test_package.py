"""The packaging API (modelkit.package) and ``router package``: a model and its meta.json in one archive.

Every archive is read back as the store will: its members, ``meta.json`` through
``parse_meta``, the model file loaded with ``torch.jit.load`` / ``torch.export.load`` and run
on the meta's example, which must give the module's own output.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelkit.package import package, package_file
from router.proto.errors import ConfigError
from router.proto.meta import DATATYPES, ModelMeta, parse_meta
from runtime.codecs import example_request
from runtime.model import Model

# Real model files: each test scripts or exports a network (seconds of torch), so the module
# runs with the daemon layer.
pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent
ROWS = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)


class Linear(nn.Module):
    """One input, one output: features [-1, 4] -> [-1, 3]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)  # eval mode must switch it off, or the example would not reproduce

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(features)).softmax(-1)


class TwoInTwoOut(nn.Module):
    """Two inputs (FP32 and INT64), two outputs as a tuple."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, features: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(features) + counts.sum(1, keepdim=True).float(), counts * 2


class DictOut(nn.Module):
    """A dict of outputs: the keys name them."""

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"total": features.sum(1), "positive": features > 0}


class AcrossRows(nn.Module):
    """Each row's output depends on the other rows: the router must not batch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(0)


class FixedBatch(nn.Module):
    """Works on batches of exactly 5 rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(5, 2, 2).sum(-1)


def members(archive: Path) -> dict[str, bytes]:
    """The archive's files by name (tar.gz or zip)."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            return {n: z.read(n) for n in z.namelist()}
    with tarfile.open(archive) as t:
        out = {}
        for m in t.getmembers():
            assert m.isfile(), m.name
            f = t.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def opened(archive: Path, tmp_path: Path) -> tuple[ModelMeta, dict[str, Any], Any, Path]:
    """meta (parsed), meta (raw), the loaded model's callable and its file, from an archive."""
    files = members(archive)
    raw = json.loads(files["meta.json"])
    meta = parse_meta(raw)
    name = "model.pt2" if meta.platform == "pytorch_export" else "model.pt"
    assert set(files) - {"sample.npz"} == {"meta.json", name}
    path = tmp_path / f"loaded-{archive.name}-{name}"
    path.write_bytes(files[name])
    assert raw["sha256"] == hashlib.sha256(files[name]).hexdigest() and raw["size"] == len(files[name])
    assert "version" not in raw and "created" not in raw  # the push and the store fill them in
    if meta.platform == "pytorch_export":
        run = torch.export.load(str(path)).module()
    else:
        run = torch.jit.load(str(path))
        run.eval()
    return meta, raw, run, path


def example_arrays(meta: ModelMeta) -> list[np.ndarray]:
    return [np.asarray(meta.example[t.name], dtype=DATATYPES[t.datatype]) for t in meta.inputs]


def as_list(out: Any, meta: ModelMeta) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        out = (out,)
    elif isinstance(out, dict):
        out = [out[t.name] for t in meta.outputs]
    return [o.detach().numpy() for o in out]


def reproduces(module: nn.Module, run: Any, meta: ModelMeta, rows: int = 1) -> None:
    """The loaded file, run on the meta's example (and on ``rows`` copies of it), gives the module's output."""
    module.eval()  # as the packager ran it
    args = [np.concatenate([a] * rows) for a in example_arrays(meta)]
    with torch.no_grad():
        want = as_list(module(*map(torch.from_numpy, args)), meta)
        got = as_list(run(*map(torch.from_numpy, args)), meta)
    for w, g, spec in zip(want, got, meta.outputs, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert g.dtype == np.dtype(DATATYPES[spec.datatype])


# --------------------------------------------------------------------------- each public path


@pytest.mark.parametrize("method", ["script", "trace", "export"])
def test_an_nn_module_packs_with_its_signature_and_the_example_reproduces_its_output(
        method: str, tmp_path: Path) -> None:
    model = Linear()
    out = package(model, ROWS, tmp_path / "linear.tar.gz", name="linear", description="three classes",
                  method=method)  # type: ignore[arg-type]
    assert out == tmp_path / "linear.tar.gz"
    assert model.training  # its own mode is left as it was
    meta, raw, run, _ = opened(out, tmp_path)
    assert meta.name == "linear" and raw["description"] == "three classes"
    assert meta.platform == ("pytorch_export" if method == "export" else "pytorch_torchscript")
    assert [t.to_json() for t in meta.inputs] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
    assert [t.to_json() for t in meta.outputs] == [{"name": "output_0", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta.batchable
    np.testing.assert_array_equal(np.asarray(meta.example["features"], np.float32), ROWS[:1])
    reproduces(model, run, meta)
    reproduces(model, run, meta, rows=7)  # any batch size
    example_request(meta)  # the worker's warm-up accepts the example


def test_a_batch_of_one_example_still_gives_a_dynamic_batch_when_exported(tmp_path: Path) -> None:
    # torch.export turns a dimension of size 1 into a constant: the packager exports two rows.
    model = Linear()
    meta, _, run, _ = opened(package(model, ROWS[:1], tmp_path / "one.zip", method="export"), tmp_path)
    assert meta.batchable
    reproduces(model, run, meta, rows=3)


def test_a_script_module_and_an_exported_program_are_packed_as_they_are(tmp_path: Path) -> None:
    scripted = torch.jit.script(Linear().eval())
    meta, _, run, path = opened(package(scripted, torch.from_numpy(ROWS), tmp_path / "s.tgz", method="export"),
                                tmp_path)
    assert meta.platform == "pytorch_torchscript" and meta.batchable and meta.inputs[0].name == "features"
    reproduces(scripted, run, meta, rows=2)

    model = Linear().eval()
    program = torch.export.export(model, (torch.from_numpy(ROWS),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    meta, _, run, _ = opened(package(program, ROWS, tmp_path / "p.tar.gz"), tmp_path)
    assert meta.platform == "pytorch_export" and meta.batchable and meta.inputs[0].name == "features"
    reproduces(model, run, meta, rows=2)


@pytest.mark.parametrize("method", ["script", "export"])
def test_dict_inputs_are_named_by_their_keys_in_forward_order(method: str, tmp_path: Path) -> None:
    model = TwoInTwoOut()
    counts = np.arange(10, dtype=np.int64).reshape(5, 2)
    out = package(model, {"counts": counts, "features": ROWS}, tmp_path / "two.tar.gz",
                  output_names=["score", "doubled"], method=method)  # type: ignore[arg-type]
    meta, _, run, path = opened(out, tmp_path)
    assert [t.to_json() for t in meta.inputs] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, 4]},  # forward's order, not the dict's
        {"name": "counts", "datatype": "INT64", "shape": [-1, 2]},
    ]
    assert [t.to_json() for t in meta.outputs] == [
        {"name": "score", "datatype": "FP32", "shape": [-1, 2]},
        {"name": "doubled", "datatype": "INT64", "shape": [-1, 2]},
    ]
    assert meta.example == {"features": ROWS[:1].tolist(), "counts": [[0, 1]]}
    reproduces(model, run, meta, rows=3)


def test_a_one_input_dict_names_its_input_whatever_forward_calls_it(tmp_path: Path) -> None:
    # nn.Sequential's forward takes `input`; a notebook names the input after its data.
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)).eval()
    meta, _, run, _ = opened(package(model, {"features": ROWS}, tmp_path / "seq.tar.gz"), tmp_path)
    assert [t.name for t in meta.inputs] == ["features"]
    reproduces(model, run, meta, rows=2)


def test_multiple_outputs_as_a_tuple_or_a_dict_are_named_and_served_by_the_worker(tmp_path: Path) -> None:
    meta, _, run, path = opened(package(TwoInTwoOut(), (ROWS, np.ones((5, 2), np.int64)), tmp_path / "t.zip"),
                                tmp_path)
    assert [t.name for t in meta.inputs] == ["features", "counts"]
    assert [t.name for t in meta.outputs] == ["output_0", "output_1"]

    model = DictOut()
    meta, _, run, path = opened(package(model, ROWS, tmp_path / "d.tar.gz"), tmp_path)
    assert [t.to_json() for t in meta.outputs] == [
        {"name": "total", "datatype": "FP32", "shape": [-1]},
        {"name": "positive", "datatype": "BOOL", "shape": [-1, 4]},
    ]
    reproduces(model, run, meta, rows=2)
    # The worker's own loader picks the dict's values by the names meta.json gives.
    served = Model(path, meta, "cpu").forward([ROWS])
    assert [o.shape for o in served] == [(5,), (5, 4)]
    np.testing.assert_array_equal(served[1], ROWS > 0)


def test_a_reference_sample_travels_as_sample_npz(tmp_path: Path) -> None:
    sample = np.random.default_rng(3).normal(size=(200, 4)).astype(np.float32)
    out = package(Linear(), ROWS, tmp_path / "s.zip", reference_sample=sample)
    with np.load(io.BytesIO(members(out)["sample.npz"])) as npz:
        assert npz.files == ["features"]
        np.testing.assert_array_equal(npz["features"], sample)
    out = package(TwoInTwoOut(), {"features": ROWS, "counts": np.ones((5, 2), np.int64)}, tmp_path / "t.tar.gz",
                  reference_sample={"counts": np.zeros((9, 2), np.int64), "features": sample[:9]})
    with np.load(io.BytesIO(members(out)["sample.npz"])) as npz:
        assert npz.files == ["features", "counts"] and npz["counts"].shape == (9, 2)


def test_a_model_whose_rows_depend_on_each_other_gets_fixed_shapes(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "modelkit.package"):
        meta, _, run, _ = opened(package(AcrossRows(), ROWS, tmp_path / "a.tar.gz"), tmp_path)
    assert not meta.batchable
    assert [t.shape for t in meta.inputs + meta.outputs] == [(5, 4), (5, 4)]
    assert np.asarray(meta.example["x"]).shape == (5, 4)  # the whole example: requests must match it
    assert "rows depend on each other" in caplog.text and "fixed shapes" in caplog.text
    reproduces(AcrossRows(), run, meta)
    with pytest.raises(ConfigError, match="the model cannot batch: rows depend on each other: with a batch of 1, "
                                          "output 'output_0' changes"):
        package(AcrossRows(), ROWS, tmp_path / "b.tar.gz", batchable=True)
    assert not (tmp_path / "b.tar.gz").exists()
    meta, _, _, _ = opened(package(Linear(), ROWS, tmp_path / "c.tar.gz", batchable=False), tmp_path)
    assert [t.shape for t in meta.inputs + meta.outputs] == [(5, 4), (5, 3)]


@pytest.mark.parametrize(("method", "reason"), [
    ("trace", "a batch of 1 fails: RuntimeError: shape '[5, 2, 2]' is invalid"),
    ("export", "torch.export fixes the batch dimension: Constraints violated (batch)"),
])
def test_a_model_that_cannot_batch_is_recorded_with_its_fixed_shape(method: str, reason: str, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "modelkit.package"):
        meta, _, run, _ = opened(package(FixedBatch(), ROWS, tmp_path / "f.zip", method=method),  # type: ignore[arg-type]
                                 tmp_path)
    assert [t.shape for t in meta.inputs + meta.outputs] == [(5, 4), (5, 2)]
    assert reason in caplog.text
    reproduces(FixedBatch(), run, meta)
    with pytest.raises(ConfigError, match="the model cannot batch"):
        package(FixedBatch(), ROWS, tmp_path / "g.zip", method=method, batchable=True)  # type: ignore[arg-type]


def test_the_archive_replaces_its_target_in_one_rename_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "m.tar.gz"
    target.write_bytes(b"an older archive")
    package(Linear(), ROWS, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar.gz"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    with tarfile.open(target) as t:
        assert [m.name for m in t.getmembers()] == ["meta.json", "model.pt"]  # meta first: read before the model
        assert {(m.uid, m.gid, m.uname, m.gname, m.mode) for m in t.getmembers()} == {(0, 0, "", "", 0o644)}
    with pytest.raises(ConfigError):
        package(Linear(), ROWS[:, :3], target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tar.gz"]  # a failure leaves the old one


# --------------------------------------------------------------------------- saved files


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_package_file_packs_a_saved_file_byte_for_byte(suffix: str, tmp_path: Path) -> None:
    model = TwoInTwoOut().eval()
    counts = np.ones((5, 2), np.int64)
    path = tmp_path / f"model{suffix}"
    if suffix == ".pt":
        torch.jit.script(model).save(str(path))
    else:
        torch.export.save(torch.export.export(model, (torch.from_numpy(ROWS), torch.from_numpy(counts)),
                                              dynamic_shapes=({0: torch.export.Dim("b")}, {0: torch.export.Dim("b")})),
                          str(path))
    np.savez(tmp_path / "example.npz", ROWS, counts)  # positional: forward names them
    np.savez(tmp_path / "sample.npz", counts=counts[:2], features=ROWS[:2])
    out = package_file(path, tmp_path / "example.npz", tmp_path / "out.zip", name="two",
                       output_names=["score", "doubled"], reference_sample=tmp_path / "sample.npz")
    files = members(out)
    assert files["model" + suffix] == path.read_bytes()
    meta, _, run, _ = opened(out, tmp_path)
    assert [t.name for t in meta.inputs] == ["features", "counts"] and meta.batchable
    assert [t.name for t in meta.outputs] == ["score", "doubled"]
    reproduces(model, run, meta, rows=4)


def test_package_file_refuses_what_it_cannot_load(tmp_path: Path) -> None:
    np.savez(tmp_path / "example.npz", x=ROWS, y=ROWS)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model.onnx: expected a TorchScript \.pt or a torch.export \.pt2 file"):
        package_file(tmp_path / "model.onnx", tmp_path / "example.npz", tmp_path / "o.zip")
    (tmp_path / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="model.pt: cannot load it as TorchScript"):
        package_file(tmp_path / "model.pt", tmp_path / "example.npz", tmp_path / "o.zip")
    torch.jit.script(Linear()).save(str(tmp_path / "model.pt"))
    with pytest.raises(ConfigError, match=r"'x', 'y' not among forward's parameters \(features\)"):
        package_file(tmp_path / "model.pt", tmp_path / "example.npz", tmp_path / "o.zip")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ConfigError, match="bad.npz: not a readable .npz file"):
        package_file(tmp_path / "model.pt", tmp_path / "bad.npz", tmp_path / "o.zip")
    assert not (tmp_path / "o.zip").exists()


@pytest.mark.daemon
def test_router_package_packs_a_saved_file_from_the_command_line(tmp_path: Path) -> None:
    model = Linear().eval()
    torch.export.save(torch.export.export(model, (torch.from_numpy(ROWS),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), str(tmp_path / "m.pt2"))
    np.savez(tmp_path / "example.npz", features=ROWS)
    np.savez(tmp_path / "sample.npz", features=ROWS[:3])

    def router(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        return subprocess.run([sys.executable, "-m", "router", "package", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = router("m.pt2", "--example", "example.npz", "-o", "out.tar.gz", "--name", "linear",
                  "--description", "from the CLI", "--sample", "sample.npz")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "out.tar.gz"
    meta, raw, run, _ = opened(tmp_path / "out.tar.gz", tmp_path)
    assert (meta.name, raw["description"], meta.platform) == ("linear", "from the CLI", "pytorch_export")
    assert "sample.npz" in members(tmp_path / "out.tar.gz")
    reproduces(model, run, meta, rows=2)

    proc = router("m.pt2", "--example", "sample.npz", "-o", "out.tar")
    assert proc.returncode == 1
    assert "cannot package m.pt2: out_path: 'out.tar' must end in .tar.gz, .tgz, .zip" in proc.stderr
    proc = router("m.pt2", "-o", "out.tar.gz")
    assert proc.returncode == 2 and "--example" in proc.stderr


# --------------------------------------------------------------------------- errors


class ReturnsAnInt(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 3


class ReturnsBF16(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16)


class NotScriptable(nn.Module):
    def forward(self, x):  # type: ignore[no-untyped-def]
        return torch.from_numpy(np.tanh(x.numpy()))


@pytest.mark.parametrize(("model", "example", "kwargs", "message"), [
    (Linear(), ROWS.astype(np.complex64), {},
     r"example_inputs\[0\]: dtype complex64 is not served \(one of bool, uint8"),
    (Linear(), torch.from_numpy(ROWS).to(torch.bfloat16), {}, r"example_inputs\[0\]: dtype bfloat16 is not served"),
    (Linear(), [[0.5, 0.5, 0.5, 0.5]], {},
     r"example_inputs\[0\]: expected a numpy array or a torch tensor, got list \(wrap it in np.asarray\)"),
    (Linear(), ROWS[:, :3], {}, "the model fails on the example inputs: mat1 and mat2 shapes cannot be multiplied"),
    (ReturnsAnInt(), ROWS, {}, "output 1 is a int, not a tensor: a model returns a tensor, a tuple or list"),
    (ReturnsBF16(), ROWS, {}, "output 0: dtype bfloat16 is not served"),
    (DictOut(), ROWS, {"output_names": ["total", "negative"]},
     r"output_names: \['total', 'negative'\] must be the keys of the dict the model returns"),
    (Linear(), ROWS, {"output_names": ["a", "b"]}, "output_names: .* must be 1 distinct names"),
    (NotScriptable(), ROWS, {}, r"torch.jit.script cannot convert the model \('trace' or 'export' may\)"),
    (Linear(), {"x": ROWS, "y": ROWS}, {}, r"example_inputs: 'x', 'y' not among forward's parameters \(features\)"),
    (TwoInTwoOut(), {"counts": ROWS}, {},
     r"must be forward's first 1 parameters \(features\)"),
    (Linear(), {"features": ROWS}, {"input_names": ["f"]}, "input_names: not with a dict"),
    (Linear(), (ROWS,), {"input_names": ["a", "b"]}, r"input_names: \['a', 'b'\] must be 1 distinct"),
    (Linear(), np.zeros((0, 4), np.float32), {}, r"input 'features' is empty \(shape \[0, 4\]\)"),
    (Linear(), np.full((2, 4), np.nan, np.float32), {"batchable": True},
     "the example row holds NaN or infinity, which JSON cannot hold"),
    (Linear(), ROWS, {"reference_sample": ROWS.astype(np.float64)},
     r"reference_sample\['features'\]: dtype float64 differs from the example's float32"),
    (Linear(), ROWS, {"reference_sample": ROWS[:, :2]}, r"shape \[5, 2\] does not fit the example's \[5, 4\]"),
    (TwoInTwoOut(), (ROWS, ROWS), {"reference_sample": {"features": ROWS}},
     r"reference_sample: keys must be the inputs \['features', 'counts'\]: unknown \[\], missing \['counts'\]"),
    (Linear(), ROWS, {"name": "a/b"}, "name: invalid model name 'a/b'"),
    (Linear(), ROWS, {"method": "onnx"}, "method: 'onnx' is not one of 'script', 'trace', 'export'"),
    (len, ROWS, {}, "model: expected a torch.nn.Module, ScriptModule or ExportedProgram, got builtin_function"),
])
def test_errors_name_what_is_wrong(model: Any, example: Any, kwargs: dict[str, Any], message: str,
                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        package(model, example, tmp_path / "x.tar.gz", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_an_archive_needs_a_known_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"out_path: 'm.tar' must end in .tar.gz, .tgz, .zip"):
        package(Linear(), ROWS, tmp_path / "m.tar")
    with pytest.raises(FileNotFoundError):
        package(Linear(), ROWS, tmp_path / "missing" / "m.zip")
