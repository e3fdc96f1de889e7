//! A misbehaving plugin costs only itself: one that keeps faulting is quarantined (skipped per its
//! `on_error`, with a metric and a log line) and comes back after its cooldown; its metrics are
//! bounded in size and freed with the version that made them; its faults are one rate-limited line
//! each; a canary that names a target no model lists is routed there, and one that names nothing
//! routable stops the config at load; a plugin built for `weir:plugin@0.1.0` still loads.

use std::time::Duration;

use serde_json::json;
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, metric, metric_eventually, openai_error, post, state_dir};

/// A gateway with the model `clean` (no plugins) and `guarded`, whose chain is the one
/// `[[plugins]]` table `plugin` (named as it says).
fn config(mock: &MockUpstream, plugin: &str) -> String {
    format!(
        r#"
chain = []

[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "mock"
endpoint = "{}"

[[models]]
name = "clean"
targets = [{{ upstream = "mock", model = "mock-model" }}]

[[models]]
name = "guarded"
targets = [{{ upstream = "mock", model = "mock-model" }}]
plugins = ["p"]

[[plugins]]
name = "p"
{plugin}
"#,
        mock.base_url()
    )
}

async fn chat(gw: &TestGateway, model: &str) -> (u16, serde_json::Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (status, _, body) = post(&format!("{}/chat/completions", gw.base_url()), &body, None).await;
    (status, body)
}

/// A deadline counts the time a call runs, not the time it waits for its turn: calls of a few
/// milliseconds each, sent at once, share the plugin threads (one less than the cores) and so each
/// take longer than the deadline from start to end, and not one of them faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_their_turn_are_not_charged_for_the_wait() {
    const DEADLINE: Duration = Duration::from_millis(30);
    let mock = MockUpstream::builder().start().await;
    // A few milliseconds of guest code per call in a debug build (yielding every 20,000 fuel is
    // most of it); measured below, as it depends on the machine.
    let plugin = format!(
        "source = \"{}\"\non_error = \"closed\"\ndeadline = \"{}ms\"\nquarantine = {{ faults = 0 }}\nconfig = {{ rounds = 300000 }}",
        weir_test_plugins::LOOP,
        DEADLINE.as_millis()
    );
    let gw = std::sync::Arc::new(TestGateway::start(&config(&mock, &plugin)).await);
    let seconds =
        |text: &str, what: &str| metric(text, &format!("weir_plugin_call_seconds_{what}"), &[("plugin", "p")]);

    // Alone, a warm call takes its own time: well within the deadline.
    assert_eq!(chat(&gw, "guarded").await.0, 200);
    let cold = gw.metrics().await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, "guarded").await.0, 200);
    }
    let text = gw.metrics().await;
    let alone = (seconds(&text, "sum") - seconds(&cold, "sum")) / 3.0;
    assert!(alone < DEADLINE.as_secs_f64() / 2.0, "a lone call took {alone} s: the fixture is too slow here");

    // Enough at once that the plugin threads are busy for four deadlines.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
    let n = ((4.0 * DEADLINE.as_secs_f64() * threads as f64 / alone).ceil() as usize).clamp(16, 256);
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { chat(&gw, "guarded").await })
        })
        .collect();
    for call in calls {
        let (status, body) = call.await.expect("request");
        assert_eq!(status, 200, "{body}");
    }
    let after = gw.metrics().await;
    assert_eq!(metric(&after, "weir_plugin_faults_total", &[("plugin", "p")]), 0.0, "{after}");
    // They did wait: from start to end the calls took longer than the deadline, on average.
    let (sum, count) =
        (seconds(&after, "sum") - seconds(&text, "sum"), seconds(&after, "count") - seconds(&text, "count"));
    assert_eq!(count, n as f64);
    assert!(sum / count > DEADLINE.as_secs_f64(), "{n} calls took {} s each: they never queued", sum / count);
}

