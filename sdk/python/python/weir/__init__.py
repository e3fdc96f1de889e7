"""Weir, the WebAssembly-programmable AI gateway, embedded in this Python process.

``weir.Gateway`` runs the gateway (keys, plugins, routing, failover, metrics, the ledger) on
threads of its own; ``gateway.transport()`` and ``gateway.async_transport()`` are httpx transports
that hand requests to it with no socket, so the official SDKs work unchanged::

    import httpx, openai, weir

    with weir.Gateway() as gw:  # the embedded default configuration
        client = openai.OpenAI(base_url="http://weir/v1", api_key="unused",
                               http_client=httpx.Client(transport=gw.transport()))
        answer = client.chat.completions.create(
            model="weir-tiny-chat", messages=[{"role": "user", "content": "Where is Phileas Fogg?"}])
"""

from importlib.metadata import PackageNotFoundError, version

from ._gateway import Gateway
from ._native import ConfigError, GatewayClosed, WeirError
from ._transport import AsyncTransport, Transport

try:
    __version__ = version("weir")
except PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = ["AsyncTransport", "ConfigError", "Gateway", "GatewayClosed", "Transport", "WeirError", "__version__"]
