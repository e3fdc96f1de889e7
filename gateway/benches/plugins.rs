//! In-process cost of the plugin chain, on the real host with the `noop` fixture (a plugin that
//! implements every hook and does nothing): one warm hook call, the hooks of one request through
//! chains of 1 and 5 plugins, and the same with a fresh instance per call; then each built-in
//! policy plugin alone and all of them in one chain, with realistic configs. Criterion reports the
//! means; a second pass prints p50/p99 per request, which is what the budget is stated in; a third
//! the cost of the content hooks: `on-stream-event` per streamed chunk (the example
//! `stream-redact`, on chunks it passes and on a card number split across four it holds and
//! rewrites) beside a stream no plugin polices, and `on-response` per whole answer.
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
    let noop: Vec<(String, String, String)> = (0..plugins)
        .map(|i| {
            let mode = if fresh { "fresh" } else { "pooled" };
            (format!("p{i}"), weir_test_plugins::NOOP.to_owned(), format!("instances = \"{mode}\""))
        })
        .collect();
    config_with(&noop)
}

/// A config with `(name, source, extra settings)` plugins in one chain, and prices for the target.
fn config_with(plugins: &[(String, String, String)]) -> String {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[state]\nledger = \"../target/bench-state/ledger.jsonl\"\n\n[prices.\"mock/m\"]\ninput = 2.5\noutput = 10.0\n\n[[upstreams]]\nname = \"mock\"\nendpoint = \"http://127.0.0.1:9/v1\"\n\n[[upstreams]]\nname = \"spare\"\nendpoint = \"http://127.0.0.1:9/v1\"\n\n[[models]]\nname = \"m\"\ntargets = [{ upstream = \"mock\", model = \"m\" }, { upstream = \"spare\", model = \"m\" }]\n",
    );
    for (name, source, extra) in plugins {
        text.push_str(&format!(
            "\n[[plugins]]\nname = \"{name}\"\nsource = \"{source}\"\non_error = \"open\"\ndeadline = \"100ms\"\n{extra}\n"
        ));
    }
    text
}

