"""Write coalescing: writers hold frames while the cork is open and flush once at the outermost close."""

from __future__ import annotations

from router.cork import Cork


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
