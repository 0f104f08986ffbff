"""The prediction log in process: records decoded into rows (three body formats, batches, errors, shadow
answers), real Parquet files rotated by size and age and expired by age and size, read back by pandas,
polars and DuckDB in one call each; failures (an unwritable folder, a file size limit like a full disk)
counted; and the router's hand-over to a writer that stopped reading drops and counts, never waits.
The whole path through a daemon is in test_predlog_daemon.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import pyarrow as pa
import pytest

from router.client._oip import encode_infer
from router.config import PredlogConfig
from router.predlog import PredictionLog, _WriterLink
from router.proto.framing import FrameScanner
from router.proto.link import FMT_BINARY, FMT_JSON, FMT_MSGPACK
from router.proto.meta import parse_meta
from runtime.codecs import decode_request, encode_response
from runtime.predlog.files import LogFiles, Policy
from runtime.predlog.records import FIELDS, key_hash, rows_of, schema_of

META = parse_meta({
    "name": "m", "version": "1",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}, {"name": "k", "datatype": "INT64", "shape": [-1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "p", "datatype": "FP64", "shape": [-1, 1]}],
    "example": {"x": [[0, 0, 0]], "k": [0]},
})
FORMATS = {"json": FMT_JSON, "binary": FMT_BINARY, "msgpack": FMT_MSGPACK}


def meta_of(model: str, version: str):
    return META if (model, version) == ("m", "1") else None


def inputs(n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "k": np.arange(n, dtype=np.int64) + 100}


def outputs_of(ins: dict[str, np.ndarray]) -> list[np.ndarray]:
    x = ins["x"]
    return [np.stack([x.sum(1), -x.sum(1)], 1), (x[:, :1] * 0.5).astype(np.float64)]


def request(fmt: str, n: int, rid: str | None = "r-1") -> tuple[int, bytes, int, bytes, int]:
    """``(fmt, body, header_len, reply, reply_header_len)`` of a request with ``n`` rows, as a worker answers it."""
    ins = inputs(n)
    body, headers = encode_infer(ins, None, rid, fmt)
    hlen = int(headers.get("Inference-Header-Content-Length", 0))
    code = FORMATS[fmt]
    req = decode_request(code, body, hlen, META)
    reply_hlen, reply = encode_response(req, outputs_of(ins), META)
    return code, body, hlen, reply, reply_hlen


def record(route: str = "live", fmt: str = "json", n: int = 2, status: int = 200, key: str | None = "user-7",
           **changes: object) -> list:
    code, body, hlen, reply, reply_hlen = request(fmt, n)
    r = dict(route=route, request_id="id-1", time=1_780_000_000.25, model="m", version="1", protocol="http",
             key=key, status=status, latency_s=0.002, fmt=code, header_len=hlen, body=body,
             reply_header_len=reply_hlen, reply=reply, live_version=None, shadow_reply=None)
    r.update(changes)
    return [r[f] for f in FIELDS]


def table(rows) -> pa.Table:
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(rows.columns, rows.schema, strict=True)],
                                schema=rows.schema)


# -- records -> rows -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_request_becomes_one_row_per_batch_row_whatever_its_body_format(fmt):
    rows = rows_of(record(fmt=fmt, n=3), meta_of)
    t = table(rows).to_pylist()
    assert rows.n == 3 and [r["row"] for r in t] == [0, 1, 2]
    ins, outs = inputs(3), outputs_of(inputs(3))
    for i, r in enumerate(t):
        assert r["request_id"] == "id-1" and r["client_id"] == "r-1" and r["model"] == "m" and r["version"] == "1"
        assert r["route"] == "live" and r["live_version"] is None and r["status"] == 200 and r["error"] is None
        assert r["latency_ms"] == pytest.approx(2.0) and r["time"].timestamp() == 1_780_000_000.25
        assert r["key_hash"] == key_hash("user-7") and len(r["key_hash"]) == 16
        assert r["input.x"] == ins["x"][i].tolist() and r["input.k"] == int(ins["k"][i])  # [-1]: a scalar column
        assert r["output.y"] == outs[0][i].tolist()
        assert r["output.p"] == outs[1][i, 0]  # [-1, 1]: one value per row, a scalar column too
        assert r["live.y"] is None and r["live.p"] is None


def test_an_error_keeps_what_happened_and_the_inputs_it_could_read():
    rows = rows_of(record(status=500, reply=b"model raised RuntimeError: boom"), meta_of)
    t = table(rows).to_pylist()
    assert [r["error"] for r in t] == ["model raised RuntimeError: boom"] * 2
    assert all(r["output.y"] is None and r["input.x"] is not None for r in t)
    # A body the worker refused as malformed: one row, no inputs, the status and the message.
    bad = table(rows_of(record(status=400, body=b'{"inputs": 5}', reply=b"'inputs' must be a list"),
                        meta_of)).to_pylist()
    assert len(bad) == 1 and bad[0]["input.x"] is None and bad[0]["status"] == 400
    assert bad[0]["error"] == "'inputs' must be a list"


def test_a_shadow_row_holds_its_own_outputs_beside_the_live_ones():
    ins = inputs(2)
    theirs = [o + 1 for o in outputs_of(ins)]
    _, shadow_reply = encode_response(decode_request(FMT_MSGPACK, encode_infer(ins, None, None, "msgpack")[0], 0,
                                                     META), theirs, META)
    t = table(rows_of(record("shadow", version="1", live_version="0", shadow_reply=shadow_reply), meta_of))
    live = outputs_of(ins)
    for i, r in enumerate(t.to_pylist()):
        assert r["route"] == "shadow" and r["live_version"] == "0"
        assert r["output.y"] == theirs[0][i].tolist() and r["live.y"] == live[0][i].tolist()
        assert r["input.x"] == ins["x"][i].tolist()
    timed_out = table(rows_of(record("shadow", status=504, shadow_reply=b"deadline exceeded"), meta_of)).to_pylist()
    assert timed_out[0]["error"] == "deadline exceeded" and timed_out[0]["live.y"] is not None


def test_a_version_without_a_readable_signature_still_gets_a_row():
    rows = rows_of(record(version="9"), meta_of)
    assert rows.n == 1 and rows.schema.names == [f.name for f in rows.schema if "." not in f.name]
    assert table(rows).to_pylist()[0]["status"] == 200


def test_a_record_of_another_layout_is_refused():
    with pytest.raises(ValueError, match="16 fields"):
        rows_of(record()[:-1], meta_of)


# -- files -----------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now


def add(files: LogFiles, n: int, version: str = "1", fmt: str = "json") -> None:
    for _ in range(n):
        rows = rows_of(record(fmt=fmt, version=version), lambda m, v: META)
        files.add(rows.model, rows.version, rows.schema, rows.columns)


def closed(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


def test_files_rotate_by_size_and_every_reader_loads_them_in_one_call(tmp_path):
    import duckdb  # the readers are imported where used: they cost the fast layer's collection a second
    import pandas as pd
    import polars as pl

    files = LogFiles(tmp_path, Policy(file_bytes=4096))
    for _ in range(30):
        add(files, 20)
        files._flush("m", "1", files._open[("m", "1")])  # a row group per 20 records: files grow past 4 KiB
    files.close()
    written = closed(tmp_path)
    assert len(written) > 2 and files.totals["m"].written == 600 and files.totals["m"].files == len(written)
    assert all(p.parent.name.startswith("date=") and p.parent.parent.name == "1" for p in written)
    assert not [p for p in tmp_path.rglob(".*")]  # nothing left half-written
    version_dir = tmp_path / "m" / "1"
    df = pd.read_parquet(version_dir)
    assert len(df) == 1200 and list(df.columns[:3]) == ["request_id", "client_id", "time"] and "date" in df
    assert pl.read_parquet(version_dir / "**" / "*.parquet").height == 1200
    assert duckdb.sql(f"select count(*), count(distinct request_id) from "
                      f"read_parquet('{tmp_path}/m/*/*/*.parquet', hive_partitioning = true)").fetchall() == [(1200, 1)]


def test_a_file_is_closed_at_its_age_and_is_invisible_until_then(tmp_path):
    import pandas as pd

    clock = Clock()
    files = LogFiles(tmp_path, Policy(file_s=60), clock)
    add(files, 3)
    clock.now += 5
    files.tick()  # rows flushed into a file being written, which readers do not see yet
    assert files.totals["m"].written == 3 and closed(tmp_path) == []
    assert len(list(tmp_path.rglob(".*.parquet"))) == 1
    assert pd.read_parquet(tmp_path / "m").empty
    clock.now += 60
    files.tick()
    assert len(closed(tmp_path)) == 1 and len(pd.read_parquet(tmp_path / "m")) == 6
    add(files, 1)  # the next rows begin the next file, which is 60 s old 60 s after its first row group
    clock.now += 5
    files.tick()
    clock.now += 59
    files.tick()
    assert len(closed(tmp_path)) == 1
    clock.now += 1
    files.tick()
    assert len(closed(tmp_path)) == 2


def test_retention_deletes_files_past_their_age_then_the_oldest_past_the_size(tmp_path):
    clock = Clock()
    files = LogFiles(tmp_path, Policy(file_s=1, retain_s=3600, retain_bytes=1 << 20), clock)
    for version in ("1", "2", "3", "4"):
        add(files, 5, version)
        files.close()
    paths = {p.parts[-3]: p for p in closed(tmp_path)}
    ages = {"1": 7200, "2": 1800, "3": 600, "4": 0}  # seconds before now
    for v, p in paths.items():
        os.utime(p, (clock.now - ages[v], clock.now - ages[v]))
    files.sweep()
    assert sorted(p.parts[-3] for p in closed(tmp_path)) == ["2", "3", "4"]
    assert not (tmp_path / "m" / "1").exists()  # its emptied folders go too
    size = paths["3"].stat().st_size + paths["4"].stat().st_size
    files.policy = Policy(retain_s=3600, retain_bytes=size)
    files.sweep()
    assert sorted(p.parts[-3] for p in closed(tmp_path)) == ["3", "4"]
    assert files.totals["m"].files == 2 and files.totals["m"].bytes == size


def test_an_unwritable_folder_costs_the_rows_not_the_writer_and_is_tried_again(tmp_path):
    import pandas as pd

    clock = Clock()
    blocked = tmp_path / "m"
    blocked.write_text("not a folder")
    files = LogFiles(tmp_path, Policy(file_s=10), clock)
    add(files, 4)
    clock.now += 5
    files.tick()
    add(files, 2)
    files.close()  # within a second of the failure: counted without another try
    assert files.totals["m"].failed == 6 and files.totals["m"].written == 0
    blocked.unlink()
    clock.now += 2
    add(files, 3)
    files.close()
    assert files.totals["m"].written == 3 and len(pd.read_parquet(tmp_path / "m")) == 6


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    sys.path[:0] = [{tests!r}, {root!r}]
    from test_predlog import add, Clock
    from runtime.predlog.files import LogFiles, Policy
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like ENOSPC
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
    clock = Clock()
    files = LogFiles(Path(sys.argv[1]), Policy(file_bytes=1 << 30), clock)
    for _ in range(20):
        add(files, 10)
        clock.now += 6
        files.tick()
    t = files.totals["m"]
    print(t.written, t.failed)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    clock.now += 2
    add(files, 10)
    files.close()
    print(t.written, t.failed)
""")


