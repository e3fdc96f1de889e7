"""httpx transports that hand each request to an embedded gateway, with no socket.

They work with both httpx and httpx2 (the fork that newer openai and anthropic SDKs use): the
classes subclass the transport and stream bases of whichever of the two is installed, and each
response is built with the module of the request it answers, so one transport serves a client of
either. Async transports run on asyncio (the event loop httpx's AsyncClient runs on by default).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Any, AsyncIterator, Callable, Iterator

from . import _native

_MODULES: list[Any] = []
for _name in ("httpx", "httpx2"):
    try:
        _MODULES.append(importlib.import_module(_name))
    except ImportError:
        pass

if not _MODULES:
    raise ImportError("weir's transports need httpx (pip install httpx) or httpx2")

_EXTENSIONS = {"http_version": b"HTTP/1.1"}


def _httpx_of(request: Any) -> Any:
    """The httpx-like module whose client sent `request`: its responses must be built from it."""
    return sys.modules[type(request).__module__.partition(".")[0]]


class _SyncStream(*(m.SyncByteStream for m in _MODULES)):  # type: ignore[misc]
    """A streamed answer, read chunk by chunk from the gateway as the upstream sends it."""

    def __init__(self, body: _native.Stream, httpx: Any) -> None:
        self._body = body
        self._httpx = httpx

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._body.read()
            except _native.GatewayClosed as closed:
                # The answer was cut: what a client over HTTP sees when the connection drops.
                raise self._httpx.ReadError(str(closed)) from closed
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        # Drops the body: the gateway cancels the upstream request, as when a client disconnects.
        self._body.close()


class _AsyncStream(*(m.AsyncByteStream for m in _MODULES)):  # type: ignore[misc]
    """A streamed answer for an async client; each chunk is awaited without blocking the loop."""

    def __init__(self, body: _native.Stream, httpx: Any) -> None:
        self._body = body
        self._httpx = httpx

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await _awaited(self._body.read_async)
            except _native.GatewayClosed as closed:
                raise self._httpx.ReadError(str(closed)) from closed
            if chunk is None:
                return
            yield chunk

    async def aclose(self) -> None:
        self._body.close()


class Transport(*(m.BaseTransport for m in _MODULES)):  # type: ignore[misc]
    """An httpx transport for a `weir.Gateway`: `httpx.Client(transport=gateway.transport())`.

    The URL's host is ignored (any base URL such as ``http://weir/v1`` will do); its path and
    query choose the gateway's route, and the headers carry the API key as over HTTP, unless the
    transport has a ``principal``, ``(key_name, team)``: then every request is served as that key
    of that team, whatever its headers say.
    """

    def __init__(self, core: _native.Core, principal: tuple[str, str] | None = None) -> None:
        self._core = core
        self._principal = _principal(principal)

    def handle_request(self, request: Any) -> Any:
        httpx = _httpx_of(request)
        content = request.read()
        try:
            status, headers, body = self._core.handle(
                request.method,
                request.url.raw_path.decode("ascii"),
                request.headers.raw,
                content,
                self._principal,
            )
        except _native.GatewayClosed as closed:
            raise httpx.ConnectError(str(closed), request=request) from closed
        return _response(httpx, status, headers, body, _SyncStream)


class AsyncTransport(*(m.AsyncBaseTransport for m in _MODULES)):  # type: ignore[misc]
    """An async httpx transport for a `weir.Gateway`: `httpx.AsyncClient(transport=gateway.async_transport())`.

    Requests run concurrently on the gateway's threads; the event loop is never blocked.
    Cancelling the awaiting task cancels the request. ``principal`` as for :class:`Transport`.
    """

    def __init__(self, core: _native.Core, principal: tuple[str, str] | None = None) -> None:
        self._core = core
        self._principal = _principal(principal)

    async def handle_async_request(self, request: Any) -> Any:
        httpx = _httpx_of(request)
        content = await request.aread()
        try:
            status, headers, body = await _awaited(
                self._core.handle_async,
                request.method,
                request.url.raw_path.decode("ascii"),
                request.headers.raw,
                content,
                principal=self._principal,
            )
        except _native.GatewayClosed as closed:
            raise httpx.ConnectError(str(closed), request=request) from closed
        return _response(httpx, status, headers, body, _AsyncStream)


def _principal(principal: Any) -> tuple[str, str] | None:
    if principal is None:
        return None
    if (
        not isinstance(principal, tuple)
        or len(principal) != 2
        or not all(isinstance(part, str) and part for part in principal)
    ):
        raise TypeError(f"principal must be (key_name, team), two non-empty strings, not {principal!r}")
    return principal


def _response(httpx: Any, status: int, headers: list[tuple[bytes, bytes]], body: Any, stream: type) -> Any:
    if isinstance(body, bytes):
        return httpx.Response(status, headers=headers, content=body, extensions=_EXTENSIONS)
    return httpx.Response(status, headers=headers, stream=stream(body, httpx), extensions=_EXTENSIONS)


async def _awaited(start: Callable[..., _native.Task], *args: Any, **kwargs: Any) -> Any:
    """Runs a native call that reports through a callback (on a gateway thread) as an awaitable.

    Cancelling the await cancels the native task, which drops what it was waiting on.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def done(value: Any) -> None:
        try:
            loop.call_soon_threadsafe(_settle, future, value)
        except RuntimeError:
            pass  # The loop was closed meanwhile: nobody is waiting any more.

    task = start(*args, done, **kwargs)
    future.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
    return await future


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if future.done():
        return
    # The native side reports a failure (a call that raised, the gateway shut down under it) as
    # the exception itself.
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
