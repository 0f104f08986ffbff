"""Metrics labels only ever name what the configuration names: no client can grow ``/metrics``.

In process: the real fronts (HTTP hot path, the aiohttp application, msgpack
TCP) on loopback ports, in front of fake workers (tests/fakes.py).
"""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path

import msgpack
from fakes import Replicas, fake_store
from prometheus_client import generate_latest

from router.config import parse_config
from router.server import Server

N = 10_000  # requests naming versions that do not exist, over the three fronts together


def samples(server: Server) -> set[str]:
    """The series on /metrics (sample lines without their values)."""
    text = generate_latest(server.metrics.registry).decode()
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def random_version(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=12))


async def http_requests(port: int, paths: list[str]) -> list[int]:
    """POST each path on one keep-alive connection (pipelined); the statuses, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"inputs": []}'
    writer.write(b"".join(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (p.encode(), len(body), body)
                          for p in paths))
    await writer.drain()
    statuses = []
    for _ in paths:
        line = await reader.readline()
        statuses.append(int(line.split()[1]))
        length = 0
        while (h := await reader.readline()) != b"\r\n":
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        await reader.readexactly(length)
    writer.close()
    return statuses


async def msgpack_requests(port: int, versions: list[str]) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for i, v in enumerate(versions):
        body = msgpack.packb([i, "fraud", v, None, {"inputs": {}}])
        out.append(len(body).to_bytes(4, "big") + body)
    writer.write(b"".join(out))
    await writer.drain()
    statuses = []
    for _ in versions:
        n = int.from_bytes(await reader.readexactly(4), "big")
        statuses.append(msgpack.unpackb(await reader.readexactly(n))[1])
    writer.close()
    return statuses


def test_random_versions_over_every_front_leave_the_metrics_series_unchanged(tmp_path: Path):
    """Defect: 6,300 such requests grew /metrics from 45 to 102,377 series."""
    store = fake_store(tmp_path / "store", {"fraud": ["1", "2"]})
    config = parse_config({
        "server": {"http": "127.0.0.1:0", "msgpack": "127.0.0.1:0"}, "store": {"path": str(store)},
        "models": [{"name": "fraud", "versions": [{"version": "1", "weight": 1}, {"version": "2", "weight": 1}]}]})
    rng = random.Random(7)

    async def main() -> None:
        s = Server(config, replica_factory=Replicas())
        await s.start()
        try:
            http_port = s._http.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            wire_port = s._wire.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            assert await http_requests(http_port, ["/v2/models/fraud/infer"]) == [200]
            before = samples(s)
            hot = [f"/v2/models/fraud/versions/{random_version(rng)}/infer" for _ in range(N * 4 // 10)]
            # A percent-escape hands the connection to the aiohttp application.
            fallback = [f"/v2/models/fraud/versions/%41{random_version(rng)}/infer" for _ in range(N * 2 // 10)]
            wire = [random_version(rng) for _ in range(N * 4 // 10)]
            assert await http_requests(http_port, hot) == [404] * len(hot)
            # aiohttp closes a handed-over connection once answered: one connection each.
            for i in range(0, len(fallback), 50):
                batch = [http_requests(http_port, [p]) for p in fallback[i:i + 50]]
                assert await asyncio.gather(*batch) == [[404]] * len(batch)
            assert await msgpack_requests(wire_port, wire) == [404] * len(wire)
            after = samples(s)
            assert after == before, sorted(after - before)[:5]
            assert "router_requests_total{model=\"fraud\",protocol=\"http\",route=\"live\",status=\"404\"," \
                   "version=\"\"} 6000.0" in generate_latest(s.metrics.registry).decode()
        finally:
            s.request_stop()
            await s.stop()

    asyncio.run(main())
