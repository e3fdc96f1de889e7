"""`weir.Gateway`: the embedded gateway, on threads of its own inside this process."""

from __future__ import annotations

import datetime
import json
import os
from types import TracebackType
from typing import Any, Iterable, Sequence, Union

from . import _native
from ._transport import AsyncTransport, Transport

Day = Union[str, datetime.date]


class Gateway:
    """A Weir gateway running inside this Python process.

    Give it a configuration file (``config_file``, re-read by :meth:`reload`), or the text of one
    (``config``, TOML as in ``weir.toml``); with neither it runs the embedded default configuration
    that ``weir serve`` uses: ``weir-tiny-chat`` answered by a local model with no network, every
    other model sent to ``$WEIR_UPSTREAM``. ``${VAR}`` in the configuration is read from the
    environment. A configuration that is not valid raises :class:`weir.ConfigError` with every
    problem and its field path.

    The gateway runs on a Tokio runtime of its own; every call releases the GIL while it waits.
    Keys, plugins (rate limits, budgets, cache, canaries, failover), metrics and the ledger apply
    exactly as in the server. Use it as a context manager, or call :meth:`shutdown`::

        with weir.Gateway(config_file="weir.toml") as gw:
            client = openai.OpenAI(base_url="http://weir/v1", api_key="sk-...",
                                   http_client=httpx.Client(transport=gw.transport()))
    """

    def __init__(self, config_file: str | os.PathLike[str] | None = None, config: str | None = None) -> None:
        self._core = _native.Core(None if config_file is None else os.fspath(config_file), config)

    def transport(self, principal: tuple[str, str] | None = None) -> Transport:
        """An httpx (or httpx2) transport that hands each request to this gateway, with no socket.

        Streamed answers stream chunk by chunk; closing one before its end cancels the upstream
        request, as a client disconnect does.

        Requests carry their API key as over HTTP. An application that has already authenticated
        its caller can instead vouch for them: with ``principal=(key_name, team)`` every request
        through this transport is served as that key of that team, with no API key needed, so
        per-key and per-team limits, budgets, caches and the ledger count it as theirs. One
        transport (and client) per principal::

            alice = openai.OpenAI(base_url="http://weir/v1", api_key="unused",
                                  http_client=httpx.Client(transport=gw.transport(principal=("alice", "web"))))
        """
        return Transport(self._core, principal)

    def async_transport(self, principal: tuple[str, str] | None = None) -> AsyncTransport:
        """The same as :meth:`transport`, for ``httpx.AsyncClient`` on asyncio."""
        return AsyncTransport(self._core, principal)

    def serve(self, address: str = "127.0.0.1:0") -> str:
        """Serves the gateway over HTTP on ``address`` until shutdown; returns its URL, ``http://HOST:PORT``.

        Port 0 picks a free port. OpenAI clients take ``url + "/v1"`` as their base URL; the
        Anthropic SDK takes ``url`` itself. Call it again for more listeners.
        """
        return self._core.serve(address)

    def reload(self, config: str | None = None) -> None:
        """Re-reads the configuration file (or loads ``config``, TOML text, in its place).

        Requests in flight finish on the configuration they started with. An invalid
        configuration raises :class:`weir.ConfigError` and the current one keeps serving.
        """
        self._core.reload(config)

    def spend(
        self,
        by: Iterable[str] = ("day", "key", "team", "model"),
        since: Day | None = None,
        until: Day | None = None,
    ) -> list[dict[str, Any]]:
        """The ledger summed as ``weir spend --json`` sums it.

        One row per group of ``by`` (any of ``"day"``, ``"key"``, ``"team"``, ``"model"``), from
        ``since`` (a day, included) to ``until`` (a day, left out), UTC; the total row comes last
        with no group values. Each row has ``requests``, ``prompt_tokens``,
        ``completion_tokens``, ``cached_tokens``, ``cost_pico_usd`` and ``cost_usd`` (exact, a
        decimal string). Reads the ledger file of the current configuration.
        """
        return json.loads(self._core.spend(list(by), _day(since), _day(until)))

    @property
    def ledger_path(self) -> str:
        """The ledger file the current configuration writes."""
        return os.fspath(self._core.ledger_path())

    def metrics(self) -> str:
        """The gateway's Prometheus metrics, as ``GET /metrics`` answers them (OpenMetrics text)."""
        status, _headers, body = self._core.handle("GET", "/metrics", [], b"")
        if not isinstance(body, bytes):  # /metrics answers whole; never a stream
            body = b"".join(iter(lambda: body.read(), None))
        if status != 200:
            raise _native.WeirError(f"/metrics answered {status}: {body!r}")
        return body.decode()

    def shutdown(self) -> bool:
        """Shuts down gracefully, then stops the gateway's threads.

        Listeners stop accepting and drain; requests and streams in flight get up to
        ``server.shutdown_grace`` to end. Returns whether they all did. Later calls raise
        :class:`weir.GatewayClosed` (a transport raises httpx's ``ConnectError``). Idempotent.
        """
        return self._core.shutdown()

    @property
    def closed(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._core.closed

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()


def _day(day: Day | None) -> str | None:
    if day is None or isinstance(day, str):
        return day
    return day.isoformat()


__all__: Sequence[str] = ["Gateway"]