/// The built-in policies with the configs a deployment would use.
const BUILTINS: &[(&str, &str)] = &[
    ("router", r#"config = { models = { m = { strategy = "least-latency" } } }"#),
    (
        "ratelimit",
        r#"config = { limits = [{ per = ["key"], requests_per_minute = 1000000000, tokens_per_minute = 1000000000000, concurrent = 100000 }] }"#,
    ),
    ("cost", r#"config = { budgets = [{ per = "team", usd = 1000000.0, period = "day" }] }"#),
    // Every bench request is cacheable (temperature 0) and a miss: the bench captures no response
    // to store, so this is the lookup path plus the store attempt.
    ("cache", r#"config = { ttl_seconds = 3600 }"#),
    // The bench's key lands on the baseline; each completion is recorded in the guard's window.
    ("canary", r#"config = { splits = [{ model = "m", baseline = "m", canary = "spare/m", weight = 10 }] }"#),
];

struct Setup {
    app: App,
    view: Arc<RequestView>,
    completion: Completion,
}

impl Setup {
    async fn new(plugins: usize, fresh: bool) -> Self {
        Self::from_config(&config(plugins, fresh)).await
    }

    /// Built-in plugins by name, in one chain.
    async fn builtins(names: &[&str]) -> Self {
        let plugins: Vec<(String, String, String)> = names
            .iter()
            .map(|name| {
                let settings = BUILTINS.iter().find(|(n, _)| n == name).map_or("", |(_, s)| *s);
                ((*name).to_owned(), format!("builtin:{name}"), settings.to_owned())
            })
            .collect();
        Self::from_config(&config_with(&plugins)).await
    }

    async fn from_config(text: &str) -> Self {
        let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-state");
        let config = weir_config::load_str(text, &weir_config::MapEnv::default(), &state).expect("config");
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
            instances: 0,
            key_name: "bench".into(),
            team: "bench".into(),
            end_user: None,
        };
        let body = Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#);
        let view = Arc::new(RequestView::new(info, HeaderMap::new(), body));
        let completion = Completion {
            status: 200,
            target: "mock/m".into(),
            usage: Some(weir::plugins::PluginUsage {
                prompt_tokens: 12,
                completion_tokens: 40,
                cached_tokens: 0,
                reasoning_tokens: 0,
            }),
            ttft_ms: Some(30),
            total_ms: 120,
            error_class: None,
            attempts: vec![weir::plugins::Attempt { target: "mock/m".into(), status: 200, latency_ms: 30 }],
            mirrored: false,
        };
        Self { app, view, completion }
    }

    fn chain(&self) -> &Arc<Chain> {
        self.app.plugins.chain_for("m")
    }

    /// Every hook of one request, through the whole chain, on a fresh view (as each request has
    /// its own: nothing a plugin computed or left on one request carries to the next).
    async fn request(&self) {
        let chain = self.chain();
        let view = Arc::new(RequestView::new(self.view.info(), self.view.headers.clone(), self.view.body()));
        chain.on_request(&view, &self.app.routes, &mut no_rewrite).await.expect("on-request");
        chain.on_response_headers(&view, 200).await.expect("on-response-headers");
        chain.on_complete(&view, &self.completion).await;
    }

    async fn one_hook(&self) {
        self.chain().on_request(&self.view, &self.app.routes, &mut no_rewrite).await.expect("on-request");
    }
}

/// The built-in policies never rewrite a request; a rewrite would fail the bench.
fn no_rewrite(_: bytes::Bytes) -> Result<weir::plugins::RequestInfo, String> {
    Err("the built-in policies do not rewrite requests".to_owned())
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
    let mut setups: Vec<(String, Setup, bool, bool)> = cases
        .into_iter()
        .map(|(name, plugins, fresh, whole)| (name.to_owned(), rt.block_on(Setup::new(plugins, fresh)), fresh, whole))
        .collect();
    for (name, _) in BUILTINS {
        setups.push((format!("request, built-in `{name}` alone"), rt.block_on(Setup::builtins(&[name])), false, true));
    }
    let all: Vec<&str> = BUILTINS.iter().map(|(n, _)| *n).collect();
    setups.push((format!("request, built-ins {all:?} in one chain"), rt.block_on(Setup::builtins(&all)), false, true));
    for (name, setup, fresh, whole_request) in setups {
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

/// A canonical chunk whose delta is `content`.
fn chunk(content: &str) -> weir::api::sse::Event {
    weir::api::sse::data_event(&serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    }))
}

/// Median and p99 of `f` per item, over `n` rounds of `items` items each (after a warm-up).
fn per_item<F: AsyncFnMut()>(rt: &tokio::runtime::Runtime, n: usize, items: usize, mut f: F) -> (f64, f64) {
    let mut times = Vec::with_capacity(n);
    rt.block_on(async {
        for i in 0..(n + n / 10) {
            let start = Instant::now();
            f().await;
            if i >= n / 10 {
                times.push(start.elapsed() / items as u32);
            }
        }
    });
    times.sort();
    let at = |q: f64| us(times[((times.len() as f64 * q) as usize).min(times.len() - 1)]);
    (at(0.50), at(0.99))
}

/// The content hooks, per streamed chunk and per whole answer.
fn content_hooks() {
    use weir::plugins::police::Policing;
    let rt = runtime();
    println!("\n| content hook | per | p50 | p99 |\n|---|---|---:|---:|");
    // A chain without the hook: `Policing::of` is `None`, and the relay sends each chunk to the
    // edge as it did before the hook existed; nothing to time.
    let none = rt.block_on(Setup::new(1, false));
    assert!(Policing::of(none.chain(), &none.view).is_none());
    println!("| no `on-stream-event` in the chain | chunk | no call | no call |");
    // The example stream-redact, and the built-in guard with every detector redacting, prompts
    // and answers: a chunk each passes, and a card number each holds, then redacts.
    let rules = r#"config = { rules = [{ detect = ["email", "phone", "card", "iban", "ssn", "ip", "secret"], action = "redact" }] }"#;
    let card = [" 4111", " 1111", " 1111", " 1111,"];
    let mut guard = None;
    for (name, label, settings) in [("stream-redact", "`stream-redact`", ""), ("guard", "`guard` (7 detectors)", rules)]
    {
        let plugin = (name.to_owned(), format!("builtin:{name}"), settings.to_owned());
        let setup = rt.block_on(Setup::from_config(&config_with(&[plugin])));
        let mut police = Policing::of(setup.chain(), &setup.view).expect("the plugin polices streams");
        let (p50, p99) = per_item(&rt, 20_000, 1, async || {
            police.chunk(chunk(" hello,")).await.expect("policed");
        });
        println!("| {label}, a chunk it passes | chunk | {p50:.2} µs | {p99:.2} µs |");
        let (p50, p99) = per_item(&rt, 5_000, card.len(), async || {
            let mut sent = String::new();
            for piece in card {
                for event in police.chunk(chunk(piece)).await.expect("policed") {
                    sent.push_str(std::str::from_utf8(&event.data).expect("utf-8"));
                }
            }
            assert!(sent.contains("[CARD]") && !sent.contains("4111"), "{sent}");
        });
        println!("| {label}, a card number over 4 chunks (held, then redacted) | chunk | {p50:.2} µs | {p99:.2} µs |");
        guard = Some(setup);
    }
    let guard = guard.expect("the guard's setup, last");
    // A prompt: the chain's `on-request`, the body read, scanned and (with a card) rewritten.
    for (what, prompt) in [
        ("a clean prompt", "What is the capital of France? Answer in one word, please."),
        ("a prompt with a card number (redacted)", "Charge 4111 1111 1111 1111 for the order, please."),
    ] {
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": prompt}]}))
                .expect("json"),
        );
        let info = guard.view.info();
        let (p50, p99) = per_item(&rt, 10_000, 1, async || {
            let view = Arc::new(RequestView::new(info.clone(), HeaderMap::new(), body.clone()));
            let mut rewrite = |new: Bytes| {
                assert!(!new.windows(4).any(|w| w == b"4111"), "redacted");
                Ok(info.clone())
            };
            guard.chain().on_request(&view, &guard.app.routes, &mut rewrite).await.expect("on-request");
        });
        println!("| `guard` on-request, {what} | request | {p50:.2} µs | {p99:.2} µs |");
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

criterion_group!(group, benches);

fn main() {
    group();
    percentiles();
    content_hooks();
    Criterion::default().configure_from_args().final_summary();
}
