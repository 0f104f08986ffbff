"""Tests for the demo models (modelkit.demo) and the model store writer (modelkit.store)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from modelkit import demo
from modelkit.store import write_version
from router.proto.errors import ConfigError
from router.proto.meta import META_FILE, MODEL_FILE, read_meta

REPO = Path(__file__).resolve().parents[1]

#: This module trains the demo store (seconds of torch per build): the daemon layer, as the ``store`` fixture is.
pytestmark = pytest.mark.daemon

#: (model, version) -> (input name, input width, output name, output width)
SIGNATURES = {
    ("fraud", "1"): ("features", 8, "probabilities", 2),
    ("fraud", "2"): ("features", 8, "probabilities", 2),
    ("mlp-small", "1"): ("x", 4, "y", 3),
    ("mlp-wide", "1"): ("x", 256, "y", 10),
    ("mlp-small", "2"): ("x", 4, "y", 3),
    ("mlp-small", "copy"): ("x", 4, "y", 3),
    ("mlp-small", "slow"): ("x", 4, "y", 3),
    ("mlp-small", "faulty"): ("x", 4, "y", 3),
}
#: The 20 ms sleeper is left out of the 128-forward batch check; its own test covers it.
BATCH_CHECKED = [mv for mv in SIGNATURES if mv != ("mlp-small", "slow")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """One store with every demo model, built once for the module."""
    store = tmp_path_factory.mktemp("store-a") / "model-store"
    written = demo.build_demo_store(store, extra=True)
    return store, written


@pytest.fixture(scope="module")
def built_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, independent build in another directory."""
    store = tmp_path_factory.mktemp("store-b") / "model-store"
    demo.build_demo_store(store, extra=True)
    return store


def _load(store: Path, model: str, version: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(store / model / version / MODEL_FILE))


def _inputs(model: str, width: int, n: int, seed: int = 0) -> torch.Tensor:
    if model == "fraud":
        x, _ = demo.make_fraud_data(n, seed=seed)
        return torch.from_numpy(x)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=g)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in [root, *sorted(root.rglob("*"))]}


def _hidden_entries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.name.startswith(".")]


# --------------------------------------------------------------------------- layout and meta


def test_build_writes_every_version(built: tuple[Path, list[Path]]) -> None:
    store, written = built
    assert written == [store / m / v for m, v in SIGNATURES]
    assert sorted(p.name for p in store.iterdir()) == ["fraud", "mlp-small", "mlp-wide"]
    for model, version in SIGNATURES:
        vdir = store / model / version
        assert sorted(p.name for p in vdir.iterdir()) == [META_FILE, MODEL_FILE]


@pytest.mark.parametrize(("model", "version"), list(SIGNATURES))
def test_meta_contents(built: tuple[Path, list[Path]], model: str, version: str) -> None:
    store, _ = built
    vdir = store / model / version
    meta = read_meta(vdir)
    in_name, in_width, out_name, out_width = SIGNATURES[model, version]
    assert (meta.name, meta.version, meta.platform) == (model, version, "pytorch_torchscript")
    assert [t.to_json() for t in meta.inputs] == [
        {"name": in_name, "datatype": "FP32", "shape": [-1, in_width]}
    ]
    assert [t.to_json() for t in meta.outputs] == [
        {"name": out_name, "datatype": "FP32", "shape": [-1, out_width]}
    ]
    assert meta.batchable
    example = np.asarray(meta.example[in_name], dtype=np.float32)
    assert example.shape == (1, in_width)
    assert meta.created.endswith("Z")
    datetime.strptime(meta.created, "%Y-%m-%dT%H:%M:%SZ")

    data = (vdir / MODEL_FILE).read_bytes()
    assert meta.size == len(data)
    assert meta.sha256 == hashlib.sha256(data).hexdigest()

    raw = json.loads((vdir / META_FILE).read_text())
    assert isinstance(raw["description"], str) and raw["description"]
    if model == "fraud":
        assert raw["features"] == list(demo.FRAUD_FEATURES)
        assert raw["classes"] == ["legit", "fraud"]
        assert f"AUC {raw['metrics']['auc']:.4f}" in raw["description"]

    out = _load(store, model, version)(torch.from_numpy(example))
    assert out.shape == (1, out_width) and out.dtype == torch.float32


