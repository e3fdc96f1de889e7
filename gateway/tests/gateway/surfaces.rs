//! The built-in policies through every client API: one rate limit and one budget count Chat
//! Completions, Messages and Responses alike (each refusal in its own API's shape), and the cache
//! answers a repeated Messages or Responses request in that API — a cached Messages stream replays
//! as Messages events — whether the first answer was relayed natively or translated.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, metric_eventually, sse_data, state_dir};

const ALICE: &str = "sk-weir-surfaces-alice-0123";

/// An `anthropic`, a `native_responses` and a plain OpenAI upstream on `mock`; public models
/// `claude` (Anthropic), `gpt` (native Responses) and `chat` (OpenAI-compatible); a key; `plugins`.
fn config(mock: &MockUpstream, plugins: &str, extra: &str) -> String {
    let base = format!("http://{}", mock.addr());
    bare_config(&format!(
        r#"
[[upstreams]]
name = "anthropic"
kind = "anthropic"
endpoint = "{base}"
api_key = "mock-key"

[[upstreams]]
name = "openai"
endpoint = "{base}/v1"
api_key = "mock-key"
native_responses = true

[[upstreams]]
name = "compat"
endpoint = "{base}/v1"
api_key = "mock-key"

[[models]]
name = "claude"
targets = [{{ upstream = "anthropic", model = "claude-sonnet-4-5" }}]
[[models]]
name = "gpt"
targets = [{{ upstream = "openai", model = "gpt-5" }}]
[[models]]
name = "chat"
targets = [{{ upstream = "compat", model = "mock-model" }}]

[[keys]]
name = "alice"
team = "red"
key = "{ALICE}"
{plugins}
{extra}
"#
    ))
}

fn plugin(name: &str, table: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"{name}\"\nsource = \"builtin:{name}\"\non_error = \"closed\"\ndeadline = \"2s\"\nconfig = {table}\n"
    )
}

/// One request on `surface` (`chat`, `messages`, `responses`) for `model`, asking `question`.
async fn ask(
    gw: &TestGateway,
    surface: &str,
    model: &str,
    question: &str,
    stream: bool,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let (path, body) = match surface {
        "chat" => (
            "/v1/chat/completions",
            json!({"model": model, "temperature": 0, "stream": stream, "messages": [{"role": "user", "content": question}]}),
        ),
        "messages" => (
            "/v1/messages",
            json!({"model": model, "temperature": 0, "stream": stream, "max_tokens": 30, "messages": [{"role": "user", "content": question}]}),
        ),
        _ => ("/v1/responses", json!({"model": model, "temperature": 0, "stream": stream, "input": question})),
    };
    let response =
        reqwest::Client::new().post(gw.url(path)).header("x-api-key", ALICE).json(&body).send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn one_rate_limit_counts_every_api_and_refuses_in_each_apis_shape() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let limits = plugin("ratelimit", r#"{ limits = [{ per = ["key"], requests_per_minute = 3 }] }"#);
    let gw = TestGateway::start(&config(&mock, &limits, "")).await;
    for (surface, model) in [("chat", "chat"), ("messages", "claude"), ("responses", "gpt")] {
        let (status, headers, body) = ask(&gw, surface, model, "hi", false).await;
        assert_eq!(status, 200, "{surface}: {}", String::from_utf8_lossy(&body));
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "3", "{surface}");
    }
    let (status, headers, body) = ask(&gw, "messages", "claude", "hi", false).await;
    let body = json_of(&body);
    assert_eq!(
        (status, body["type"].as_str(), body["error"]["type"].as_str()),
        (429, Some("error"), Some("rate_limit_error")),
        "{body}"
    );
    assert!(!header(&headers, "retry-after").is_empty());
    let (status, _, body) = ask(&gw, "responses", "gpt", "hi", true).await;
    let body = json_of(&body);
    assert_eq!((status, body["error"]["type"].as_str()), (429, Some("rate_limit_error")), "{body}");
    assert_eq!(mock.request_count(), 3, "refused before any upstream");
}