@pytest.mark.daemon  # another Python process
def test_a_file_that_can_grow_no_more_costs_its_rows_and_writing_goes_on(tmp_path):
    """A full disk, as the writer sees it: writes fail (here: past RLIMIT_FSIZE) while the folder is fine."""
    import pandas as pd

    script = FULL_DISK.format(tests=str(Path(__file__).parent), root=str(Path(__file__).parent.parent))
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (written1, failed1), (written2, failed2) = (map(int, line.split()) for line in out.stdout.split("\n")[:2])
    assert written1 > 0 and failed1 > 0 and written1 + failed1 == 200
    assert written2 == written1 + 10 and failed2 == failed1
    assert "not written" in out.stderr
    assert 2 * 10 <= len(pd.read_parquet(tmp_path / "m")) <= 2 * written2  # files that failed were removed


# -- the router's hand-over ------------------------------------------------------------------------------


class FakeExchange:
    """What :meth:`PredictionLog.live` reads of a request."""

    def __init__(self, body: bytes) -> None:
        self.model, self.answered, self.protocol, self.key = "m", "1", "http", "user-1"
        self.fmt, self.header_len, self.body, self.t0 = FMT_JSON, 0, body, 0.0


def test_a_writer_that_stops_reading_makes_records_drop_and_count_never_wait(tmp_path):
    asyncio.run(_stalled_writer(tmp_path))