def test_example_row_is_a_legit_transaction(built: tuple[Path, list[Path]]) -> None:
    store, _ = built
    row = torch.tensor([demo.FRAUD_EXAMPLE_ROW])
    for version in ("1", "2"):
        with torch.no_grad():
            p = _load(store, "fraud", version)(row)
        assert float(p[0, 1]) < 0.5


# --------------------------------------------------------------------------- model behaviour


@pytest.mark.parametrize(("model", "version"), BATCH_CHECKED)
def test_batch_equals_row_by_row(built: tuple[Path, list[Path]], model: str, version: str) -> None:
    store, _ = built
    _, width, _, out_width = SIGNATURES[model, version]
    m = _load(store, model, version)
    x = _inputs(model, width, 64, seed=3)
    with torch.no_grad():
        rows = torch.cat([m(x[i : i + 1]) for i in range(64)])
        for n in range(1, 65):
            batch = m(x[:n])
            assert batch.shape == (n, out_width) and batch.dtype == torch.float32
            torch.testing.assert_close(batch, rows[:n], atol=1e-6, rtol=1e-5)
        empty = m(torch.zeros(0, width))
    assert empty.shape == (0, out_width) and empty.dtype == torch.float32
    assert torch.isfinite(rows).all()
    if model == "fraud":
        torch.testing.assert_close(rows.sum(1), torch.ones(64), atol=1e-6, rtol=0)
        assert ((rows >= 0) & (rows <= 1)).all()


def test_shadow_variants_of_mlp_small(built: tuple[Path, list[Path]]) -> None:
    """copy is version 1 bit for bit, 2 differs, slow sleeps 20 ms, faulty raises beyond +-1000."""
    import time

    store, written = built
    assert (store / "mlp-small" / "copy" / MODEL_FILE).read_bytes() == (store / "mlp-small" / "1" / MODEL_FILE
                                                                         ).read_bytes()
    x = _inputs("mlp-small", 4, 16, seed=9)
    with torch.no_grad():
        base = _load(store, "mlp-small", "1")(x)
        assert torch.equal(_load(store, "mlp-small", "copy")(x), base)
        other = _load(store, "mlp-small", "2")(x)
        assert (other - base).abs().max() > 0.05
        assert (other.argmax(1) != base.argmax(1)).any() and (other.argmax(1) == base.argmax(1)).any()
        slow = _load(store, "mlp-small", "slow")
        slow(x)  # the first call also compiles
        t0 = time.perf_counter()
        assert torch.equal(slow(x), base)
        assert time.perf_counter() - t0 >= 0.02
        faulty = _load(store, "mlp-small", "faulty")
        assert torch.equal(faulty(x), base)
        with pytest.raises(torch.jit.Error, match="input beyond"):
            faulty(torch.full((1, 4), 1000.5))


def test_models_are_scripted_not_traced(built: tuple[Path, list[Path]]) -> None:
    store, _ = built
    for model, version in SIGNATURES:
        code = _load(store, model, version).code
        assert "def forward" in code


def test_auc_on_fresh_data(built: tuple[Path, list[Path]]) -> None:
    store, _ = built
    x, y = demo.make_fraud_data(30_000, seed=777)
    assert 0.05 <= y.mean() <= 0.10
    aucs = {}
    with torch.no_grad():
        for version in ("1", "2"):
            p = _load(store, "fraud", version)(torch.from_numpy(x))[:, 1].numpy()
            aucs[version] = demo.roc_auc(y, p)
    assert aucs["1"] > 0.8 and aucs["2"] > 0.8
    assert aucs["2"] > aucs["1"]


