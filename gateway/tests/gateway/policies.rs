//! The built-in policy plugins `ratelimit`, `cost` and `router` through the real gateway and mock
//! upstreams: limits hold under concurrent clients within their documented bounds, the ledger is
//! price × usage exactly, budgets hold under concurrency and across restarts, and the router skips,
//! cools down and recovers failing targets and prefers the faster one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir::state::ledger::Ledger;
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, default_config, metric_eventually, openai_error, post, state_dir};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";

/// A config with upstreams `a`, `b`, … (one per mock), public model `m` over all of them in order
/// (a failed attempt goes straight to the next target: `same_target = 0`),
/// keys `alice` (team `red`) and `bob` (team `blue`), and the built-in plugins given as
/// `(name, config table)` in one chain.
fn config(mocks: &[&MockUpstream], plugins: &[(&str, &str)], extra: &str) -> String {
    let mut text = format!(
        "chain = [{}]\n{extra}\n[server]\nlisten = \"127.0.0.1:0\"\n\n[retry]\nmax_attempts = 3\nbackoff_base = \"1ms\"\nbackoff_max = \"2ms\"\nsame_target = 0\n",
        plugins.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    );
    let names = ["a", "b", "c"];
    for (mock, name) in mocks.iter().zip(names) {
        text.push_str(&format!("\n[[upstreams]]\nname = \"{name}\"\nendpoint = \"{}\"\n", mock.base_url()));
    }
    let targets: Vec<String> =
        names[..mocks.len()].iter().map(|n| format!("{{ upstream = \"{n}\", model = \"x\" }}")).collect();
    text.push_str(&format!("\n[[models]]\nname = \"m\"\ntargets = [{}]\n", targets.join(", ")));
    text.push_str(&format!(
        "\n[[keys]]\nname = \"alice\"\nteam = \"red\"\nkey = \"{ALICE}\"\n\n[[keys]]\nname = \"bob\"\nteam = \"blue\"\nkey = \"{BOB}\"\n"
    ));
    for (name, table) in plugins {
        text.push_str(&format!(
            "\n[[plugins]]\nname = \"{name}\"\nsource = \"builtin:{name}\"\non_error = \"closed\"\ndeadline = \"2s\"\nconfig = {table}\n"
        ));
    }
    text
}

fn chat(extra: &str) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hello plugins"}}]{extra}}}"#)
}

