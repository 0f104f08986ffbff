"""Every error model-router raises, in one place.

Each class maps to exactly one HTTP status and one msgpack reply status (the
same number), so an error raised in a worker travels to the router as a code
and back to the caller as the same class (see :func:`from_status`).
"""

from __future__ import annotations

#: Longest name (model, version, field) an error message repeats back.
SHOWN_MAX = 80


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """``repr(value)``, cut to ``limit`` characters: names echoed in errors come from clients,
    and a 10 KB model name must not come back whole."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(r)} characters)"


class RouterError(Exception):
    """Root of every model-router error."""

    status: int = 500

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class ConfigError(RouterError, ValueError):
    """The configuration is invalid; the message names the dotted key path."""

    status = 400


class IntegrityError(ConfigError):
    """A model version's files disagree with its ``meta.json``, or ``meta.json`` with its directory.

    ``reason`` is ``"integrity"`` (the model file's sha256 is not the one ``meta.json``
    records) or ``"identity"`` (``meta.json`` names another model or version than the
    directory it is in); the message names both values.
    """

    def __init__(self, message: str = "", reason: str = "integrity") -> None:
        super().__init__(message)
        self.reason = reason


class ConfigFileError(RouterError):
    """``config.toml`` cannot take a change (409) or cannot be written (500); nothing was changed."""

    status = 409


class ReloadRefused(RouterError):
    """A reloaded config changes what a reload cannot apply live; nothing was changed."""

    status = 409


class DeployFailed(RouterError):
    """A standby pool failed to start or warm up; it was stopped and the active pool is untouched."""

    status = 500


class ValidationFailed(RouterError):
    """A pushed model failed its trial run in a throwaway worker (load, example, signature); nothing stored."""

    status = 422


class NoPreviousPool(RouterError):
    """A rollback found no previous pool kept warm."""

    status = 409


class BadArchive(RouterError, ValueError):
    """A pushed model version is refused: the upload (an archive, or a bare model file), its
    ``meta.json``, or the model or version name is wrong. The message names what and, for an
    archive, which entry; nothing was stored (``router.store``)."""

    status = 400


class UploadTooLarge(BadArchive):
    """A pushed upload is larger, or unpacks to more, than the store's limits allow; it was
    stopped while streaming, before the limit was passed on disk (``router.store``)."""

    status = 413


class VersionExists(RouterError):
    """A pushed version already exists with other contents: versions are immutable (``router.store``)."""

    status = 409


class VersionInUse(RouterError):
    """A stored version cannot be removed: it serves in a pool (active, standby, or previous, kept
    warm for a rollback); the message names the pool."""

    status = 409


class FrameError(RouterError, ValueError):
    """A length-prefixed frame or its msgpack envelope is malformed.

    Raised by a frame scanner, ``frames`` holds the whole frames that arrived
    before the bad header in the same read: a server answers them before it closes.
    """

    status = 400
    frames: list[bytes] = []  # noqa: RUF012 (set per instance by the scanners; never mutated)


class HttpHeadError(RouterError, ValueError):
    """An HTTP request head the fast parser does not take (malformed, or a form it leaves to aiohttp)."""

    status = 400


class InferenceError(RouterError):
    """A request failed; ``status`` is its HTTP / msgpack status code."""


class BadRequest(InferenceError, ValueError):
    """Malformed body, or inputs that do not match the model's signature."""

    status = 400


class NotFound(InferenceError, LookupError):
    """Unknown model or version."""

    status = 404


class RequestTimeout(InferenceError):
    """The client sent its request head or body too slowly (``server.head_timeout_s`` / ``body_timeout_s``)."""

    status = 408


class PayloadTooLarge(InferenceError):
    """The body is larger than ``server.max_body_bytes``."""

    status = 413


class WorkerUnavailable(InferenceError):
    """No live worker can take the request (dead, starting, or overloaded)."""

    status = 503


class ModelLoadFailed(WorkerUnavailable):
    """A worker did not become ready to serve its model version.

    ``reason`` says why, one of ``router.proto.link.LOAD_FAILURES``: the worker
    refused the version (``integrity``, ``identity``, ``meta``, ``load``; sent on
    the link as ``STATUS_REFUSED``), or the router gave up on it (``exited``,
    ``timeout``, ``warmup``).
    """

    def __init__(self, message: str = "", reason: str = "load") -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(InferenceError):
    """No answer within ``server.request_timeout_ms``."""

    status = 504


class InternalError(InferenceError):
    """The model raised while running a well-formed request."""

    status = 500


_BY_STATUS: dict[int, type[InferenceError]] = {
    cls.status: cls
    for cls in (BadRequest, NotFound, RequestTimeout, PayloadTooLarge, WorkerUnavailable, DeadlineExceeded,
                InternalError)
}


def from_status(status: int, message: str) -> InferenceError:
    """Build the typed error for a status code received from a worker or a server."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        return InferenceError(message, status)
    return cls(message)
