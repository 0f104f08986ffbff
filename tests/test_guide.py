"""The README's "Serve your own model" guide, run as written against a real daemon serving the demo.

Its Python block packages a model in a fresh interpreter; each command of its shell block then runs
in bash, in the directory of a copy of the repository's ``config.toml`` (the CLI reads it to find
the router), the only change being the daemon's HTTP address for ``localhost:8080``. After each
step the test checks what the step did, through the admin API and the config file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, Daemon, free_port

pytestmark = pytest.mark.daemon

SECTION = "## Serve your own model"
#: What the demo's config.toml says before the guide runs: its version set and weights.
DEMO_WEIGHTS = {"1": 90, "2": 10}
#: After ``rollout --percent 10``: v3 gets 10, v1 and v2 share the other 90 as 90:10 did.
ROLLED_OUT = {"1": 81, "2": 9, "3": 10}


def guide_blocks() -> tuple[str, list[str]]:
    """The guide's Python code (its ```python blocks, joined) and its shell commands, in order."""
    text = (ROOT / "README.md").read_text()
    assert SECTION + "\n" in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S)
    python = "\n".join(body for lang, body in blocks if lang == "python")
    commands = [c for lang, body in blocks if lang == "sh" for c in shell_commands(body)]
    assert python and commands, "the guide has no ```python or no ```sh block"
    return python, commands


def shell_commands(block: str) -> list[str]:
    """A shell block's commands: one per line, except that a line ending in a backslash or inside
    an open quote continues on the next one. Blank and comment-only lines are skipped."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        out.append(pending.rstrip("\n"))
        pending = ""
    assert not pending, f"unterminated command in the guide: {pending!r}"
    return out


def step(command: str) -> str:
    """What kind of step a command is: ``router SUBCOMMAND``, or the program it runs (``curl``)."""
    argv = shlex.split(command, comments=True)
    return " ".join(argv[:2]) if argv[0] == "router" else argv[0]


def comments(toml_text: str) -> list[str]:
    """Every comment in a TOML text, whole-line or trailing, without its leading whitespace."""
    return [m.group(0).strip() for m in re.finditer(r"#[^\n]*", toml_text)]


def test_guide_runs_as_written(tmp_path: Path, store: Path) -> None:
    python, commands = guide_blocks()
    steps = [step(c) for c in commands]
    # The guide's steps and their order (what each does is checked below, after it runs).
    assert [s for s in steps if s != "router versions"] == [
        "router push", "router rollout", "curl", "router rollback"], steps
    assert "router versions" in steps

    # The push writes into the store: a copy of the session's demo store, for this test alone.
    shutil.copytree(store, tmp_path / "store")
    original = (ROOT / "config.toml").read_text()
    http_port, wire_port, admin_port = free_port(), free_port(), free_port()
    cfg = original
    for key, value in (("path", str(tmp_path / "store")), ("http", f"127.0.0.1:{http_port}"),
                       ("msgpack", f"127.0.0.1:{wire_port}"), ("admin_http", f"127.0.0.1:{admin_port}")):
        cfg, n = re.subn(rf'^{key} = "[^"]*"', f"{key} = {json.dumps(value)}", cfg, count=1, flags=re.M)
        assert n == 1, f"config.toml has no {key} line"
    config = tmp_path / "config.toml"
    config.write_text(cfg)
    kept = comments(original)
    assert "# logistic regression" in kept and "# a small MLP" in kept
    assert {v["version"]: v["weight"] for v in tomllib.loads(cfg)["models"][0]["versions"]} == DEMO_WEIGHTS

    env = {k: v for k, v in os.environ.items() if k != "ROUTER_ADMIN_TOKEN"}
    d = Daemon(config, http_port, wire_port, dict(env))
    try:
        d.wait_ready()
        _run_guide(d, tmp_path, python, commands, env, kept)
    finally:
        assert d.stop() == 0


def _run_guide(d: Daemon, tmp_path: Path, python: str, commands: list[str], env: dict[str, str],
               kept: list[str]) -> None:
    config = tmp_path / "config.toml"

    def file_weights() -> dict[str, float]:
        doc = tomllib.loads(config.read_text())
        fraud = next(m for m in doc["models"] if m["name"] == "fraud")
        return {v["version"]: v["weight"] for v in fraud["versions"]}

    def comments_kept() -> None:
        now = comments(config.read_text())
        assert [c for c in kept if c not in now] == [], config.read_text()

    def stored_versions() -> dict[str, str]:
        status, body = d.call("GET", "/admin/models/fraud/versions")
        assert status == 200, body
        return {row["version"]: row["state"] for row in body["versions"]}

    def active_versions() -> list[str]:
        status, body = d.call("GET", "/admin/models")
        assert status == 200, body
        fraud = next(m for m in body["models"] if m["model"] == "fraud")
        return [v["version"] for v in fraud["versions"]]

    # The notebook: package the model.
    py = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True,
                        env={**env, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert py.returncode == 0, py.stdout + py.stderr
    assert (tmp_path / "fraud-3.tar.gz").is_file()
    assert "3" not in stored_versions()

    def pushed(out: str) -> None:
        assert "stored fraud version 3" in out, out
        assert stored_versions()["3"] == "stored"
        assert active_versions() == ["1", "2"]

    def rolled_out(out: str) -> None:
        status, traffic = d.call("GET", "/admin/models/fraud/traffic")
        assert status == 200, traffic
        assert traffic["weights"] == pytest.approx(ROLLED_OUT), traffic
        assert sorted(traffic["live"]) == ["1", "2", "3"]
        assert active_versions() == ["1", "2", "3"]
        assert file_weights() == pytest.approx(ROLLED_OUT)
        comments_kept()

    def listed(out: str) -> None:
        rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
        assert rows["v3"] == "serving", out
        assert rows["v1"] == rows["v2"] == "serving", out

    def inferred(out: str) -> None:
        reply = json.loads(out)
        assert reply["model_name"] == "fraud" and reply["model_version"] == "3", reply
        (probs,) = [o for o in reply["outputs"] if o["name"] == "probabilities"]
        assert probs["shape"] == [1, 2] and probs["datatype"] == "FP32", probs
        assert sum(probs["data"]) == pytest.approx(1, abs=1e-5), probs

    def rolled_back(out: str) -> None:
        assert active_versions() == ["1", "2"]
        assert file_weights() == pytest.approx(DEMO_WEIGHTS)
        assert stored_versions()["3"] == "previous"  # the pool it served in, kept warm
        comments_kept()

    checks: dict[str, Callable[[str], None]] = {
        "router push": pushed, "router rollout": rolled_out, "router versions": listed,
        "curl": inferred, "router rollback": rolled_back,
    }
    shell_env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    for command in commands:
        run = subprocess.run(["bash", "-c", command.replace("localhost:8080", d.http)], cwd=tmp_path,
                             env=shell_env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{command}\n{run.stdout}{run.stderr}"
        checks[step(command)](run.stdout)
