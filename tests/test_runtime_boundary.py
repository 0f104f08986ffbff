"""What a worker imports: the protocol kernel only, and a model's custom operators only when told to.
What the daemon imports: neither torch nor the model tools, ``router package`` included until it runs.

Each check runs in a fresh interpreter, since this test process has long imported
the rest of the router and the fixture models' operator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.model import PRELOAD_ENV, preload

ROOT = Path(__file__).resolve().parent.parent
WORKER_MODULES = ("runtime", "runtime.__main__", "runtime.worker", "runtime.model", "runtime.codecs",
                  "runtime.express", "runtime.batcher", "runtime.compare", "runtime.validate", "runtime.drift")

# Prints the router and modelkit modules loaded and whether the fixture operator is registered.
IMPORTS = f"""
import importlib, json, sys
for name in {WORKER_MODULES!r}:
    importlib.import_module(name)
import torch
from runtime.model import preload
preload()
print(json.dumps({{
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("router", "modelkit")),
    "sleep_us": hasattr(torch.ops.router, "sleep_us"),
}}))
"""

# Imports the daemon and parses a ``router package`` command line; prints what came in from torch,
# modelkit and runtime.
DAEMON_IMPORTS = """
import json, sys
import router.server
from router.cli import build_parser
args = build_parser().parse_args(["package", "m.pt2", "--example", "e.npz", "-o", "m.tar.gz"])
assert args.func.__name__ == "cmd_package"
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "modelkit", "runtime"))))
"""

# Loads the model in argv[1] with runtime.model.Model and runs its example-sized input.
LOAD = """
import sys
import numpy as np
from router.proto.meta import read_meta
from runtime.model import Model
model = Model(sys.argv[1] + "/model.pt", read_meta(sys.argv[1]), "cpu")
print(model.forward([np.zeros((2, 4), np.float32)])[0].shape)
"""


def python(code: str, *args: str, preload: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter at the repository root (where ``modelkit`` is importable)."""
    env = {k: v for k, v in os.environ.items() if k != PRELOAD_ENV}
    if preload is not None:
        env[PRELOAD_ENV] = preload
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=90)


@pytest.mark.daemon
def test_a_worker_imports_only_the_protocol_kernel_and_no_fixture_operator() -> None:
    proc = python(IMPORTS)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    foreign = [m for m in got["modules"] if m not in ("router", "router.proto") and not m.startswith("router.proto.")]
    assert foreign == []
    assert "router.proto.link" in got["modules"]  # the check sees what it should
    assert got["sleep_us"] is False


@pytest.mark.daemon
def test_the_preload_variable_registers_the_fixture_operator() -> None:
    proc = python(IMPORTS, preload="modelkit.fixture_ops")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["sleep_us"] is True and "modelkit.fixture_ops" in got["modules"]


def test_the_slow_fixture_loads_only_with_the_preload(store: Path) -> None:
    slow = str(store / "mlp-small" / "slow")
    without = python(LOAD, slow)
    assert without.returncode != 0 and "sleep_us" in without.stderr
    loaded = python(LOAD, slow, preload=" modelkit.fixture_ops ,")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["(2,", "3)"]


@pytest.mark.daemon
def test_the_daemon_and_its_command_line_import_no_torch_and_no_model_tools() -> None:
    proc = python(DAEMON_IMPORTS)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_preload_names_the_variable_when_a_module_is_missing() -> None:
    assert preload("") == [] and preload(" , ") == []
    assert preload("json, modelkit.fixture_ops") == ["json", "modelkit.fixture_ops"]
    with pytest.raises(ImportError, match=f"{PRELOAD_ENV}: cannot import 'no_such_module_here'"):
        preload("json,no_such_module_here")
