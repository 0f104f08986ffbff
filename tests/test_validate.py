"""``python -m runtime validate``: a model version checked in a throwaway process under time and memory
limits, its example run through the worker's own path, one JSON object on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, WORKER_PRELOAD
from test_model_files import EXAMPLE, flip_byte, small_net, write_dir

from modelkit.fixtures import faulty_mlp_small, slow_mlp_small
from router.proto.meta import EXPORT_FILE, MODEL_FILE, sha256_file

pytestmark = pytest.mark.daemon


def validate(version_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """Run the command; its exit status and the one JSON object it printed (nothing else on stdout)."""
    proc = subprocess.run([sys.executable, "-m", "runtime", "validate", "--model-dir", str(version_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr)
    result = json.loads(lines[0])
    assert proc.returncode == (0 if result["ok"] else 1), proc.stderr
    return proc.returncode, result


class Hog(torch.nn.Module):
    """mlp-small that reserves 2 GiB on every forward (one element touched: virtual, not resident)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buf = torch.empty(1 << 29)
        buf[0] = 1.0
        return self.body(x) * buf[0]


def test_a_good_exported_model_passes_and_its_output_signature_is_printed(tmp_path):
    d = write_dir(tmp_path / "m" / "1", small_net(), "pt2")
    code, r = validate(d, "--name", "m", "--version", "1")
    assert code == 0 and r["ok"] is True
    assert r["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]  # -1: follows the batch
    assert (r["file"], r["platform"], r["name"], r["version"]) == (EXPORT_FILE, "pytorch_export", "m", "1")
    assert r["sha256"] == sha256_file(d / EXPORT_FILE) and r["size"] == (d / EXPORT_FILE).stat().st_size
    assert r["seconds"] > 0 and r["load_seconds"] > 0 and r["peak_rss_mb"] > 0

    ts = write_dir(tmp_path / "m" / "2", small_net(), "pt", version="2")
    code, r = validate(ts)
    assert code == 0 and r["file"] == MODEL_FILE and r["outputs"] == [{"name": "y", "datatype": "FP32",
                                                                      "shape": [-1, 3]}]


def test_outputs_that_disagree_with_meta_json_fail_naming_both(tmp_path):
    d = write_dir(tmp_path / "m" / "1", small_net(), "pt2", outputs=[{"name": "y", "datatype": "FP64",
                                                                      "shape": [-1, 5]}])
    code, r = validate(d)
    assert code == 1 and r["reason"] == "signature"
    assert r["error"] == ("the outputs disagree with meta.json: y: datatype FP32, meta.json declares FP64; "
                          "y: shape [-1, 3], meta.json declares [-1, 5]")
    assert r["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]  # what it does give


def test_integrity_and_identity_are_checked_unless_a_staging_directory_asks_not_to(tmp_path):
    d = write_dir(tmp_path / "m" / "1", small_net(), "pt", sha256="")
    code, r = validate(d)
    assert code == 1 and r["reason"] == "integrity" and r["error"] == "meta.json records no sha256 for model.pt"
    code, r = validate(d, "--no-integrity")
    assert code == 0 and r["sha256"] == sha256_file(d / MODEL_FILE)  # computed for the caller to record

    t = write_dir(tmp_path / "m" / "2", small_net(), "pt")
    recorded = json.loads((t / "meta.json").read_text())["sha256"]
    flip_byte(t / MODEL_FILE)
    code, r = validate(t, "--version", "2")
    assert code == 1 and r["reason"] == "identity"
    assert r["error"] == "meta.json names version '1' but the directory is version '2'"
    code, r = validate(t)
    assert code == 1 and r["reason"] == "integrity"
    assert r["error"] == f"model.pt sha256 {sha256_file(t / MODEL_FILE)} does not match meta.json's {recorded}"


def test_a_model_whose_example_fails(tmp_path):
    d = write_dir(tmp_path / "m" / "1", faulty_mlp_small(), "pt", example=[[5000.0, 0.0, 0.0, 0.0]])
    code, r = validate(d)
    assert code == 1 and r["reason"] == "example"
    assert "the example failed (500): model raised" in r["error"] and "input beyond +-1000" in r["error"]


def test_a_model_that_cannot_batch_although_meta_json_says_it_can(tmp_path):
    class FirstRow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:1, :3] * 2.0  # one row, whatever the batch

    d = write_dir(tmp_path / "m" / "1", FirstRow(), "pt", example=EXAMPLE[:1])
    code, r = validate(d)
    assert code == 1 and r["reason"] == "signature"
    assert "two examples batched together fail: its outputs do not keep the batch" in r["error"]


def test_the_time_limit_kills_the_check(tmp_path):
    d = write_dir(tmp_path / "m" / "1", slow_mlp_small(delay_us=300_000_000), "pt")
    t0 = time.monotonic()
    code, r = validate(d, "--timeout", "8", env=WORKER_PRELOAD)
    assert code == 1 and r["reason"] == "timeout" and r["error"] == "time limit: no answer within 8 s"
    assert time.monotonic() - t0 < 60
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):  # the check process is gone, not orphaned
        try:
            if str(d).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            pass
    assert left == []


def test_the_memory_limit_fails_a_model_that_allocates_too_much(tmp_path):
    d = write_dir(tmp_path / "m" / "1", Hog(), "pt")
    code, r = validate(d, "--memory-mb", "1024")
    assert code == 1 and r["reason"] == "memory"
    assert r["error"].startswith("memory limit of 1024 MiB exceeded: the example failed (500): model raised")
    code, r = validate(d, "--memory-mb", "4096")  # room for it: the same model passes
    assert code == 0, r


def test_the_command_line_is_documented():
    proc = subprocess.run([sys.executable, "-m", "runtime", "validate", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--model-dir", "--name", "--version", "--timeout", "--memory-mb", "--device", "--no-integrity"):
        assert flag in proc.stdout
    assert "--result-fd" not in proc.stdout  # the supervisor's, not the caller's
    bad = subprocess.run([sys.executable, "-m", "runtime", "validate"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
