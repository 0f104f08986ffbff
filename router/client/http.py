"""Open Inference Protocol v2 clients over HTTP: :class:`HttpClient` (sync) and :class:`AsyncHttpClient`."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from . import _oip
from ._result import InferResult

__all__ = ["HttpClient", "AsyncHttpClient"]

DEFAULT_ROUTING_HEADER = "x-user-id"


def _split_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path prefix)`` of a base URL such as ``http://127.0.0.1:8080``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must look like http://host:port, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


def _key_text(key: str | bytes) -> str:
    """A routing key as header text: a bytes key must be UTF-8.

    The server decodes the header as UTF-8 and hashes the text's UTF-8 bytes,
    as it hashes a key sent over TCP; so a key routes the same on every transport
    only when it travels as UTF-8.

    Raises:
        UnicodeDecodeError: a bytes key that is not UTF-8 (send it over TCP instead).
    """
    return key.decode("utf-8") if isinstance(key, bytes) else key


class _Paths:
    """Request paths, built once per (model, version) instead of per request."""

    __slots__ = ("prefix", "_infer")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._infer: dict[tuple[str, str | None], str] = {}

    def infer(self, model: str, version: str | None) -> str:
        path = self._infer.get((model, version))
        if path is None:
            path = self._infer[(model, version)] = _oip.model_path(self.prefix, model, version, "/infer")
        return path

    def model(self, model: str, version: str | None, suffix: str = "") -> str:
        return _oip.model_path(self.prefix, model, version, suffix)


class HttpClient:
    """A synchronous OIP v2 client on one keep-alive HTTP/1.1 connection (not thread-safe).

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8080``.
        timeout: seconds to wait for the connection and for each socket read.
        routing_header: the header the model reads its routing key from
            (the model's ``routing_key`` in the server config).

    Network failures raise ``OSError`` (``ConnectionError``, ``TimeoutError``);
    a keep-alive connection the server dropped while idle is reopened once,
    transparently.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 10.0, *,
                 routing_header: str = DEFAULT_ROUTING_HEADER) -> None:
        scheme, self._host, self._port, prefix = _split_url(url)
        self._conn_cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        self._timeout = timeout
        self._routing_header = routing_header
        self._paths = _Paths(prefix)
        self._conn: http.client.HTTPConnection | None = None
        self._reused = False  # the connection has answered before, so the server may have dropped it idle

    # -- transport ------------------------------------------------------------------------------------------

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._reused = False

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str | bytes] | None = None) -> tuple[int, Callable[[str], str | None], bytes]:
        for attempt in (0, 1):
            conn = self._conn
            if conn is None:
                conn = self._conn = self._conn_cls(self._host, self._port, timeout=self._timeout)
            reused = self._reused
            try:
                # A bytes body goes out in the same send as the headers (no Nagle/delayed-ACK stall).
                conn.request(method, path, body, headers or {})
                resp = conn.getresponse()
                data = resp.read()
            except ConnectionError:  # includes http.client.RemoteDisconnected
                self._drop()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: one retry on a fresh one
                raise
            except BaseException:
                # Timeouts, interrupts: the connection's state is unknown, never reuse it.
                self._drop()
                raise
            if resp.will_close:
                self._drop()
            else:
                self._reused = True
            return resp.status, resp.headers.get, data
        raise AssertionError("unreachable")

    def _get_json(self, path: str) -> dict[str, Any]:
        status, _, data = self._request("GET", path)
        if status != 200:
            raise _oip.error_of(status, data)
        return json.loads(data)

    def _get_ok(self, path: str) -> bool:
        return self._request("GET", path)[0] == 200

    # -- API ------------------------------------------------------------------------------------------------

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: str | None = None,
              key: str | bytes | None = None, outputs: Sequence[str] | None = None,
              request_id: str | None = None, format: str = "binary") -> InferResult:
        """Run one inference request.

        Args:
            model: the model's name.
            inputs: input name -> array; every input of the model.
            version: pin this version (``/versions/{v}/infer``); None lets the
                server's traffic split (or ``key``) choose.
            key: routing key, sent as UTF-8 in the ``routing_header``: one key
                always lands on the same version, the same one as over TCP.
            outputs: names of the outputs to return, in this order; None = all.
            request_id: an id the server echoes back in :attr:`InferResult.id`.
            format: ``"binary"`` (OIP binary tensors both ways), ``"json"`` or
                ``"msgpack"``.

        Raises:
            TypeError: an input's dtype has no supported OIP datatype.
            ValueError: unknown ``format``, or a bytes ``key`` that is not UTF-8.
            router.proto.errors.InferenceError: the server's answer was an error; the
                subclass follows the status (``BadRequest`` 400, ``NotFound`` 404,
                ``PayloadTooLarge`` 413, ``InternalError`` 500,
                ``WorkerUnavailable`` 503, ``DeadlineExceeded`` 504).
            OSError: the connection failed or timed out.
        """
        body, headers = _oip.encode_infer(inputs, outputs, request_id, format)
        if key is not None:
            # http.client would encode a str header as latin-1: send the UTF-8 bytes ourselves.
            headers[self._routing_header] = _key_text(key).encode()
        status, get_header, data = self._request("POST", self._paths.infer(model, version), body, headers)
        return _oip.decode_infer(status, get_header, data)

    def is_live(self) -> bool:
        """Whether the server answers ``/v2/health/live`` with 200. Raises OSError when unreachable."""
        return self._get_ok(self._paths.prefix + "/v2/health/live")

    def is_ready(self) -> bool:
        """Whether every model has a live worker (``/v2/health/ready``). Raises OSError when unreachable."""
        return self._get_ok(self._paths.prefix + "/v2/health/ready")

    def is_model_ready(self, model: str, version: str | None = None) -> bool:
        """Whether ``model`` (or that ``version`` of it) can take requests; False when unknown.

        Raises:
            OSError: the server is unreachable.
        """
        return self._get_ok(self._paths.model(model, version, "/ready"))

    def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``: ``{"name", "version", "extensions"}``.

        Raises:
            router.proto.errors.InferenceError: a non-200 answer. OSError: network failure.
        """
        return self._get_json(self._paths.prefix + "/v2")

    def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """The OIP model metadata: ``name``, ``versions``, ``platform``, ``inputs``, ``outputs``.

        Raises:
            router.proto.errors.NotFound: unknown model or version. OSError: network failure.
        """
        return self._get_json(self._paths.model(model, version))

    def close(self) -> None:
        """Close the connection (the next call would open a new one)."""
        self._drop()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncHttpClient:
    """An asyncio OIP v2 client over one ``aiohttp.ClientSession`` (a pool of keep-alive connections).

    Same API as :class:`HttpClient` with coroutines. The session is created on
    first use, so the client may be built outside a running loop; close it with
    ``await client.close()`` or ``async with``.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8080``.
        timeout: seconds for each whole request (connect, send, read).
        routing_header: the header the model reads its routing key from.

    Network failures raise ``OSError`` (``ConnectionError``, ``TimeoutError``).
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 10.0, *,
                 routing_header: str = DEFAULT_ROUTING_HEADER) -> None:
        scheme, host, port, prefix = _split_url(url)
        self._base = f"{scheme}://{host}:{port}"
        self._timeout = timeout
        self._routing_header = routing_header
        self._paths = _Paths(prefix)
        self._session: Any = None  # aiohttp.ClientSession, imported lazily with aiohttp
        self._urls: dict[str, Any] = {}

    def _url(self, path: str) -> Any:
        # yarl parses and re-quotes a str URL on every request; a prebuilt URL skips that.
        url = self._urls.get(path)
        if url is None:
            import yarl

            if len(self._urls) > 4096:  # bound the cache for callers with many model names
                self._urls.clear()
            url = self._urls[path] = yarl.URL(self._base + path, encoded=True)
        return url

    async def _request(self, method: str, path: str, body: bytes | None = None,
                       headers: Mapping[str, str] | None = None
                       ) -> tuple[int, Callable[[str], str | None], bytes]:
        import aiohttp

        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout))
        url = self._url(path)
        for attempt in (0, 1):
            try:
                async with session.request(method, url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    return resp.status, resp.headers.get, data
            except aiohttp.ServerDisconnectedError as exc:
                if attempt == 0:
                    continue  # most likely a pooled keep-alive connection the server closed idle
                raise ConnectionResetError(str(exc) or "server disconnected") from exc
            except TimeoutError:
                raise
            except aiohttp.ClientConnectionError as exc:
                if isinstance(exc, OSError):
                    raise
                # One family of network errors for all clients: OSError.
                raise ConnectionError(str(exc)) from exc
        raise AssertionError("unreachable")

    async def _get_json(self, path: str) -> dict[str, Any]:
        status, _, data = await self._request("GET", path)
        if status != 200:
            raise _oip.error_of(status, data)
        return json.loads(data)

    async def _get_ok(self, path: str) -> bool:
        return (await self._request("GET", path))[0] == 200

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: str | None = None,
                    key: str | bytes | None = None, outputs: Sequence[str] | None = None,
                    request_id: str | None = None, format: str = "binary") -> InferResult:
        """Run one inference request; arguments, result and errors as :meth:`HttpClient.infer`."""
        body, headers = _oip.encode_infer(inputs, outputs, request_id, format)
        if key is not None:
            headers[self._routing_header] = _key_text(key)  # aiohttp sends header text as UTF-8
        status, get_header, data = await self._request("POST", self._paths.infer(model, version), body, headers)
        return _oip.decode_infer(status, get_header, data)

    async def is_live(self) -> bool:
        """Whether ``/v2/health/live`` answers 200. Raises OSError when unreachable."""
        return await self._get_ok(self._paths.prefix + "/v2/health/live")

    async def is_ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200. Raises OSError when unreachable."""
        return await self._get_ok(self._paths.prefix + "/v2/health/ready")

    async def is_model_ready(self, model: str, version: str | None = None) -> bool:
        """Whether ``model`` (or that ``version``) can take requests; False when unknown."""
        return await self._get_ok(self._paths.model(model, version, "/ready"))

    async def server_metadata(self) -> dict[str, Any]:
        """``GET /v2``. Raises router.proto.errors.InferenceError on a non-200 answer."""
        return await self._get_json(self._paths.prefix + "/v2")

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        """The OIP model metadata. Raises router.proto.errors.NotFound for an unknown model or version."""
        return await self._get_json(self._paths.model(model, version))

    async def close(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> AsyncHttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
