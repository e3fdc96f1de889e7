//! The built-in `cache` plugin through the real gateway: a miss then a hit that never reaches the
//! upstream, tenants kept apart, `Cache-Control` honoured, whole answers replayed as streams and
//! streams assembled into whole answers (tool calls included), embeddings, and a cached stream
//! replayed to the official `openai` Python SDK.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, config, metric, metric_eventually, run_python_script, sse_data, strict_config};

/// Two keys of one team and one of another.
const KEYS: &str = r#"
[[keys]]
name = "alice"
team = "red"
key = "sk-weir-alice-0123456789"

[[keys]]
name = "bob"
team = "red"
key = "sk-weir-bob-0123456789"

[[keys]]
name = "carol"
team = "blue"
key = "sk-weir-carol-0123456789"
"#;
const ALICE: &str = "sk-weir-alice-0123456789";
const BOB: &str = "sk-weir-bob-0123456789";
const CAROL: &str = "sk-weir-carol-0123456789";

/// The `[[plugins]]` table of the cache with `settings` as its config.
fn cache_plugin(settings: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"cache\"\nsource = \"builtin:cache\"\non_error = \"closed\"\ndeadline = \"2s\"\nconfig = {{ {settings} }}\n"
    )
}

async fn gateway(upstream: &MockUpstream, settings: &str) -> TestGateway {
    TestGateway::start(&config(&upstream.base_url(), &format!("{KEYS}{}", cache_plugin(settings)))).await
}

/// A deterministic chat request (temperature 0) for `model` asking `question`.
fn chat(model: &str, question: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": question}]})
}

/// Posts `body` to `path` with a key and extra headers; returns status, headers and raw body.
async fn send(
    gw: &TestGateway,
    path: &str,
    body: &Value,
    key: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().post(gw.url(path)).bearer_auth(key).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

async fn post_chat(gw: &TestGateway, body: &Value, key: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let (status, headers, bytes) = send(gw, "/v1/chat/completions", body, key, headers).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    (cache_status(&headers), serde_json::from_slice(&bytes).expect("json"))
}

fn cache_status(headers: &HeaderMap) -> String {
    headers.get("x-weir-cache").map(|v| v.to_str().expect("ascii").to_owned()).unwrap_or_default()
}

/// Waits (bounded) until the cache has stored `n` answers: a stream's `on-complete` runs after
/// its last byte went out.
async fn stores(gw: &TestGateway, n: f64) {
    let labels = [("plugin", "cache"), ("metric", "stores")];
    assert_eq!(metric_eventually(gw, "weir_plugin_counter_total", &labels, n).await, n, "stored answers");
}

/// What a client makes of an SSE body: text per choice, tool calls' arguments, finish reasons,
/// the usage chunk (if any), and whether it ended with `[DONE]`.
#[derive(Debug, PartialEq)]
struct Streamed {
    text: String,
    tool_arguments: Vec<String>,
    finish_reasons: Vec<String>,
    usage: Option<Value>,
    done: bool,
}

fn read_stream(body: &[u8]) -> Streamed {
    let mut out = Streamed {
        text: String::new(),
        tool_arguments: Vec::new(),
        finish_reasons: Vec::new(),
        usage: None,
        done: false,
    };
    for data in sse_data(body) {
        if data == "[DONE]" {
            out.done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk");
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            out.usage = Some(usage.clone());
        }
        for choice in chunk["choices"].as_array().expect("choices") {
            out.text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().expect("index") as usize;
                if out.tool_arguments.len() <= index {
                    out.tool_arguments.resize(index + 1, String::new());
                }
                out.tool_arguments[index].push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                out.finish_reasons.push(reason.to_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn a_miss_then_a_hit_reaches_the_upstream_once() {
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "").await;
    let body = chat("gpt-test", "what is a weir?");

    let (first_status, first) = post_chat(&gw, &body, ALICE, &[]).await;
    assert_eq!(first_status, "miss");
    let (second_status, second) = post_chat(&gw, &body, ALICE, &[]).await;
    assert_eq!(second_status, "hit");
    assert_eq!(second, first, "the stored answer, unchanged");
    assert_eq!(upstream.request_count(), 1, "the hit never reached the upstream");

    // The same question in another key order, streamed or not, with a `user`, is the same request.
    let reordered = json!({"messages": [{"content": "what is a weir?", "role": "user"}], "user": "u1", "temperature": 0, "model": "gpt-test"});
    assert_eq!(post_chat(&gw, &reordered, ALICE, &[]).await.0, "hit");
    // Another question is another entry.
    assert_eq!(post_chat(&gw, &chat("gpt-test", "and a dam?"), ALICE, &[]).await.0, "miss");
    assert_eq!(upstream.request_count(), 2);

    let metrics = gw.metrics().await;
    let count = |name: &str| {
        metric(&metrics, "weir_plugin_counter_total", &[("plugin", "cache"), ("metric", name), ("model", "gpt-test")])
    };
    assert_eq!((count("hits"), count("misses"), count("stores")), (2.0, 2.0, 2.0), "{metrics}");
}

#[tokio::test]
async fn one_tenant_never_gets_another_tenants_answer() {
    let upstream = MockUpstream::builder().start().await;
    let body = chat("gpt-test", "my private question");

    // Scope `key` (the default): every key has its own entries, even within a team.
    let gw = gateway(&upstream, "").await;
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "miss");
    assert_eq!(post_chat(&gw, &body, BOB, &[]).await.0, "miss", "bob is another key");
    assert_eq!(post_chat(&gw, &body, CAROL, &[]).await.0, "miss", "carol is another key");
    assert_eq!(post_chat(&gw, &body, BOB, &[]).await.0, "hit");
    assert_eq!(upstream.request_count(), 3);
    drop(gw);

    // Scope `team`: keys of one team share, other teams do not.
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "scope = \"team\"").await;
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "miss");
    assert_eq!(post_chat(&gw, &body, BOB, &[]).await.0, "hit", "bob shares alice's team");
    assert_eq!(post_chat(&gw, &body, CAROL, &[]).await.0, "miss", "carol's team is another tenant");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn cache_control_and_the_opt_in_header_are_honoured() {
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "").await;
    let body = chat("gpt-test", "cache control");

    // no-store: neither looked up nor stored.
    assert_eq!(post_chat(&gw, &body, ALICE, &[("cache-control", "no-store")]).await.0, "bypass");
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "miss", "no-store stored nothing");
    assert_eq!(post_chat(&gw, &body, ALICE, &[("cache-control", "no-store")]).await.0, "bypass", "nor read it");
    // no-cache: goes upstream although an entry exists, and stores the fresh answer.
    assert_eq!(post_chat(&gw, &body, ALICE, &[("cache-control", "no-cache")]).await.0, "miss");
    assert_eq!(upstream.request_count(), 4);
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "hit");
    assert_eq!(upstream.request_count(), 4);

    // Not deterministic: bypassed, unless the header opts in; the header can also opt out.
    let warm = json!({"model": "gpt-test", "temperature": 0.7, "messages": [{"role": "user", "content": "creative"}]});
    assert_eq!(post_chat(&gw, &warm, ALICE, &[]).await.0, "bypass");
    assert_eq!(post_chat(&gw, &warm, ALICE, &[]).await.0, "bypass");
    assert_eq!(post_chat(&gw, &warm, ALICE, &[("x-weir-cache", "on")]).await.0, "miss");
    assert_eq!(post_chat(&gw, &warm, ALICE, &[("x-weir-cache", "on")]).await.0, "hit");
    assert_eq!(post_chat(&gw, &body, ALICE, &[("x-weir-cache", "off")]).await.0, "bypass");
    assert_eq!(upstream.request_count(), 8);

    let metrics = gw.metrics().await;
    let bypasses = |reason: &str| {
        metric(
            &metrics,
            "weir_plugin_counter_total",
            &[("plugin", "cache"), ("metric", "bypasses"), ("reason", reason)],
        )
    };
    assert_eq!((bypasses("no_store"), bypasses("not_cacheable"), bypasses("opted_out")), (2.0, 2.0, 1.0), "{metrics}");
}

