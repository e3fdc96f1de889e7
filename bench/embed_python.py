"""The embedded gateway from Python: the transport beside loopback HTTP to `serve()`, in one run.

One `weir.Gateway` in front of the standalone mock upstream (`mock-upstream`, a release build is
best); the same chat request, whole and then streamed, sent by one keep-alive httpx client through
`gateway.transport()` (in process, no socket) and by another over loopback HTTP to
`gateway.serve()`. Both pay the gateway's own hop to the upstream, so the difference is the
client's HTTP hop that embedding removes. Sequential requests; the median over ROUNDS of the mean
of N; the load average is printed before and after, so that a run on a busy machine says so.

    cargo build --release -p weir-bench --bin mock-upstream
    python3 -m pip install ./sdk/python httpx
    python3 bench/embed_python.py [--mock target/release/mock-upstream] [--n 300] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time

import httpx

import weir

KEY = "sk-bench-embed-0123456789"
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello from the bench"}]}


def config(mock_url: str) -> str:
    return f"""
[[upstreams]]
name = "mock"
endpoint = "{mock_url}"

[[models]]
name = "bench"
targets = [{{ upstream = "mock", model = "mock-model" }}]

[[keys]]
name = "bench"
team = "bench"
key = "{KEY}"
"""


def start_mock(binary: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([binary, "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    found = re.search(r"(http://127\.0\.0\.1:\d+/v1)", process.stderr.readline())
    if not found:
        process.kill()
        raise SystemExit("mock-upstream did not start")
    return process, found.group(1)


def mean_us(client: httpx.Client, url: str, body: dict, n: int) -> float:
    headers = {"authorization": f"Bearer {KEY}"}
    started = time.perf_counter()
    for _ in range(n):
        if body.get("stream"):
            with client.stream("POST", url, json=body, headers=headers) as r:
                for _chunk in r.iter_raw():
                    pass
        else:
            r = client.post(url, json=body, headers=headers)
            r.read()
        assert r.status_code == 200, r.status_code
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mock", default=os.environ.get("WEIR_MOCK_UPSTREAM", "target/release/mock-upstream"))
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    print(f"load average before: {open('/proc/loadavg').read().strip()}")
    mock, mock_url = start_mock(args.mock)
    try:
        with weir.Gateway(config=config(mock_url)) as gw:
            embedded = httpx.Client(transport=gw.transport())
            loopback = httpx.Client()
            base = gw.serve("127.0.0.1:0")
            rows = []
            for name, body in (("chat, whole", CHAT), ("chat, streamed", {**CHAT, "stream": True})):
                results: dict[str, list[float]] = {"embedded": [], "loopback": []}
                # Warm both paths (connections, caches) before measuring.
                mean_us(embedded, "http://weir/v1/chat/completions", body, 50)
                mean_us(loopback, f"{base}/v1/chat/completions", body, 50)
                # Interleaved rounds, so that a change in the machine's load hits both alike.
                for _ in range(args.rounds):
                    results["embedded"].append(mean_us(embedded, "http://weir/v1/chat/completions", body, args.n))
                    results["loopback"].append(mean_us(loopback, f"{base}/v1/chat/completions", body, args.n))
                rows.append((name, statistics.median(results["embedded"]), statistics.median(results["loopback"])))
    finally:
        mock.terminate()
        mock.wait(timeout=10)
    print(f"load average after: {open('/proc/loadavg').read().strip()}")
    print(f"\n| request (median of {args.rounds} × mean of {args.n}) | transport (in process) | loopback HTTP (serve + httpx) |")
    print("|---|---:|---:|")
    for name, inproc, http in rows:
        print(f"| {name} | {inproc:.0f} µs | {http:.0f} µs |")


if __name__ == "__main__":
    main()
