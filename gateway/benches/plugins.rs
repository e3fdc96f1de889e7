//! In-process cost of the plugin chain, on the real host with the `noop` fixture (a plugin that
//! implements every hook and does nothing): one warm hook call, the hooks of one request through
//! chains of 1 and 5 plugins, and the same with a fresh instance per call. Criterion reports the
//! means; a second pass prints p50/p99 per request, which is what the budget is stated in.
//!
//! `cargo bench -p weir --bench plugins`
#![expect(clippy::print_stdout, reason = "a benchmark prints its table")]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::HeaderMap;
use weir::plugins::view::RequestView;
use weir::plugins::{ApiKind, Chain, Completion, RequestInfo};
use weir::{App, Process};

fn config(plugins: usize, fresh: bool) -> String {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstreams]]\nname = \"mock\"\nendpoint = \"http://127.0.0.1:9/v1\"\n\n[[models]]\nname = \"m\"\ntargets = [{ upstream = \"mock\", model = \"m\" }]\n",
    );
    for i in 0..plugins {
        text.push_str(&format!(
            "\n[[plugins]]\nname = \"p{i}\"\nsource = \"{}\"\non_error = \"open\"\ndeadline = \"100ms\"\ninstances = \"{}\"\n",
            weir_test_plugins::NOOP,
            if fresh { "fresh" } else { "pooled" }
        ));
    }
    text
}

struct Setup {
    app: App,
    view: Arc<RequestView>,
    completion: Completion,
}

impl Setup {
    async fn new(plugins: usize, fresh: bool) -> Self {
        let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-state");
        let config =
            weir_config::load_str(&config(plugins, fresh), &weir_config::MapEnv::default(), &state).expect("config");
        let app = App::new(config, &Process::default()).await.expect("app");
        let info = RequestInfo {
            request_id: "0190f1e2a3b4c5d6e7f8091a2b3c4d5e".into(),
            api: ApiKind::ChatCompletions,
            model: "m".into(),
            stream: false,
            max_tokens: Some(256),
            temperature: Some(0.0),
            prompt_tokens_estimate: 12,
            body_len: 80,
            key_name: "bench".into(),
            team: "bench".into(),
            end_user: None,
        };
        let body = Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#);
        let view = Arc::new(RequestView::new(info, HeaderMap::new(), body));
        let completion = Completion {
            status: 200,
            target: "mock/m".into(),
            usage: None,
            ttft_ms: None,
            total_ms: 12,
            error_class: None,
        };
        Self { app, view, completion }
    }

    fn chain(&self) -> &Arc<Chain> {
        self.app.plugins.chain_for("m")
    }

    /// Every hook of one request, through the whole chain.
    async fn request(&self) {
        let chain = self.chain();
        chain.on_request(&self.view, &self.app.router).await.expect("on-request");
        chain.on_response_headers(&self.view, 200).await.expect("on-response-headers");
        chain.on_complete(&self.view, &self.completion).await;
    }

    async fn one_hook(&self) {
        self.chain().on_request(&self.view, &self.app.router).await.expect("on-request");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("plugins");
    let one = rt.block_on(Setup::new(1, false));
    group.bench_function("warm hook call (on-request, 1 plugin)", |b| b.to_async(&rt).iter(|| one.one_hook()));
    group.bench_function("request, chain of 1 (3 hooks)", |b| b.to_async(&rt).iter(|| one.request()));
    let five = rt.block_on(Setup::new(5, false));
    group.bench_function("request, chain of 5 (15 hooks)", |b| b.to_async(&rt).iter(|| five.request()));
    let fresh = rt.block_on(Setup::new(1, true));
    group.bench_function("fresh instance + on-request, 1 plugin", |b| b.to_async(&rt).iter(|| fresh.one_hook()));
    group.finish();
}

/// p50/p99 over many single requests, after a warm-up.
fn percentiles() {
    let rt = runtime();
    let cases: [(&str, usize, bool, bool); 5] = [
        ("no plugins (view only)", 0, false, true),
        ("warm hook call, 1 plugin", 1, false, false),
        ("request, chain of 1 (3 hooks)", 1, false, true),
        ("request, chain of 5 (15 hooks)", 5, false, true),
        ("fresh instance + on-request", 1, true, false),
    ];
    println!("\n| in-process case | p50 | p99 | mean |\n|---|---:|---:|---:|");
    for (name, plugins, fresh, whole_request) in cases {
        let setup = rt.block_on(Setup::new(plugins, fresh));
        let n = if fresh { 5_000 } else { 50_000 };
        let mut times = Vec::with_capacity(n);
        rt.block_on(async {
            for i in 0..(n + n / 10) {
                let start = Instant::now();
                if whole_request {
                    setup.request().await;
                } else {
                    setup.one_hook().await;
                }
                if i >= n / 10 {
                    times.push(start.elapsed());
                }
            }
        });
        times.sort();
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!("| {name} | {:.2} µs | {:.2} µs | {:.2} µs |", us(at(0.50)), us(at(0.99)), us(mean));
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

criterion_group!(group, benches);

fn main() {
    group();
    percentiles();
    Criterion::default().configure_from_args().final_summary();
}
