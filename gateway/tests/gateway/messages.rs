//! Anthropic's Messages API through the gateway: the official `anthropic` SDK against an
//! `anthropic` upstream (relayed natively), a Bedrock Claude model (InvokeModel, natively) and an
//! OpenAI-compatible upstream (translated); what each upstream receives; errors in Anthropic's
//! shape; `x-api-key`; the `surface` label.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, metric_eventually, run_python_checks, sse_data};

const KEY: &str = "sk-weir-anthropic-0123456789";
const BEDROCK_CLAUDE: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// Upstreams of the three kinds on `mock` named `<kind>-<tag>`, and a public model per kind
/// (`<kind>` for the healthy mock, `<kind>-<tag>` for the others).
fn upstreams(tag: &str, mock: &MockUpstream) -> String {
    let base = format!("http://{}", mock.addr());
    let public = |kind: &str| if tag == "ok" { kind.to_owned() } else { format!("{kind}-{tag}") };
    format!(
        r#"
[[upstreams]]
name = "anthropic-{tag}"
kind = "anthropic"
endpoint = "{base}"
api_key = "mock-key"

[[upstreams]]
name = "bedrock-{tag}"
kind = "bedrock"
endpoint = "{base}"
region = "us-east-1"
access_key_id = "AKIDMESSAGES"
secret_access_key = "secret"

[[upstreams]]
name = "openai-{tag}"
endpoint = "{base}/v1"
api_key = "mock-key"

[[models]]
name = "{a}"
targets = [{{ upstream = "anthropic-{tag}", model = "claude-sonnet-4-5" }}]
[[models]]
name = "{b}"
targets = [{{ upstream = "bedrock-{tag}", model = "{BEDROCK_CLAUDE}" }}]
[[models]]
name = "{o}"
targets = [{{ upstream = "openai-{tag}", model = "mock-model" }}]
"#,
        a = public("anthropic"),
        b = public("bedrock"),
        o = public("openai"),
    )
}

fn mock() -> weir_bench::mock::MockBuilder {
    MockUpstream::builder().api_key("mock-key").aws_credentials("AKIDMESSAGES", "secret")
}

const KEYS: &str = r#"
[[keys]]
name = "python-sdk"
team = "conformance"
key = "sk-weir-anthropic-0123456789"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_works_against_every_kind_of_target() {
    let ok = mock().start().await;
    let limited = mock().always_fail(429).start().await;
    let overloaded = mock().always_fail(503).start().await;
    let breaks = mock().break_stream_after(3).start().await;
    let config = bare_config(&format!(
        "{}{}{}{}{KEYS}",
        upstreams("ok", &ok),
        upstreams("429", &limited),
        upstreams("529", &overloaded),
        upstreams("break", &breaks)
    ));
    let gw = TestGateway::start(&config).await;
    let stdout = run_python_checks(&gw, "anthropic_sdk.py", KEY, &[("WEIR_TARGETS", "anthropic,bedrock,openai")]).await;
    eprintln!("{stdout}");
    assert!(stdout.contains("24 passed, 0 failed"), "{stdout}");
    // Each kind was reached the way it should be: natively, or through chat completions.
    let paths: Vec<String> = ok.requests().iter().map(|r| r.path.clone()).collect();
    assert!(paths.iter().any(|p| p == "/v1/messages"), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.ends_with("/invoke-with-response-stream"))
            && paths.iter().any(|p| p.ends_with("/invoke"))
    );
    assert!(paths.iter().any(|p| p == "/v1/chat/completions"), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.ends_with("/converse")),
        "a Claude model on Bedrock is not reached through Converse: {paths:?}"
    );
    let seen = metric_eventually(&gw, "weir_requests_total", &[("surface", "messages"), ("outcome", "ok")], 10.0).await;
    assert!(seen >= 10.0, "requests counted with surface=\"messages\": {seen}");
}

async fn send(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().post(gw.url(path)).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_native_relay_passes_versions_betas_and_every_field_and_keeps_the_clients_key() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&bare_config(&format!("{}{KEYS}", upstreams("ok", &ok)))).await;
    let body = json!({"model": "anthropic", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 3});
    let headers = [
        ("x-api-key", KEY),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "interleaved-thinking-2025-05-14"),
    ];
    let (status, _, answer) = send(&gw, "/v1/messages", &headers, &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(json_of(&answer)["content"][0]["text"], "echo: hi");
    let seen = ok.requests().pop().expect("the upstream was asked");
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some("mock-key"), "the upstream's key, never the client's");
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("anthropic-beta"), Some("interleaved-thinking-2025-05-14"));
    let sent = seen.json();
    assert_eq!((sent["model"].as_str(), sent["top_k"].as_u64()), (Some("claude-sonnet-4-5"), Some(3)));
    assert_eq!(sent["thinking"], body["thinking"]);
    // Without a version from the client, the upstream's configured one.
    let (status, _, _) = send(&gw, "/v1/messages", &[("x-api-key", KEY)], &body).await;
    assert_eq!(status, 200);
    assert_eq!(ok.requests().pop().unwrap().header("anthropic-version"), Some("2023-06-01"));
}

