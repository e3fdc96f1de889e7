//! The embedded call beside the same request over loopback HTTP, in one run: one `weir::embed::Weir` in
//! front of a mock upstream, asked the same chat request (whole, then streamed) through
//! `Weir::handle` (no socket between the application and the gateway) and through `Weir::serve` with
//! a keep-alive reqwest client. Both pay the gateway's hop to the upstream; the difference is the
//! client-side HTTP hop the embedding removes.
//!
//! Requests are sequential (latency, not throughput). A round is PER_ROUND requests on each path,
//! the two paths taking turns within the round so that a change in the machine's load hits both
//! alike; each figure is the median over rounds of the mean per request in a round, with the
//! quartiles of the rounds beside it. Bounded: ROUNDS × PER_ROUND requests per path and row.
//!
//! `cargo bench -p weir --bench embed` starts its own mock upstream. `bench/embed.py` runs this
//! bench's binary against the standalone `mock-upstream` it also sends the Python package's
//! requests to (`--mock URL --json`), so that the Rust and Python figures come from one run.
#![expect(clippy::print_stdout, reason = "a benchmark prints its table")]

use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use weir::embed::Weir;
use weir_bench::mock::MockUpstream;

const KEY: &str = "bench-key-0123456789abcdef";
const WHOLE: &str = r#"{"model":"m","messages":[{"role":"user","content":"what is the capital of France"}]}"#;
const STREAM: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"what is the capital of France"}]}"#;

#[derive(Parser)]
struct Args {
    /// An OpenAI-compatible mock upstream's base URL (`http://127.0.0.1:PORT/v1`); without it, one
    /// is started in this process.
    #[arg(long)]
    mock: Option<String>,
    /// Rounds per row.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Requests per path in a round.
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// Print each row's per-round means as one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench` to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn config(mock: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"mock\"\nendpoint = \"{mock}\"\n\n[[models]]\nname = \"m\"\ntargets = [{{ upstream = \"mock\", model = \"x\" }}]\n\n[[keys]]\nname = \"bench\"\nteam = \"b\"\nkey = \"{KEY}\"\n"
    )
}

async fn in_process(weir: &Weir, body: &'static str) -> usize {
    let request = http::Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = weir.handle(request).await;
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("body").to_bytes().len()
}

async fn over_http(client: &reqwest::Client, url: &str, body: &'static str) -> usize {
    let response = client.post(url).bearer_auth(KEY).body(body).send().await.expect("send");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body").len()
}

/// The mean time per request of `n` calls, in microseconds.
async fn mean_us<F: Future<Output = usize>>(n: usize, mut call: impl FnMut() -> F) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(call().await);
    }
    started.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// The median and the quartiles of `values`, by the nearest rank.
fn quartiles(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args = Args::parse();
    assert!(args.rounds > 0 && args.n > 0, "--rounds and --n must be at least 1");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // On a worker task, as an application's own request handler runs: a `block_on` future runs on
    // the main thread instead, where every wake-up by the gateway's tasks (one per streamed event)
    // is a wake-up of another thread, which the in-process path would be charged for.
    let bench = runtime.spawn(async move {
        let own_mock = match &args.mock {
            Some(_) => None,
            None => Some(MockUpstream::builder().record_requests(false).start().await),
        };
        let mock_url = args.mock.clone().unwrap_or_else(|| own_mock.as_ref().expect("mock").base_url());
        let weir = Weir::from_toml(&config(&mock_url)).await.expect("gateway");
        let served = weir.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind")).expect("serve");
        let url = format!("{}/v1/chat/completions", served.url());
        let client = reqwest::Client::new();
        let before = load();
        let mut rows = Vec::new();
        for (name, body) in [("chat, whole", WHOLE), ("chat, streamed", STREAM)] {
            // Warm both paths (connections, caches) before measuring.
            mean_us(args.n.div_ceil(3), || in_process(&weir, body)).await;
            mean_us(args.n.div_ceil(3), || over_http(&client, &url, body)).await;
            let (mut embedded, mut http) = (Vec::new(), Vec::new());
            for _ in 0..args.rounds {
                embedded.push(mean_us(args.n, || in_process(&weir, body)).await);
                http.push(mean_us(args.n, || over_http(&client, &url, body)).await);
            }
            rows.push((name, embedded, http));
        }
        let after = load();
        if args.json {
            let object: serde_json::Map<_, _> = rows
                .iter()
                .map(|(name, embedded, http)| (name.to_string(), serde_json::json!({ "handle": embedded, "http": http })))
                .collect();
            println!("{}", serde_json::Value::Object(object));
        } else {
            println!("load average before: {before}; after: {after}");
            println!(
                "| request (median [quartiles] of {} × mean of {}) | `Weir::handle` | loopback HTTP (`Weir::serve` + reqwest) | saved per request |",
                args.rounds, args.n
            );
            println!("|---|---|---|---|");
            for (name, embedded, http) in rows {
                let (e, e25, e75) = quartiles(&embedded);
                let (h, h25, h75) = quartiles(&http);
                println!("| {name} | {e:.0} [{e25:.0}–{e75:.0}] µs | {h:.0} [{h25:.0}–{h75:.0}] µs | {:.0} µs |", h - e);
            }
        }
        weir.shutdown().await;
        drop(own_mock);
    });
    runtime.block_on(bench).expect("the bench");
}
