//! Every error path answers with an OpenAI error object and an honest status; retries go to the next
//! target only for failures another attempt can fix.

use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::types::chat::CreateChatCompletionRequest;
use serde_json::json;
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, config, metric, openai_error, post, strict_config};

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;

async fn chat(gw: &TestGateway, body: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    post(&format!("{}/chat/completions", gw.base_url()), body, None).await
}

#[tokio::test]
async fn client_mistakes_get_4xx_with_the_field_named() {
    let upstream = MockUpstream::builder().start().await;
    let text = strict_config(&upstream.base_url(), "");
    let gw = TestGateway::start(&text.replace("shutdown_grace", "max_body_bytes = 2048\nshutdown_grace")).await;

    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        ("{not json", 400, "invalid_json", None),
        ("", 400, "invalid_json", None),
        (r#"{"messages":[{"role":"user","content":"x"}]}"#, 400, "missing_required_parameter", Some("model")),
        (r#"{"model":"gpt-test"}"#, 400, "missing_required_parameter", Some("messages")),
        (
            r#"{"model":"gpt-test","messages":[{"role":"robot","content":"x"}]}"#,
            400,
            "invalid_value",
            Some("messages[0].role"),
        ),
        (r#"{"model":"gpt-test","messages":[],"stream":1}"#, 400, "invalid_value", Some("stream")),
        (
            r#"{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "model_not_found",
            Some("model"),
        ),
    ];
    for (body, status, code, param) in cases {
        let (got, _, response) = chat(&gw, body).await;
        assert_eq!(got, *status, "{body} → {response}");
        let error = openai_error(&response);
        assert_eq!(error["code"], *code, "{body} → {response}");
        assert_eq!(error["param"].as_str(), *param, "{body} → {response}");
    }

    let big = format!(r#"{{"model":"gpt-test","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(4096));
    let (status, _, response) = chat(&gw, &big).await;
    assert_eq!(status, 413, "{response}");
    assert_eq!(openai_error(&response)["code"], "request_too_large");

    let (status, _, response) = post(&gw.url("/v1/completions-typo"), CHAT, None).await;
    assert_eq!(status, 404);
    openai_error(&response);
    let response = reqwest::get(format!("{}/chat/completions", gw.base_url())).await.expect("get");
    assert_eq!(response.status().as_u16(), 405);
    openai_error(&response.json().await.expect("json"));
    assert_eq!(upstream.request_count(), 0, "no client mistake reaches the upstream");

    // The real client maps these to its error type with the status intact.
    let request: CreateChatCompletionRequest =
        serde_json::from_value(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
            .expect("request");
    match gw.openai("unused").chat().create(request).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!((e.status_code.as_u16(), e.api_error.code.as_deref()), (404, Some("model_not_found")))
        }
        other => panic!("expected a 404 ApiError, got {other:?}"),
    }
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let upstream = MockUpstream::builder().start().await;
    let keys = r#"
[[keys]]
name = "search-service"
team = "search"
key = "sk-weir-test-0123456789"
"#;
    let gw = TestGateway::start(&config(&upstream.base_url(), keys)).await;
    let url = format!("{}/chat/completions", gw.base_url());
    for key in [None, Some("sk-wrong-0123456789")] {
        let (status, _, body) = post(&url, CHAT, key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(openai_error(&body)["type"], "authentication_error");
    }
    let (status, _, body) = post(&url, CHAT, Some("sk-weir-test-0123456789")).await;
    assert_eq!(status, 200, "{body}");
    let sent = upstream.requests().pop().expect("recorded");
    assert_eq!(sent.header("authorization"), None, "the client's key never reaches the upstream");

    let list = reqwest::get(format!("{}/models", gw.base_url())).await.expect("models");
    assert_eq!(list.status().as_u16(), 401, "the model list needs a key too");
    match gw.openai("sk-wrong-0123456789").models().list().await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.status_code.as_u16(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(gw.openai("sk-weir-test-0123456789").models().list().await.is_ok());
}

#[tokio::test]
async fn upstream_credentials_are_sent_and_their_rejection_is_a_502() {
    let upstream = MockUpstream::builder().api_key("sk-upstream-secret").start().await;
    let base = config(&upstream.base_url(), "");
    let good = base.replace(
        &format!("endpoint = \"{}\"", upstream.base_url()),
        &format!("endpoint = \"{}\"\napi_key = \"sk-upstream-secret\"", upstream.base_url()),
    );
    let gw = TestGateway::start(&good).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!(status, 200, "{body}");

    let gw = TestGateway::start(&good.replace("sk-upstream-secret", "sk-upstream-wrong")).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!(status, 502, "{body}");
    let error = openai_error(&body);
    assert_eq!(error["code"], "upstream_auth_failed");
    assert!(!body.to_string().contains("sk-upstream"), "no credential is echoed: {body}");
}

#[tokio::test]
async fn retryable_failures_move_to_the_next_target() {
    let broken = MockUpstream::builder().always_fail(503).start().await;
    let healthy = MockUpstream::builder().start().await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[retry]
max_attempts = 3
backoff_base = "5ms"
backoff_max = "20ms"
[[upstreams]]
name = "broken"
endpoint = "{}"
[[upstreams]]
name = "healthy"
endpoint = "{}"
[[models]]
name = "gpt-test"
targets = [{{ upstream = "broken", model = "a" }}, {{ upstream = "healthy", model = "b" }}]
"#,
        broken.base_url(),
        healthy.base_url()
    );
    let gw = TestGateway::start(&text).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!(status, 200, "{body}");
    // A 5xx is tried once more on the same target (`retry.same_target = 1`), then the next.
    assert_eq!((broken.request_count(), healthy.request_count()), (2, 1));
    assert_eq!(healthy.requests()[0].json()["model"], "b");
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "weir_upstream_errors_total", &[("target", "broken/a"), ("class", "status_5xx")]),
        2.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "weir_upstream_retries_total", &[("model", "gpt-test"), ("target", "healthy/b")]), 1.0);
    assert_eq!(metric(&metrics, "weir_requests_total", &[("target", "healthy/b"), ("status", "200")]), 1.0);
}