#[tokio::test]
async fn a_recorded_stream_is_relayed_byte_for_byte_padding_included() {
    let ok = mock().start().await;
    let extra = format!(
        r#"{}
[[models]]
name = "recorded"
targets = [{{ upstream = "anthropic-ok", model = "fixture:thinking_server_tool" }}]
{KEYS}"#,
        upstreams("ok", &ok)
    );
    let gw = TestGateway::start(&bare_config(&extra)).await;
    let body =
        json!({"model": "recorded", "max_tokens": 20, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, streamed) =
        send(&gw, "/v1/messages", &[("x-api-key", KEY), ("anthropic-version", "2023-06-01")], &body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let fixture = include_bytes!("../../../bench/fixtures/anthropic/thinking_server_tool.sse");
    assert_eq!(streamed, fixture.to_vec(), "a native stream reaches the client as the upstream sent it");
    // And its usage was learnt from Anthropic's own events.
    let tokens =
        metric_eventually(&gw, "weir_tokens_total", &[("surface", "messages"), ("token_type", "output")], 1.0).await;
    assert!(tokens > 0.0);
}

#[tokio::test]
async fn bedrock_claude_gets_the_messages_body_and_streams_come_back_as_messages_events() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&bare_config(&format!("{}{KEYS}", upstreams("ok", &ok)))).await;
    let body = json!({"model": "bedrock", "max_tokens": 20, "stream": true, "system": "brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a b", "cache_control": {"type": "ephemeral"}}]}]});
    let (status, _, streamed) =
        send(&gw, "/v1/messages", &[("x-api-key", KEY), ("anthropic-beta", "context-1m-2025-08-07")], &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&streamed));
    let text = String::from_utf8_lossy(&streamed);
    assert!(text.starts_with("event: message_start\n"), "{text}");
    let last: Value = serde_json::from_str(&sse_data(&streamed).pop().unwrap()).unwrap();
    assert_eq!(last["type"], "message_stop", "{text}");
    assert_eq!(last["amazon-bedrock-invocationMetrics"]["inputTokenCount"], 3, "Bedrock's own fields pass through");
    let seen = ok.requests().pop().unwrap();
    assert_eq!(seen.path, format!("/model/{}/invoke-with-response-stream", BEDROCK_CLAUDE.replace(':', "%3A")));
    let sent = seen.json();
    assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(sent["anthropic_beta"], json!(["context-1m-2025-08-07"]));
    assert!(sent.get("model").is_none() && sent.get("stream").is_none(), "{sent}");
    assert_eq!(
        sent["messages"][0]["content"][0]["cache_control"],
        json!({"type": "ephemeral"}),
        "Claude's cache_control survives"
    );
}