def test_roc_auc_matches_pairwise_definition() -> None:
    g = np.random.default_rng(5)
    y = g.random(300) < 0.3
    s = np.round(g.random(300), 1)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert demo.roc_auc(y, s) == pytest.approx(pairwise, abs=1e-12)
    assert demo.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    with pytest.raises(ValueError):
        demo.roc_auc([1, 1], [0.1, 0.2])


# --------------------------------------------------------------------------- determinism


def test_data_is_deterministic() -> None:
    x1, y1 = demo.make_fraud_data(1000, seed=9)
    x2, y2 = demo.make_fraud_data(1000, seed=9)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.dtype == np.float32 and y1.dtype == np.int64 and x1.shape == (1000, 8)


@pytest.mark.parametrize(("model", "version"), list(SIGNATURES))
def test_two_builds_are_identical(
    built: tuple[Path, list[Path]], built_again: Path, model: str, version: str
) -> None:
    store, _ = built
    a, b = _load(store, model, version), _load(built_again, model, version)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and sa
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    _, width, _, _ = SIGNATURES[model, version]
    x = _inputs(model, width, 50, seed=4)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    ra = json.loads((store / model / version / META_FILE).read_text())
    rb = json.loads((built_again / model / version / META_FILE).read_text())
    ra.pop("created"), rb.pop("created")
    ra.pop("sha256"), rb.pop("sha256")
    assert ra == rb


def test_training_restores_torch_state() -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    demo.mlp_small()
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


