"""What coding needs from a model's signature, computed once per :class:`~router.proto.meta.ModelMeta`."""

from __future__ import annotations

import numpy as np

from router.proto.meta import ModelMeta

from .tensors import WIRE_DTYPES, pack

__all__ = ["Plan", "plan_of"]


class Plan:
    """Lookups and constant pieces for decoding requests and encoding replies of one model.

    Attributes:
        only: for the common msgpack request in one pass (see
            :func:`runtime.codecs.requests.one_input`): the single input's name,
            datatype, shape, dtype and itemsize, when the model has one input
            whose dtype needs no value check (not BOOL); else None.
        reply_parts: for a single-output model asked for every output, the
            constant msgpack pieces around the shape and the data of the reply
            (see :func:`runtime.codecs.replies.one_output`); else None.
    """

    __slots__ = ("meta", "in_index", "in_dtypes", "float_inputs", "out_index", "out_dtypes", "batchable",
                 "every_output", "all_binary", "none_binary", "only", "reply_parts")

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self.in_index = {t.name: i for i, t in enumerate(meta.inputs)}
        self.in_dtypes = [WIRE_DTYPES[t.datatype] for t in meta.inputs]
        #: The inputs that can hold NaN or an infinity (FP16, FP32, FP64), by index.
        self.float_inputs = tuple(i for i, d in enumerate(self.in_dtypes) if d.kind == "f")
        self.out_index = {t.name: i for i, t in enumerate(meta.outputs)}
        self.out_dtypes = [WIRE_DTYPES[t.datatype] for t in meta.outputs]
        self.batchable = meta.batchable
        # Shared by the requests that ask for every output (the usual case): read-only.
        n = len(meta.outputs)
        self.every_output = list(range(n))
        self.all_binary = [True] * n
        self.none_binary = [False] * n
        self.only: tuple[str, str, tuple[int, ...], np.dtype, int] | None = None
        if len(meta.inputs) == 1 and self.in_dtypes[0].kind != "b":
            spec = meta.inputs[0]
            self.only = (spec.name, spec.datatype, spec.shape, self.in_dtypes[0], self.in_dtypes[0].itemsize)
        # The bytes Packer writes for the reply map, but for the shape and the data.
        self.reply_parts: tuple[bytes, bytes, bytes, bytes] | None = None
        if n == 1:
            out = meta.outputs[0]
            names = pack("model_name") + pack(meta.name) + pack("model_version") + pack(meta.version)
            self.reply_parts = (
                b"\x83" + names,  # a map of 3 entries: no id
                b"\x84" + names + pack("id"),  # 4 entries: the id's value follows
                pack("outputs") + b"\x81" + pack(out.name) + b"\x83" + pack("datatype") + pack(out.datatype)
                + pack("shape"),
                pack("data"),
            )


# ModelMeta holds a dict (unhashable), so plans are keyed by identity; the
# entry keeps its meta alive, so an id cannot be reused while cached.
_PLANS: dict[int, Plan] = {}


def plan_of(meta: ModelMeta) -> Plan:
    """The :class:`Plan` of ``meta``, built on first use."""
    plan = _PLANS.get(id(meta))
    if plan is None or plan.meta is not meta:
        if len(_PLANS) >= 64:  # a worker serves one version; this only bounds odd callers
            _PLANS.clear()
        plan = _PLANS[id(meta)] = Plan(meta)
    return plan
