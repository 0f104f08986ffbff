"""The prediction log's files: one Parquet file open per (model, version), rotated by size and age, expired
by age and by each model's total size.

Layout: ``<root>/<model>/<version>/date=<YYYY-MM-DD>/<HHMMSS>-<host>-<pid>-<n>.parquet`` (UTC). A file
is written under a name that starts with a dot and renamed when it is closed, so readers (pandas,
polars, DuckDB, which all skip dot files) only ever see whole files; the ``date=`` directories read
as a ``date`` column. The host and pid in the name keep the files of several routers sharing one
volume apart.

Every failure to write (an unwritable folder, a full disk) costs the rows it concerns, which are
counted, never the process: the next rows try again, at most once a second per file.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("runtime.predlog")

#: Seconds before a file that failed is tried again.
RETRY_S = 1.0
#: Rows a file gathers in memory before they go out as one row group.
ROW_GROUP_ROWS = 4096
#: Seconds rows may wait in memory: a row group is written at least this often.
FLUSH_S = 5.0


@dataclass(frozen=True, slots=True)
class Policy:
    """How files rotate and expire (``[predlog]`` in config.toml)."""

    file_bytes: int = 64 << 20
    file_s: float = 300.0
    retain_s: float = 7 * 86400.0
    retain_bytes: int = 10 << 30


@dataclass(slots=True)
class Totals:
    """What one model's log has done: records written and lost, and what its files take on disk."""

    written: int = 0
    failed: int = 0
    bytes: int = 0
    files: int = 0


@dataclass(slots=True)
class _Open:
    """One (model, version)'s file being written, and the rows waiting for its next row group."""

    schema: pa.Schema
    final: Path | None = None
    tmp: Path | None = None
    writer: pq.ParquetWriter | None = None
    opened: float = 0.0
    flushed: float = 0.0
    failed_at: float = -RETRY_S
    columns: list[list] = field(default_factory=list)
    rows: int = 0
    records: int = 0  # the records the waiting rows come from (counted written or failed with them)


