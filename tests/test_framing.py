"""Frame scanning and request envelopes: the extension and its twin agree exactly."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.proto import _framing_py, framing, link
from router.proto.errors import FrameError

try:
    from router.proto import _framing_c
except ImportError:  # only acceptable when the twins are forced
    _framing_c = None

IMPLS = [pytest.param(_framing_py, id="py")]
if _framing_c is not None:
    IMPLS.append(pytest.param(_framing_c, id="c"))


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_extension_is_loaded_unless_forced_off():
    if os.environ.get("ROUTER_NO_EXTENSIONS") == "1":
        assert framing.EXTENSION is False
        assert framing.FrameScanner is _framing_py.FrameScanner
    else:
        assert _framing_c is not None, "the compiled router.proto._framing_c did not build"
        assert framing.EXTENSION is True
        assert framing.FrameScanner is _framing_c.FrameScanner


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def test_frames_split_across_feeds(impl):
    s = impl.FrameScanner(100)
    stream = frame(b"abc") + frame(b"x") + frame(b"hello world")
    got = []
    for i in range(len(stream)):
        got += s.feed(stream[i:i + 1])
    assert got == [b"abc", b"x", b"hello world"]
    assert s.buffered == 0


def test_many_frames_in_one_feed_and_a_partial_tail(impl):
    s = impl.FrameScanner(100)
    assert s.feed(frame(b"a") + frame(b"bb") + frame(b"ccc")[:5]) == [b"a", b"bb"]
    assert s.buffered == 5
    assert s.feed(b"cc") == [b"ccc"]


def test_zero_length_frame_is_400(impl):
    with pytest.raises(FrameError) as e:
        impl.FrameScanner(100).feed(b"\x00\x00\x00\x00")
    assert e.value.status == 400


def test_oversized_frame_is_413_before_the_body_arrives(impl):
    with pytest.raises(FrameError) as e:
        impl.FrameScanner(100).feed((101).to_bytes(4, "big"))
    assert e.value.status == 413
    assert "101 bytes exceeds the limit of 100" in str(e.value)


@pytest.mark.parametrize("bad", [b"\x00\x00\x00\x00", (101).to_bytes(4, "big")], ids=["zero", "oversized"])
def test_frames_before_a_bad_header_come_with_the_error(impl, bad):
    s = impl.FrameScanner(100)
    assert s.feed(frame(b"a")[:3]) == []
    with pytest.raises(FrameError) as e:
        s.feed(frame(b"a")[3:] + frame(b"bb") + bad + frame(b"never"))
    assert e.value.frames == [b"a", b"bb"]


def test_an_error_with_no_frame_before_it_has_none(impl):
    with pytest.raises(FrameError) as e:
        impl.FrameScanner(100).feed(b"\x00\x00\x00\x00")
    assert e.value.frames == []


def test_pack_header(impl):
    assert impl.pack_header(0x01020304) == b"\x01\x02\x03\x04"
    assert impl.pack_header(5) == frame(b"12345")[:4]


GOLDEN = [
    ([7, "fraud", None, "user-42", {"inputs": {}}], (7, "fraud", None, "user-42")),
    ([2**64 - 1, "m" * 40, "2", b"\x00\xff", {}], (2**64 - 1, "m" * 40, "2", b"\x00\xff")),
    ([300, "é", None, None, {"a": 1}], (300, "é", None, None)),
    ([70000, "x" * 300, "v" * 70000, "k" * 40, {}], (70000, "x" * 300, "v" * 70000, "k" * 40)),
]


@pytest.mark.parametrize("env,expected", GOLDEN)
def test_parse_request_golden(impl, env, expected):
    body = msgpack.packb(env)
    *head, offset = impl.parse_request(body)
    assert tuple(head) == expected
    assert msgpack.unpackb(body[offset:]) == env[4]


BAD = [
    (msgpack.packb([1, "m", None, None]), "array of 5 items"),
    (msgpack.packb({"id": 1}), "array of 5 items"),
    (msgpack.packb([-1, "m", None, None, {}]), "unsigned integer"),
    (msgpack.packb([1.5, "m", None, None, {}]), "unsigned integer"),
    (msgpack.packb([1, None, None, None, {}]), "model must be a string"),
    (msgpack.packb([1, b"m", None, None, {}]), "model must be a string"),
    (msgpack.packb([1, "m", 3, None, {}]), "version must be a string or nil"),
    (msgpack.packb([1, "m", None, 5, {}]), "routing key must be a string, bin or nil"),
    (msgpack.packb([1, "m", None, None, [1]]), "must be a msgpack map"),
    (msgpack.packb([1, "m", None, None, {}])[:3], "truncated"),
    (b"\x95\x01\xa5ab", "truncated model"),
    (b"\x95\x01\xa2\xff\xfe\xc0\xc0\x80", "not valid UTF-8"),
    (b"\x95\x01\xa1m\xc0\xc0", "missing the request map"),
]


@pytest.mark.parametrize("body,message", BAD)
def test_parse_request_rejects(impl, body, message):
    with pytest.raises(FrameError) as e:
        impl.parse_request(body)
    assert message in str(e.value)
    assert e.value.status == 400


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except FrameError as e:
        return ("err", str(e), e.status)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_twins_agree_on_arbitrary_bytes(data):
    if _framing_c is None:
        pytest.skip("extension not built")
    assert _outcome(_framing_c.parse_request, data) == _outcome(_framing_py.parse_request, data)


envelopes = st.tuples(
    st.integers(0, 2**64 - 1),
    st.text(min_size=0, max_size=300),
    st.none() | st.text(max_size=40),
    st.none() | st.text(max_size=40) | st.binary(max_size=300),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(envelopes, st.integers(0, 30))
def test_twins_agree_on_valid_envelopes_and_any_truncation(env, cut):
    body = msgpack.packb(list(env))
    expected = tuple(env[:4])
    for mod in (m for m in (_framing_py, _framing_c) if m is not None):
        *head, off = mod.parse_request(body)
        assert tuple(head) == expected
        assert msgpack.unpackb(body[off:]) == env[4]
    if _framing_c is not None:
        t = body[:max(0, len(body) - cut)]
        assert _outcome(_framing_c.parse_request, t) == _outcome(_framing_py.parse_request, t)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.lists(st.integers(1, 40), max_size=20))
def test_twins_split_streams_identically(bodies, cuts):
    stream = b"".join(frame(b) for b in bodies)
    results = []
    for mod in (m for m in (_framing_py, _framing_c) if m is not None):
        s = mod.FrameScanner(1000)
        out, pos = [], 0
        for c in cuts + [len(stream)]:
            out += s.feed(stream[pos:pos + c])
            pos += c
        out += s.feed(stream[pos:])
        results.append(out)
        assert out == bodies
    assert all(r == results[0] for r in results)


def test_link_frames_round_trip_and_are_msgpack():
    f = link.pack(9, 200, 17, b"payload")
    assert int.from_bytes(f[:4], "big") == len(f) - 4
    assert msgpack.unpackb(f[4:]) == [9, 200, 17, b"payload"]
    assert link.unpack(f[4:]) == (9, 200, 17, b"payload")
    assert link.pack_head(9, 200, 17, 7) + b"payload" == f


@pytest.mark.parametrize("body", [b"", b"\x94\xce", msgpack.packb([1, 2, 3, b"x"]), link.pack(1, 2, 3, b"abc")[4:-1]])
def test_link_unpack_rejects_other_layouts(body):
    with pytest.raises(FrameError):
        link.unpack(body)
