//! Bedrock through its mock: Converse and ConverseStream (real event-stream frames) translated both
//! ways, SigV4 or a Bedrock API key, tool calls and results, JSON schema, stop reasons, usage with
//! cache tokens, exceptions mid-stream, errors and embeddings.

use std::time::Duration;

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, openai_error, post_full, sse_json, streamed_text};

fn bedrock_config(mock: &MockUpstream) -> String {
    let base = format!("http://{}", mock.addr());
    bare_config(&format!(
        r#"
[[upstreams]]
name = "bedrock"
kind = "bedrock"
endpoint = "{base}"
region = "us-east-1"
access_key_id = "AKIDWEIRTEST"
secret_access_key = "secret"

[[upstreams]]
name = "bedrock-key"
kind = "bedrock"
endpoint = "{base}"
region = "us-west-2"
api_key = "bedrock-api-key"

[[models]]
name = "claude"
targets = [{{ upstream = "bedrock", model = "anthropic.claude-3-5-sonnet-20240620-v1:0" }}]

[[models]]
name = "nova"
targets = [{{ upstream = "bedrock-key", model = "amazon.nova-lite-v1:0" }}]

[[models]]
name = "titan"
targets = [{{ upstream = "bedrock", model = "amazon.titan-embed-text-v2:0" }}]

[[models]]
name = "cohere"
targets = [{{ upstream = "bedrock", model = "cohere.embed-english-v3" }}]
"#
    ))
}

async fn start(builder: weir_bench::mock::MockBuilder) -> (MockUpstream, TestGateway) {
    let mock = builder.aws_credentials("AKIDWEIRTEST", "secret").api_key("bedrock-api-key").start().await;
    let gw = TestGateway::start(&bedrock_config(&mock)).await;
    (mock, gw)
}

