# cython: language_level=3, annotation_typing=False
"""Compiled twin of ``router/_splitter_py.py`` (the specification): same names,
signatures and results, bit for bit. Built as ``router._splitter_c``."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport log
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import os

__all__ = ["SHADOW_SEED", "MirrorTable", "WeightTable", "hash64", "mix64"]

#: Seeds the versions' mirror hashes (ASCII "SHADW"): routing seeds them with 0, so a
#: key's mirror picks are independent of the version it is routed to.
SHADOW_SEED = 0x5348414457


cdef extern from "Python.h":
    # Compact ASCII strings hold their bytes inline: those are the UTF-8 bytes,
    # so the common key is hashed without encoding it.
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    # An int modulo 2**64 (negative ones included), as ``operator.index(x) & MASK64`` in the twin.
    unsigned long long PyLong_AsUnsignedLongLongMask(object o) except? <unsigned long long>-1


cdef extern from *:
    # XXH64 primes (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md), splitmix64's
    # increment, and 2**-52 / 2**-53 as exact doubles: C constants, so they fold into the code.
    """
    #define SPLIT_P1 0x9E3779B185EBCA87ULL
    #define SPLIT_P2 0xC2B2AE3D27D4EB4FULL
    #define SPLIT_P3 0x165667B19E3779F9ULL
    #define SPLIT_P4 0x85EBCA77C2B2AE63ULL
    #define SPLIT_P5 0x27D4EB2F165667C5ULL
    #define SPLIT_GAMMA 0x9E3779B97F4A7C15ULL
    #define SPLIT_TWO_M52 (1.0 / 4503599627370496.0)
    #define SPLIT_TWO_M53 (1.0 / 9007199254740992.0)
    """
    const uint64_t P1 "SPLIT_P1"
    const uint64_t P2 "SPLIT_P2"
    const uint64_t P3 "SPLIT_P3"
    const uint64_t P4 "SPLIT_P4"
    const uint64_t P5 "SPLIT_P5"
    const uint64_t GAMMA "SPLIT_GAMMA"
    const double TWO_M52 "SPLIT_TWO_M52"
    const double TWO_M53 "SPLIT_TWO_M53"


cdef inline uint64_t _read64(const uint8_t* p) noexcept nogil:
    # Little-endian on any host; compilers turn this into one load.
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48) | (<uint64_t>p[7] << 56))


cdef inline uint64_t _read32(const uint8_t* p) noexcept nogil:
    return <uint64_t>(<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24))


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _round(uint64_t acc, uint64_t lane) noexcept nogil:
    acc = acc + lane * P2
    return _rotl(acc, 31) * P1


cdef inline uint64_t _merge(uint64_t acc, uint64_t val) noexcept nogil:
    return (acc ^ _round(0, val)) * P1 + P4


@cython.boundscheck(False)
@cython.wraparound(False)
cdef uint64_t _xxh64(const uint8_t* data, Py_ssize_t n, uint64_t seed) noexcept nogil:
    cdef const uint8_t* p = data
    cdef const uint8_t* end = data + n
    cdef uint64_t v1, v2, v3, v4, h
    if n >= 32:
        v1 = seed + P1 + P2
        v2 = seed + P2
        v3 = seed
        v4 = seed - P1
        while p <= end - 32:
            v1 = _round(v1, _read64(p))
            v2 = _round(v2, _read64(p + 8))
            v3 = _round(v3, _read64(p + 16))
            v4 = _round(v4, _read64(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _merge(h, v1)
        h = _merge(h, v2)
        h = _merge(h, v3)
        h = _merge(h, v4)
    else:
        h = seed + P5
    h += <uint64_t>n
    while p + 8 <= end:
        h ^= _round(0, _read64(p))
        h = _rotl(h, 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h ^= _read32(p) * P1
        h = _rotl(h, 23) * P2 + P3
        p += 4
    while p < end:
        h ^= <uint64_t>p[0] * P5
        h = _rotl(h, 11) * P1
        p += 1
    h ^= h >> 33
    h *= P2
    h ^= h >> 29
    h *= P3
    return h ^ (h >> 32)


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EB
    return x ^ (x >> 31)


cdef inline double _score(uint64_t h, uint64_t seed, double weight) noexcept nogil:
    # The top 52 bits plus a half: exactly representable, so u is strictly inside (0, 1).
    cdef double u = (<double>(_mix64(h ^ seed) >> 12) + 0.5) * TWO_M52
    return -log(u) / weight


cdef inline double _unit(uint64_t x) noexcept nogil:
    # The top 53 bits: exact, and in [0, 1) (never 1.0), so a fraction of 1 always picks.
    return <double>(_mix64(x) >> 11) * TWO_M53


cdef int _key_hash(object key, uint64_t* h) except -1:
    """1 for a str or bytes routing key, with its XXH64 (seed 0) in ``h[0]`` unless ``h`` is NULL;
    0 for None. A str hashes as its UTF-8 bytes (surrogateescape); a compact ASCII one in place."""
    cdef bytes b
    if isinstance(key, str):
        if PyUnicode_IS_COMPACT_ASCII(key):
            if h != NULL:
                h[0] = _xxh64(<const uint8_t*>PyUnicode_DATA(key), PyUnicode_GET_LENGTH(key), 0)
            return 1
        b = (<str>key).encode("utf-8", "surrogateescape")
    elif isinstance(key, bytes):
        b = <bytes>key
    elif key is None:
        return 0
    else:
        raise TypeError(f"routing key must be str, bytes or None, not {type(key).__name__}")
    if h != NULL:
        h[0] = _xxh64(<const uint8_t*>PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), 0)
    return 1


def hash64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` with ``seed`` (taken modulo 2**64): an int in [0, 2**64).

    Raises:
        TypeError: ``data`` is not ``bytes``.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"hash64() needs bytes, not {type(data).__name__}")
    cdef uint64_t s = PyLong_AsUnsignedLongLongMask(seed)
    return _xxh64(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), s)


def mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection of 64-bit ints with full avalanche."""
    return _mix64(PyLong_AsUnsignedLongLongMask(x))


