"""Weighted rendezvous splitting: the pure-Python specification.

``ext/_splitter.pyx`` (built as ``router._splitter_c``) mirrors this module
function for function with bit-identical results; this file is the reference.

A keyed request goes to the version with the lowest score ``-log(u_v) / w_v``,
where ``u_v`` in (0, 1) is a fixed hash of the key and the version's name
(weighted rendezvous / highest-random-weight hashing, the exponential-race
form: version ``v`` wins with probability ``w_v / sum(w)``). A version's score
depends only on the key, its own name and its own weight, so raising one weight
only moves keys into that version, lowering it only moves keys out, and adding
or removing a version only moves the keys it wins or held.

``MirrorTable`` picks the shadow versions that get a copy of a live request:
version ``v`` is picked when ``u_v < fraction_v``, with ``u_v`` in [0, 1) a fixed
hash of the key and the version's name under a seed of its own (``SHADOW_SEED``),
so whether a key is mirrored is independent of where it is routed, the same in
every process, and raising a fraction only adds keys.

Everything is integer arithmetic masked to 64 bits plus IEEE-754 doubles and
the C library's ``log`` (``math.log`` calls it for finite positive arguments),
so the compiled twin computes the same bits.
"""

from __future__ import annotations

import math
import operator
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SHADOW_SEED", "MirrorTable", "WeightTable", "hash64", "mix64"]

MASK64 = 0xFFFFFFFFFFFFFFFF

# XXH64 primes (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md).
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5

#: splitmix64's increment (the golden ratio in 64 bits).
_GAMMA = 0x9E3779B97F4A7C15
#: 2**-52 and 2**-53, exact doubles.
_TWO_M52 = 2.0**-52
_TWO_M53 = 2.0**-53

#: Seeds the versions' mirror hashes (ASCII "SHADW"): routing seeds them with 0, so a
#: key's mirror picks are independent of the version it is routed to.
SHADOW_SEED = 0x5348414457

_stripe = struct.Struct("<4Q").unpack_from
_lane64 = struct.Struct("<Q").unpack_from
_lane32 = struct.Struct("<I").unpack_from


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & MASK64
    return (_rotl(acc, 31) * _P1) & MASK64


def _merge(acc: int, val: int) -> int:
    return ((acc ^ _round(0, val)) * _P1 + _P4) & MASK64