def test_bench_helpers() -> None:
    small, wide = demo.mlp_small(), demo.mlp_wide()
    assert isinstance(small, torch.jit.ScriptModule) and isinstance(wide, torch.jit.ScriptModule)
    assert small(torch.zeros(2, 4)).shape == (2, 3)
    assert wide(torch.zeros(2, 256)).shape == (2, 10)
    for (ka, va), (kb, vb) in zip(
        small.state_dict().items(), demo.mlp_small().state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


# --------------------------------------------------------------------------- idempotence and immutability


def test_second_build_writes_nothing(built: tuple[Path, list[Path]]) -> None:
    store, _ = built
    before = _snapshot(store)
    lines: list[str] = []
    assert demo.build_demo_store(store, extra=True, log=lines.append) == []
    assert _snapshot(store) == before
    assert len(lines) == len(SIGNATURES) and all(line.startswith("skipped") for line in lines)


def test_partial_store_is_completed(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, _ = built
    shutil.copytree(store / "fraud", tmp_path / "fraud")
    before = _snapshot(tmp_path / "fraud")
    assert demo.build_demo_store(tmp_path) == []
    written = demo.build_demo_store(tmp_path, extra=True)
    assert written == [tmp_path / m / v for m, v in SIGNATURES if m != "fraud"]
    assert _snapshot(tmp_path / "fraud") == before


def test_broken_version_is_reported_not_replaced(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, _ = built
    shutil.copytree(store / "fraud", tmp_path / "fraud")
    model_pt = tmp_path / "fraud" / "2" / MODEL_FILE
    data = bytearray(model_pt.read_bytes())
    data[-1] ^= 0xFF
    model_pt.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        demo.build_demo_store(tmp_path)
    assert model_pt.read_bytes() == bytes(data)
    (tmp_path / "fraud" / "2" / META_FILE).unlink()
    with pytest.raises(ConfigError, match="missing"):
        demo.build_demo_store(tmp_path)


def test_write_version_refuses_overwrite(built: tuple[Path, list[Path]]) -> None:
    store, _ = built
    before = (store / "fraud" / "1" / MODEL_FILE).read_bytes()
    with pytest.raises(FileExistsError, match=r"'fraud' version '1'"):
        write_version(
            store,
            "fraud",
            "1",
            demo.mlp_small(),
            [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
            {"x": [[0.0] * 4]},
        )
    assert (store / "fraud" / "1" / MODEL_FILE).read_bytes() == before
    assert _hidden_entries(store) == []


# --------------------------------------------------------------------------- atomicity


def _small_args(example: dict | None = None) -> dict:
    return {
        "scripted": demo.mlp_small(),
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        "example": example if example is not None else {"x": [[0.0, 1.0, 2.0, 3.0]]},
    }


def test_no_temp_dirs_after_build(built: tuple[Path, list[Path]], built_again: Path) -> None:
    for store in (built[0], built_again):
        assert _hidden_entries(store) == []


def test_write_version_roundtrip(tmp_path: Path) -> None:
    path = write_version(tmp_path, "m", "7", description="hello", extra={"owner": "tests"}, **_small_args())
    assert path == tmp_path / "m" / "7"
    raw = json.loads((path / META_FILE).read_text())
    assert raw["description"] == "hello" and raw["owner"] == "tests"
    assert read_meta(path).example == {"x": [[0.0, 1.0, 2.0, 3.0]]}
    assert (path.stat().st_mode & 0o777) == 0o755
    assert os.listdir(tmp_path / "m") == ["7"]


def test_invalid_meta_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="example"):
        write_version(tmp_path, "m", "1", **_small_args(example={"wrong": [[0.0] * 4]}))
    assert os.listdir(tmp_path / "m") == []
    bad = _small_args()
    bad["inputs"] = [{"name": "x", "datatype": "FLOAT", "shape": [-1, 4]}]
    with pytest.raises(ConfigError, match="datatype"):
        write_version(tmp_path, "m", "1", **bad)
    assert os.listdir(tmp_path / "m") == []


def test_failed_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(OSError, match="disk on fire"):
        write_version(tmp_path, "m", "1", **_small_args())
    assert os.listdir(tmp_path / "m") == []


def test_write_version_rejects_bad_names(tmp_path: Path) -> None:
    for model, version in itertools.chain(
        (("", "1"), (".hidden", "1"), ("a/b", "1"), ("..", "1")),
        (("m", ""), ("m", ".tmp-1"), ("m", "1/2")),
    ):
        with pytest.raises(ValueError, match="invalid"):
            write_version(tmp_path, model, version, **_small_args())
    with pytest.raises(ValueError, match="core keys: sha256"):
        write_version(tmp_path, "m", "1", extra={"sha256": "0" * 64}, **_small_args())
    assert not (tmp_path / "m").exists() or os.listdir(tmp_path / "m") == []


# --------------------------------------------------------------------------- CLI


def test_main_reports_each_version(built: tuple[Path, list[Path]], capsys: pytest.CaptureFixture) -> None:
    store, _ = built
    assert demo.main(["--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["skipped", "fraud/1:"], ["skipped", "fraud/2:"]]


def test_main_reports_errors(
    built: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store, _ = built
    shutil.copytree(store / "fraud", tmp_path / "fraud")
    (tmp_path / "fraud" / "1" / MODEL_FILE).write_bytes(b"not a model")
    assert demo.main(["--store", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.daemon
def test_python_m_modelkit_demo(built: tuple[Path, list[Path]], tmp_path: Path) -> None:
    store, _ = built
    shutil.copytree(store, tmp_path / "model-store")
    shutil.rmtree(tmp_path / "model-store" / "mlp-small")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "modelkit.demo", "--store", "model-store", "--extra"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["skipped", "fraud/1:"],
        ["skipped", "fraud/2:"],
        ["wrote", "mlp-small/1:"],
        ["skipped", "mlp-wide/1:"],
        ["wrote", "mlp-small/2:"],
        ["wrote", "mlp-small/copy:"],
        ["wrote", "mlp-small/slow:"],
        ["wrote", "mlp-small/faulty:"],
    ]
    read_meta(tmp_path / "model-store" / "mlp-small" / "1")