/// What is not charged is still bounded: calls that each need their whole deadline of CPU, sent
/// faster than the plugin threads can give it, are ended at their wall limit (the deadline plus a
/// second, here) instead of queueing behind each other for as long as the queue grows, and every
/// request is answered per `on_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_cannot_get_their_turn_end_at_their_wall_limit() {
    const DEADLINE: Duration = Duration::from_millis(50);
    let wall_limit = DEADLINE + Duration::from_secs(1);
    let mock = MockUpstream::builder().start().await;
    // The loop fixture runs until it is stopped.
    let plugin = format!(
        "source = \"{}\"\non_error = \"open\"\ndeadline = \"{}ms\"\nquarantine = {{ faults = 0 }}",
        weir_test_plugins::LOOP,
        DEADLINE.as_millis()
    );
    let gw = TestGateway::start(&config(&mock, &plugin)).await;
    // Three seconds of the plugin threads' CPU (one less than the cores), at once: queued without
    // a bound, the last of them would end after three seconds or more.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1));
    let n = (60 * threads).min(480);
    // One client for all (a client per request would spend the first part of the test making them).
    let client = reqwest::Client::new();
    let body = json!({"model": "guarded", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let url = format!("{}/chat/completions", gw.base_url());
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let request = client.post(&url).header("content-type", "application/json").body(body.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let response = request.send().await.expect("send");
                let status = response.status().as_u16();
                let body = response.text().await.expect("body");
                (status, body, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (status, body, took) = call.await.expect("request");
        assert_eq!(status, 200, "fail-open carries on: {body}");
        slowest = slowest.max(took);
    }
    assert!(slowest < wall_limit + Duration::from_millis(600), "the slowest of {n} took {slowest:?}");
    let text = gw.metrics().await;
    let deadline_faults =
        metric(&text, "weir_plugin_faults_total", &[("plugin", "p"), ("hook", "on_request"), ("kind", "deadline")]);
    assert_eq!(deadline_faults, n as f64, "{text}");
    // They did wait their turn: some were still unfinished at their wall limit.
    assert!(slowest >= wall_limit, "the slowest of {n} took {slowest:?}: the plugin threads never queued them");
}

#[tokio::test]
async fn a_plugin_that_keeps_faulting_is_quarantined_then_tried_again_after_its_cooldown() {
    let mock = MockUpstream::builder().start().await;
    let plugin = format!(
        "source = \"{}\"\non_error = \"open\"\ndeadline = \"2s\"\nquarantine = {{ faults = 3, window = \"60s\", cooldown = \"3s\" }}",
        weir_test_plugins::TRAP
    );
    let gw = TestGateway::start(&config(&mock, &plugin)).await;
    let faults = |text: &str| metric(text, "weir_plugin_faults_total", &[("plugin", "p")]);
    for _ in 0..3 {
        assert_eq!(chat(&gw, "guarded").await.0, 200, "fail-open carries on");
    }
    let text = gw.metrics().await;
    assert_eq!(faults(&text), 3.0);
    assert_eq!(metric(&text, "weir_plugin_quarantined", &[("plugin", "p")]), 1.0, "{text}");
    assert_eq!(metric(&text, "weir_plugin_quarantines_total", &[("plugin", "p")]), 1.0, "{text}");

    // Quarantined: the hook is skipped, so no fault, and the request goes on as `open` says.
    for _ in 0..5 {
        assert_eq!(chat(&gw, "guarded").await.0, 200);
    }
    let text = gw.metrics().await;
    assert_eq!(faults(&text), 3.0, "no call, no fault: {text}");
    assert_eq!(metric(&text, "weir_plugin_skipped_total", &[("plugin", "p"), ("hook", "on_request")]), 5.0);

    // After the cooldown the plugin runs again; it still traps, and one fault on probation is
    // enough to quarantine it again.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(chat(&gw, "guarded").await.0, 200);
    let text = gw.metrics().await;
    assert_eq!(faults(&text), 4.0, "tried again: {text}");
    assert_eq!(metric(&text, "weir_plugin_quarantines_total", &[("plugin", "p")]), 2.0, "{text}");
    assert_eq!(metric(&text, "weir_plugin_quarantined", &[("plugin", "p")]), 1.0);
    assert_eq!(chat(&gw, "clean").await.0, 200);
}

#[tokio::test]
async fn a_quarantined_closed_plugin_fails_its_requests_with_a_clear_error() {
    let mock = MockUpstream::builder().start().await;
    let plugin = format!(
        "source = \"{}\"\non_error = \"closed\"\ndeadline = \"2s\"\nquarantine = {{ faults = 2, cooldown = \"5m\" }}",
        weir_test_plugins::TRAP
    );
    let gw = TestGateway::start(&config(&mock, &plugin)).await;
    for _ in 0..2 {
        let (status, body) = chat(&gw, "guarded").await;
        assert_eq!((status, openai_error(&body)["code"].as_str()), (500, Some("plugin_error")), "{body}");
    }
    let (status, body) = chat(&gw, "guarded").await;
    assert_eq!(status, 500, "{body}");
    let error = openai_error(&body);
    assert_eq!(error["code"], "plugin_quarantined", "{body}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("'p'") && m.contains("quarantined")), "{body}");
    assert_eq!(mock.request_count(), 0, "nothing reached the upstream");
    assert_eq!(metric(&gw.metrics().await, "weir_plugin_faults_total", &[("plugin", "p")]), 2.0);
    assert_eq!(chat(&gw, "clean").await.0, 200, "other models are not affected");
}

#[tokio::test]
async fn each_fault_is_one_rate_limited_line_with_the_backtrace_at_debug_only() {
    let logs = crate::server::captured_logs();
    let mock = MockUpstream::builder().start().await;
    // A name of its own, to find this test's lines among the others'.
    let plugin = format!(
        "source = \"{}\"\non_error = \"open\"\ndeadline = \"2s\"\nquarantine = {{ faults = 0 }}",
        weir_test_plugins::TRAP
    );
    let text = config(&mock, &plugin).replace("\"p\"", "\"trap-logged\"");
    let gw = TestGateway::start(&text).await;
    let started = std::time::Instant::now();
    for _ in 0..40 {
        assert_eq!(chat(&gw, "guarded").await.0, 200);
    }
    assert_eq!(metric(&gw.metrics().await, "weir_plugin_faults_total", &[("plugin", "trap-logged")]), 40.0);
    let text = without_colours(&String::from_utf8_lossy(&logs.lock().expect("log buffer")));
    let lines: Vec<&str> = text.lines().collect();
    let warned: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            lines[i].contains(" WARN ") && lines[i].contains("plugin fault") && lines[i].contains("trap-logged")
        })
        .collect();
    // A burst of ten, then one a second.
    let allowed = 10 + started.elapsed().as_secs() as usize + 1;
    assert!((1..=allowed).contains(&warned.len()), "{} warning lines for 40 faults", warned.len());
    for &i in &warned {
        assert!(lines[i].contains("kind=\"trap\"") || lines[i].contains("kind=trap"), "{}", lines[i]);
        assert!(lines[i].contains("hook=\"on_request\"") || lines[i].contains("hook=on_request"), "{}", lines[i]);
        assert!(!lines[i].contains("backtrace"), "{}", lines[i]);
        let next = lines.get(i + 1).copied().unwrap_or("20");
        assert!(next.starts_with("20"), "the warning continued on another line: {next:?}");
    }
    assert!(
        text.lines().any(|l| l.contains("DEBUG") && l.contains("plugin trap-logged: fault backtrace")),
        "the backtrace is at debug level"
    );
}

/// The text without the terminal colour codes the log format adds.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\u{1b}') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn plugin_metrics_are_bounded_in_size_and_count() {
    let mock = MockUpstream::builder().start().await;
    let huge = format!(
        "source = \"{}\"\non_error = \"closed\"\ndeadline = \"5s\"\nmemory = \"64MiB\"",
        weir_test_plugins::METRIC_BOMB
    );
    let gw = TestGateway::start(&config(&mock, &huge)).await;
    let before = gw.metrics().await.len();
    for _ in 0..30 {
        assert_eq!(chat(&gw, "guarded").await.0, 200);
    }
    let text = gw.metrics().await;
    assert_eq!(metric(&text, "weir_plugin_metrics_refused_total", &[("plugin", "p"), ("reason", "too_long")]), 30.0);
    assert_eq!(metric(&text, "weir_plugin_counter_total", &[("plugin", "p"), ("metric", "steady")]), 30.0);
    assert!(text.len() < before + 16 * 1024, "30 labels of 1 MiB grew /metrics from {before} to {} bytes", text.len());

    // Labels within the limit, a new series per request: at most the series limit are kept.
    let many = format!(
        "source = \"{}\"\non_error = \"closed\"\ndeadline = \"5s\"\nconfig = {{ label_bytes = {} }}",
        weir_test_plugins::METRIC_BOMB,
        weir::metrics::MAX_LABEL_VALUE
    );
    let gw = TestGateway::start(&config(&mock, &many)).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "guarded", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..weir::metrics::MAX_PLUGIN_SERIES + 50 {
        let response =
            client.post(format!("{}/chat/completions", gw.base_url())).json(&body).send().await.expect("send");
        assert_eq!(response.status().as_u16(), 200);
    }
    let text = gw.metrics().await;
    let series =
        text.lines().filter(|l| l.starts_with("weir_plugin_counter_total{") && l.contains("plugin=\"p\"")).count();
    assert_eq!(series, weir::metrics::MAX_PLUGIN_SERIES, "the steady counter and the first bombs");
    assert!(metric(&text, "weir_plugin_metrics_refused_total", &[("plugin", "p"), ("reason", "series_limit")]) >= 50.0);
    assert!(text.len() < weir::metrics::MAX_PLUGIN_METRIC_BYTES + 64 * 1024, "{} bytes", text.len());
}

