"""Fuzzing (tests/fuzz/): the committed corpus through every target, and a short atheris run of each.

The replay is in-process and takes a second or two: every input any run found worth keeping is
checked again, by every target (an input of one layout is garbage, and so a good test, for the
others). The short runs start a Python each, so they belong to the daemon layer; ``make fuzz``
runs longer and grows the corpus.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz import targets

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file())


def test_the_corpus_has_a_folder_per_target_and_stays_small():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(targets.TARGETS)
    assert all(any((CORPUS / name).iterdir()) for name in targets.TARGETS)
    assert len(FILES) <= 600 and sum(p.stat().st_size for p in FILES) <= 1 << 20


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_corpus_replays_through_every_target(name):
    target = targets.TARGETS[name]
    for path in FILES:
        try:
            target(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{name} on {path.relative_to(CORPUS)} ({path.read_bytes()[:64]!r}...): "
                                 f"{exc!r}") from exc


@pytest.mark.daemon
@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_a_short_fuzz_run_finds_nothing(name, tmp_path):
    """A few seconds of libFuzzer from the corpus: no crash, no input over 10 s (a hang)."""
    found = tmp_path / "found"
    found.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz", name, str(found), str(CORPUS / name),
         "-max_total_time=3", "-timeout=10", f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, env={**os.environ, "ROUTER_FUZZ_TMP": str(tmp_path / "tmp")}, capture_output=True, text=True,
        timeout=90,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())  # crash-*, timeout-*, oom-*
    assert proc.returncode == 0 and not crashes, f"{crashes}\n{proc.stderr[-6000:]}"
    assert "Done " in proc.stderr, proc.stderr[-2000:]  # it did fuzz