async def _stalled_writer(tmp_path: Path) -> None:
    plog = PredictionLog(PredlogConfig(path=tmp_path, queue_bytes=65536), tmp_path, 1 << 20)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    _, link = await loop.create_unix_connection(lambda: _WriterLink(plog), sock=ours)
    plog._link = link  # a writer that is up but reads nothing: the socket buffer, then the queue, fill
    ex = FakeExchange(b"x" * 16384)
    for _ in range(400):
        plog.live(ex, 200, 0, b"{}")  # type: ignore[arg-type]
    c = plog.counts["m"]
    assert c.sampled == 400 and c.dropped[0] > 0 and c.handed + c.dropped[0] == 400
    assert link.transport.get_write_buffer_size() <= 65536
    # What was handed over is whole: every frame decodes, in order.
    theirs.setblocking(False)
    scanner, got = FrameScanner(1 << 20), []
    while len(got) < c.handed:
        await asyncio.sleep(0.01)
        try:
            got += scanner.feed(theirs.recv(1 << 20))
        except BlockingIOError:
            pass
    assert [msgpack.unpackb(f)[1] for f in got] == [f"{plog._prefix}-{i:x}" for i in range(1, 401)][:c.handed]
    link.transport.close()
    theirs.close()


def test_records_with_no_writer_running_drop_as_writer_down(tmp_path):
    plog = PredictionLog(PredlogConfig(path=tmp_path), tmp_path, 1 << 20)
    plog._stopping = True  # no writer may start here
    plog.live(FakeExchange(b"{}"), 200, 0, b"{}")  # type: ignore[arg-type]
    assert plog.dropped("m") == {"queue_full": 0, "writer_down": 1, "write_failed": 0}


def test_schema_has_the_signature_s_columns():
    assert schema_of(META).names[-6:] == ["input.x", "input.k", "output.y", "output.p", "live.y", "live.p"]
    assert str(schema_of(META).field("input.x").type) == "list<item: float>"
    assert str(schema_of(META).field("output.p").type) == "double"

