"""Type stubs of the transports: at run time they subclass the bases of httpx and of httpx2,
whichever are installed; type checkers see httpx's."""

import httpx

from ._native import Core

class Transport(httpx.BaseTransport):
    def __init__(self, core: Core, principal: tuple[str, str] | None = None) -> None: ...
    def handle_request(self, request: httpx.Request) -> httpx.Response: ...

class AsyncTransport(httpx.AsyncBaseTransport):
    def __init__(self, core: Core, principal: tuple[str, str] | None = None) -> None: ...
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...
