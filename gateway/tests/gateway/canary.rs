//! The built-in `canary` plugin through the real gateway, with one mock upstream per variant: the
//! split holds within ±3% over 2,000 requests and every user stays on one side; the header forces a
//! side; a canary that fails half its requests is rolled back within its window and a changed
//! config re-arms it; shadow mode answers from the baseline while the canary gets the mirrored share.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, metric, metric_eventually, state_dir};

/// A gateway with the upstreams `base` and `next`, the public model `chat` (→ `base/base-model`)
/// and `chat-next` (→ `next/next-model`), and the canary plugin with `splits` (TOML array items).
fn config_text(base: &MockUpstream, next: &MockUpstream, splits: &str) -> String {
    format!(
        r#"
chain = ["canary"]

[server]
listen = "127.0.0.1:0"

[retry]
backoff_base = "1ms"
backoff_max = "2ms"

[[upstreams]]
name = "base"
endpoint = "{}"

[[upstreams]]
name = "next"
endpoint = "{}"

[[models]]
name = "chat"
targets = [{{ upstream = "base", model = "base-model" }}]

[[models]]
name = "chat-next"
targets = [{{ upstream = "next", model = "next-model" }}]

[[plugins]]
name = "canary"
source = "builtin:canary"
on_error = "closed"
deadline = "2s"

[plugins.config]
{splits}
"#,
        base.base_url(),
        next.base_url()
    )
}

async fn gateway(base: &MockUpstream, next: &MockUpstream, splits: &str) -> TestGateway {
    TestGateway::start(&config_text(base, next, splits)).await
}

/// A split of `chat` between itself and the target `next/next-model`, with extra TOML `settings`.
fn split(settings: &str) -> String {
    format!(
        "[[plugins.config.splits]]\nmodel = \"chat\"\nbaseline = \"chat\"\ncanary = \"next/next-model\"\n{settings}\n"
    )
}

/// A chat request from `user` (none: the key decides), with an optional variant header; returns
/// the status and the body.
/// Tests share one client per test: building one is slow in a debug build.
async fn ask(client: &reqwest::Client, gw: &TestGateway, user: Option<&str>, variant: Option<&str>) -> (u16, Value) {
    let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "which variant?"}]});
    if let Some(user) = user {
        body["user"] = json!(user);
    }
    let mut request = client.post(gw.url("/v1/chat/completions")).json(&body);
    if let Some(variant) = variant {
        request = request.header("x-weir-variant", variant);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The `user` fields of every request a mock received.
fn users(mock: &MockUpstream) -> Vec<String> {
    mock.requests().iter().filter_map(|r| r.json()["user"].as_str().map(str::to_owned)).collect()
}

fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("plugin", "canary"), ("metric", name)];
    all.extend_from_slice(labels);
    metric(metrics, "weir_plugin_counter_total", &all)
}

/// [`counter`] once it has reached `expected` (bounded wait): the plugin counts a request in its
/// completion hook, which runs after the answer has gone out to the client.
async fn counted(gw: &TestGateway, name: &str, labels: &[(&str, &str)], expected: f64) -> f64 {
    let mut all = vec![("plugin", "canary"), ("metric", name)];
    all.extend_from_slice(labels);
    metric_eventually(gw, "weir_plugin_counter_total", &all, expected).await
}