def hash64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` with ``seed`` (taken modulo 2**64): an int in [0, 2**64).

    Raises:
        TypeError: ``data`` is not ``bytes``.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"hash64() needs bytes, not {type(data).__name__}")
    seed = operator.index(seed) & MASK64
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & MASK64
        v2 = (seed + _P2) & MASK64
        v3 = seed
        v4 = (seed - _P1) & MASK64
        while p <= n - 32:
            a, b, c, d = _stripe(data, p)
            v1 = _round(v1, a)
            v2 = _round(v2, b)
            v3 = _round(v3, c)
            v4 = _round(v4, d)
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & MASK64
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = (seed + _P5) & MASK64
    h = (h + n) & MASK64
    while p + 8 <= n:
        h ^= _round(0, _lane64(data, p)[0])
        h = (_rotl(h, 27) * _P1 + _P4) & MASK64
        p += 8
    if p + 4 <= n:
        h ^= (_lane32(data, p)[0] * _P1) & MASK64
        h = (_rotl(h, 23) * _P2 + _P3) & MASK64
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & MASK64
        h = (_rotl(h, 11) * _P1) & MASK64
        p += 1
    h ^= h >> 33
    h = (h * _P2) & MASK64
    h ^= h >> 29
    h = (h * _P3) & MASK64
    return h ^ (h >> 32)


def mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit ints with full avalanche."""
    x = operator.index(x) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _score(h: int, seed: int, weight: float) -> float:
    # The top 52 bits plus a half: exactly representable, so u is strictly inside
    # (0, 1) (with 53 bits the largest value would round up to 1.0).
    u = ((mix64(h ^ seed) >> 12) + 0.5) * _TWO_M52
    return -math.log(u) / weight


def _unit(x: int) -> float:
    # The top 53 bits: exact, and in [0, 1) (never 1.0), so a fraction of 1 always picks.
    return (mix64(x) >> 11) * _TWO_M53



def _key_bytes(key: str | bytes | None) -> bytes | None:
    """The bytes a routing key hashes as (a str as UTF-8, surrogateescape); None stays None.

    Raises:
        TypeError: ``key`` is not str, bytes or None.
    """
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape")
    if key is None or isinstance(key, bytes):
        return key
    raise TypeError(f"routing key must be str, bytes or None, not {type(key).__name__}")

class WeightTable:
    """An immutable routing table: versions, their weights (> 0) and a keyless draw.

    Built once per change and swapped in by one assignment, so a request never
    sees a half-updated table.

    Args:
        versions: version names; each one's rendezvous seed is the XXH64 of its
            UTF-8 name, so a key maps the same way in every process.
        weights: one weight per version, each > 0 (the caller drops versions of
            weight 0); shares are proportional to the weights.
        seed: seeds the splitmix64 generator used when a request has no key;
            None takes 8 bytes from ``os.urandom``.

    Raises:
        ValueError: the lengths differ, or a weight is not > 0 (NaN included).
    """

    __slots__ = ("versions", "weights", "_seeds", "_w", "_cum", "_state")

    def __init__(self, versions: tuple[str, ...], weights: tuple[float, ...], seed: int | None = None) -> None:
        if len(versions) != len(weights):
            raise ValueError("versions and weights differ in length")
        w = [float(x) for x in weights]
        if not all(x > 0 for x in w):
            raise ValueError("every weight in a table must be > 0")
        self.versions = tuple(versions)
        self.weights = tuple(weights)
        self._seeds = [hash64(v.encode("utf-8", "surrogateescape")) for v in self.versions]
        self._w = w
        cum, total = [], 0.0
        for x in w:
            total += x
            cum.append(total)
        self._cum = cum
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._state = operator.index(seed) & MASK64

    def __len__(self) -> int:
        return len(self.versions)

    def _draw(self) -> int:
        """The next keyless pick: splitmix64 on the cumulative weight line."""
        self._state = (self._state + _GAMMA) & MASK64
        point = (mix64(self._state) >> 11) * _TWO_M53 * self._cum[-1]
        # A linear scan (versions are few): the first cumulative weight above the point.
        last = len(self._cum) - 1
        i = 0
        while i < last and self._cum[i] <= point:
            i += 1
        return i

    def _rendezvous(self, h: int) -> int:
        seeds, w = self._seeds, self._w
        best = 0
        best_score = _score(h, seeds[0], w[0])
        for i in range(1, len(seeds)):
            s = _score(h, seeds[i], w[i])
            if s < best_score:  # ties go to the earlier version
                best, best_score = i, s
        return best

    def index(self, key: str | bytes | None) -> int:
        """The index in ``versions`` for a request with routing ``key``; -1 when empty.

        A str key is hashed as its UTF-8 bytes (surrogateescape, so a header that
        aiohttp decoded that way hashes as the bytes that arrived). None draws
        from the table's generator by weight.

        Raises:
            TypeError: ``key`` is not str, bytes or None.
        """
        n = len(self._seeds)
        key = _key_bytes(key)
        if n <= 1:
            return n - 1
        if key is None:
            return self._draw()
        return self._rendezvous(hash64(key))

    def choose(self, key: str | bytes | None) -> str | None:
        """The version for a request with routing ``key`` (random by weight when None).

        Returns None when the table is empty. See ``index`` for how keys hash.
        """
        i = self.index(key)
        return self.versions[i] if i >= 0 else None

    def choose_batch(self, keys: np.ndarray) -> np.ndarray:
        """Version indices (int64) for many pre-hashed keys at once.

        Args:
            keys: a 1-D array of dtype uint64 holding ``hash64(key)`` of each
                routing key (hashing is left to the caller, so the batch runs
                without touching Python objects). An empty table gives all -1.

        Raises:
            TypeError: ``keys`` is not a numpy array of dtype uint64.
            ValueError: ``keys`` is not 1-D.
        """
        import numpy as np  # here, not at import: the router process does not load numpy

        if not isinstance(keys, np.ndarray) or keys.dtype != np.uint64:
            raise TypeError("keys must be a numpy array of dtype uint64")
        if keys.ndim != 1:
            raise ValueError("keys must be a 1-D array")
        n = len(self._seeds)
        if n <= 1:
            return np.full(keys.shape[0], n - 1, dtype=np.int64)
        return np.fromiter((self._rendezvous(h) for h in keys.tolist()), dtype=np.int64, count=keys.shape[0])


class MirrorTable:
    """An immutable mirror table: shadow versions, the fraction of traffic each one copies, a keyless draw.

    Built once per change and swapped in by one assignment, like ``WeightTable``.
    Each version decides on its own: a version with fraction ``f`` gets a copy of
    a share ``f`` of the keys, and any number of versions (none included) can get
    the same request.

    Args:
        versions: shadow version names; each one's mirror seed is the XXH64 of
            its UTF-8 name with seed ``SHADOW_SEED``, so a key is mirrored the
            same way in every process, independently of its routing.
        fractions: one fraction per version, each in (0, 1]; 1 mirrors every request.
        seed: seeds the splitmix64 generator used when a request has no key;
            None takes 8 bytes from ``os.urandom``.

    Raises:
        ValueError: the lengths differ, or a fraction is not in (0, 1] (NaN included).
    """

    __slots__ = ("versions", "fractions", "_seeds", "_f", "_singles", "_state")

    def __init__(self, versions: tuple[str, ...], fractions: tuple[float, ...], seed: int | None = None) -> None:
        if len(versions) != len(fractions):
            raise ValueError("versions and fractions differ in length")
        versions = tuple(versions)
        f = [float(x) for x in fractions]
        for v, x in zip(versions, f, strict=True):
            if not 0.0 < x <= 1.0:  # NaN fails too
                raise ValueError(f"the mirror fraction of version {v!r} must be in (0, 1], not {x!r}")
        self.versions = versions
        self.fractions = tuple(fractions)
        self._seeds = [hash64(v.encode("utf-8", "surrogateescape"), SHADOW_SEED) for v in versions]
        self._f = f
        # The answer when one version is picked (the common case), built once so a pick allocates nothing.
        self._singles = tuple((v,) for v in versions)
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._state = operator.index(seed) & MASK64

    def __len__(self) -> int:
        return len(self.versions)

    def pick(self, key: str | bytes | None) -> tuple[str, ...]:
        """The versions (in table order) that get a copy of a request with routing ``key``.

        A keyed request picks version ``v`` when ``u < fractions[v]``, ``u`` in
        [0, 1) from XXH64 of the key (hashed as in ``WeightTable.index``) mixed
        with the version's mirror seed: the same key always gets the same answer.
        None draws one number per version from the table's generator, picked or
        not, so the sequence depends only on the seed.

        Returns ``()`` when no version is picked (and always for an empty table),
        and the same 1-tuple object each time one given version is picked alone.

        Raises:
            TypeError: ``key`` is not str, bytes or None.
        """
        key = _key_bytes(key)
        f = self._f
        if key is None:
            hits = []
            for i in range(len(f)):
                self._state = (self._state + _GAMMA) & MASK64
                if _unit(self._state) < f[i]:
                    hits.append(i)
        else:
            h = hash64(key)
            hits = [i for i, s in enumerate(self._seeds) if _unit(h ^ s) < f[i]]
        if not hits:
            return ()
        if len(hits) == 1:
            return self._singles[hits[0]]
        return tuple(self.versions[i] for i in hits)