#[tokio::test]
async fn a_single_target_is_retried_with_backoff_within_the_attempt_budget() {
    let upstream = MockUpstream::builder().fail_first(1, 429).start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!((status, upstream.request_count()), (200, 2), "{body}");

    // Always failing: bounded by max_attempts (3 by default), then an honest status.
    for (fail, want_status, want_code) in [(503, 502, "upstream_error"), (429, 429, "rate_limit_exceeded")] {
        let upstream = MockUpstream::builder().always_fail(fail).start().await;
        let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
        let (status, headers, body) = chat(&gw, CHAT).await;
        assert_eq!(status, want_status, "{body}");
        assert_eq!(openai_error(&body)["code"], want_code, "{body}");
        assert_eq!(upstream.request_count(), 3);
        if fail == 429 {
            assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        }
    }
}

#[tokio::test]
async fn client_errors_from_the_upstream_are_passed_on_and_never_retried() {
    let upstream = MockUpstream::builder().always_fail(400).start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(openai_error(&body)["type"], "invalid_request_error");
    assert_eq!(upstream.request_count(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn an_unreachable_upstream_is_503_and_a_slow_one_504() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}/v1", closed.local_addr().expect("addr"));
    drop(closed);
    let gw = TestGateway::start(&config(&dead_url, "")).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(openai_error(&body)["code"], "upstream_unavailable");

    let slow = MockUpstream::builder().latency(Duration::from_secs(5)).start().await;
    let gw = TestGateway::start(&config(&slow.base_url(), "[timeouts]\nfirst_byte = \"150ms\"")).await;
    let (status, _, body) = chat(&gw, CHAT).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(openai_error(&body)["code"], "upstream_timeout");
    assert_eq!(slow.request_count(), 1, "a timeout is not retried: the upstream may still be working on it");
}
