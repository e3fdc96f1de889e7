//! The embedded call beside the same request over loopback HTTP, in one run: one `weir::embed::Weir` in
//! front of a local mock upstream, asked the same chat request (whole, then streamed) through
//! `Weir::handle` (no socket between the application and the gateway) and through `Weir::serve` with
//! a keep-alive reqwest client. Both pay the gateway's hop to the upstream; the difference is the
//! client-side HTTP hop the embedding removes.
//!
//! Requests are sequential (latency, not throughput); each figure is the median over rounds of the
//! mean per request in a round. Bounded: ROUNDS × PER_ROUND requests per row.
//!
//! `cargo bench -p weir --bench embed`
#![expect(clippy::print_stdout, reason = "a benchmark prints its table")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use weir::embed::Weir;
use weir_bench::mock::MockUpstream;

const ROUNDS: usize = 9;
const PER_ROUND: usize = 300;
const KEY: &str = "bench-key-0123456789abcdef";
const WHOLE: &str = r#"{"model":"m","messages":[{"role":"user","content":"what is the capital of France"}]}"#;
const STREAM: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"what is the capital of France"}]}"#;

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

/// The median, over rounds, of the mean time per request.
async fn measure<F: Future<Output = usize>>(mut call: impl FnMut() -> F) -> Duration {
    for _ in 0..PER_ROUND / 3 {
        call().await;
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            std::hint::black_box(call().await);
        }
        rounds.push(started.elapsed() / PER_ROUND as u32);
    }
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mock = MockUpstream::builder().record_requests(false).start().await;
        let weir = Weir::from_toml(&config(&mock.base_url())).await.expect("gateway");
        let served = weir.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind")).expect("serve");
        let url = format!("{}/v1/chat/completions", served.url());
        let client = reqwest::Client::new();
        let before = load();
        let mut rows = Vec::new();
        for (name, body) in [("chat, whole", WHOLE), ("chat, streamed", STREAM)] {
            let embedded = measure(|| in_process(&weir, body)).await;
            let http = measure(|| over_http(&client, &url, body)).await;
            rows.push((name, embedded, http));
        }
        println!("load average before: {before}; after: {}", load());
        println!("| request | `Weir::handle` | loopback HTTP (`Weir::serve` + reqwest) | saved per request |");
        println!("|---|---|---|---|");
        for (name, embedded, http) in rows {
            println!(
                "| {name} | {:.0} µs | {:.0} µs | {:.0} µs |",
                embedded.as_secs_f64() * 1e6,
                http.as_secs_f64() * 1e6,
                (http.as_secs_f64() - embedded.as_secs_f64()) * 1e6
            );
        }
        weir.shutdown().await;
    });
}
