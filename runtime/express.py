"""The express path: a msgpack request that arrives alone, answered in one pass.

At concurrency 1 every read brings one request, and the model's own forward
takes a few microseconds. The general path (frame scanner, format dispatch,
request object, pending list, batch bookkeeping, reply queue) then costs
more than the model, and more again on a core that the router, the kernel
and the client's TCP traffic have just cooled. The express path takes a read
that is exactly one whole msgpack request of a model with one input and one
output, asking for every output, and goes from its bytes to the reply frame
with nothing in between. The reply is the general path's, byte for byte
(tests/test_express.py).

Everything else goes the general way: several frames in one read (they may
batch), part of a frame, other body formats, shadow copies, malformed or
unusual bodies (the general path names what is wrong), and any worker with a
batching window (``max_batch_delay_us`` > 0), which is there to wait for
company.
"""

from __future__ import annotations

from router.proto import link
from router.proto.link import FMT_MSGPACK

from .batcher import model_failed
from .codecs import SimpleMsgpack
from .model import Model

_PAYLOAD = 4 + link.HEAD_SIZE  # where the payload starts in a whole frame


class Express:
    """Answers lone msgpack requests for one worker.

    Args:
        model: the worker's model; it must have one input and one output
            (:class:`~runtime.codecs.SimpleMsgpack` raises ValueError otherwise).
    """

    __slots__ = ("forward", "codec", "answered")

    def __init__(self, model: Model) -> None:
        self.forward = model.forward
        self.codec = SimpleMsgpack(model.meta)
        #: Requests answered here, for tests and curiosity.
        self.answered = 0

    @classmethod
    def of(cls, model: Model) -> Express | None:
        """An express path for ``model``, or None when it does not have one input and one output."""
        try:
            return cls(model)
        except ValueError:
            return None

    def answer(self, data: bytes) -> bytes | None:
        """The whole reply frame to ``data``, one read of the link; None when it must go the general way."""
        head = link.whole(data)
        if head is None or head[1] != FMT_MSGPACK:
            return None
        one = self.codec.decode(data[_PAYLOAD:])  # a copy of ~100 bytes: cheaper than a view
        if one is None:
            return None
        self.answered += 1
        rid = head[0]
        try:
            output = self.forward([one[1]])[0]
        except Exception as exc:  # the model raised: this request learns why
            return link.pack(rid, 500, 0, model_failed(exc))
        return link.pack(rid, 200, 0, self.codec.encode(one[0], output))
