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

:class:`SimpleMsgpack` is the codec of this path: it decodes the body and
encodes the reply in one pass each, and remembers the layouts it has seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgpack
import numpy as np

from router.proto import link
from router.proto.link import FMT_MSGPACK
from router.proto.meta import ModelMeta

from .batcher import Forward, model_failed
from .codecs.plan import plan_of
from .codecs.replies import one_output
from .codecs.requests import one_input
from .codecs.tensors import raw_bytes

if TYPE_CHECKING:  # the codec alone needs no torch (tests/test_codecs.py uses it without a model)
    from .model import Model

__all__ = ["Express", "SimpleMsgpack"]

_PAYLOAD = 4 + link.HEAD_SIZE  # where the payload starts in a whole frame


class Express:
    """Answers lone msgpack requests for one worker.

    Args:
        model: the worker's model; it must have one input and one output
            (:class:`SimpleMsgpack` raises ValueError otherwise).
        nonfinite: the model's policy for NaN and infinities in its input
            (:data:`runtime.codecs.requests.NONFINITE`).
    """

    __slots__ = ("forward", "codec", "answered")

    def __init__(self, model: Model, nonfinite: str = "reject", forward: Forward | None = None) -> None:
        self.forward = forward or model.forward
        self.codec = SimpleMsgpack(model.meta, nonfinite)
        #: Requests answered here, for tests and curiosity.
        self.answered = 0

    @classmethod
    def of(cls, model: Model, nonfinite: str = "reject", forward: Forward | None = None) -> Express | None:
        """An express path for ``model`` (run by ``forward``, default its own), or None when it does not
        have one input and one output."""
        try:
            return cls(model, nonfinite, forward)
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


#: Most body layouts one SimpleMsgpack remembers (one per request shape, as a rule).
_MAX_LAYOUTS = 64
#: A body length whose layout is not known yet (None: known, and not one to remember).
_NEW: tuple[bytes, list[int]] = (b"", [])


class SimpleMsgpack:
    """The common msgpack exchange of a model with one input and one output, in one pass each way.

    The codec of :class:`Express`: a well-formed request that asks for every
    output decodes to its id and input array, and the output array encodes to
    the reply body, exactly as :func:`~runtime.codecs.decode_request` and
    :func:`~runtime.codecs.encode_response` would. Anything else decodes to
    None, and the general path takes the request.

    A client sends the same layout again and again: the same map, keys and
    shape, only the tensor's bytes change. Once a body without an id has
    decoded, its layout is remembered: the bytes before the tensor data, when
    the data is the body's tail (checked by decoding a copy whose data bytes
    are all flipped). A later body of the same length that starts with those
    bytes is the same request with other data, taken without decoding the
    map. Replies are built the same way: the bytes before the output data,
    per output shape.

    Under the ``"reject"`` policy an FP input holding a NaN or an infinity
    decodes to None: the general path answers the 400 that names it.

    Args:
        meta: the model's signature.
        nonfinite: the model's policy for NaN and infinities in its input
            (``"allow"`` takes them; anything else leaves them to the general path).

    Raises:
        ValueError: the model does not have one input (not boolean) and one output.
    """

    __slots__ = ("_only", "_parts", "_dtype", "_in_dtype", "_finite", "_layouts", "_replies")

    def __init__(self, meta: ModelMeta, nonfinite: str = "reject") -> None:
        plan = plan_of(meta)
        if plan.only is None or plan.reply_parts is None:
            raise ValueError(f"model {meta.name!r} does not have one input and one output")
        self._only = plan.only
        self._parts = plan.reply_parts
        self._dtype = plan.out_dtypes[0]
        self._in_dtype = plan.only[3]
        #: Whether decoded inputs must be finite: an FP input under a policy other than "allow".
        self._finite = nonfinite != "allow" and bool(plan.float_inputs)
        #: body length -> (the bytes before the data, the input's shape), or None: not a layout to take
        self._layouts: dict[int, tuple[bytes, list[int]] | None] = {}
        #: output shape -> the reply's bytes before the data (requests without an id)
        self._replies: dict[tuple[int, ...], bytes] = {}

    def decode(self, payload: bytes) -> tuple[str | None, np.ndarray] | None:
        """``(id, input)`` of the common request, or None for anything else (errors included)."""
        layout = self._layouts.get(len(payload), _NEW)
        if layout is not None and layout is not _NEW and payload.startswith(layout[0]):
            one: tuple[str | None, np.ndarray] | None = (
                None, np.ndarray(layout[1], self._in_dtype, payload[len(layout[0]):]))
        else:
            one = self._decode(payload)
            # The first layout of a length stays: bodies of another layout of that length, or of
            # one that cannot be remembered, are decoded in full, never learned again and again.
            if layout is _NEW and one is not None and one[0] is None and len(self._layouts) < _MAX_LAYOUTS:
                self._layouts[len(payload)] = self._learn(payload, one[1])
        if one is not None and self._finite and not np.isfinite(one[1]).all():
            return None  # the general path answers 400, naming the input and the policy
        return one

    def _decode(self, payload: bytes) -> tuple[str | None, np.ndarray] | None:
        try:
            body = msgpack.unpackb(payload)
        except Exception:  # the general path says why
            return None
        return one_input(body, self._only) if type(body) is dict else None

    def _learn(self, payload: bytes, arr: np.ndarray) -> tuple[bytes, list[int]] | None:
        """``payload``'s layout if its tail is the tensor data ``arr``; else None."""
        n = arr.nbytes
        head = payload[:len(payload) - n]
        if n:
            # The tail holds the data only if flipping every byte of it flips every byte of
            # the decoded data and nothing else: were the data anywhere else, some of its
            # bytes would stay as they were, or the map around it would change.
            flipped = (np.frombuffer(payload, np.uint8, n, len(head)) ^ 0xFF).tobytes()
            probe = self._decode(head + flipped)
            if probe is None or probe[0] is not None or probe[1].shape != arr.shape or \
                    probe[1].tobytes() != flipped:
                return None
        return head, list(arr.shape)

    def encode(self, rid: str | None, output: np.ndarray) -> bytes:
        """The reply body to a request with id ``rid`` (None: no id) whose output is ``output``."""
        if rid is not None:
            return one_output(self._parts, rid, output, self._dtype)
        if output.dtype != self._dtype:
            output = output.astype(self._dtype)
        head = self._replies.get(output.shape)
        if head is None:
            body = one_output(self._parts, None, output, self._dtype)
            if len(self._replies) < _MAX_LAYOUTS:
                self._replies[output.shape] = body[:len(body) - output.nbytes]
            return body
        if output.nbytes <= 4096:
            return head + output.tobytes()
        return b"".join((head, raw_bytes(np.ascontiguousarray(output))))

