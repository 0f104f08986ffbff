"""Traffic split between a model's versions.

A first, simple splitter: a weighted draw, sticky per routing key while the
weights stay the same (the key's CRC-32 picks the point on the cumulative
weight line). The weighted-rendezvous splitter with its compiled twin replaces
it behind this same ``WeightTable.choose`` API.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from itertools import accumulate


class WeightTable:
    """An immutable routing table: versions and their weights (> 0).

    Built once per change and swapped in by one assignment, so a request never
    sees a half-updated table.
    """

    __slots__ = ("versions", "weights", "_cum", "_total")

    def __init__(self, versions: tuple[str, ...], weights: tuple[float, ...]) -> None:
        if len(versions) != len(weights):
            raise ValueError("versions and weights differ in length")
        if any(w <= 0 for w in weights):
            raise ValueError("every weight in a table must be > 0")
        self.versions = versions
        self.weights = weights
        self._cum = list(accumulate(weights))
        self._total = self._cum[-1] if self._cum else 0.0

    def __len__(self) -> int:
        return len(self.versions)

    def choose(self, key: str | bytes | None) -> str | None:
        """The version for a request with routing ``key`` (random by weight when None).

        Returns None when the table is empty.
        """
        n = len(self.versions)
        if n <= 1:
            return self.versions[0] if n else None
        if key is None:
            point = random.random() * self._total
        else:
            if isinstance(key, str):
                # aiohttp decodes header bytes that are not UTF-8 with surrogateescape:
                # undo it, so the key hashes as the same bytes it would over TCP.
                key = key.encode("utf-8", "surrogateescape")
            point = (zlib.crc32(key) / 4294967296.0) * self._total
        return self.versions[min(bisect_right(self._cum, point), n - 1)]