class LogFiles:
    """The log's open files and its retention.

    Args:
        root: the log's directory (``[predlog] path``).
        policy: rotation and retention.
        clock: wall-clock seconds (tests pass their own to age files without waiting).
    """

    def __init__(self, root: Path, policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.policy = policy
        self.clock = clock
        self.totals: dict[str, Totals] = {}
        self._open: dict[tuple[str, str], _Open] = {}
        self._seq = 0
        self._tag = f"{_safe(socket.gethostname())}-{os.getpid()}"
        self._swept = 0.0

    def totals_of(self, model: str) -> Totals:
        t = self.totals.get(model)
        if t is None:
            t = self.totals[model] = Totals()
        return t

    def add(self, model: str, version: str, schema: pa.Schema, columns: list[list], records: int = 1) -> None:
        """Queue rows (one list of values per column of ``schema``, all of one length) for (model, version).

        A version whose signature changed (a new schema under the same name cannot happen in the store,
        whose versions are immutable; a test may still do it) starts a new file.
        """
        key = (model, version)
        f = self._open.get(key)
        if f is not None and f.schema != schema:
            self._close(model, f)
            f = None
        if f is None:
            f = self._open[key] = _Open(schema, columns=[[] for _ in schema], flushed=self.clock())
        for acc, values in zip(f.columns, columns, strict=True):
            acc.extend(values)
        f.rows += len(columns[0]) if columns else 0
        f.records += records
        if f.rows >= ROW_GROUP_ROWS:
            self._flush(model, version, f)

    def tick(self) -> None:
        """Write row groups that have waited ``FLUSH_S``, close files past their age, expire old ones."""
        now = self.clock()
        for (model, version), f in list(self._open.items()):
            if f.writer is not None and now - f.opened >= self.policy.file_s:
                self._flush(model, version, f)
                self._close(model, f)
                del self._open[(model, version)]
            elif f.rows and now - f.flushed >= min(FLUSH_S, self.policy.file_s):
                self._flush(model, version, f)
        if now - self._swept >= 60.0:
            self.sweep()

    def close(self) -> None:
        """Write what waits and close every file (on shutdown)."""
        for (model, version), f in list(self._open.items()):
            self._flush(model, version, f)
            self._close(model, f)
        self._open.clear()

    # -- writing ---------------------------------------------------------------------------------------

    def _flush(self, model: str, version: str, f: _Open) -> None:
        """Write the waiting rows as one row group of the open file (opening one when needed)."""
        if not f.rows:
            return
        now = self.clock()
        f.flushed = now
        records = f.records
        columns = f.columns
        f.columns, f.rows, f.records = [[] for _ in f.schema], 0, 0
        totals = self.totals_of(model)
        if f.writer is None and now - f.failed_at < RETRY_S:
            totals.failed += records  # failed a moment ago: no new try per record
            return
        try:
            if f.writer is None:
                self._start(model, version, f, now)
            assert f.writer is not None and f.tmp is not None
            table = pa.Table.from_arrays([pa.array(c, type=t.type) for c, t in zip(columns, f.schema, strict=True)],
                                         schema=f.schema)
            f.writer.write_table(table)
            size = f.tmp.stat().st_size
        except (OSError, pa.ArrowException) as exc:
            totals.failed += records
            f.failed_at = now
            log.warning("prediction log %s/%s: %d record(s) not written: %s", model, version, records, exc)
            self._abandon(f)
            return
        totals.written += records
        if size >= self.policy.file_bytes:
            self._close(model, f)

    def _start(self, model: str, version: str, f: _Open, now: float) -> None:
        day = datetime.fromtimestamp(now, UTC)
        folder = self.root / model / version / f"date={day:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{day:%H%M%S}-{self._tag}-{self._seq}.parquet"
        f.final = folder / name
        f.tmp = folder / f".{name}"
        f.writer = pq.ParquetWriter(f.tmp, f.schema, compression="zstd")
        f.opened = now

    def _close(self, model: str, f: _Open) -> None:
        """Close the open file and give it its final name (readers see it from now on)."""
        if f.writer is None:
            return
        try:
            f.writer.close()
            assert f.tmp is not None and f.final is not None
            os.replace(f.tmp, f.final)
            t = self.totals_of(model)
            t.bytes += f.final.stat().st_size
            t.files += 1
        except OSError as exc:
            log.warning("prediction log: could not close %s: %s", f.final, exc)
            f.failed_at = self.clock()
            self._abandon(f)
            return
        f.writer = f.tmp = f.final = None

    @staticmethod
    def _abandon(f: _Open) -> None:
        """Forget a file that failed (its rows were counted as failed); the next rows begin a new one."""
        try:
            if f.writer is not None:
                f.writer.close()
        except (OSError, pa.ArrowException):
            pass
        if f.tmp is not None:
            try:
                f.tmp.unlink(missing_ok=True)
            except OSError:
                pass
        f.writer = f.tmp = f.final = None

    # -- retention -------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Delete files past ``retain_s``, then each model's oldest past ``retain_bytes``; recount sizes."""
        now = self._swept = self.clock()
        try:
            models = [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return
        for model_dir in models:
            files = []
            for p in model_dir.glob("*/date=*/[!.]*.parquet"):  # not the files being written
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, p))
            files.sort()
            total = sum(size for _, size, _ in files)
            kept = len(files)
            for mtime, size, p in files:
                if now - mtime < self.policy.retain_s and total <= self.policy.retain_bytes:
                    break
                try:
                    p.unlink()
                except OSError as exc:
                    log.warning("prediction log: could not delete %s: %s", p, exc)
                    continue
                total -= size
                kept -= 1
                _prune(p.parent, model_dir)
            t = self.totals_of(model_dir.name)
            t.bytes, t.files = total, kept


def _prune(folder: Path, stop: Path) -> None:
    """Remove empty folders from ``folder`` up to (not including) ``stop``."""
    while folder != stop:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): done
            return
        folder = folder.parent


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "host"
