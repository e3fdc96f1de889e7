//! Streams that go wrong: an upstream that breaks or stalls mid-stream ends the client's stream with
//! an OpenAI error event and no `[DONE]`; a client that leaves cancels the upstream.

use std::time::Duration;

use async_openai::types::chat::CreateChatCompletionRequest;
use futures_util::StreamExt;
use serde_json::Value;
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, config, metric, post_raw, sse_data};

const STREAM: &str = r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"one two three four five six seven eight"}]}"#;

fn last_event_error(body: &[u8]) -> Value {
    let data = sse_data(body);
    assert!(!data.iter().any(|d| d == "[DONE]"), "a failed stream must not end cleanly: {data:?}");
    let last: Value = serde_json::from_str(data.last().expect("some events")).expect("JSON event");
    assert!(last["error"]["message"].is_string(), "{last}");
    last
}

#[tokio::test]
async fn an_upstream_that_breaks_mid_stream_ends_in_an_error_event() {
    let upstream = MockUpstream::builder().break_stream_after(3).start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let (status, body) = post_raw(&format!("{}/chat/completions", gw.base_url()), STREAM).await;
    assert_eq!(status, 200);
    assert_eq!(sse_data(&body).len(), 4, "three relayed events, then the error");
    assert_eq!(last_event_error(&body)["error"]["code"], "upstream_stream_error");

    // The real client surfaces it as an error rather than a short answer.
    let request: CreateChatCompletionRequest = serde_json::from_str(STREAM).expect("request");
    let mut stream = gw.openai("unused").chat().create_stream(request).await.expect("stream");
    let mut failed = false;
    while let Some(item) = stream.next().await {
        failed |= item.is_err();
    }
    assert!(failed, "async-openai must see an error");

    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "weir_requests_total", &[("model", "gpt-test"), ("outcome", "error")]),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upstream_that_goes_silent_hits_the_idle_timeout() {
    let upstream = MockUpstream::builder().chunk_interval(Duration::from_secs(3)).start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "[timeouts]\nidle = \"200ms\"")).await;
    let (status, body) = post_raw(&format!("{}/chat/completions", gw.base_url()), STREAM).await;
    assert_eq!(status, 200);
    assert_eq!(last_event_error(&body)["error"]["code"], "upstream_idle_timeout");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_and_is_accounted_once() {
    let upstream = MockUpstream::builder().chunk_interval(Duration::from_millis(100)).start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", gw.base_url()))
        .body(STREAM)
        .send()
        .await
        .expect("send");
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert!(first.starts_with(b"data: "));
    drop(body);

    assert!(upstream.wait_cancelled_streams(1, Duration::from_secs(10)).await, "the upstream stream was not cancelled");
    let mut aborted = 0.0;
    for _ in 0..100 {
        aborted = metric(&gw.metrics().await, "weir_requests_total", &[("outcome", "client_abort")]);
        if aborted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(aborted, 1.0, "the abort is accounted exactly once");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_requests_total", &[("model", "gpt-test")]), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "weir_in_flight_requests", &[]), 0.0);
}