@cython.final
cdef class WeightTable:
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

    cdef readonly tuple versions
    cdef readonly tuple weights
    cdef Py_ssize_t _n
    cdef uint64_t* _seeds
    cdef double* _w
    cdef double* _cum
    cdef uint64_t _state

    def __cinit__(self):
        self._n = 0
        self._seeds = NULL
        self._w = NULL
        self._cum = NULL

    def __init__(self, versions: tuple[str, ...], weights: tuple[float, ...], seed: int | None = None) -> None:
        if len(versions) != len(weights):
            raise ValueError("versions and weights differ in length")
        w = [float(x) for x in weights]
        if not all(x > 0 for x in w):
            raise ValueError("every weight in a table must be > 0")
        self.versions = tuple(versions)
        self.weights = tuple(weights)
        seeds = [hash64(v.encode("utf-8", "surrogateescape")) for v in self.versions]
        cdef Py_ssize_t n = len(w)
        cdef Py_ssize_t i
        cdef double total = 0.0
        self._release()
        if n:
            self._seeds = <uint64_t*>malloc(n * sizeof(uint64_t))
            self._w = <double*>malloc(n * sizeof(double))
            self._cum = <double*>malloc(n * sizeof(double))
            if self._seeds == NULL or self._w == NULL or self._cum == NULL:
                self._release()
                raise MemoryError()
            for i in range(n):
                self._seeds[i] = <uint64_t>seeds[i]
                self._w[i] = <double>w[i]
                total += self._w[i]
                self._cum[i] = total
        self._n = n
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._state = PyLong_AsUnsignedLongLongMask(seed)

    cdef void _release(self) noexcept:
        free(self._seeds)
        free(self._w)
        free(self._cum)
        self._seeds = NULL
        self._w = NULL
        self._cum = NULL
        self._n = 0

    def __dealloc__(self):
        self._release()

    def __len__(self) -> int:
        return self._n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _draw(self) noexcept:
        """The next keyless pick: splitmix64 on the cumulative weight line."""
        self._state += GAMMA
        cdef double point = <double>(_mix64(self._state) >> 11) * TWO_M53 * self._cum[self._n - 1]
        cdef Py_ssize_t last = self._n - 1
        cdef Py_ssize_t i = 0
        while i < last and self._cum[i] <= point:
            i += 1
        return i

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline Py_ssize_t _rendezvous(self, uint64_t h) noexcept nogil:
        cdef Py_ssize_t best = 0
        cdef double best_score = _score(h, self._seeds[0], self._w[0])
        cdef double s
        cdef Py_ssize_t i
        for i in range(1, self._n):
            s = _score(h, self._seeds[i], self._w[i])
            if s < best_score:  # ties go to the earlier version
                best = i
                best_score = s
        return best

    cdef Py_ssize_t _index(self, key) except -2:
        cdef uint64_t h
        if self._n <= 1:  # nothing to choose: the key is only checked, not hashed
            _key_hash(key, NULL)
            return self._n - 1
        if _key_hash(key, &h):
            return self._rendezvous(h)
        return self._draw()

    def index(self, key: str | bytes | None) -> int:
        """The index in ``versions`` for a request with routing ``key``; -1 when empty.

        A str key is hashed as its UTF-8 bytes (surrogateescape, so a header that
        aiohttp decoded that way hashes as the bytes that arrived). None draws
        from the table's generator by weight.

        Raises:
            TypeError: ``key`` is not str, bytes or None.
        """
        return self._index(key)

    def choose(self, key: str | bytes | None) -> str | None:
        """The version for a request with routing ``key`` (random by weight when None).

        Returns None when the table is empty. See ``index`` for how keys hash.
        """
        cdef Py_ssize_t i = self._index(key)
        return self.versions[i] if i >= 0 else None

    @cython.boundscheck(False)
    @cython.wraparound(False)
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
        cdef Py_ssize_t m = keys.shape[0]
        if self._n <= 1:
            return np.full(m, self._n - 1, dtype=np.int64)
        out = np.empty(m, dtype=np.int64)
        cdef const uint64_t[:] k = keys
        cdef int64_t[::1] o = out
        cdef Py_ssize_t j
        with nogil:
            for j in range(m):
                o[j] = self._rendezvous(k[j])
        return out


