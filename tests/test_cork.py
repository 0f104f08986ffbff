"""Write coalescing: writers hold frames while the cork is open and flush once at the outermost close."""

from __future__ import annotations

from router.cork import Cork, Holding


class Writer:
    def __init__(self, cork: Cork) -> None:
        self.cork = cork
        self.held: list[bytes] = []
        self.writes: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if self.cork.depth:
            if not self.held:
                self.cork.hold(self)
            self.held.append(frame)
        else:
            self.writes.append(frame)

    def flush_held(self) -> None:
        held, self.held = self.held, []
        self.writes.append(b"".join(held))


def test_frames_leave_in_one_write_per_writer_at_the_outermost_close():
    cork = Cork()
    a, b = Writer(cork), Writer(cork)
    a.write(b"0")
    assert a.writes == [b"0"]  # not corked: written at once
    cork.open()
    a.write(b"1")
    cork.open()  # a nested dispatch (a reply batch inside a request batch)
    b.write(b"x")
    a.write(b"2")
    cork.close()
    assert a.writes == [b"0"] and b.writes == []  # still held: the outer block is open
    a.write(b"3")
    cork.close()
    assert a.writes == [b"0", b"123"] and b.writes == [b"x"]
    assert cork.depth == 0
    a.write(b"4")
    assert a.writes[-1] == b"4"


def test_a_writer_that_writes_while_flushing_is_not_lost():
    cork = Cork()
    a = Writer(cork)
    cork.open()
    a.write(b"1")
    cork.close()
    cork.open()
    cork.close()  # nothing held: nothing written
    assert a.writes == [b"1"]


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


class Held(Holding):
    def __init__(self, cork: Cork) -> None:
        self.cork = cork
        self.transport = FakeTransport()  # type: ignore[assignment]
        self._held = []


def test_holding_writers_flush_single_and_grouped_frames_in_order_in_one_write():
    cork = Cork()
    a, b = Held(cork), Held(cork)
    cork.open()
    a.hold_frame(b"1")
    a.hold_frame(b"2")  # a head and a large payload are held as two pieces
    a.hold_frame(b"3")
    b.hold_frame(b"x")
    a.hold_frame(b"4")
    cork.close()
    assert a.transport.writes == [b"1234"] and b.transport.writes == [b"x"]  # type: ignore[union-attr]
    assert a._held == [] and cork.depth == 0


def test_a_closing_transport_gets_no_held_frames():
    cork = Cork()
    a = Held(cork)
    a.transport.closing = True  # type: ignore[union-attr]
    cork.open()
    a.hold_frame(b"1")
    cork.close()
    assert a.transport.writes == [] and a._held == []  # type: ignore[union-attr]