async fn chat(gw: &TestGateway, body: &Value) -> (u16, Value) {
    let (status, _, body) = post_full(&gw.url("/v1/chat/completions"), body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}"#;
const TIME: &str =
    r#"{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{}}}}"#;

#[tokio::test]
async fn text_signed_with_sigv4_or_an_api_key() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let body = json!({"model": "claude", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "bedrock"}
    ], "max_tokens": 100, "temperature": 0.1, "top_p": 0.9, "stop": "END"});
    let (status, answer) = chat(&gw, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: bedrock");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // Cache reads and writes count as prompt tokens; reads are `cached_tokens`.
    assert_eq!(answer["usage"]["prompt_tokens"], 2 + 3 + 1, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    let sent = mock.requests().pop().expect("sent");
    assert_eq!(sent.path, "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse");
    assert!(sent.header("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDWEIRTEST/")));
    let sent = sent.json();
    assert_eq!(sent["system"], json!([{"text": "be brief"}]));
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"text": "hello"}, {"text": "bedrock"}]}]),
        "merged"
    );
    assert_eq!(
        sent["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 0.1, "topP": 0.9, "stopSequences": ["END"]})
    );

    let (status, answer) = chat(&gw, &json!({"model": "nova", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(mock.requests().pop().expect("sent").header("authorization"), Some("Bearer bedrock-api-key"));
}

#[tokio::test]
async fn streamed_usage_reaches_the_client_after_message_stop() {
    let (_mock, gw) = start(MockUpstream::builder()).await;
    let mut body =
        json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
    let (status, headers, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let (events, done) = sse_json(&raw);
    assert!(done, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(streamed_text(&events), "echo: one two three");
    assert!(events.iter().all(|e| e.get("usage").is_none()), "no usage chunk unless asked");

    body["stream_options"] = json!({"include_usage": true});
    let (_, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    let (events, done) = sse_json(&raw);
    assert!(done);
    let last = events.last().expect("usage");
    assert_eq!((&last["choices"], &last["usage"]["completion_tokens"]), (&json!([]), &json!(4)), "{last}");
    let finish = events.iter().find_map(|e| e.pointer("/choices/0/finish_reason").filter(|f| !f.is_null()));
    assert_eq!(finish, Some(&json!("stop")));
}

#[tokio::test]
async fn parallel_tool_calls_and_results_round_trip() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let tools: Vec<Value> = [WEATHER, TIME].iter().map(|t| serde_json::from_str(t).expect("tool")).collect();
    let ask = json!({"model": "claude", "messages": [{"role": "user", "content": "weather and time?"}], "tools": tools, "tool_choice": "required"});
    let (status, answer) = chat(&gw, &ask).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    let message = answer["choices"][0]["message"].clone();
    let calls = message["tool_calls"].as_array().expect("calls").clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["function"], json!({"name": "get_time", "arguments": r#"{"location":"Paris"}"#}));
    let sent = mock.requests().pop().expect("sent").json();
    assert_eq!(sent["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(sent["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"], "object");

    let mut messages = ask["messages"].as_array().expect("messages").clone();
    messages.push(message);
    for (call, result) in calls.iter().zip([r#"{"temp":21}"#, "noon"]) {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": result}));
    }
    let (status, answer) = chat(&gw, &json!({"model": "claude", "messages": messages, "tools": tools})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "tool said: noon");
    let sent = mock.requests().pop().expect("sent").json();
    let results = sent["messages"][2]["content"].as_array().expect("one user turn of results");
    assert_eq!(results.len(), 2, "{sent}");
    assert_eq!(results[0]["toolResult"]["content"], json!([{"json": {"temp": 21}}]));

    // The same history without tools: Converse refuses tool blocks without a toolConfig, so
    // they go as text.
    let (status, answer) = chat(&gw, &json!({"model": "claude", "messages": messages})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) =
        chat(&gw, &json!({"model": "claude", "messages": messages, "tools": tools, "tool_choice": "none"})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(mock.requests().pop().expect("sent").json().get("toolConfig").is_none());

    // Streamed calls: distinct indexes, ids and names first, arguments in pieces.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let (_, _, raw) = post_full(&gw.url("/v1/chat/completions"), &streamed).await;
    let (events, done) = sse_json(&raw);
    assert!(done);
    let mut args = [String::new(), String::new()];
    for e in &events {
        if let Some(call) = e.pointer("/choices/0/delta/tool_calls/0") {
            let i = call["index"].as_u64().expect("index") as usize;
            args[i].push_str(call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or_default());
        }
    }
    assert_eq!(args, [r#"{"location":"Paris"}"#, r#"{"location":"Paris"}"#]);
}

#[tokio::test]
async fn named_tool_choice_json_schema_and_stop_reasons() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let tools: Vec<Value> = [WEATHER, TIME].iter().map(|t| serde_json::from_str(t).expect("tool")).collect();
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, answer) = chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": named})).await;
    let calls = answer["choices"][0]["message"]["tool_calls"].as_array().expect("calls");
    assert_eq!((calls.len(), &calls[0]["function"]["name"]), (1, &json!("get_time")));

    let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"location": {"type": "string"}}}}});
    for stream in [false, true] {
        let body = json!({"model": "claude", "stream": stream, "messages": [{"role": "user", "content": "hi"}], "response_format": format});
        let (status, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
        assert_eq!(status, 200);
        let (content, finish) = if stream {
            let (events, _) = sse_json(&raw);
            let finish =
                events.iter().find_map(|e| e.pointer("/choices/0/finish_reason").filter(|f| !f.is_null()).cloned());
            (streamed_text(&events), finish.unwrap_or_default())
        } else {
            let answer: Value = serde_json::from_slice(&raw).expect("json");
            (
                answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned(),
                answer["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(serde_json::from_str::<Value>(&content).expect("JSON content"), json!({"location": "Paris"}));
        assert_eq!(finish, "stop");
    }
    assert_eq!(
        mock.requests().pop().expect("sent").json()["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "json_response"}})
    );

    let (_, answer) =
        chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": "a b c d e"}], "max_tokens": 2}))
            .await;
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    let (_, answer) =
        chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": "trigger-content-filter"}]}))
            .await;
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn images_go_as_bytes_with_their_format() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let content = json!([{"type": "text", "text": "what"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]);
    let (status, answer) =
        chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": content}]})).await;
    assert_eq!(status, 200, "{answer}");
    let blocks = &mock.requests().pop().expect("sent").json()["messages"][0]["content"];
    assert_eq!(blocks[1], json!({"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}}));
}

#[tokio::test]
async fn a_mid_stream_exception_is_an_error_event_without_done() {
    let (_mock, gw) = start(MockUpstream::builder()).await;
    let body = json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "trigger-stream-exception please"}]});
    let (status, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&raw);
    assert!(!done, "{}", String::from_utf8_lossy(&raw));
    let last = events.last().expect("events");
    assert!(last["error"]["message"].as_str().is_some_and(|m| m.contains("model stream failed")), "{last}");
    assert_eq!(last["error"]["code"], "upstream_error");
}

#[tokio::test]
async fn upstream_errors_become_openai_errors_with_honest_statuses() {
    for (fail, expected, code) in [
        (400, 400, "validation"),
        (404, 404, "resource_not_found"),
        (429, 429, "throttling"),
        (503, 502, "upstream_error"),
        (403, 502, "upstream_auth_failed"),
    ] {
        let (mock, gw) = start(MockUpstream::builder().always_fail(fail)).await;
        let (status, body) =
            chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(status, expected, "{fail}: {body}");
        assert_eq!(openai_error(&body)["code"], code, "{fail}");
        let retryable = matches!(fail, 429 | 503);
        assert_eq!(mock.request_count(), if retryable { 3 } else { 1 }, "{fail}: retried only when retryable");
    }
    // Keys the upstream does not know.
    let mock = MockUpstream::builder().aws_credentials("AKIDOTHER", "secret").start().await;
    let gw = TestGateway::start(&bedrock_config(&mock)).await;
    let (status, body) = chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!((status, &openai_error(&body)["code"]), (502, &json!("upstream_auth_failed")));
    assert!(!body.to_string().contains("secret"));
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_stream() {
    let (mock, gw) = start(MockUpstream::builder().chunk_interval(Duration::from_millis(100))).await;
    let body =
        json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h i j"}]});
    let response = reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&body).send().await.expect("send");
    let mut response = response;
    let first = response.chunk().await.expect("chunk");
    assert!(first.is_some());
    drop(response);
    assert!(mock.wait_cancelled_streams(1, Duration::from_secs(5)).await, "the upstream stream was cancelled");
}

#[tokio::test]
async fn embeddings_with_titan_and_cohere() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let (status, _, raw) =
        post_full(&gw.url("/v1/embeddings"), &json!({"model": "titan", "input": "a b", "dimensions": 4})).await;
    let body: Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    let expected: Vec<f64> =
        weir_bench::mock::embedding_vector(b"a b", 4).iter().map(|x| x.to_string().parse().unwrap()).collect();
    assert_eq!(body["data"][0]["embedding"], json!(expected));
    assert_eq!(mock.requests().pop().expect("sent").path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    let (status, _, raw) = post_full(&gw.url("/v1/embeddings"), &json!({"model": "cohere", "input": ["a", "b"]})).await;
    let body: Value = serde_json::from_slice(&raw).expect("json");
    assert_eq!((status, body["data"].as_array().map(Vec::len)), (200, Some(2)), "{body}");
}

#[tokio::test]
async fn translated_streams_are_accounted_with_their_usage_even_when_the_client_did_not_ask() {
    let (_mock, gw) = start(MockUpstream::builder()).await;
    let body = json!({"model": "claude", "stream": true, "messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "one two three"}
    ]});
    let (status, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    assert!(sse_json(&raw).0.iter().all(|e| e.get("usage").is_none()));
    let metrics = gw.metrics().await;
    let tokens = |kind: &str| {
        crate::support::metric(&metrics, "weir_tokens_total", &[("model", "claude"), ("token_type", kind)])
    };
    assert_eq!((tokens("input"), tokens("output"), tokens("cached_input")), (3.0 + 3.0 + 1.0, 4.0, 3.0), "{metrics}");
    assert_eq!(crate::support::metric(&metrics, "weir_requests_total", &[("model", "claude"), ("outcome", "ok")]), 1.0);
}

#[tokio::test]
async fn the_aws_credential_chain_reads_a_profile() {
    // The chain looks at the environment first; this test assumes no AWS_ACCESS_KEY_ID is set, as
    // in CI, and finds the keys in the named profile of its own credentials file.
    let mock = MockUpstream::builder().aws_credentials("AKIDFROMPROFILE", "secret").start().await;
    let dir = crate::support::state_dir();
    std::fs::create_dir_all(&dir).expect("state dir");
    let file = dir.join(format!("aws-credentials-{}", mock.addr().port()));
    std::fs::write(&file, "[weir-test]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = secret\n")
        .expect("credentials file");
    let config = bare_config(&format!(
        r#"
[[upstreams]]
name = "bedrock-chain"
kind = "bedrock"
endpoint = "http://{}"
region = "eu-west-1"
profile = "weir-test"
credentials_file = "{}"

[[models]]
name = "claude"
targets = [{{ upstream = "bedrock-chain", model = "anthropic.claude-3-haiku-20240307-v1:0" }}]
"#,
        mock.addr(),
        file.display()
    ));
    let gw = TestGateway::start(&config).await;
    for _ in 0..2 {
        let (status, answer) =
            chat(&gw, &json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(status, 200, "{answer}");
    }
    let auth = mock.requests().pop().expect("sent").header("authorization").unwrap_or_default().to_owned();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDFROMPROFILE/"), "{auth}");
    assert!(auth.contains("/eu-west-1/bedrock/aws4_request"), "{auth}");
}
