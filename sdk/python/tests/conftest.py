"""Fixtures of the `weir` package's tests: mock upstreams from bench/ and gateways in front of them.

The mocks are the standalone `mock-upstream` binary of the `weir-bench` crate (bench/src/mock.rs,
the same mocks the Rust tests use), one process per behaviour, each on a free loopback port.
`$WEIR_MOCK_UPSTREAM` names the binary; without it, it is built with cargo (quick when CI's
`cargo test` already built it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

import weir

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-weir-python-0123456789"
OTHER_KEY = "sk-weir-python-other-0123"


def _mock_binary() -> str:
    if os.environ.get("WEIR_MOCK_UPSTREAM"):
        return os.environ["WEIR_MOCK_UPSTREAM"]
    subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", "weir-bench", "--bin", "mock-upstream"], cwd=ROOT, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return str(Path(json.loads(meta.stdout)["target_directory"]) / "debug" / "mock-upstream")


class Mock:
    """A running `mock-upstream`; `stats()` reads its counters over HTTP (`GET /mock/stats`)."""

    def __init__(self, binary: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        if not found:
            self.process.kill()
            raise RuntimeError(f"mock-upstream did not start: {line!r}")
        self.url = found.group(1)
        self.base_url = self.url + "/v1"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/mock/stats", timeout=10) as response:
            return json.load(response)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def mocks() -> Iterator[dict[str, Mock]]:
    binary = _mock_binary()
    started: dict[str, Mock] = {}
    try:
        started["healthy"] = Mock(binary)
        # Three events (the role, "echo:", the first word), then the connection breaks.
        started["breaks"] = Mock(binary, "--break-stream-after", "3")
        # 50 ms between events: a long prompt streams for seconds, long enough to cancel midway.
        started["slow"] = Mock(binary, "--chunk-interval", "50ms")
        yield started
    finally:
        for mock in started.values():
            mock.stop()


def gateway_config(mocks: dict[str, Mock], ledger: Path) -> str:
    return f"""
chain = ["ratelimit", "cost"]

[server]
shutdown_grace = "5s"

[retry]
backoff_base = "5ms"
backoff_max = "20ms"

[state]
ledger = "{ledger}"

[[upstreams]]
name = "mock"
endpoint = "{mocks["healthy"].base_url}"

[[upstreams]]
name = "breaks"
endpoint = "{mocks["breaks"].base_url}"

[[upstreams]]
name = "slow"
endpoint = "{mocks["slow"].base_url}"

[[models]]
name = "gpt-test"
targets = [{{ upstream = "mock", model = "mock-model" }}]

[[models]]
name = "embed"
targets = [{{ upstream = "mock", model = "text-embedding-3-small" }}]

[[models]]
name = "breaks-mid-stream"
targets = [{{ upstream = "breaks", model = "mock-model" }}]

[[models]]
name = "slow"
targets = [{{ upstream = "slow", model = "mock-model" }}]

[[models]]
name = "limited"
targets = [{{ upstream = "mock", model = "mock-model" }}]

[[keys]]
name = "python"
team = "embedded"
key = "{KEY}"

[[keys]]
name = "other"
team = "embedded"
key = "{OTHER_KEY}"

[[plugins]]
name = "ratelimit"
source = "builtin:ratelimit"
config = {{ limits = [{{ per = ["key"], models = ["limited"], requests_per_minute = 1 }}] }}

[[plugins]]
name = "cost"
source = "builtin:cost"
config = {{ budgets = [] }}
"""


@pytest.fixture(scope="session")
def gateway(mocks: dict[str, Mock], tmp_path_factory: pytest.TempPathFactory) -> Iterator[weir.Gateway]:
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.jsonl"
    with weir.Gateway(config=gateway_config(mocks, ledger)) as gw:
        yield gw


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def eventually(read, at_least: float, within: float = 10.0) -> float:
    """Polls `read()` until it reaches `at_least` or `within` seconds pass; returns its last value."""
    deadline = time.monotonic() + within
    while True:
        value = read()
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.02)