@cython.final
cdef class MirrorTable:
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

    cdef readonly tuple versions
    cdef readonly tuple fractions
    cdef tuple _singles
    cdef Py_ssize_t _n
    cdef uint64_t* _seeds
    cdef double* _f
    cdef uint64_t _state

    def __cinit__(self):
        self._n = 0
        self._seeds = NULL
        self._f = NULL

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
        seeds = [hash64(v.encode("utf-8", "surrogateescape"), SHADOW_SEED) for v in versions]
        # The answer when one version is picked (the common case), built once so a pick allocates nothing.
        self._singles = tuple((v,) for v in versions)
        cdef Py_ssize_t n = len(f)
        cdef Py_ssize_t i
        self._release()
        if n:
            self._seeds = <uint64_t*>malloc(n * sizeof(uint64_t))
            self._f = <double*>malloc(n * sizeof(double))
            if self._seeds == NULL or self._f == NULL:
                self._release()
                raise MemoryError()
            for i in range(n):
                self._seeds[i] = <uint64_t>seeds[i]
                self._f[i] = <double>f[i]
        self._n = n
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self._state = PyLong_AsUnsignedLongLongMask(seed)

    cdef void _release(self) noexcept:
        free(self._seeds)
        free(self._f)
        self._seeds = NULL
        self._f = NULL
        self._n = 0

    def __dealloc__(self):
        self._release()

    def __len__(self) -> int:
        return self._n

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline bint _hit(self, bint keyed, uint64_t h, Py_ssize_t i) noexcept nogil:
        # Keyless, ``h`` is the generator's state before this pick and version i takes its
        # (i + 1)-th step, as the twin's one step per version: the steps can be replayed.
        if keyed:
            return _unit(h ^ self._seeds[i]) < self._f[i]
        return _unit(h + <uint64_t>(i + 1) * GAMMA) < self._f[i]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef tuple _pick(self, bint keyed, uint64_t h):
        cdef Py_ssize_t n = self._n
        cdef Py_ssize_t i, j
        cdef Py_ssize_t first = -1
        cdef Py_ssize_t count = 0
        for i in range(n):
            if self._hit(keyed, h, i):
                if count == 0:
                    first = i
                count += 1
        if not keyed:
            self._state = h + <uint64_t>n * GAMMA
        if count == 0:
            return ()
        if count == 1:
            return <tuple>self._singles[first]
        # Several picks (rare): replay the hits rather than keep them in a buffer on the
        # table, which PyTuple_New could reach again through a garbage-collection finalizer.
        out = PyTuple_New(count)
        j = 0
        for i in range(first, n):
            if self._hit(keyed, h, i):
                v = self.versions[i]
                Py_INCREF(v)  # PyTuple_SET_ITEM steals a reference
                PyTuple_SET_ITEM(out, j, v)
                j += 1
        return out

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
        cdef uint64_t h
        if _key_hash(key, &h):
            return self._pick(True, h)
        return self._pick(False, self._state)
