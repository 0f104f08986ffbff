"""The result of one inference call, whatever the transport."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class InferResult:
    """The outputs of one inference request.

    Attributes:
        outputs: output name -> array, in the order the server sent them (the
            requested order when ``outputs=`` was given). Arrays decoded from
            binary or msgpack data are views of the reply and so read-only;
            copy one to modify it.
        model_name: the model that answered.
        model_version: the version that answered (the pin, or the one the
            traffic split or routing key chose).
        id: the request id echoed by the server, or None when none was sent.
        generation: the configuration generation of the router that answered (None from a router
            that does not send it): during a rollout across routers, which configuration served.
    """

    __slots__ = ("outputs", "model_name", "model_version", "id", "generation")

    def __init__(self, outputs: dict[str, np.ndarray], model_name: str, model_version: str,
                 id: str | None = None, generation: int | None = None) -> None:
        self.outputs = outputs
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.generation = generation

    def __getitem__(self, name: str) -> np.ndarray:
        """The output called ``name``.

        Raises:
            KeyError: the reply has no such output.
        """
        return self.outputs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.outputs

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def __repr__(self) -> str:
        shapes = {k: list(v.shape) for k, v in self.outputs.items()}
        return (f"InferResult(model_name={self.model_name!r}, model_version={self.model_version!r}, "
                f"id={self.id!r}, outputs={shapes})")
