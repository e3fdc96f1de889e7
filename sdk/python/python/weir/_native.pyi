"""Type stubs of the native core (sdk/python/src/lib.rs). Not a stable API: use weir.Gateway."""

from os import PathLike
from typing import Callable, Optional, Union

class WeirError(Exception):
    """Base class of the errors the weir package raises."""

class ConfigError(WeirError):
    """The configuration is not valid (or could not be read); the message lists every problem with its field path."""

class GatewayClosed(WeirError):
    """The gateway was shut down; it takes no more requests."""

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, Union[bytes, "Stream"]]

class Task:
    def cancel(self) -> None: ...

class Stream:
    def read(self) -> Optional[bytes]: ...
    def read_async(self, done: Callable[[Optional[bytes]], None]) -> Task: ...
    def close(self) -> None: ...

class Core:
    def __init__(self, config_file: Optional[str] = None, config: Optional[str] = None) -> None: ...
    def handle(
        self, method: str, target: str, headers: Headers, body: bytes, principal: Optional[tuple[str, str]] = None
    ) -> Answer: ...
    def handle_async(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: bytes,
        done: Callable[[Answer], None],
        principal: Optional[tuple[str, str]] = None,
    ) -> Task: ...
    def serve(self, address: str) -> str: ...
    def reload(self, config: Optional[str] = None) -> None: ...
    def spend(self, by: list[str], since: Optional[str] = None, until: Optional[str] = None) -> str: ...
    def ledger_path(self) -> Union[str, PathLike[str]]: ...
    def shutdown(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