#[tokio::test]
async fn one_budget_is_spent_by_every_api() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let ledger = state_dir().join(format!("surfaces-ledger-{}.jsonl", mock.addr().port()));
    let _ = std::fs::remove_file(&ledger);
    // Every request reserves its prompt estimate and 30 completion tokens (Messages' max_tokens, the
    // plugin's default for Responses) at $20 per million: $0.000605; it spends about $0.000104.
    // The day's budget is $0.002.
    let cost =
        plugin("cost", r#"{ budgets = [{ key = "alice", usd = 0.002, period = "day" }], default_max_tokens = 30 }"#);
    let prices = r#"
[prices."anthropic/claude-sonnet-4-5"]
input = 1.0
output = 20.0
[prices."openai/gpt-5"]
input = 1.0
output = 20.0
"#;
    let extra = format!("{prices}\n[state]\nledger = \"{}\"\n", ledger.display());
    let gw = TestGateway::start(&config(&mock, &cost, &extra)).await;
    let mut served = 0;
    let mut refusal = None;
    for n in 0..20 {
        let (surface, model) = if n % 2 == 0 { ("messages", "claude") } else { ("responses", "gpt") };
        let (status, headers, body) = ask(&gw, surface, model, "what does it cost", false).await;
        assert!(!header(&headers, "x-weir-cost-usd").is_empty() || status != 200, "{surface}");
        if status == 200 {
            served += 1;
            // Settled before the next request reserves.
            metric_eventually(
                &gw,
                "weir_plugin_call_seconds_count",
                &[("plugin", "cost"), ("hook", "on_complete")],
                f64::from(served),
            )
            .await;
        } else {
            refusal = Some((surface, status, json_of(&body)));
            break;
        }
    }
    let (surface, status, body) = refusal.expect("the budget ran out");
    assert_eq!(status, 429, "{body}");
    // Anthropic's shape and OpenAI's both carry the message at `error.message`.
    assert!(body["error"]["message"].as_str().unwrap().contains("budget of $0.002 per day"), "{surface}: {body}");
    assert_eq!(body["type"].as_str() == Some("error"), surface == "messages", "{body}");
    assert!((8..20).contains(&served), "both APIs spent from it: {served}");
    let ledger = std::fs::read_to_string(&ledger).expect("the ledger");
    let targets: Vec<Value> =
        ledger.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["target"].clone()).collect();
    assert!(
        targets.contains(&json!("anthropic/claude-sonnet-4-5")) && targets.contains(&json!("openai/gpt-5")),
        "{targets:?}"
    );
}

#[tokio::test]
async fn a_cached_answer_is_replayed_in_each_apis_own_shape() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let cache = plugin("cache", "{ ttl_seconds = 60 }");
    let gw = TestGateway::start(&config(&mock, &cache, "")).await;
    // Messages: a whole miss (natively relayed from Anthropic, or translated), then a streamed hit.
    for model in ["claude", "chat"] {
        let question = format!("cache me on {model}");
        let (status, headers, whole) = ask(&gw, "messages", model, &question, false).await;
        assert_eq!((status, header(&headers, "x-weir-cache")), (200, "miss"), "{}", String::from_utf8_lossy(&whole));
        metric_eventually(
            &gw,
            "weir_plugin_counter",
            &[("plugin", "cache"), ("metric", "stores")],
            if model == "claude" { 1.0 } else { 2.0 },
        )
        .await;
        let asked = mock.request_count();
        let (status, headers, streamed) = ask(&gw, "messages", model, &question, true).await;
        assert_eq!((status, header(&headers, "x-weir-cache")), (200, "hit"), "{model}");
        assert_eq!(mock.request_count(), asked, "a hit asks no upstream");
        let text = String::from_utf8_lossy(&streamed);
        assert!(text.starts_with("event: message_start\n") && text.contains("event: message_stop"), "{text}");
        let deltas: String = sse_data(&streamed)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str).map(str::to_owned))
            .collect();
        assert_eq!(deltas, format!("echo: {question}"), "{model}");
        assert_eq!(json_of(&whole)["content"][0]["text"], deltas);
    }
    // Responses: a streamed miss from the native upstream, then a whole hit — a new response,
    // stored like any other.
    let (status, headers, _) = ask(&gw, "responses", "gpt", "cache this response", true).await;
    assert_eq!((status, header(&headers, "x-weir-cache")), (200, "miss"));
    metric_eventually(&gw, "weir_plugin_counter", &[("plugin", "cache"), ("metric", "stores")], 3.0).await;
    let (status, headers, hit) = ask(&gw, "responses", "gpt", "cache this response", false).await;
    assert_eq!((status, header(&headers, "x-weir-cache")), (200, "hit"));
    let hit = json_of(&hit);
    assert_eq!((hit["object"].as_str(), hit["status"].as_str()), (Some("response"), Some("completed")), "{hit}");
    assert_eq!(hit["output"][0]["content"][0]["text"], "echo: cache this response");
    let id = hit["id"].as_str().unwrap();
    let stored =
        reqwest::Client::new().get(gw.url(&format!("/v1/responses/{id}"))).bearer_auth(ALICE).send().await.unwrap();
    assert_eq!(stored.status(), 200, "a cached answer is stored like any other");
    // And the APIs never share an entry: the same question on Chat Completions is a miss.
    let (_, headers, _) = ask(&gw, "chat", "claude", "cache me on claude", false).await;
    assert_eq!(header(&headers, "x-weir-cache"), "miss");
}
