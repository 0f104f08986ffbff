"""The chaos soak's quick run (``python -m bench.chaos --quick``): every request answered under chaos.

The soak starts its own daemon, kills and stops workers, reloads, deploys, rolls
back and opens slow clients while load runs on both protocols, then checks
processes, descriptors and memory (see ``bench/chaos.py``). About 45 s on two
quiet cores; the timeouts only catch a hang (a loaded machine can double it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Every test here starts processes (a daemon and its workers): the daemon layer as a whole.
pytestmark = pytest.mark.daemon

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.daemon
@pytest.mark.timeout(330)
def test_quick_chaos_soak_answers_every_request(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    r = subprocess.run([sys.executable, "-m", "bench.chaos", "--quick", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    tail = f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    assert out.exists(), tail
    doc = json.loads(out.read_text())
    assert doc["failed"] == 0, doc["failure_samples"]
    answered = sum(doc["requests"][p]["total"] for p in ("http", "tcp"))
    assert answered > 0 and all(doc["requests"][p].get("200") for p in ("http", "tcp")), doc["requests"]
    assert all(n >= 1 for n in doc["actions"].values()), doc["actions"]
    assert set(doc["actions"]) == {"kill", "stop", "reload", "traffic", "deploy", "rollback", "trickle", "idle"}
    failed = [c for c in doc["checks"] if not c["ok"]]
    assert not failed, failed
    assert r.returncode == 0, tail
