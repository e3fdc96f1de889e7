//! Plugins built against released contracts keep working. `weir:plugin@0.2.0` components load
//! under 0.2.1 and see every API as it is (`contract-v0-2-0`, from `sdk/wit/released/0.2.0`).
//! Plugins built against the released `weir:plugin@0.1.0` keep working under 0.2: the fixture
//! `contract-v0-1` (built with wit-bindgen from `sdk/wit/released/0.1.0`, not the SDK) loads, its
//! imports work, a Messages or Responses request reads to it as `chat-completions` with the answer
//! in the canonical chat form, and its own canonical answer reaches each client in that client's API.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, metric_eventually};

async fn gateway(mock: &MockUpstream, source: &str) -> TestGateway {
    let base = format!("http://{}", mock.addr());
    TestGateway::start(&bare_config(&format!(
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

[[models]]
name = "claude"
targets = [{{ upstream = "anthropic", model = "claude-sonnet-4-5" }}]
[[models]]
name = "gpt"
targets = [{{ upstream = "openai", model = "mock-model" }}]

[[plugins]]
name = "old"
source = "{}"
on_error = "closed"
deadline = "2s"
"#,
        source
    )))
    .await
}

async fn send(
    gw: &TestGateway,
    path: &str,
    body: Value,
    probe: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().post(gw.url(path)).json(&body);
    if let Some(probe) = probe {
        request = request.header("x-probe", probe);
    }
    let response = request.send().await.expect("send");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_plugin_built_against_0_1_0_is_served_on_every_api() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let gw = gateway(&mock, weir_test_plugins::CONTRACT_V0_1).await;
    let messages = json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, answer) = send(&gw, "/v1/messages", messages.clone(), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["x-probe-api"], "chat-completions", "the nearest API a 0.1.0 plugin knows");
    assert_eq!(headers["x-probe-requests"], "1", "its kv import works");
    assert_eq!(answer["content"][0]["text"], "echo: hi");
    // It read the natively relayed Message in the canonical chat form, usage included.
    let seen = metric_eventually(
        &gw,
        "weir_plugin_counter_total",
        &[("plugin", "old"), ("api", "chat-completions"), ("canonical", "yes"), ("tokens", "2")],
        1.0,
    )
    .await;
    assert_eq!(seen, 1.0);
    // Its own canonical answer reaches a Messages client as a Message, a Responses client as a
    // Response, a chat client as it wrote it.
    let (status, _, answer) = send(&gw, "/v1/messages", messages, Some("answer")).await;
    assert_eq!(
        (status, answer["type"].as_str(), answer["content"][0]["text"].as_str()),
        (200, Some("message"), Some("from a 0.1.0 plugin")),
        "{answer}"
    );
    let (status, _, answer) = send(&gw, "/v1/responses", json!({"model": "gpt", "input": "hi"}), Some("answer")).await;
    assert_eq!((status, answer["object"].as_str()), (200, Some("response")), "{answer}");
    assert_eq!(answer["output"][0]["content"][0]["text"], "from a 0.1.0 plugin");
    let (_, headers, answer) = send(
        &gw,
        "/v1/chat/completions",
        json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
        Some("answer"),
    )
    .await;
    assert_eq!((answer["id"].as_str(), headers["x-probe-requests"].to_str().unwrap()), (Some("chatcmpl-probe"), "4"));
    assert_eq!(mock.request_count(), 1, "only the first request went upstream");
}

#[tokio::test]
async fn a_plugin_built_against_0_2_0_loads_and_is_served_under_0_2_1() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let gw = gateway(&mock, weir_test_plugins::CONTRACT_V0_2_0).await;
    let messages = json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, answer) = send(&gw, "/v1/messages", messages, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["x-probe-api"], "messages", "a 0.2.0 plugin knows the Messages API");
    let chat = json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, answer) = send(&gw, "/v1/chat/completions", chat, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (headers["x-probe-api"].to_str().unwrap(), headers["x-probe-requests"].to_str().unwrap()),
        ("chat-completions", "2"),
        "its kv import works"
    );
}
