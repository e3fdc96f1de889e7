"""The embedded call, from Rust and from Python, beside the same request over loopback HTTP, in one run.

One standalone mock upstream (`mock-upstream`, a release build) serves four paths that send it the
same chat request, whole and then streamed, one request at a time:

- Rust `Weir::handle` (in process, no socket) and Rust loopback HTTP (`Weir::serve` + reqwest):
  the `embed` bench binary of the `weir` crate (`gateway/benches/embed.rs`), run once per round
  with `--mock URL --rounds 1 --json`;
- Python through `gateway.transport()` (in process, no socket) and Python loopback HTTP
  (`gateway.serve()` + httpx): one `weir.Gateway` in this process.

Every path pays the gateway's own hop to the upstream, so the difference between a path and its
loopback twin is the client's HTTP hop that embedding removes. The rounds take turns (Python, then
Rust, ROUNDS times), so that a change in the machine's load hits every path alike. A figure is the
median over rounds of the mean of N requests, with the rounds' quartiles; "saved" is the median of
each round's own difference. The load average is printed before and after: a run on a busy
machine says so, and is no result.

    cargo build --release -p weir-bench --bin mock-upstream
    python3 -m pip install ./sdk/python httpx
    python3 bench/embed.py [--mock target/release/mock-upstream] [--rust PATH | --no-rust] [--n 300] [--rounds 9]

Without --rust, the bench binary is found (and built, release profile, if it is not) with
`cargo bench -p weir --bench embed --no-run`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time

import httpx

import weir

KEY = "sk-bench-embed-0123456789"
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "what is the capital of France"}]}
ROWS = (("chat, whole", CHAT), ("chat, streamed", {**CHAT, "stream": True}))


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


def rust_bench() -> str:
    """The `embed` bench binary's path, built by cargo if it is not yet."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "weir", "--bench", "embed", "--no-run", "--message-format=json"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "embed" and message.get("executable"):
            return message["executable"]
    raise SystemExit("cargo built no `embed` bench binary")


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


def quartiles(values: list[float]) -> str:
    ordered = sorted(values)
    at = lambda q: ordered[round((len(ordered) - 1) * q)]
    return f"{statistics.median(values):.0f} [{at(0.25):.0f}–{at(0.75):.0f}] µs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mock", default=os.environ.get("WEIR_MOCK_UPSTREAM", "target/release/mock-upstream"))
    parser.add_argument("--rust", help="the `embed` bench binary (default: built by cargo)")
    parser.add_argument("--no-rust", action="store_true", help="measure the Python paths only")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rust = None if args.no_rust else (args.rust or rust_bench())

    # paths[row][path] = the per-round means.
    paths: dict[str, dict[str, list[float]]] = {name: {} for name, _ in ROWS}
    load_before = open("/proc/loadavg").read().strip()
    mock, mock_url = start_mock(args.mock)
    try:
        with weir.Gateway(config=config(mock_url)) as gw:
            embedded = httpx.Client(transport=gw.transport())
            loopback = httpx.Client()
            base = gw.serve("127.0.0.1:0")
            in_process, over_http = "http://weir/v1/chat/completions", f"{base}/v1/chat/completions"
            # Warm both Python paths (connections, caches) before measuring; the Rust binary warms its own.
            for _name, body in ROWS:
                mean_us(embedded, in_process, body, 50)
                mean_us(loopback, over_http, body, 50)
            for _ in range(args.rounds):
                for name, body in ROWS:
                    paths[name].setdefault("py_transport", []).append(mean_us(embedded, in_process, body, args.n))
                    paths[name].setdefault("py_http", []).append(mean_us(loopback, over_http, body, args.n))
                if rust:
                    out = subprocess.run(
                        [rust, "--mock", mock_url, "--rounds", "1", "--n", str(args.n), "--json"],
                        check=True,
                        stdout=subprocess.PIPE,
                        text=True,
                    ).stdout
                    measured = json.loads(out.strip().splitlines()[-1])
                    for name, _ in ROWS:
                        paths[name].setdefault("rs_handle", []).extend(measured[name]["handle"])
                        paths[name].setdefault("rs_http", []).extend(measured[name]["http"])
    finally:
        mock.terminate()
        mock.wait(timeout=10)
    print(f"load average before: {load_before}; after: {open('/proc/loadavg').read().strip()}")
    print(f"median [quartiles] of {args.rounds} rounds × mean of {args.n} sequential requests\n")
    columns = [("rs_handle", "Rust `Weir::handle`"), ("rs_http", "Rust loopback (`serve` + reqwest)")] if rust else []
    columns += [("py_transport", "Python transport"), ("py_http", "Python loopback (`serve()` + httpx)")]
    saved = [("Rust saves", "rs_http", "rs_handle")] if rust else []
    saved += [("Python saves", "py_http", "py_transport")]
    print("| request | " + " | ".join(title for _, title in columns) + " | " + " | ".join(s[0] for s in saved) + " |")
    print("|---" * (1 + len(columns) + len(saved)) + "|")
    for name, _ in ROWS:
        cells = [quartiles(paths[name][key]) for key, _ in columns]
        for _, slow, fast in saved:
            differences = [s - f for s, f in zip(paths[name][slow], paths[name][fast])]
            cells.append(f"{statistics.median(differences):.0f} µs")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