#[tokio::test]
async fn a_reload_frees_the_series_only_the_old_version_used() {
    let mock = MockUpstream::builder().start().await;
    let version = |tag: &str| {
        let plugin = format!(
            "source = \"{}\"\non_error = \"closed\"\ndeadline = \"5s\"\nconfig = {{ label_bytes = 8, tag = \"{tag}\" }}",
            weir_test_plugins::METRIC_BOMB
        );
        config(&mock, &plugin).replace("[server]", "[state]\nplugin_metrics_grace = \"300ms\"\n\n[server]")
    };
    let gw = TestGateway::start(&version("old")).await;
    for _ in 0..20 {
        assert_eq!(chat(&gw, "guarded").await.0, 200);
    }
    let count = |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let text = gw.metrics().await;
    assert_eq!(count(&text, "metric=\"bomb\""), 20);
    assert_eq!(count(&text, "tag=\"old\""), 1);

    let config = weir_config::load_str(&version("new"), &weir_config::MapEnv::default(), &state_dir()).expect("config");
    gw.gateway.reload_with(config).await.expect("reload");
    for _ in 0..5 {
        assert_eq!(chat(&gw, "guarded").await.0, 200);
    }
    // The old version goes once its last request is over; its series go with it.
    let mut text = gw.metrics().await;
    for _ in 0..100 {
        if count(&text, "tag=\"old\"") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = gw.metrics().await;
    }
    assert_eq!(count(&text, "tag=\"old\""), 0, "{text}");
    assert_eq!(count(&text, "metric=\"bomb\""), 5, "only the new version's: {text}");
    assert_eq!(metric(&text, "weir_plugin_counter_total", &[("metric", "steady"), ("tag", "new")]), 5.0);
}

