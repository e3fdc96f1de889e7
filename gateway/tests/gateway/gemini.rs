//! Gemini through its mock, on the Gemini API (`x-goog-api-key`) and on Vertex AI (a service-account
//! key whose token endpoint is the mock's): requests and answers translated both ways, streams
//! included, tool calls with thought signatures, usage, finish reasons and errors.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, openai_error, post_full, sse_json, state_dir, streamed_text};

/// A service-account key file whose `token_uri` is the mock's token endpoint.
pub(crate) fn service_account(mock: &MockUpstream) -> std::path::PathBuf {
    let key = include_str!("../../../bench/fixtures/vertex/test-key.pem");
    let file = state_dir().join(format!("vertex-sa-{}.json", mock.addr().port()));
    std::fs::create_dir_all(state_dir()).expect("state dir");
    let json = json!({
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "test",
        "private_key": key,
        "client_email": "weir-test@proj-1.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": format!("http://{}/token", mock.addr()),
    });
    std::fs::write(&file, json.to_string()).expect("write key");
    file
}

fn gemini_config(mock: &MockUpstream) -> String {
    let base = format!("http://{}", mock.addr());
    let sa = service_account(mock);
    bare_config(&format!(
        r#"
[[upstreams]]
name = "gemini"
kind = "gemini"
endpoint = "{base}"
api_key = "g-key"

[[upstreams]]
name = "vertex"
kind = "vertex"
endpoint = "{base}"
project = "proj-1"
location = "us-central1"
credentials_file = "{sa}"

[[models]]
name = "g"
targets = [{{ upstream = "gemini", model = "gemini-2.5-flash" }}]

[[models]]
name = "v"
targets = [{{ upstream = "vertex", model = "gemini-2.5-pro" }}]

[[models]]
name = "g-embed"
targets = [{{ upstream = "gemini", model = "gemini-embedding-001" }}]

[[models]]
name = "v-embed"
targets = [{{ upstream = "vertex", model = "text-embedding-005" }}]
"#,
        sa = sa.display()
    ))
}

const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"location":{"type":["string","null"]}},"required":["location"],"additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#"},"strict":true}}"#;
const TIME: &str =
    r#"{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{}}}}"#;

async fn start(builder: weir_bench::mock::MockBuilder) -> (MockUpstream, TestGateway) {
    let mock = builder.api_key("g-key").start().await;
    let gw = TestGateway::start(&gemini_config(&mock)).await;
    (mock, gw)
}

async fn chat(gw: &TestGateway, body: &Value) -> (u16, Value) {
    let (status, _, body) = post_full(&gw.url("/v1/chat/completions"), body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn text_with_a_system_prompt_both_apis() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    for model in ["g", "v"] {
        let body = json!({"model": model, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello gemini"}
        ], "temperature": 0.5, "max_tokens": 50, "stop": ["END"], "x_unknown": 1});
        let (status, answer) = chat(&gw, &body).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["choices"][0]["message"]["content"], "echo: hello gemini", "thoughts are not content");
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        // Thought tokens are completion tokens, and reasoning tokens.
        assert_eq!(answer["usage"]["completion_tokens"], 3 + 2, "{answer}");
        assert_eq!(answer["usage"]["completion_tokens_details"]["reasoning_tokens"], 2);
    }
    let sent = mock.requests().into_iter().filter(|r| r.path.contains(":generateContent")).collect::<Vec<_>>();
    assert_eq!(sent[0].path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent[0].header("x-goog-api-key"), Some("g-key"));
    let body = sent[0].json();
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "be brief");
    assert_eq!(body["generationConfig"], json!({"temperature": 0.5, "maxOutputTokens": 50, "stopSequences": ["END"]}));
    assert_eq!(
        sent[1].path,
        "/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    );
    assert!(sent[1].header("authorization").is_some_and(|a| a.starts_with("Bearer mock-token-")));
    assert_eq!(sent[1].header("x-goog-api-key"), None);
}

#[tokio::test]
async fn vertex_tokens_come_from_the_service_account_and_are_cached() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    for _ in 0..3 {
        let (status, answer) = chat(&gw, &json!({"model": "v", "messages": [{"role": "user", "content": "hi"}]})).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(mock.token_requests(), 1);
}

