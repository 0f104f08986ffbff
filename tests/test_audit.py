"""The audit trail (router.audit): every change asked of the control plane is recorded once it ends, with
who asked and how it ended (ok, refused, failed), newest first, in memory and in its file, which a
restart reads back. In process over fake workers; the admin API and the CLI are in test_versions_cli.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes import Replicas
from test_rollout import started

from router import audit
from router.audit import AuditTrail, actor
from router.proto.errors import ConfigError, DeployFailed, VersionInUse


def test_each_change_is_recorded_with_who_what_and_how_it_ended(tmp_path):
    async def main() -> None:
        s, _ = await started(tmp_path, Replicas(fail_warmup=("4",)))
        c = s.control
        actor.set("alice@127.0.0.1")
        await c.set_traffic("fraud", {"1": 80, "2": 20})
        with pytest.raises(ConfigError):
            await c.set_traffic("fraud", {"9": 1})
        with pytest.raises(DeployFailed):
            await c.rollout("fraud", "4", shadow=0.5)
        await c.rollout("fraud", "3", percent=10)
        actor.set("bob@10.0.0.2")
        with pytest.raises(VersionInUse):
            await c.remove("fraud", "1")
        await c.rollback("fraud")

        entries = (await c.audit_trail()).entries
        assert [(e["who"], e["action"], e["version"], e["result"]) for e in entries] == [
            ("bob@10.0.0.2", "rollback", None, "ok"),
            ("bob@10.0.0.2", "remove", "1", "refused"),
            ("alice@127.0.0.1", "rollout", "3", "ok"),
            ("alice@127.0.0.1", "rollout", "4", "failed"),
            ("alice@127.0.0.1", "traffic", None, "refused"),
            ("alice@127.0.0.1", "traffic", None, "ok"),
        ]
        assert all(e["model"] == "fraud" for e in entries)
        assert entries[-1]["detail"] == {"weights": {"1": 80, "2": 20}} and entries[-1]["error"] is None
        assert entries[2]["detail"] == {"percent": 10} and entries[3]["detail"] == {"shadow": 0.5}
        assert "9" in entries[-2]["error"] and "unknown version" in entries[-2]["error"]
        assert "in use" in entries[1]["error"] or "pool" in entries[1]["error"]
        assert [e["time"] for e in entries] == sorted((e["time"] for e in entries), reverse=True)
        assert [e["action"] for e in (await c.audit_trail("fraud", limit=2)).entries] == ["rollback", "remove"]
        assert (await c.audit_trail("churn")).entries == []

        # The file beside config.toml has them all, oldest first; a restart reads them back.
        lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert lines == entries[::-1]
        again = AuditTrail(tmp_path / "audit.jsonl")
        await again.load()
        assert again.entries() == entries
        await s.deployments.stop()

    asyncio.run(main())


def test_the_file_is_rotated_and_a_damaged_line_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "ROTATE_BYTES", 600)
    path = tmp_path / "audit.jsonl"

    async def main() -> None:
        trail = AuditTrail(path)
        for i in range(8):
            async with trail.change("traffic", "fraud", detail={"weights": {"1": i}}):
                pass
        assert path.with_name("audit.jsonl.1").exists() and path.stat().st_size < 600 + 200
        with path.open("a") as f:
            f.write("{not json\n")
        again = AuditTrail(path)
        await again.load()
        # The current file's entries (the rotated generation is kept on disk, not read back).
        assert [e["detail"]["weights"]["1"] for e in again.entries()] == \
            [json.loads(line)["detail"]["weights"]["1"] for line in path.read_text().splitlines()[:-1]][::-1]

    asyncio.run(main())


def test_a_trail_that_cannot_be_written_keeps_the_change_and_the_entry(tmp_path):
    async def main() -> None:
        trail = AuditTrail(tmp_path / "missing-folder" / "audit.jsonl")
        async with trail.change("reload"):
            pass
        assert [e["result"] for e in trail.entries()] == ["ok"]

    asyncio.run(main())


def test_outcomes():
    from router.proto.errors import NotFound, ValidationFailed

    assert audit.outcome(NotFound("x")) == "refused"
    assert audit.outcome(ValidationFailed("x")) == "failed"
    assert audit.outcome(DeployFailed("x")) == "failed"
    assert audit.outcome(RuntimeError("x")) == "failed"