#[tokio::test]
async fn a_canary_on_a_target_no_model_lists_is_routed_and_one_on_nothing_is_refused_at_load() {
    let mock = MockUpstream::builder().start().await;
    let canary = |target: &str| {
        format!(
            r#"
chain = ["canary"]

[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "mock"
endpoint = "{}"

[[models]]
name = "chat"
targets = [{{ upstream = "mock", model = "mock-model" }}]

[[plugins]]
name = "canary"
source = "builtin:canary"
on_error = "closed"
deadline = "2s"

[[plugins.config.splits]]
model = "chat"
baseline = "chat"
canary = "{target}"
weight = 100
"#,
            mock.base_url()
        )
    };
    // As the canary's README writes it: `upstream/model` that no `[[models]]` entry lists.
    let gw = TestGateway::start(&canary("mock/unlisted-model")).await;
    for _ in 0..3 {
        let (status, body) = chat(&gw, "chat").await;
        assert_eq!(status, 200, "{body}");
    }
    let models: Vec<String> =
        mock.requests().iter().map(|r| r.json()["model"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(models, ["unlisted-model"; 3], "every request went to the canary");
    let text = gw.metrics().await;
    assert_eq!(metric(&text, "weir_plugin_faults_total", &[]), 0.0, "{text}");
    assert_eq!(metric(&text, "weir_requests_total", &[("target", "mock/unlisted-model")]), 3.0, "{text}");

    // A canary the gateway cannot route to stops the config at load, naming the field.
    for (target, why) in [("nowhere/x", "names no configured upstream"), ("no-such-model", "neither a public model")] {
        let config = weir_config::load_str(&canary(target), &weir_config::MapEnv::default(), &state_dir())
            .expect("the config itself is valid");
        let error = weir::Gateway::new(config, Box::new(weir_config::MapEnv::default()))
            .await
            .expect_err("the canary refuses its config");
        let message = error.to_string();
        assert!(message.contains("splits[0].canary") && message.contains(why), "{message}");
    }
}

#[tokio::test]
async fn a_plugin_built_for_the_first_contract_version_still_loads_and_runs() {
    let mock = MockUpstream::builder().start().await;
    // `gateway/tests/plugins/noop` as built against `weir:plugin@0.1.0`, before `check-target`.
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/plugins/noop-0.1.0.wasm");
    let gw = TestGateway::start(&config(&mock, &format!("source = \"{old}\"\non_error = \"closed\""))).await;
    assert_eq!(chat(&gw, "guarded").await.0, 200);
    let calls = metric_eventually(&gw, "weir_plugin_call_seconds_count", &[("plugin", "p")], 3.0).await;
    assert_eq!(calls, 3.0, "all three hooks ran");
}