/// Fires `n` copies of `body` at once with `key`; returns each status, headers and body.
async fn burst(gw: &TestGateway, n: usize, body: &str, key: &str) -> Vec<(u16, reqwest::header::HeaderMap, Value)> {
    let url = Arc::new(format!("{}/chat/completions", gw.base_url()));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (url, body, key) = (url.clone(), body.to_owned(), key.to_owned());
            tokio::spawn(async move { post(&url, &body, Some(&key)).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Waits until the plugin's `on-complete` ran `n` times in all.
async fn completed(gw: &TestGateway, plugin: &str, n: usize) {
    let seen = metric_eventually(
        gw,
        "weir_plugin_call_seconds_count",
        &[("plugin", plugin), ("hook", "on_complete")],
        n as f64,
    )
    .await;
    assert!(seen >= n as f64, "{plugin} on_complete ran {seen} times, expected {n}");
}

#[tokio::test]
async fn requests_per_minute_hold_under_fifty_concurrent_clients() {
    let mock = MockUpstream::builder().latency(Duration::from_millis(20)).start().await;
    let limits = r#"{ limits = [{ per = ["key"], requests_per_minute = 60 }] }"#;
    let gw = TestGateway::start(&config(&[&mock], &[("ratelimit", limits)], "")).await;
    let started = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.extend(burst(&gw, 50, &chat(""), ALICE).await);
    }
    let elapsed_min = started.elapsed().as_secs_f64() / 60.0;
    let ok = answers.iter().filter(|(s, ..)| *s == 200).count();
    // The documented bound: a bucket of 60 that refills at 60 a minute admits at most 60 + 60 × t.
    let bound = 60.0 + 60.0 * elapsed_min;
    assert!(ok >= 60 && ok as f64 <= bound.floor(), "{ok} admitted; bound {bound:.1}");
    let (_, headers, body) = answers.iter().find(|(s, ..)| *s == 429).expect("some refused");
    assert_eq!(openai_error(body)["code"], "rate_limit_exceeded", "{body}");
    assert!(header(headers, "retry-after").parse::<u64>().is_ok(), "{headers:?}");
    assert_eq!(header(headers, "x-ratelimit-limit-requests"), "60");
    assert_eq!(header(headers, "x-ratelimit-remaining-requests"), "0");
    let (_, headers, _) = answers.iter().find(|(s, ..)| *s == 200).expect("some admitted");
    assert_eq!(header(headers, "x-ratelimit-limit-requests"), "60");
    assert!(header(headers, "x-ratelimit-reset-requests").ends_with('s'), "{headers:?}");
    // Another key has its own bucket.
    let (status, ..) = post(&format!("{}/chat/completions", gw.base_url()), &chat(""), Some(BOB)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn tokens_per_minute_reserve_the_worst_case_and_settle_the_actual_use() {
    // Slow enough that no admitted request ends (and settles) while the burst arrives.
    let mock = MockUpstream::builder().latency(Duration::from_millis(500)).start().await;
    // "hello plugins" is estimated at 4 prompt tokens; with max_tokens 16 a request reserves 20.
    let limits = r#"{ limits = [{ per = ["team"], tokens_per_minute = 200 }] }"#;
    let gw = TestGateway::start(&config(&[&mock], &[("ratelimit", limits)], "")).await;
    let started = Instant::now();
    let answers = burst(&gw, 50, &chat(r#","max_tokens":16"#), ALICE).await;
    let ok: Vec<_> = answers.iter().filter(|(s, ..)| *s == 200).collect();
    assert!(ok.len() >= 10, "a 200-token bucket holds ten 20-token reservations: {} admitted", ok.len());
    let used: u64 = ok.iter().map(|(_, _, b)| b["usage"]["total_tokens"].as_u64().expect("usage")).sum();
    // Documented bound: with max_tokens set, use stays within the bucket plus its refill, plus
    // whatever prompts exceeded their estimate (none here: the mock counts 2 prompt tokens).
    let bound = 200.0 + 200.0 * started.elapsed().as_secs_f64() / 60.0;
    assert!(used as f64 <= bound, "{used} tokens used; bound {bound:.1}");
    let refused = answers.iter().find(|(s, ..)| *s == 429).expect("some refused");
    assert_eq!(header(&refused.1, "x-ratelimit-limit-tokens"), "200");
    // Each admitted request used 5 of the 20 it reserved; settling gives the other 15 back, so a
    // second burst is admitted again although no minute has passed.
    completed(&gw, "ratelimit", 50).await;
    let again = burst(&gw, 5, &chat(r#","max_tokens":16"#), ALICE).await;
    assert!(again.iter().all(|(s, ..)| *s == 200), "settlement returned the unused tokens");
}

#[tokio::test]
async fn concurrent_requests_are_capped_and_slots_come_back() {
    let mock = MockUpstream::builder().latency(Duration::from_millis(1500)).start().await;
    let limits = r#"{ limits = [{ per = ["key", "model"], concurrent = 5 }] }"#;
    let gw = TestGateway::start(&config(&[&mock], &[("ratelimit", limits)], "")).await;
    let answers = burst(&gw, 50, &chat(""), ALICE).await;
    let ok = answers.iter().filter(|(s, ..)| *s == 200).count();
    assert_eq!(ok, 5, "exactly the five slots were admitted while they were busy");
    assert_eq!(mock.request_count(), 5);
    let refused = answers.iter().find(|(s, ..)| *s == 429).expect("refused");
    assert!(openai_error(&refused.2)["message"].as_str().expect("message").contains("concurrent requests"));
    completed(&gw, "ratelimit", 50).await;
    let again = burst(&gw, 5, &chat(""), ALICE).await;
    assert!(again.iter().all(|(s, ..)| *s == 200), "the slots were given back");
}

fn ledger_path(name: &str) -> std::path::PathBuf {
    let path = state_dir().join(format!("{name}-{}-{}.jsonl", std::process::id(), rand::random::<u32>()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Prices of `mock`'s model `x` on every target: $2 in, $8 out, $1 cached, per million tokens.
fn prices(ledger: &std::path::Path) -> String {
    let mut text = format!("[state]\nledger = \"{}\"\n", ledger.display());
    for upstream in ["a", "b"] {
        text.push_str(&format!("\n[prices.\"{upstream}/x\"]\ninput = 2.0\noutput = 8.0\ncached_input = 1.0\n"));
    }
    text
}

#[tokio::test]
async fn the_ledger_is_price_times_usage_exactly_streamed_whole_and_aborted() {
    let mock = MockUpstream::builder().chunk_interval(Duration::from_millis(150)).start().await;
    let ledger = ledger_path("cost-exact");
    let gw = TestGateway::start(&config(&[&mock], &[("cost", "{}")], &prices(&ledger))).await;
    let url = format!("{}/chat/completions", gw.base_url());

    let (status, headers, body) = post(&url, &chat(""), Some(ALICE)).await;
    assert_eq!(status, 200, "{body}");
    let (p, c) =
        (body["usage"]["prompt_tokens"].as_u64().unwrap(), body["usage"]["completion_tokens"].as_u64().unwrap());
    let expected = p * 2_000_000 + c * 8_000_000;
    assert_eq!(header(&headers, "x-weir-cost-usd"), format!("0.{:012}", expected).trim_end_matches('0'));

    let streamed = chat(r#","stream":true,"stream_options":{"include_usage":true}"#);
    let response = reqwest::Client::new().post(&url).bearer_auth(ALICE).body(streamed.clone()).send().await.unwrap();
    assert!(response.headers().get("x-weir-cost-usd").is_none(), "a stream's cost is known only after its headers");
    let text = response.text().await.unwrap();
    assert!(text.contains("[DONE]"));

    // A client that leaves after the first chunk: the upstream billed what it sent.
    let long = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"one two three four five six seven eight"}]}"#;
    let mut response = reqwest::Client::new().post(&url).bearer_auth(ALICE).body(long).send().await.unwrap();
    let first = response.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    drop(response);

    completed(&gw, "cost", 3).await;
    let mut entries = Vec::new();
    for _ in 0..100 {
        entries = Ledger::read(&ledger).unwrap_or_default();
        if entries.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(entries.len(), 3, "{entries:?}");
    for entry in &entries {
        let exact = u64::from(entry.prompt_tokens - entry.cached_tokens) * 2_000_000
            + u64::from(entry.cached_tokens) * 1_000_000
            + u64::from(entry.completion_tokens) * 8_000_000;
        assert_eq!(entry.cost_pico_usd, exact, "{entry:?}");
        assert!(entry.completion_tokens > 0, "{entry:?}");
        assert_eq!((entry.key_name.as_str(), entry.team.as_str(), entry.target.as_str()), ("alice", "red", "a/x"));
    }
    assert_eq!(entries[0].cost_pico_usd, expected);
    let aborted =
        entries.iter().find(|e| e.prompt_tokens == 10).expect("the aborted request, estimated from its 39 bytes");
    assert!(aborted.completion_tokens < 9, "only what was streamed before the client left: {aborted:?}");
    let metrics = gw.metrics().await;
    let total: u64 = entries.iter().map(|e| e.cost_pico_usd).sum();
    let exported = crate::support::metric(
        &metrics,
        "weir_plugin_counter_total",
        &[("plugin", "cost"), ("metric", "cost_pico_usd")],
    );
    assert_eq!(exported as u64, total);

    // `weir spend` reads the same ledger back, exactly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["spend", "--by", "key,model", "--json", "--ledger"])
        .arg(&ledger)
        .output()
        .expect("weir spend");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "alice on m, then the total: {rows:?}");
    assert_eq!(
        (rows[0]["key"].as_str(), rows[0]["model"].as_str(), rows[0]["requests"].as_u64()),
        (Some("alice"), Some("m"), Some(3))
    );
    assert_eq!(rows[1]["cost_pico_usd"].as_u64(), Some(total));
}

#[tokio::test]
async fn budgets_hold_under_concurrent_requests_and_across_restarts() {
    let mock = MockUpstream::builder().latency(Duration::from_millis(50)).start().await;
    let ledger = ledger_path("cost-budget");
    // A request reserves 4 prompt tokens × $2/M + 10 completion tokens × $8/M = $0.000088, and
    // uses 2 × $2/M + 3 × $8/M = $0.000028. The key's budget is $0.0005 a day.
    let cost = r#"{ budgets = [{ key = "alice", usd = 0.0005, period = "day" }] }"#;
    let text = config(&[&mock], &[("cost", cost)], &prices(&ledger));
    let gw = TestGateway::start(&text).await;
    let body = chat(r#","max_tokens":10"#);
    let answers = burst(&gw, 50, &body, ALICE).await;
    let ok = answers.iter().filter(|(s, ..)| *s == 200).count();
    assert_eq!(ok, 5, "$0.0005 holds five reservations of $0.000088, whatever the concurrency");
    let refused = answers.iter().find(|(s, ..)| *s == 429).expect("refused");
    assert_eq!(openai_error(&refused.2)["code"], "insufficient_quota", "{}", refused.2);
    assert!(openai_error(&refused.2)["message"].as_str().unwrap().contains("budget of $0.0005 per day"));
    completed(&gw, "cost", 50).await;

    // Sequentially, requests go through until what was spent leaves no room for one more.
    let url = format!("{}/chat/completions", gw.base_url());
    let (mut served, mut sent) = (ok, 50);
    loop {
        let (status, ..) = post(&url, &body, Some(ALICE)).await;
        sent += 1;
        completed(&gw, "cost", sent).await;
        if status != 200 {
            break;
        }
        served += 1;
        assert!(served < 50, "the budget never ran out");
    }
    let spent: u64 = Ledger::read(&ledger).unwrap().iter().map(|e| e.cost_pico_usd).sum();
    assert_eq!(served as u64 * 28_000_000, spent);
    assert!(spent <= 500_000_000, "never over budget: {spent}");
    assert!(spent + 88_000_000 > 500_000_000, "refused only when one more could overspend: {spent}");
    let (status, ..) = post(&url, &body, Some(BOB)).await;
    assert_eq!(status, 200, "bob has no budget");

    // A new gateway on the same ledger remembers what alice spent today.
    drop(gw);
    let gw = TestGateway::start(&text).await;
    let (status, _, body) =
        post(&format!("{}/chat/completions", gw.base_url()), &chat(r#","max_tokens":10"#), Some(ALICE)).await;
    assert_eq!(status, 429, "{body}");
}

fn router(table: &str) -> (&'static str, String) {
    ("router", table.to_owned())
}

#[tokio::test]
async fn a_failing_target_is_skipped_cools_down_and_recovers() {
    // `a` fails its first three requests, then answers; `b` always answers.
    let a = MockUpstream::builder().fail_first(3, 500).start().await;
    let b = MockUpstream::builder().start().await;
    // The cooldown is long enough for the open phase below on a loaded machine.
    let (name, table) = router(r#"{ breaker = { failures = 3, cooldown_seconds = 4.0, min_cooldown_seconds = 4.0 } }"#);
    let gw = TestGateway::start(&config(&[&a, &b], &[(name, &table)], "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    for n in 1..=3 {
        let (status, ..) = post(&url, &chat(""), Some(ALICE)).await;
        assert_eq!(status, 200, "b answers when a fails");
        completed(&gw, "router", n).await;
    }
    assert_eq!((a.request_count(), b.request_count()), (3, 3));
    for n in 4..=6 {
        let (status, ..) = post(&url, &chat(""), Some(ALICE)).await;
        assert_eq!(status, 200);
        completed(&gw, "router", n).await;
    }
    assert_eq!(a.request_count(), 3, "a's circuit is open: it is skipped");
    assert_eq!(b.request_count(), 6);
    let metrics = gw.metrics().await;
    assert_eq!(
        crate::support::metric(
            &metrics,
            "weir_plugin_counter_total",
            &[("metric", "circuit_opened"), ("target", "a/x")]
        ),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(4100)).await;
    for n in 7..=10 {
        let (status, ..) = post(&url, &chat(""), Some(ALICE)).await;
        assert_eq!(status, 200);
        completed(&gw, "router", n).await;
    }
    assert_eq!(a.request_count(), 7, "after the cooldown a probe succeeded and a took its traffic back");
    assert_eq!(b.request_count(), 6);
}

#[tokio::test]
async fn a_target_that_recovers_after_a_failed_probe_is_back_within_seconds() {
    let a = MockUpstream::builder().start().await;
    let b = MockUpstream::builder().start().await;
    a.set_failing(Some(503));
    // The longest cooldown is a minute; the first is a second (the default), doubling per failed probe.
    let (name, table) = router(r#"{ breaker = { failures = 1, cooldown_seconds = 60.0 } }"#);
    let gw = TestGateway::start(&config(&[&a, &b], &[(name, &table)], "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let mut sent = 0;
    let mut send = async || {
        let (status, ..) = post(&url, &chat(""), Some(ALICE)).await;
        assert_eq!(status, 200, "b answers whenever a does not");
        sent += 1;
        completed(&gw, "router", sent).await;
    };
    send().await;
    assert_eq!(a.request_count(), 1, "a failed once: its circuit opened");
    send().await;
    assert_eq!(a.request_count(), 1, "skipped while it cools down");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    send().await;
    assert_eq!(a.request_count(), 2, "after the first cooldown a probe went to a, and failed");

    // a recovers right after its failed probe: it is back in use within seconds, not a minute.
    a.set_failing(None);
    let recovered = Instant::now();
    while a.request_count() == 2 && recovered.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send().await;
    }
    assert!(a.request_count() > 2, "a was not probed again within 20 s of recovering");
    let probed = a.request_count();
    for _ in 0..3 {
        send().await;
    }
    assert_eq!(a.request_count(), probed + 3, "the circuit closed: a takes its traffic back");
}

#[tokio::test]
async fn least_latency_prefers_the_faster_upstream() {
    let slow = MockUpstream::builder().latency(Duration::from_millis(120)).start().await;
    let fast = MockUpstream::builder().latency(Duration::from_millis(5)).start().await;
    let (name, table) = router(r#"{ models = { m = { strategy = "least-latency" } } }"#);
    let gw = TestGateway::start(&config(&[&slow, &fast], &[(name, &table)], "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    for _ in 0..20 {
        let (status, ..) = post(&url, &chat(""), Some(ALICE)).await;
        assert_eq!(status, 200);
    }
    assert!(fast.request_count() >= 17, "fast {} vs slow {}", fast.request_count(), slow.request_count());
}

#[tokio::test]
async fn overrides_need_permission_and_large_requests_find_a_large_enough_window() {
    let a = MockUpstream::builder().record_requests(true).start().await;
    let b = MockUpstream::builder().record_requests(true).start().await;
    let (name, table) = router(
        r#"{ override_keys = ["alice"], models = { m = { targets = [{ target = "a/x", context_window = 100 }, { target = "b/x", context_window = 100000 }] } } }"#,
    );
    let gw = TestGateway::start(&config(&[&a, &b], &[(name, &table)], "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let forced = |key: &'static str| {
        reqwest::Client::new().post(&url).bearer_auth(key).header("x-weir-target", "b/x").body(chat(""))
    };
    assert_eq!(forced(ALICE).send().await.unwrap().status(), 200);
    assert_eq!(b.request_count(), 1, "alice may choose b");
    let refused = forced(BOB).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(b.request_count(), 1);

    let (status, ..) = post(&url, &chat(""), Some(BOB)).await;
    assert_eq!(status, 200);
    assert_eq!(a.request_count(), 1, "a small request goes to the first target");
    let big = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(200));
    let (status, ..) = post(&url, &big, Some(BOB)).await;
    assert_eq!(status, 200);
    assert_eq!((a.request_count(), b.request_count()), (1, 2), "250 tokens do not fit a's window of 100");
}

#[tokio::test]
async fn the_default_configuration_runs_all_six_built_ins_in_one_chain() {
    let mock = MockUpstream::builder().start().await;
    let ledger = ledger_path("default-config");
    let upstream = mock.base_url();
    let env = weir_config::MapEnv::from_pairs([
        ("WEIR_UPSTREAM", upstream.as_str()),
        ("WEIR_LEDGER", ledger.to_str().expect("utf-8")),
    ]);
    let config = default_config(&env);
    let names: Vec<&str> = config.chain.iter().map(|&i| config.plugins[i].name.as_str()).collect();
    assert_eq!(names, ["guard", "ratelimit", "cost", "cache", "router", "canary"]);
    let gw = TestGateway::start_with(config).await;
    let url = format!("{}/chat/completions", gw.base_url());
    // The guard has no rules until configured: a prompt with an address goes as it is.
    let body =
        r#"{"model":"mock-model","temperature":0,"messages":[{"role":"user","content":"hello jo@example.com"}]}"#;
    let (status, first, answer) = post(&url, body, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "6000");
    assert_eq!(header(&first, "x-weir-cache"), "miss");
    assert!(first.contains_key("x-weir-cost-usd"), "{first:?}");
    completed(&gw, "cache", 1).await;
    let (status, second, again) = post(&url, body, None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&second, "x-weir-cache"), "hit");
    assert_eq!(again["choices"], answer["choices"]);
    assert_eq!(mock.request_count(), 1, "the hit reached no upstream");
    let sent = mock.requests().pop().expect("a request").json();
    assert_eq!(sent["messages"][0]["content"], "hello jo@example.com", "nothing redacted: {sent}");
    let metrics = gw.metrics().await;
    // Without rules the guard declares no hooks: it is never called.
    let guard = crate::support::metric(&metrics, "weir_plugin_call_seconds_count", &[("plugin", "guard")]);
    assert_eq!(guard, 0.0, "the guard without rules costs nothing");
    for plugin in ["ratelimit", "cost", "cache", "router", "canary"] {
        let calls = crate::support::metric(&metrics, "weir_plugin_call_seconds_count", &[("plugin", plugin)]);
        assert!(calls >= 1.0, "{plugin} ran: {calls}");
    }
    completed(&gw, "cost", 2).await;
    assert_eq!(Ledger::read(&ledger).expect("ledger").len(), 1, "one upstream answer, one ledger record");
}
