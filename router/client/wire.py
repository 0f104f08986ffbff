"""Clients of the length-prefixed msgpack TCP protocol (docs/protocol.md).

:class:`WireClient` is synchronous (one request at a time, or a pipelined
batch with :meth:`WireClient.infer_many`); :class:`AsyncWireClient` runs any
number of concurrent requests on one connection. Both match replies to
requests by id, since the server answers out of order.
"""

from __future__ import annotations

import asyncio
import itertools
import selectors
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..proto.errors import InferenceError
from ._frames import FrameBuffer, decode_reply, encode_request, new_packer
from ._result import InferResult

__all__ = ["WireClient", "AsyncWireClient"]

_ID_MASK = (1 << 64) - 1  # ids are msgpack uint64 and wrap around


def _nodelay(sock: Any) -> None:
    # One frame per send: never let Nagle hold a small request back waiting for an ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _closed_error(result: InferResult | InferenceError) -> InferenceError:
    """The error of a reply with id nil: the server rejected a frame and closes the connection."""
    if isinstance(result, InferenceError):
        return result
    return InferenceError("reply without an id: the server rejected a frame", 400)


class WireClient:
    """A synchronous msgpack-over-TCP client on one connection (not thread-safe).

    The connection opens on first use and reopens on the next call after it
    was lost or the server closed it (which it does after a malformed or
    oversized frame).

    Args:
        host: the server's msgpack address.
        port: the server's msgpack port.
        timeout: seconds to wait for the connection, and the longest wait for
            any progress (a send or a reply) during a call.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8081, timeout: float = 10.0) -> None:
        self._addr = (host, port)
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._frames = FrameBuffer()
        self._ids = itertools.count()
        self._pack = new_packer()

    # -- transport ------------------------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            sock = socket.create_connection(self._addr, timeout=self._timeout)
            _nodelay(sock)
            self._sock = sock
            self._frames = FrameBuffer()
        return sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _recv(self, sock: socket.socket) -> list[Any]:
        """Block until at least one whole reply arrived; return every complete one, decoded."""
        frames = self._frames
        while True:
            msgs = frames.messages()
            if msgs:
                return msgs
            n = sock.recv_into(frames.free())
            if n == 0:
                raise ConnectionResetError("the server closed the connection")
            frames.filled(n)

    def _send_failed(self, sock: socket.socket) -> InferenceError | None:
        """After a failed send: the server may have refused the frame (413) and closed the connection
        before reading all of it; its reply, if it got through, says why."""
        try:
            sock.settimeout(min(self._timeout, 1.0))
            for msg in self._recv(sock):
                rid, result = decode_reply(msg)
                if rid is None:
                    return _closed_error(result)
        except (OSError, ValueError):
            pass
        return None

    # -- API ------------------------------------------------------------------------------------------------

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: str | None = None,
              key: str | bytes | None = None, outputs: Sequence[str] | None = None,
              request_id: str | None = None) -> InferResult:
        """Run one inference request.

        Args:
            model: the model's name.
            inputs: input name -> array; every input of the model.
            version: pin this version; None lets the traffic split (or ``key``) choose.
            key: routing key: one key always lands on the same version.
            outputs: names of the outputs to return, in this order; None = all.
            request_id: an id echoed back in :attr:`InferResult.id`.

        Raises:
            TypeError: an input's dtype has no supported OIP datatype.
            router.proto.errors.InferenceError: the server answered with an error; the
                subclass follows the status (``BadRequest``, ``NotFound``,
                ``PayloadTooLarge``, ``InternalError``, ``WorkerUnavailable``,
                ``DeadlineExceeded``). After a ``PayloadTooLarge`` (a frame over
                the server's limit) the connection is reopened on the next call.
            OSError: the connection failed or timed out (``TimeoutError``).
        """
        rid = next(self._ids) & _ID_MASK
        frame = encode_request(self._pack, rid, model, version, key, inputs, outputs, request_id)
        sock = self._socket()
        try:
            try:
                sock.sendall(frame)
            except OSError:
                err = self._send_failed(sock)
                if err is not None:
                    raise err from None
                raise
            msgs = self._recv(sock)
            if len(msgs) != 1:
                raise ConnectionError(f"expected one reply, got {len(msgs)}")
            got, result = decode_reply(msgs[0])
        except BaseException:
            self._drop()  # unknown state (a reply may still be on its way): never reuse the connection
            raise
        if got is None:
            self._drop()  # the server closes the connection after such a reply
            raise _closed_error(result)
        if got != rid:
            self._drop()
            raise ConnectionError(f"reply for request {got} while waiting for {rid}")
        if isinstance(result, InferenceError):
            raise result
        return result

    def infer_many(self, requests: Iterable[Mapping[str, Any]], depth: int = 64
                   ) -> list[InferResult | InferenceError]:
        """Run many requests pipelined on the one connection.

        Keeps up to ``depth`` requests in flight, matches the replies by id
        (they may come back out of order) and returns the results in request
        order. A request the server answered with an error gets its typed
        :class:`~router.proto.errors.InferenceError` in the list instead of raising.

        Args:
            requests: dicts with ``model`` and ``inputs``, and optionally
                ``version``, ``key``, ``outputs``, ``request_id`` (as :meth:`infer`).
            depth: the most requests in flight at once (>= 1).

        Raises:
            ValueError: ``depth`` < 1, or a request without ``model`` / ``inputs``.
            TypeError: an input's dtype has no supported OIP datatype.
            router.proto.errors.InferenceError: the server rejected a frame and closed
                the connection (e.g. ``PayloadTooLarge``); no result is returned.
            OSError: the connection failed, or made no progress for ``timeout`` seconds.
        """
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        sock = self._socket()
        frames = self._frames
        pack = self._pack
        ids = self._ids
        todo = iter(requests)
        results: list[Any] = []
        in_flight: dict[int, int] = {}  # wire id -> index in results
        out = bytearray()  # encoded frames not yet accepted by the socket
        more = True

        def refill() -> None:
            nonlocal more
            while more and len(in_flight) < depth:
                req = next(todo, None)
                if req is None:
                    more = False
                    return
                try:
                    model, inputs = req["model"], req["inputs"]
                except (KeyError, TypeError):
                    raise ValueError(f"request {len(results)}: needs 'model' and 'inputs'") from None
                rid = next(ids) & _ID_MASK
                out.extend(encode_request(pack, rid, model, req.get("version"), req.get("key"), inputs,
                                          req.get("outputs"), req.get("request_id")))
                in_flight[rid] = len(results)
                results.append(None)

        sel = selectors.DefaultSelector()
        # Non-blocking, so that sending a full window can never deadlock against
        # a server that stops reading until its replies are read.
        sock.setblocking(False)
        try:
            sel.register(sock, selectors.EVENT_READ)
            watching_write = False
            refill()
            while in_flight:
                if out:
                    try:
                        sent = sock.send(out)
                        del out[:sent]  # cheap: bytearray drops a prefix without moving the rest
                    except BlockingIOError:
                        pass
                if bool(out) != watching_write:
                    watching_write = bool(out)
                    sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
                events = sel.select(self._timeout)
                if not events:
                    raise TimeoutError(f"no progress in {self._timeout} s with {len(in_flight)} "
                                       "requests in flight")
                if not events[0][1] & selectors.EVENT_READ:
                    continue
                try:
                    n = sock.recv_into(frames.free())
                except BlockingIOError:
                    continue
                if n == 0:
                    raise ConnectionResetError("the server closed the connection")
                frames.filled(n)
                for msg in frames.messages():
                    got, result = decode_reply(msg)
                    if got is None:
                        raise _closed_error(result)
                    idx = in_flight.pop(got, None)
                    if idx is None:
                        raise ConnectionError(f"reply for unknown request {got}")
                    results[idx] = result
                refill()
        except BaseException:
            self._drop()
            raise
        finally:
            sel.close()
        sock.settimeout(self._timeout)
        return results

    def close(self) -> None:
        """Close the connection (the next call would open a new one)."""
        self._drop()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Protocol(asyncio.BufferedProtocol):
    """The connection of an :class:`AsyncWireClient`: receives into a :class:`FrameBuffer`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.frames = FrameBuffer()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None  # why the connection is unusable, once it is
        self.closed: asyncio.Future[None] = loop.create_future()
        self.paused = False
        self._drain: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.frames.free()

    def buffer_updated(self, nbytes: int) -> None:
        self.frames.filled(nbytes)
        try:
            for msg in self.frames.messages():
                rid, result = decode_reply(msg)
                if rid is None:
                    # The server rejected a frame and closes the connection; which request it was
                    # is unknown, so every pending call gets the error.
                    self.fail(_closed_error(result))
                    return
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():  # absent: that call timed out or was cancelled
                    fut.set_result(result)
        except ValueError as exc:
            self.fail(ConnectionError(str(exc)))

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result(exc)  # a result, not an exception: raised by the caller, never "unretrieved"
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(ConnectionResetError(f"connection lost: {exc}" if exc else "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        waiters, self._drain = self._drain, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        while self.paused and self.error is None:
            w = asyncio.get_running_loop().create_future()
            self._drain.append(w)
            await w


class AsyncWireClient:
    """An asyncio msgpack-over-TCP client: many concurrent :meth:`infer` calls on one connection.

    Build it with ``await AsyncWireClient.connect(host, port, timeout)``. When
    the connection is lost every pending call fails with ``ConnectionError``
    and so does every later one: connect a new client.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol, timeout: float | None) -> None:
        """Use :meth:`connect`."""
        self._transport = transport
        self._proto = protocol
        self._timeout = timeout
        self._ids = itertools.count()
        self._pack = new_packer()
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 8081,
                      timeout: float | None = 10.0) -> AsyncWireClient:
        """Open a connection.

        Args:
            host: the server's msgpack address.
            port: the server's msgpack port.
            timeout: seconds to connect, and for each :meth:`infer` call (None: no limit).

        Raises:
            OSError: the connection failed or timed out.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            transport, proto = await loop.create_connection(lambda: _Protocol(loop), host, port)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _nodelay(sock)
        return cls(transport, proto, timeout)

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], *, version: str | None = None,
                    key: str | bytes | None = None, outputs: Sequence[str] | None = None,
                    request_id: str | None = None) -> InferResult:
        """Run one inference request; arguments and errors as :meth:`WireClient.infer`.

        Raises:
            ConnectionError: the connection is closed or was lost while waiting.
            TimeoutError: no reply within ``timeout`` seconds (the late reply is dropped).
        """
        proto = self._proto
        if proto.error is not None:
            raise ConnectionError(f"connection unusable: {proto.error}")
        rid = next(self._ids) & _ID_MASK
        frame = encode_request(self._pack, rid, model, version, key, inputs, outputs, request_id)
        fut = self._loop.create_future()
        proto.pending[rid] = fut
        try:
            self._transport.write(frame)
            async with asyncio.timeout(self._timeout):
                if proto.paused:
                    await proto.drain()
                result = await fut
        finally:
            proto.pending.pop(rid, None)
        if isinstance(result, InferResult):
            return result
        raise result

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or unusable."""
        return self._proto.error is not None

    def close(self) -> asyncio.Future[None]:
        """Close the connection now; pending calls fail with ``ConnectionError``.

        Returns:
            A future that resolves once the connection is gone; awaiting it is optional.
        """
        if self._proto.error is None:
            self._proto.fail(ConnectionResetError("client closed"))
        else:
            self._transport.close()
        return self._proto.closed

    async def __aenter__(self) -> AsyncWireClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