#[tokio::test]
async fn streams_translate_to_chunks_with_usage_only_when_asked() {
    let (_mock, gw) = start(MockUpstream::builder()).await;
    let mut body = json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
    let (status, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&raw);
    assert!(done, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(streamed_text(&events), "echo: one two three");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"));
    assert!(events.iter().all(|e| e.get("usage").is_none()));
    let finish: Vec<&Value> =
        events.iter().filter_map(|e| e.pointer("/choices/0/finish_reason").filter(|f| !f.is_null())).collect();
    assert_eq!(finish, [&json!("stop")]);

    body["stream_options"] = json!({"include_usage": true});
    let (_, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    let (events, done) = sse_json(&raw);
    assert!(done);
    let last = events.last().expect("usage chunk");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4 + 2, "{last}");
    assert_eq!(last["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn parallel_tool_calls_round_trip_with_thought_signatures() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let tools: Vec<Value> = [WEATHER, TIME].iter().map(|t| serde_json::from_str(t).expect("tool")).collect();
    let ask = json!({"model": "g", "messages": [{"role": "user", "content": "weather and time?"}], "tools": tools});
    let (status, answer) = chat(&gw, &ask).await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    // Gemini says STOP after a functionCall; OpenAI clients need tool_calls.
    assert_eq!(choice["finish_reason"], "tool_calls");
    let calls = choice["message"]["tool_calls"].as_array().expect("tool calls").clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"location":"Paris"}"#);
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    let sent = mock.requests().pop().expect("sent").json();
    let params = &sent["tools"][0]["functionDeclarations"][0]["parameters"];
    assert_eq!(
        params["properties"]["location"],
        json!({"type": "string", "nullable": true}),
        "schema cleaned: {params}"
    );

    // The answer goes back with both results in one turn; the mock refuses a call without its signature.
    let mut messages = ask["messages"].as_array().expect("messages").clone();
    messages.push(choice["message"].clone());
    for (call, result) in calls.iter().zip([r#"{"temp":21}"#, "noon"]) {
        messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": result}));
    }
    let (status, answer) = chat(&gw, &json!({"model": "g", "messages": messages, "tools": tools})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], r#"tool said: {"result":"noon"}"#);
    let sent = mock.requests().pop().expect("sent").json();
    let turns = sent["contents"].as_array().expect("contents");
    assert_eq!(turns.len(), 3, "user, model, one turn of both results: {sent}");
    assert_eq!(turns[2]["parts"][0]["functionResponse"], json!({"name": "get_weather", "response": {"temp": 21}}));
    assert_eq!(turns[2]["parts"][1]["functionResponse"]["name"], "get_time");
    assert!(turns[1]["parts"][0]["thoughtSignature"].is_string());

    // A streamed parallel call: distinct indexes, and `tool_calls` at the end.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let (_, _, raw) = post_full(&gw.url("/v1/chat/completions"), &streamed).await;
    let (events, done) = sse_json(&raw);
    assert!(done);
    let indexes: Vec<u64> = events
        .iter()
        .filter_map(|e| e.pointer("/choices/0/delta/tool_calls/0/index").and_then(Value::as_u64))
        .collect();
    assert_eq!(indexes, [0, 1]);
    let finish = events.iter().find_map(|e| e.pointer("/choices/0/finish_reason").filter(|f| !f.is_null()));
    assert_eq!(finish, Some(&json!("tool_calls")));
}

#[tokio::test]
async fn tool_choice_none_and_named() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let tools: Vec<Value> = [WEATHER, TIME].iter().map(|t| serde_json::from_str(t).expect("tool")).collect();
    let (status, answer) = chat(
        &gw,
        &json!({"model": "g", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "none"}),
    )
    .await;
    assert_eq!((status, &answer["choices"][0]["message"]["content"]), (200, &json!("echo: hi")), "{answer}");
    assert_eq!(mock.requests().pop().expect("sent").json()["toolConfig"]["functionCallingConfig"]["mode"], "NONE");
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, answer) = chat(
        &gw,
        &json!({"model": "g", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": named}),
    )
    .await;
    let calls = answer["choices"][0]["message"]["tool_calls"].as_array().expect("calls");
    assert_eq!((calls.len(), &calls[0]["function"]["name"]), (1, &json!("get_time")));
}

#[tokio::test]
async fn json_schema_length_and_content_filter() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let format = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}}});
    let (status, answer) =
        chat(&gw, &json!({"model": "g", "messages": [{"role": "user", "content": "hi"}], "response_format": format}))
            .await;
    assert_eq!(status, 200, "{answer}");
    let config = &mock.requests().pop().expect("sent").json()["generationConfig"];
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseSchema"], json!({"type": "object", "properties": {"a": {"type": "string"}}}));

    let (_, answer) = chat(
        &gw,
        &json!({"model": "g", "messages": [{"role": "user", "content": "a b c d e"}], "max_completion_tokens": 2}),
    )
    .await;
    assert_eq!(
        (&answer["choices"][0]["finish_reason"], &answer["choices"][0]["message"]["content"]),
        (&json!("length"), &json!("echo: a"))
    );

    let (_, answer) =
        chat(&gw, &json!({"model": "g", "messages": [{"role": "user", "content": "trigger-content-filter"}]})).await;
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter", "{answer}");
}

