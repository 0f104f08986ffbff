"""runtime.model.Model: numpy in, numpy out, whatever shape of result the TorchScript module returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from router.proto.meta import ModelMeta, TensorSpec
from runtime.model import Model


class OneOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


class TupleOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(dim=1, keepdim=True), x - 1.0


class DictOut(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"b": x + 3.0, "a": x.max(dim=1, keepdim=True).values}


class TwoIn(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * y


class OneTuple(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x + 0.5,)


def spec(name: str, width: int) -> TensorSpec:
    return TensorSpec(name, "FP32", (-1, width))


def load(tmp_path: Path, module: torch.nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec],
         optimize: bool = False) -> Model:
    path = tmp_path / f"{type(module).__name__}.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    meta = ModelMeta(name="m", version="1", platform="pytorch_torchscript", inputs=tuple(inputs),
                     outputs=tuple(outputs), example={})
    return Model(path, meta, "cpu", optimize=optimize)


X = np.arange(12, dtype=np.float32).reshape(3, 4)
Y = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)


@pytest.fixture(params=["worker", "caller"])
def mode(request: pytest.FixtureRequest):
    """Inside inference mode (as the worker runs, taking the one-tensor shortcut) and outside it."""
    if request.param == "worker":
        with torch.inference_mode():
            yield
    else:
        yield


@pytest.mark.parametrize("optimize", [False, True])
def test_one_tensor_out(tmp_path, mode, optimize):
    m = load(tmp_path, OneOut(), [spec("x", 4)], [spec("y", 4)], optimize)
    (out,) = m.forward([X])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, X * 2.0 + 1.0)


def test_tuple_out_in_declared_order(tmp_path, mode):
    m = load(tmp_path, TupleOut(), [spec("x", 4)], [spec("s", 1), spec("d", 4)])
    s, d = m.forward([X])
    np.testing.assert_array_equal(s, X.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(d, X - 1.0)


def test_a_one_tuple_is_one_output(tmp_path, mode):
    m = load(tmp_path, OneTuple(), [spec("x", 4)], [spec("y", 4)])
    (out,) = m.forward([X])
    np.testing.assert_array_equal(out, X + 0.5)


def test_dict_out_follows_the_meta_order_not_the_dict_order(tmp_path, mode):
    m = load(tmp_path, DictOut(), [spec("x", 4)], [spec("a", 1), spec("b", 4)])
    a, b = m.forward([X])
    np.testing.assert_array_equal(a, X.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(b, X + 3.0)


def test_two_inputs_in_signature_order(tmp_path, mode):
    m = load(tmp_path, TwoIn(), [spec("x", 4), spec("y", 4)], [spec("z", 4)])
    (z,) = m.forward([X, Y])
    np.testing.assert_allclose(z, X * Y)


@pytest.mark.parametrize("module, declared", [(OneOut(), 2), (TupleOut(), 1), (TupleOut(), 3)])
def test_an_output_count_other_than_declared_is_an_error(tmp_path, mode, module, declared):
    m = load(tmp_path, module, [spec("x", 4)], [spec(f"o{i}", 4) for i in range(declared)])
    with pytest.raises(RuntimeError, match=f"meta.json declares {declared}"):
        m.forward([X])


def test_read_only_inputs_are_not_copied_or_written(tmp_path, mode):
    # Workers hand the model arrays that view the request bytes (np.frombuffer: read-only).
    m = load(tmp_path, OneOut(), [spec("x", 4)], [spec("y", 4)])
    raw = X.tobytes()
    x = np.frombuffer(raw, dtype=np.float32).reshape(3, 4)
    (out,) = m.forward([x])
    np.testing.assert_array_equal(out, X * 2.0 + 1.0)
    assert raw == X.tobytes()