fn weight_gauge(metrics: &str) -> f64 {
    metric(metrics, "weir_plugin_gauge", &[("plugin", "canary"), ("metric", "weight"), ("model", "chat")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_requests_split_ninety_ten_and_every_user_stays_on_one_side() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    // Without the guard: two identical mocks on a loaded machine can differ in p95 latency by more
    // than its 1.5 ×, and a rollback midway would change the split this test is about (the guard
    // has tests of its own below).
    let gw = Arc::new(gateway(&base, &next, &split("weight = 10\nguard = { enabled = false }")).await);

    // 1,000 users, two requests each, from four clients at once.
    let mut clients = Vec::new();
    for client in 0..4 {
        let gw = gw.clone();
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for round in 0..2 {
                for user in (client * 250)..(client * 250 + 250) {
                    let (status, body) = ask(&http, &gw, Some(&format!("user-{user}")), None).await;
                    assert_eq!(status, 200, "round {round}: {body}");
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }

    let (on_base, on_next) = (users(&base), users(&next));
    assert_eq!(on_base.len() + on_next.len(), 2_000);
    let share = on_next.len() as f64 / 2_000.0;
    assert!((0.07..=0.13).contains(&share), "canary share {share}, not 10% ± 3%");
    let (base_users, next_users): (BTreeSet<_>, BTreeSet<_>) =
        (on_base.into_iter().collect(), on_next.into_iter().collect());
    assert_eq!(base_users.len() + next_users.len(), 1_000, "a user was seen on both sides");
    assert!(base_users.is_disjoint(&next_users));
    assert!(next.requests().iter().all(|r| r.json()["model"] == "next-model"));

    let canary_requests = counted(&gw, "requests", &[("variant", "canary")], next.request_count() as f64).await;
    assert_eq!(canary_requests, next.request_count() as f64);
    let baseline_requests = base.request_count() as f64;
    assert_eq!(counted(&gw, "requests", &[("variant", "baseline")], baseline_requests).await, baseline_requests);
    let metrics = gw.metrics().await;
    assert_eq!(counter(&metrics, "errors", &[]), 0.0);
    assert_eq!(weight_gauge(&metrics), 10.0);
    let latency = metric(
        &metrics,
        "weir_plugin_histogram_count",
        &[("plugin", "canary"), ("metric", "latency_ms"), ("variant", "canary")],
    );
    assert_eq!(latency, canary_requests, "{metrics}");
}

#[tokio::test]
async fn without_a_user_the_key_decides_and_the_header_forces_a_side() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    let gw = gateway(&base, &next, &split("weight = 0")).await;
    let http = reqwest::Client::new();
    assert_eq!(ask(&http, &gw, Some("u"), None).await.1["model"], "base-model");
    assert_eq!(ask(&http, &gw, None, None).await.1["model"], "base-model");
    assert_eq!(ask(&http, &gw, Some("u"), Some("canary")).await.1["model"], "next-model", "forced onto a 0% canary");
    drop(gw);

    let gw = gateway(&base, &next, &split("weight = 100")).await;
    assert_eq!(ask(&http, &gw, Some("u"), None).await.1["model"], "next-model");
    assert_eq!(ask(&http, &gw, None, None).await.1["model"], "next-model");
    assert_eq!(ask(&http, &gw, Some("u"), Some("baseline")).await.1["model"], "base-model", "forced off a 100% canary");
    assert_eq!(
        ask(&http, &gw, Some("u"), Some("nonsense")).await.1["model"],
        "next-model",
        "an unknown value forces nothing"
    );
    // Other models are not split.
    let other = json!({"model": "chat-next", "messages": [{"role": "user", "content": "x"}]});
    let response = http.post(gw.url("/v1/chat/completions")).json(&other).send().await.expect("send");
    assert_eq!(response.json::<Value>().await.expect("json")["model"], "next-model");
    assert_eq!((base.request_count(), next.request_count()), (3, 5));
}

#[tokio::test]
async fn a_canary_failing_half_its_requests_is_rolled_back_within_its_window_and_a_new_config_rearms_it() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().fail_one_in(2, 500).start().await;
    let guard = "guard = { window_seconds = 60, buckets = 6, min_requests = 10 }";
    let gw = gateway(&base, &next, &split(&format!("weight = 50\n{guard}"))).await;
    let http = reqwest::Client::new();

    // Sequential requests from new users until the rollback shows (bounded).
    let mut sent = 0;
    let mut rolled_back = false;
    while sent < 400 && !rolled_back {
        ask(&http, &gw, Some(&format!("user-{sent}")), None).await;
        sent += 1;
        rolled_back = counter(&gw.metrics().await, "rollbacks", &[("model", "chat")]) == 1.0;
    }
    assert!(rolled_back, "no rollback after {sent} requests");
    let metrics = gw.metrics().await;
    assert_eq!(counter(&metrics, "rollbacks", &[("reason", "error_rate")]), 1.0);
    assert_eq!(weight_gauge(&metrics), 0.0);
    // Judged as soon as the window held its minimum sample of canary requests.
    let canary_requests = counter(&metrics, "requests", &[("variant", "canary")]);
    assert_eq!(canary_requests, 10.0, "{metrics}");
    assert!(counter(&metrics, "errors", &[("variant", "canary")]) >= 5.0, "{metrics}");

    // From now on every request goes to the baseline, whoever asks.
    let before = next.request_count();
    for user in 0..100 {
        let (status, body) = ask(&http, &gw, Some(&format!("later-{user}")), None).await;
        assert_eq!((status, body["model"].as_str()), (200, Some("base-model")));
    }
    assert_eq!(next.request_count(), before, "a rolled-back canary got traffic");
    assert_eq!(weight_gauge(&gw.metrics().await), 0.0);

    // A changed split is a new rollout: the canary gets its share again.
    let changed = config_text(&base, &next, &split(&format!("weight = 60\n{guard}")));
    let changed = weir_config::load_str(&changed, &weir_config::MapEnv::default(), &state_dir()).expect("config");
    gw.gateway.reload_with(changed).await.expect("reload");
    for user in 0..40 {
        ask(&http, &gw, Some(&format!("again-{user}")), None).await;
    }
    assert!(next.request_count() > before, "the re-armed canary got no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_answers_from_the_baseline_and_mirrors_the_share_to_the_canary() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    let gw = gateway(&base, &next, &split("weight = 30\nshadow = true")).await;
    let http = reqwest::Client::new();

    for user in 0..200 {
        let (status, body) = ask(&http, &gw, Some(&format!("shadow-{user}")), None).await;
        assert_eq!((status, body["model"].as_str()), (200, Some("base-model")), "every client gets the baseline");
    }
    assert_eq!(base.request_count(), 200);
    // The mirrored copies run in the background, each counted in flight from before its client's
    // answer went out: wait (bounded) until none is left and the canary's hook counted each one.
    let labels = [("variant", "canary"), ("traffic", "shadow")];
    let mut mirrored = 0.0;
    for _ in 0..200 {
        let metrics = gw.metrics().await;
        mirrored = counter(&metrics, "requests", &labels);
        let in_flight = metric(&metrics, "weir_in_flight_requests", &[]);
        if in_flight == 0.0 && mirrored > 0.0 && mirrored == next.request_count() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mirrored, next.request_count() as f64);
    assert!((40.0..=80.0).contains(&mirrored), "mirrored {mirrored} of 200 at 30%");
    let mirrored_users: BTreeSet<String> = users(&next).into_iter().collect();
    assert_eq!(mirrored_users.len() as f64, mirrored, "each chosen user's request mirrored once");
    assert!(next.requests().iter().all(|r| r.json()["model"] == "next-model"));
    let metrics = gw.metrics().await;
    assert_eq!(counter(&metrics, "requests", &[("variant", "canary"), ("traffic", "live")]), 0.0);
    assert_eq!(counted(&gw, "requests", &[("variant", "baseline")], 200.0).await, 200.0);
}

#[tokio::test]
async fn a_bad_config_names_the_field() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    for (splits, expected) in [
        (split("weight = 150"), "splits[0].weight"),
        (split("weight = 10\nguard = { window_seconds = 50, buckets = 6 }"), "splits[0].guard.window_seconds"),
        (split("weight = 10\nstickiness = \"user\""), "unknown field `stickiness`"),
        (format!("{}{}", split("weight = 1"), split("weight = 2")), "splits[1].model"),
        ("splits = []\nheader = 7".to_owned(), "header"),
    ] {
        let text = config_text(&base, &next, &splits);
        let loaded = weir_config::load_str(&text, &weir_config::MapEnv::default(), &state_dir()).expect("config");
        let error =
            weir::Gateway::new(loaded, Box::new(weir_config::MapEnv::default())).await.expect_err(&splits).to_string();
        assert!(error.contains(expected), "{splits}: {error}");
    }
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_on_its_p95_latency() {
    let base = MockUpstream::builder().start().await;
    // Far slower than the baseline, even when a loaded machine slows every request down.
    let next = MockUpstream::builder().latency(Duration::from_millis(300)).start().await;
    let guard = "guard = { window_seconds = 60, buckets = 6, min_requests = 5 }";
    let gw = gateway(&base, &next, &split(&format!("weight = 50\n{guard}"))).await;
    let http = reqwest::Client::new();

    // The latency check runs at most once a second: keep asking (bounded) until it has run.
    let mut sent = 0;
    let mut rolled_back = false;
    while sent < 300 && !rolled_back {
        let (status, _) = ask(&http, &gw, Some(&format!("user-{sent}")), None).await;
        assert_eq!(status, 200, "slow, not failing");
        sent += 1;
        rolled_back = counter(&gw.metrics().await, "rollbacks", &[("model", "chat")]) == 1.0;
    }
    assert!(rolled_back, "no rollback after {sent} requests");
    let metrics = gw.metrics().await;
    assert_eq!(counter(&metrics, "rollbacks", &[("reason", "latency")]), 1.0, "{metrics}");
    assert_eq!(counter(&metrics, "errors", &[]), 0.0);
    let before = next.request_count();
    for user in 0..20 {
        ask(&http, &gw, Some(&format!("later-{user}")), None).await;
    }
    assert_eq!(next.request_count(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_canary_is_rolled_back_from_its_mirrored_outcomes() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().always_fail(503).start().await;
    let guard = "guard = { window_seconds = 60, buckets = 6, min_requests = 5 }";
    let gw = gateway(&base, &next, &split(&format!("weight = 100\nshadow = true\n{guard}"))).await;
    let http = reqwest::Client::new();

    let mut sent = 0;
    let mut rolled_back = false;
    while sent < 300 && !rolled_back {
        let (status, body) = ask(&http, &gw, Some(&format!("user-{sent}")), None).await;
        assert_eq!((status, body["model"].as_str()), (200, Some("base-model")), "clients never see the canary");
        sent += 1;
        rolled_back = counter(&gw.metrics().await, "rollbacks", &[("model", "chat")]) == 1.0;
    }
    assert!(rolled_back, "no rollback after {sent} requests");
    let metrics = gw.metrics().await;
    assert!(counter(&metrics, "errors", &[("variant", "canary"), ("traffic", "shadow")]) >= 5.0, "{metrics}");

    // Copies already on their way may still land; after that, no more are sent.
    let mut settled = next.request_count();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        settled = next.request_count();
    }
    for user in 0..50 {
        ask(&http, &gw, Some(&format!("later-{user}")), None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(next.request_count(), settled, "a rolled-back shadow canary still gets copies");
}

#[tokio::test]
async fn each_variant_gets_its_time_to_first_token_and_its_cost() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    let prices = "\n[prices.\"next/next-model\"]\ninput = 2.0\noutput = 8.0\n\n[prices.\"base/base-model\"]\ninput = 1.0\noutput = 4.0\n";
    let gw = gateway(&base, &next, &format!("{}{prices}", split("weight = 100"))).await;
    let http = reqwest::Client::new();

    let price = |usage: &Value, input: u64, output: u64| {
        usage["prompt_tokens"].as_u64().expect("n") * input + usage["completion_tokens"].as_u64().expect("n") * output
    };
    // Picodollars: prices are USD per million tokens, so a token costs price × 10⁶ pico-USD.
    let (mut canary_cost, mut baseline_cost) = (0, 0);
    for variant in ["canary", "canary", "baseline"] {
        let (status, body) = ask(&http, &gw, Some("u"), Some(variant)).await;
        assert_eq!(status, 200);
        match variant {
            "canary" => canary_cost += price(&body["usage"], 2_000_000, 8_000_000),
            _ => baseline_cost += price(&body["usage"], 1_000_000, 4_000_000),
        }
    }
    for _ in 0..3 {
        let body = json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream it"}]});
        let response = http.post(gw.url("/v1/chat/completions")).json(&body).send().await.expect("send");
        assert_eq!(response.status().as_u16(), 200);
        let events = crate::support::sse_data(&response.bytes().await.expect("stream"));
        let usage =
            events.iter().filter_map(|e| serde_json::from_str::<Value>(e).ok()).find(|c| c["usage"].is_object());
        canary_cost += price(&usage.expect("a usage chunk")["usage"], 2_000_000, 8_000_000);
    }
    let labels = [("plugin", "canary"), ("metric", "ttft_ms"), ("variant", "canary")];
    assert_eq!(metric_eventually(&gw, "weir_plugin_histogram_count", &labels, 3.0).await, 3.0, "one TTFT per stream");
    let labels = [("plugin", "canary"), ("metric", "requests"), ("variant", "canary")];
    assert_eq!(metric_eventually(&gw, "weir_plugin_counter_total", &labels, 5.0).await, 5.0);
    let metrics = gw.metrics().await;
    let base_ttft = metric(
        &metrics,
        "weir_plugin_histogram_count",
        &[("plugin", "canary"), ("metric", "ttft_ms"), ("variant", "baseline")],
    );
    assert_eq!(base_ttft, 0.0, "whole answers have no TTFT");
    assert_eq!(counter(&metrics, "cost_pico_usd", &[("variant", "canary")]), canary_cost as f64, "{metrics}");
    let baseline_counted = counted(&gw, "cost_pico_usd", &[("variant", "baseline")], baseline_cost as f64).await;
    assert_eq!(baseline_counted, baseline_cost as f64, "{metrics}");
}

/// All five built-in policies in one chain, in the order their READMEs give: limits and budgets see
/// every request, a cache hit answers before routing, and the canary's split wins over the router.
#[tokio::test]
async fn in_one_chain_with_the_other_built_ins_the_split_wins_over_the_router() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    let text = config_text(&base, &next, &split("weight = 100"))
        .replace(r#"chain = ["canary"]"#, r#"chain = ["ratelimit", "cost", "cache", "router", "canary"]"#)
        + r#"
[[plugins]]
name = "ratelimit"
source = "builtin:ratelimit"
deadline = "2s"
config = { limits = [{ per = ["key"], requests_per_minute = 3 }] }

[[plugins]]
name = "cost"
source = "builtin:cost"
deadline = "2s"
config = { budgets = [{ per = "team", usd = 100.0, period = "day" }] }

[[plugins]]
name = "cache"
source = "builtin:cache"
deadline = "2s"

[[plugins]]
name = "router"
source = "builtin:router"
deadline = "2s"
config = { models = { chat = { strategy = "priority" } } }
"#;
    let gw = TestGateway::start(&text).await;
    let http = reqwest::Client::new();
    let body =
        json!({"model": "chat", "temperature": 0, "user": "u", "messages": [{"role": "user", "content": "all five"}]});
    let send = || async {
        let response = http.post(gw.url("/v1/chat/completions")).json(&body).send().await.expect("send");
        let cache = response.headers().get("x-weir-cache").map(|v| v.to_str().expect("ascii").to_owned());
        (response.status().as_u16(), cache, response.json::<Value>().await.expect("json"))
    };

    let (status, cache, first) = send().await;
    assert_eq!((status, cache.as_deref()), (200, Some("miss")), "{first}");
    assert_eq!(first["model"], "next-model", "the canary routed after the router");
    let (status, cache, second) = send().await;
    assert_eq!((status, cache.as_deref()), (200, Some("hit")));
    assert_eq!(second, first);
    assert_eq!((base.request_count(), next.request_count()), (0, 1), "the hit reached no upstream");
    // The rate limit comes before the cache, so hits count against it.
    send().await;
    let (status, _, refused) = send().await;
    assert_eq!(status, 429, "{refused}");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_plugin_faults_total", &[]), 0.0, "{metrics}");
    assert_eq!(counter(&metrics, "requests", &[("variant", "canary")]), 1.0, "hits and refusals are not the variants'");
}

#[tokio::test]
async fn variants_may_be_targets_or_public_models_in_live_and_shadow_splits() {
    let base = MockUpstream::builder().start().await;
    let next = MockUpstream::builder().start().await;
    // The baseline a target, the canary a public model (its first target gets the shadow copies).
    let variants =
        "[[plugins.config.splits]]\nmodel = \"chat\"\nbaseline = \"base/base-model\"\ncanary = \"chat-next\"\n";
    let http = reqwest::Client::new();

    let gw = gateway(&base, &next, &format!("{variants}weight = 100\n")).await;
    assert_eq!(ask(&http, &gw, Some("u"), None).await.1["model"], "next-model");
    assert_eq!(ask(&http, &gw, Some("u"), Some("baseline")).await.1["model"], "base-model");
    drop(gw);

    let gw = gateway(&base, &next, &format!("{variants}weight = 100\nshadow = true\n")).await;
    assert_eq!(ask(&http, &gw, Some("u"), None).await.1["model"], "base-model");
    let labels = [("plugin", "canary"), ("metric", "requests"), ("traffic", "shadow")];
    assert_eq!(metric_eventually(&gw, "weir_plugin_counter_total", &labels, 1.0).await, 1.0);
    assert_eq!((base.request_count(), next.request_count()), (2, 2), "one live and one mirrored copy each");
}