#[tokio::test]
async fn images_from_data_urls_and_remote_urls_refused() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    let content = json!([{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]);
    let (status, answer) = chat(&gw, &json!({"model": "g", "messages": [{"role": "user", "content": content}]})).await;
    assert_eq!(status, 200, "{answer}");
    let parts = &mock.requests().pop().expect("sent").json()["contents"][0]["parts"];
    assert_eq!(parts[1], json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}));
    let remote = json!([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]);
    let before = mock.request_count();
    let (status, answer) = chat(&gw, &json!({"model": "g", "messages": [{"role": "user", "content": remote}]})).await;
    assert_eq!((status, &openai_error(&answer)["param"]), (400, &json!("messages[0].content")));
    assert_eq!(mock.request_count(), before);
}

#[tokio::test]
async fn upstream_errors_become_openai_errors_with_honest_statuses() {
    for (fail, expected, code) in [
        (400, 400, "invalid_argument"),
        (404, 404, "not_found"),
        (429, 429, "rate_limit_exceeded"),
        (500, 502, "upstream_error"),
        (403, 502, "upstream_auth_failed"),
    ] {
        let (_mock, gw) = start(MockUpstream::builder().always_fail(fail)).await;
        let (status, _, raw) = post_full(
            &gw.url("/v1/chat/completions"),
            &json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        let body: Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(status, expected, "{fail}: {body}");
        assert_eq!(openai_error(&body)["code"], code, "{fail}");
    }
    let (_mock, gw) = start(MockUpstream::builder().always_fail(429)).await;
    let (_, headers, _) = post_full(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
    // A wrong API key: Gemini answers 400 API_KEY_INVALID, which is the gateway's problem.
    let mock = MockUpstream::builder().api_key("other").start().await;
    let gw = TestGateway::start(&gemini_config(&mock)).await;
    let (status, body) = chat(&gw, &json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!((status, &openai_error(&body)["code"]), (502, &json!("upstream_auth_failed")), "{body}");
}

#[tokio::test]
async fn a_mid_stream_error_ends_with_an_error_event_and_no_done() {
    let (_mock, gw) = start(MockUpstream::builder()).await;
    let body = json!({"model": "g", "stream": true, "messages": [{"role": "user", "content": "trigger-stream-exception now"}]});
    let (status, _, raw) = post_full(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&raw);
    assert!(!done, "{}", String::from_utf8_lossy(&raw));
    assert!(events.last().expect("events")["error"]["message"].as_str().is_some_and(|m| m.contains("overloaded")));
}

#[tokio::test]
async fn embeddings_on_both_apis() {
    let (mock, gw) = start(MockUpstream::builder()).await;
    for model in ["g-embed", "v-embed"] {
        let (status, _, raw) =
            post_full(&gw.url("/v1/embeddings"), &json!({"model": model, "input": ["a b", "c"], "dimensions": 4}))
                .await;
        let body: Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(status, 200, "{body}");
        let data = body["data"].as_array().expect("data");
        assert_eq!(data.len(), 2);
        assert_eq!(data[1]["index"], 1);
        let expected: Vec<f64> =
            weir_bench::mock::embedding_vector(b"c", 4).iter().map(|x| x.to_string().parse().unwrap()).collect();
        assert_eq!(data[1]["embedding"], json!(expected));
    }
    let paths: Vec<String> =
        mock.requests().iter().map(|r| r.path.clone()).filter(|p| !p.starts_with("/token")).collect();
    assert_eq!(
        paths,
        [
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            "/v1/projects/proj-1/locations/us-central1/publishers/google/models/text-embedding-005:predict",
        ]
    );
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_stream() {
    let (mock, gw) = start(MockUpstream::builder().chunk_interval(std::time::Duration::from_millis(100))).await;
    let body = json!({"model": "v", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h i j"}]});
    let mut response =
        reqwest::Client::new().post(gw.url("/v1/chat/completions")).json(&body).send().await.expect("send");
    assert!(response.chunk().await.expect("chunk").is_some());
    drop(response);
    assert!(
        mock.wait_cancelled_streams(1, std::time::Duration::from_secs(5)).await,
        "the upstream stream was cancelled"
    );
}