#[tokio::test]
async fn a_streamed_miss_fills_the_cache_for_whole_and_streamed_hits_tool_calls_included() {
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "").await;
    let fixture = weir_bench::mock::fixture("tool_call").expect("fixture");
    let live = read_stream(fixture.as_bytes());
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let mut body = chat("fixture:tool_call", "weather in SF?");
    body["tools"] = tools;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});

    let (status, headers, first) = send(&gw, "/v1/chat/completions", &streamed, ALICE, &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "miss".to_owned()));
    assert_eq!(read_stream(&first), live, "the live stream is the recorded one");
    stores(&gw, 1.0).await;

    // A whole answer assembled from the stream: the tool call with its arguments, finish reason, usage.
    let (status, whole) = post_chat(&gw, &body, ALICE, &[]).await;
    assert_eq!(status, "hit");
    let call = &whole["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"].as_str(), Some(live.tool_arguments[0].as_str()));
    assert_eq!(whole["choices"][0]["finish_reason"].as_str(), Some(live.finish_reasons[0].as_str()));
    assert_eq!(Some(&whole["usage"]), live.usage.as_ref());
    assert_eq!(whole["object"], "chat.completion");

    // A streamed hit, with and without the usage chunk.
    let (status, headers, replayed) = send(&gw, "/v1/chat/completions", &streamed, ALICE, &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "hit".to_owned()));
    assert!(headers.get("content-type").is_some_and(|v| v == "text/event-stream"), "{headers:?}");
    assert_eq!(read_stream(&replayed), live);
    streamed.as_object_mut().expect("object").remove("stream_options");
    let (_, headers, replayed) = send(&gw, "/v1/chat/completions", &streamed, ALICE, &[]).await;
    assert_eq!(cache_status(&headers), "hit");
    assert_eq!(read_stream(&replayed), Streamed { usage: None, ..read_stream(fixture.as_bytes()) });
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn a_whole_answer_is_replayed_as_a_stream() {
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "").await;
    let body = chat("gpt-test", "stream me later");
    let (status, whole) = post_chat(&gw, &body, ALICE, &[]).await;
    assert_eq!(status, "miss");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, headers, replayed) = send(&gw, "/v1/chat/completions", &streamed, ALICE, &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "hit".to_owned()));
    let replayed = read_stream(&replayed);
    assert_eq!(replayed.text, whole["choices"][0]["message"]["content"].as_str().expect("text"));
    assert_eq!(replayed.finish_reasons, ["stop"]);
    assert_eq!(replayed.usage.as_ref(), Some(&whole["usage"]));
    assert!(replayed.done);
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test]
async fn failed_answers_are_not_stored() {
    let upstream = MockUpstream::builder().fail_first(1, 400).start().await;
    let gw = gateway(&upstream, "").await;
    let body = chat("gpt-test", "fails first");
    let (status, headers, _) = send(&gw, "/v1/chat/completions", &body, ALICE, &[]).await;
    assert_eq!((status, cache_status(&headers)), (400, "miss".to_owned()));
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "miss", "the error was not cached");
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "hit");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn embeddings_are_cached() {
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "").await;
    let body = json!({"model": "text-embedding-3-small", "input": ["alpha", "beta"]});
    let (status, headers, first) = send(&gw, "/v1/embeddings", &body, ALICE, &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "miss".to_owned()));
    let (status, headers, second) = send(&gw, "/v1/embeddings", &body, ALICE, &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "hit".to_owned()));
    let (first, second): (Value, Value) =
        (serde_json::from_slice(&first).expect("json"), serde_json::from_slice(&second).expect("json"));
    assert_eq!(first, second);
    assert_eq!(second["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(upstream.request_count(), 1);

    // Turned off, embeddings bypass the cache.
    let gw = gateway(&upstream, "embeddings = false").await;
    let (_, headers, _) = send(&gw, "/v1/embeddings", &body, ALICE, &[]).await;
    assert_eq!(cache_status(&headers), "bypass");
}

#[tokio::test]
async fn entries_over_the_size_cap_are_not_stored() {
    let upstream = MockUpstream::builder().start().await;
    let gw = gateway(&upstream, "max_entry_bytes = 64").await;
    let body = chat("gpt-test", "a question whose answer is longer than sixty-four bytes of JSON");
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "miss");
    assert_eq!(post_chat(&gw, &body, ALICE, &[]).await.0, "miss");
    let labels = [("plugin", "cache"), ("metric", "store_skipped"), ("reason", "too_large")];
    assert_eq!(metric(&gw.metrics().await, "weir_plugin_counter_total", &labels), 2.0);
}