#[tokio::test]
async fn a_translated_request_reaches_an_openai_upstream_as_chat() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&bare_config(&format!("{}{KEYS}", upstreams("ok", &ok)))).await;
    let body = json!({"model": "openai", "max_tokens": 20, "system": "brief", "stop_sequences": ["END"], "metadata": {"user_id": "u-7"},
        "messages": [{"role": "user", "content": "hello"}], "top_k": 5});
    let (status, _, answer) = send(&gw, "/v1/messages", &[("x-api-key", KEY)], &body).await;
    assert_eq!(status, 200);
    let answer = json_of(&answer);
    assert_eq!(
        (answer["type"].as_str(), answer["content"][0]["text"].as_str()),
        (Some("message"), Some("echo: hello"))
    );
    assert!(answer["id"].as_str().unwrap().starts_with("msg_"));
    let sent = ok.requests().pop().unwrap().json();
    expect_test::expect![[r#"{"max_completion_tokens":20,"messages":[{"content":"brief","role":"system"},{"content":"hello","role":"user"}],"model":"mock-model","stop":["END"],"user":"u-7"}"#]]
        .assert_eq(&sent.to_string());
}

#[tokio::test]
async fn keys_errors_and_bad_input_are_in_anthropics_shape() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&bare_config(&format!("{}{KEYS}", upstreams("ok", &ok)))).await;
    let hello = json!({"model": "anthropic", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    for auth in [("x-api-key", KEY.to_owned()), ("authorization", format!("Bearer {KEY}"))] {
        let (status, _, _) = send(&gw, "/v1/messages", &[(auth.0, &auth.1)], &hello).await;
        assert_eq!(status, 200, "{auth:?}");
    }
    let cases = [
        (json!(null), vec![], 401, "authentication_error", "API key"),
        (
            json!({"model": "anthropic", "messages": [{"role": "user", "content": "hi"}]}),
            vec![("x-api-key", KEY)],
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "anthropic", "max_tokens": 5, "messages": [{"role": "wizard", "content": "hi"}]}),
            vec![("x-api-key", KEY)],
            400,
            "invalid_request_error",
            "messages.0.role",
        ),
        (
            json!({"model": "openai", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "web_search_tool_result", "tool_use_id": "x", "content": []}]}]}),
            vec![("x-api-key", KEY)],
            400,
            "invalid_request_error",
            "messages.0.content.0.type",
        ),
        (
            json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            vec![("x-api-key", KEY)],
            404,
            "not_found_error",
            "nope",
        ),
    ];
    for (body, headers, status, kind, names) in cases {
        let body = if body.is_null() { hello.clone() } else { body };
        let (got, _, answer) = send(&gw, "/v1/messages", &headers, &body).await;
        let answer = json_of(&answer);
        assert_eq!(
            (got, answer["type"].as_str(), answer["error"]["type"].as_str()),
            (status, Some("error"), Some(kind)),
            "{answer}"
        );
        assert!(answer["error"]["message"].as_str().unwrap().contains(names), "{answer}");
    }
    // A malformed body and a wrong method get the same shape.
    let response = reqwest::Client::new()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["type"], "invalid_request_error");
    let response = reqwest::Client::new().get(gw.url("/v1/messages")).header("x-api-key", KEY).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.json::<Value>().await.unwrap()["type"], "error");
}

#[tokio::test]
async fn count_tokens_is_anthropics_where_it_counts_and_an_estimate_elsewhere() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&bare_config(&format!("{}{KEYS}", upstreams("ok", &ok)))).await;
    let ask =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "one two three four five six"}]});
    let (status, _, counted) = send(&gw, "/v1/messages/count_tokens", &[("x-api-key", KEY)], &ask("anthropic")).await;
    assert_eq!((status, json_of(&counted)["input_tokens"].as_u64()), (200, Some(6)), "the mock counts one per word");
    assert_eq!(ok.requests().pop().unwrap().path, "/v1/messages/count_tokens");
    let before = ok.request_count();
    let (status, _, estimated) = send(&gw, "/v1/messages/count_tokens", &[("x-api-key", KEY)], &ask("bedrock")).await;
    assert_eq!((status, json_of(&estimated)["input_tokens"].as_u64()), (200, Some(7)), "27 bytes at four per token");
    assert_eq!(ok.request_count(), before, "an estimate asks no upstream");
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event_and_never_message_stop() {
    let ok = mock().start().await;
    let breaks = mock().break_stream_after(4).start().await;
    let gw =
        TestGateway::start(&bare_config(&format!("{}{}{KEYS}", upstreams("ok", &ok), upstreams("break", &breaks))))
            .await;
    for model in ["anthropic-break", "bedrock-break", "openai-break"] {
        let body = json!({"model": model, "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h"}]});
        let (status, _, streamed) = send(&gw, "/v1/messages", &[("x-api-key", KEY)], &body).await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&streamed);
        assert!(!text.contains("message_stop"), "{model}: {text}");
        let last = sse_data(&streamed).pop().unwrap();
        let last: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(
            (last["type"].as_str(), last["error"]["type"].as_str()),
            (Some("error"), Some("api_error")),
            "{model}: {text}"
        );
    }
    // An upstream's own mid-stream error passes through, and the stream still does not end cleanly.
    for model in ["anthropic", "bedrock"] {
        let body = json!({"model": model, "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "trigger-stream-exception a b c"}]});
        let (_, _, streamed) = send(&gw, "/v1/messages", &[("x-api-key", KEY)], &body).await;
        let text = String::from_utf8_lossy(&streamed);
        assert!(text.contains("event: error") && !text.contains("message_stop"), "{model}: {text}");
    }
}