#[tokio::test]
async fn a_bad_config_names_the_field() {
    let upstream = MockUpstream::builder().start().await;
    for (settings, expected) in [
        ("ttl = 5", "unknown field `ttl`"),
        ("ttl_seconds = \"long\"", "ttl_seconds"),
        ("scope = \"world\"", "scope"),
        ("max_entry_bytes = 2000000", "max_entry_bytes"),
    ] {
        let text = config(&upstream.base_url(), &cache_plugin(settings));
        let loaded = weir_config::load_str(&text, &weir_config::MapEnv::default(), &crate::support::state_dir())
            .expect("config");
        let error =
            weir::Gateway::new(loaded, Box::new(weir_config::MapEnv::default())).await.expect_err(settings).to_string();
        assert!(error.contains(expected), "{settings}: {error}");
    }
}

/// The issue's check: a stream replayed from the cache gives the official `openai` Python SDK the
/// same text, finish reason and usage as the live stream did (see `tests/cache_sdk.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_stream_replays_faithfully_to_the_openai_python_sdk() {
    let upstream = MockUpstream::builder().start().await;
    let extra = format!(
        r#"
[[models]]
name = "fixture:text_a"
targets = [{{ upstream = "mock", model = "fixture:text_a" }}]

[[models]]
name = "fixture:tool_call"
targets = [{{ upstream = "mock", model = "fixture:tool_call" }}]
{KEYS}{}"#,
        cache_plugin("")
    );
    let gw = TestGateway::start(&strict_config(&upstream.base_url(), &extra)).await;
    run_python_script(&gw, "cache_sdk.py", ALICE).await;
    // Each streamed question reached the upstream once; every repeat was a hit.
    let hits = metric(&gw.metrics().await, "weir_plugin_counter_total", &[("plugin", "cache"), ("metric", "hits")]);
    assert!(hits >= 4.0, "{hits}");
}
