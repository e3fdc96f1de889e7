//! Failover that rescues the answer: upstreams that fail the way real providers fail (a 429 with
//! `Retry-After`, one 5xx, a reset before the first byte, a slow first byte or first token, a
//! context window too small, a stream without `[DONE]`, a stream cut or stalled mid-answer, a
//! fallback that refuses prefill), each turned into a whole answer the client cannot tell apart
//! from a clean one — or, where that is impossible, an honest error. The same holds for every
//! client API: a Messages or Responses stream encoded from chat is continued as one answer in that
//! API; one relayed natively is retried before its content (perhaps on a target that translates)
//! but not continued after it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{
    TestGateway, bare_config, metric, metric_eventually, openai_error, post, post_full, sse_data, sse_json,
    streamed_text,
};

const WORDS: &str = "one two three four five six seven eight";
const ANSWER: &str = "echo: one two three four five six seven eight";

/// Upstreams `a` and `b` (each `kind` with its own extra lines), and model `m` over `a` then `b`
/// with `model` lines added to its `[[models]]` table; `extra` is appended.
fn config(a: (&MockUpstream, &str), b: (&MockUpstream, &str), model: &str, extra: &str) -> String {
    bare_config(&format!(
        r#"
[[upstreams]]
name = "a"
endpoint = "{}"
{}

[[upstreams]]
name = "b"
endpoint = "{}"
{}

[[models]]
name = "m"
targets = [{{ upstream = "a", model = "mock-model" }}, {{ upstream = "b", model = "mock-model" }}]
{model}
{extra}
"#,
        a.0.base_url(),
        a.1,
        b.0.base_url(),
        b.1
    ))
}

/// Upstreams `bedrock` and `gemini` on the cloud mock at `base` (API keys `mock-key`).
fn cloud_upstreams(base: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "bedrock"
kind = "bedrock"
endpoint = "{base}"
region = "us-east-1"
api_key = "mock-key"
[[upstreams]]
name = "gemini"
kind = "gemini"
endpoint = "{base}"
api_key = "mock-key"
"#
    )
}

fn chat(stream: bool) -> Value {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": WORDS}]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// A streamed answer as the client read it: its text, chunks, whether it ended with `[DONE]`.
async fn stream(gw: &TestGateway, body: &Value) -> (String, Vec<Value>, bool) {
    let (status, _, raw) = post_full(&format!("{}/chat/completions", gw.base_url()), body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let (events, done) = sse_json(&raw);
    (streamed_text(&events), events, done)
}

/// Asserts the chunks read as one clean answer: one identity, one finish, one usage block last.
fn assert_one_answer(events: &[Value], done: bool) -> Value {
    assert!(done, "ends with [DONE]: {events:#?}");
    assert!(events.iter().all(|e| e.get("error").is_none()), "{events:#?}");
    let ids: std::collections::BTreeSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one chunk id throughout: {ids:?}");
    let finishes =
        events.iter().filter(|e| e.pointer("/choices/0/finish_reason").is_some_and(|f| !f.is_null())).count();
    assert_eq!(finishes, 1, "{events:#?}");
    let roles = events.iter().filter(|e| e.pointer("/choices/0/delta/role").is_some()).count();
    assert_eq!(roles, 1, "one role chunk: {events:#?}");
    let usages: Vec<&Value> = events.iter().filter(|e| e["usage"].is_object()).collect();
    assert_eq!(usages.len(), 1, "{events:#?}");
    assert!(events.last().unwrap()["usage"].is_object(), "usage comes last");
    usages[0]["usage"].clone()
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_on_the_same_target() {
    let a = MockUpstream::builder().fail_first(1, 429).retry_after("1").start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "", "")).await;
    let started = Instant::now();
    let (status, _, body) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((a.request_count(), b.request_count()), (2, 0), "the primary answered after its Retry-After");
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());

    // A wait longer than `retry.retry_after_max` (10 s by default) goes to the fallback at once.
    let a = MockUpstream::builder().fail_first(1, 429).retry_after("120").start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "", "")).await;
    let started = Instant::now();
    let (status, _, body) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert!(started.elapsed() < Duration::from_secs(60), "did not wait out 120 s");
}

#[tokio::test]
async fn one_transient_5xx_is_retried_on_the_same_target_as_configured() {
    let a = MockUpstream::builder().fail_first(1, 503).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "", "")).await;
    let (status, _, body) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!((status, body["choices"][0]["message"]["content"].as_str()), (200, Some(ANSWER)));
    assert_eq!((a.request_count(), b.request_count()), (2, 0), "the primary's second try answered");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_upstream_retries_total", &[("model", "m"), ("target", "a/mock-model")]), 1.0);

    // Per model: `retry.same_target = 0` falls back at once.
    let a = MockUpstream::builder().fail_first(1, 503).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "retry = { same_target = 0 }", "")).await;
    let (status, _, _) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!(status, 200);
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn a_reset_before_the_answer_and_a_slow_first_byte_move_on() {
    // The primary resets every connection before answering: retried there once, then the fallback.
    let a = MockUpstream::builder().reset_first(100).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "", "")).await;
    for stream in [false, true] {
        let (status, _, raw) = post_full(&format!("{}/chat/completions", gw.base_url()), &chat(stream)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    }
    assert_eq!((a.request_count(), b.request_count()), (4, 2));
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_upstream_errors_total", &[("target", "a/mock-model"), ("class", "reset")]), 4.0);

    // Only one reset: the second try on the primary answers.
    let a = MockUpstream::builder().reset_first(1).start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "", "")).await;
    let (status, _, _) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!((status, a.request_count()), (200, 2));

    // No response headers within first_byte: the fallback answers, the slow one is not tried again.
    let slow = MockUpstream::builder().latency(Duration::from_secs(5)).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&slow, "timeouts = { first_byte = \"200ms\" }"), (&b, ""), "", "")).await;
    let (status, _, body) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((slow.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn a_request_too_long_goes_to_a_target_with_a_larger_window() {
    let small = MockUpstream::builder().context_window(4).start().await;
    let same_model = MockUpstream::builder().context_window(4).start().await;
    let large = MockUpstream::builder().start().await;
    let text = bare_config(&format!(
        r#"
[[upstreams]]
name = "small"
endpoint = "{}"
[[upstreams]]
name = "same"
endpoint = "{}"
[[upstreams]]
name = "large"
endpoint = "{}"
[[models]]
name = "m"
targets = [
    {{ upstream = "small", model = "small-model", context_window = 4 }},
    {{ upstream = "same", model = "small-model" }},
    {{ upstream = "large", model = "large-model", context_window = 128000 }},
]
[[models]]
name = "only-small"
targets = [{{ upstream = "small", model = "small-model", context_window = 4 }}, {{ upstream = "same", model = "small-model" }}]
"#,
        small.base_url(),
        same_model.base_url(),
        large.base_url()
    ));
    let gw = TestGateway::start(&text).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let (status, _, body) = post(&url, &chat(false).to_string(), None).await;
    assert_eq!((status, body["choices"][0]["message"]["content"].as_str()), (200, Some(ANSWER)), "{body}");
    assert_eq!(
        (small.request_count(), same_model.request_count(), large.request_count()),
        (1, 0, 1),
        "never the same model again, straight to the larger window"
    );

    // No target can take it: the upstream's 400, once.
    let mut only_small = chat(false);
    only_small["model"] = json!("only-small");
    let (status, _, body) = post(&url, &only_small.to_string(), None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(openai_error(&body)["code"], "context_length_exceeded");
    assert_eq!((small.request_count(), same_model.request_count()), (2, 0));
}

#[tokio::test]
async fn bedrock_and_gemini_refusals_of_long_prompts_fall_back_too() {
    let cloud = MockUpstream::builder().api_key("mock-key").context_window(4).start().await;
    let large = MockUpstream::builder().start().await;
    let base = format!("http://{}", cloud.addr());
    let text = bare_config(&format!(
        r#"{}
[[upstreams]]
name = "large"
endpoint = "{}"
[[models]]
name = "m"
targets = [
    {{ upstream = "bedrock", model = "anthropic.claude-3-haiku-20240307-v1:0", context_window = 4 }},
    {{ upstream = "gemini", model = "gemini-2.5-flash", context_window = 8 }},
    {{ upstream = "large", model = "large-model" }},
]
"#,
        cloud_upstreams(&base),
        large.base_url()
    ));
    let gw = TestGateway::start(&text).await;
    let (status, _, body) = post(&format!("{}/chat/completions", gw.base_url()), &chat(false).to_string(), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((cloud.request_count(), large.request_count()), (2, 1), "Bedrock, then Gemini, then the large one");
    let metrics = gw.metrics().await;
    for target in ["bedrock/anthropic.claude-3-haiku-20240307-v1:0", "gemini/gemini-2.5-flash"] {
        assert_eq!(metric(&metrics, "weir_upstream_errors_total", &[("target", target), ("class", "status_4xx")]), 1.0);
    }
}

#[tokio::test]
async fn a_stream_without_a_first_token_in_time_is_abandoned_for_the_next_target() {
    let a = MockUpstream::builder().first_token_delay(Duration::from_secs(20)).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "timeouts = { first_token = \"300ms\" }", "")).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER);
    assert_one_answer(&events, done);
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert!(a.wait_cancelled_streams(1, Duration::from_secs(10)).await, "the slow upstream was cancelled");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_requests_total", &[("model", "m"), ("outcome", "ok")]), 1.0, "{metrics}");
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_content_is_retried_unseen() {
    // One event (the role chunk) and the connection breaks: nothing reached the client yet.
    let a = MockUpstream::builder().break_stream_after(1).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, ""), "retry = { same_target = 0 }", "")).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER);
    assert_one_answer(&events, done);
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn a_stream_that_ends_cleanly_without_done_is_complete() {
    let upstream = MockUpstream::builder().no_done().start().await;
    let gw = TestGateway::start(&config((&upstream, ""), (&upstream, ""), "", "")).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER);
    let usage = assert_one_answer(&events, done);
    assert_eq!(usage["completion_tokens"], 9, "the upstream's usage is kept");
    assert_eq!(upstream.request_count(), 1, "a whole answer is not retried");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_requests_total", &[("model", "m"), ("outcome", "ok")]), 1.0, "{metrics}");

    // Cut after the finish and the usage report, before `[DONE]`: whole too.
    // Events: role, 9 words, finish, usage, [DONE].
    let cut = MockUpstream::builder().break_stream_after(12).start().await;
    let gw = TestGateway::start(&config((&cut, ""), (&cut, ""), "", "")).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER);
    assert_one_answer(&events, done);
    assert_eq!(cut.request_count(), 1);
}

/// `b` continues a prefilled assistant message the way vLLM does.
const VLLM: &str = "prefill = \"continue-final-message\"";
const CONTINUE: &str = "failover = { mid_stream = \"continue\" }";

#[tokio::test]
async fn a_stream_cut_mid_answer_is_continued_on_the_next_target() {
    // Three events reach the client (role, "echo:", " one"), then the connection breaks.
    let a = MockUpstream::builder().break_stream_after(3).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, VLLM), CONTINUE, "")).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER, "one answer, nothing repeated");
    let usage = assert_one_answer(&events, done);
    // Both attempts counted: the first estimated (10 prompt tokens from 39 bytes, 2 chunks), the
    // second as reported (its prompt holds the prefill: 8 + 2 words; 7 words more).
    assert_eq!(usage, json!({"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}));
    assert!(events.iter().all(|e| e["model"] == events[0]["model"]));

    let sent = b.requests()[0].json();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last, json!({"role": "assistant", "content": "echo: one"}));
    assert_eq!(
        (sent["continue_final_message"].clone(), sent["add_generation_prompt"].clone()),
        (json!(true), json!(false))
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "weir_stream_continuations_total", &[("target", "b/mock-model"), ("how", "prefill")]),
        1.0
    );
    let tokens = metric_eventually(&gw, "weir_tokens_total", &[("model", "m"), ("token_type", "output")], 9.0).await;
    assert_eq!(tokens, 9.0, "accounting has both attempts' tokens");
    assert_eq!(metric(&metrics, "weir_requests_total", &[("model", "m"), ("outcome", "ok")]), 1.0, "{metrics}");

    // Without `mid_stream = "continue"`, the same break is an error event, as before.
    let a = MockUpstream::builder().break_stream_after(3).start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, VLLM), "", "")).await;
    let (_, events, done) = stream(&gw, &chat(true)).await;
    assert!(!done && events.last().unwrap()["error"]["code"] == "upstream_stream_error", "{events:#?}");
}

#[tokio::test]
async fn a_stalled_stream_is_continued_on_bedrock_and_gemini_with_their_prefill() {
    let a = MockUpstream::builder().stall_stream_after(4).start().await;
    let cloud = MockUpstream::builder().api_key("mock-key").start().await;
    let base = format!("http://{}", cloud.addr());
    for (kind, model, provider) in [
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "region = \"us-east-1\"\napi_key = \"mock-key\""),
        ("gemini", "gemini-2.5-flash", "api_key = \"mock-key\""),
    ] {
        let text = bare_config(&format!(
            r#"
[[upstreams]]
name = "a"
endpoint = "{}"
timeouts = {{ idle = "300ms" }}
[[upstreams]]
name = "cloud"
kind = "{kind}"
endpoint = "{base}"
{provider}
[[models]]
name = "m"
targets = [{{ upstream = "a", model = "mock-model" }}, {{ upstream = "cloud", model = "{model}" }}]
{CONTINUE}
"#,
            a.base_url()
        ));
        let gw = TestGateway::start(&text).await;
        let (text, events, done) = stream(&gw, &chat(true)).await;
        assert_eq!(text, ANSWER, "{kind}");
        assert_one_answer(&events, done);
        let sent = cloud.requests().last().unwrap().json();
        let turns = if kind == "bedrock" { &sent["messages"] } else { &sent["contents"] };
        let last = turns.as_array().unwrap().last().unwrap();
        // The text the client has, as the provider's own final assistant turn.
        let prefill = json!([{"text": "echo: one two"}]);
        let (role, parts) = if kind == "bedrock" { ("assistant", &last["content"]) } else { ("model", &last["parts"]) };
        assert_eq!((last["role"].as_str(), parts), (Some(role), &prefill), "{kind}: {sent}");
    }
}

#[tokio::test]
async fn a_fallback_that_refuses_prefill_starts_over_and_only_the_rest_is_sent() {
    let a = MockUpstream::builder().break_stream_after(3).start().await;
    let b = MockUpstream::builder().refuse_prefill().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, VLLM), CONTINUE, "")).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER, "the new answer repeated the old one's start, which was skipped");
    assert_one_answer(&events, done);
    let sent = b.requests();
    assert_eq!(sent.len(), 2, "prefilled, refused, then asked anew");
    assert_eq!(sent[1].json()["messages"].as_array().unwrap().len(), 1);
    assert!(sent[1].json().get("continue_final_message").is_none());
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_stream_continuations_total", &[("how", "restart")]), 1.0);
}

#[tokio::test]
async fn a_fallback_whose_answer_differs_ends_with_an_error_never_a_duplicate() {
    let a = MockUpstream::builder().break_stream_after(3).start().await;
    let b = MockUpstream::builder().start().await;
    // The fallback cannot continue a prefill and answers something else from the start.
    let text = config((&a, ""), (&b, ""), CONTINUE, "")
        .replace(r#"{ upstream = "b", model = "mock-model" }"#, r#"{ upstream = "b", model = "fixture:text_a" }"#);
    let gw = TestGateway::start(&text).await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, "echo: one", "only what the first upstream sent");
    assert!(!done);
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("cannot be continued"), "{last}");
    assert_eq!(b.request_count(), 1);
}

#[tokio::test]
async fn a_tool_call_cut_mid_arguments_is_not_continued() {
    let a = MockUpstream::builder().break_stream_after(3).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config((&a, ""), (&b, VLLM), CONTINUE, "")).await;
    let mut body = chat(true);
    body["tools"] =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let (_, events, done) = stream(&gw, &body).await;
    assert!(!done);
    assert_eq!(events.last().unwrap()["error"]["code"], "upstream_stream_error", "{events:#?}");
    assert_eq!(b.request_count(), 0, "a half-written tool call cannot be prefilled");
}

#[tokio::test]
async fn an_upstream_event_without_end_is_cut_at_the_cap_and_the_upstream_cancelled() {
    const GIANT: usize = 64 << 20;
    let openai = MockUpstream::builder().giant_event(GIANT).start().await;
    let cloud = MockUpstream::builder().api_key("mock-key").giant_event(GIANT).start().await;
    let base = format!("http://{}", cloud.addr());
    let text = bare_config(&format!(
        r#"
[[upstreams]]
name = "openai"
endpoint = "{}"
{}
[[models]]
name = "openai"
targets = [{{ upstream = "openai", model = "mock-model" }}]
[[models]]
name = "gemini"
targets = [{{ upstream = "gemini", model = "gemini-2.5-flash" }}]
[[models]]
name = "bedrock"
targets = [{{ upstream = "bedrock", model = "anthropic.claude-3-haiku-20240307-v1:0" }}]
"#,
        openai.base_url(),
        cloud_upstreams(&base)
    ));
    let gw = TestGateway::start(&text).await;
    for model in ["openai", "gemini", "bedrock"] {
        let mut body = chat(true);
        body["model"] = json!(model);
        let (_, events, done) = stream(&gw, &body).await;
        assert!(!done, "{model}");
        assert_eq!(events.last().unwrap()["error"]["code"], "upstream_event_too_large", "{model}: {events:#?}");
    }
    assert!(
        openai.wait_cancelled_streams(1, Duration::from_secs(10)).await,
        "the upstream was cut off, not read to its end"
    );
    // Gemini's 64 MiB are generated as they go, Bedrock's one frame is 64 MiB: both cut off too.
    assert!(cloud.wait_cancelled_streams(2, Duration::from_secs(10)).await);
}

/// The JSON events of a Messages or Responses stream, and their `type`s.
fn typed_events(raw: &[u8]) -> (Vec<Value>, Vec<String>) {
    let events: Vec<Value> = sse_data(raw).iter().map(|d| serde_json::from_str(d).expect("JSON event")).collect();
    let kinds = events.iter().map(|e| e["type"].as_str().unwrap_or_default().to_owned()).collect();
    (events, kinds)
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[tokio::test]
async fn messages_and_responses_streams_encoded_from_chat_are_continued_as_one_answer() {
    for surface in ["messages", "responses"] {
        // Three chat events reach the gateway (role, "echo:", " one"), then the connection breaks.
        let a = MockUpstream::builder().break_stream_after(3).start().await;
        let b = MockUpstream::builder().start().await;
        let gw = TestGateway::start(&config((&a, ""), (&b, VLLM), CONTINUE, "")).await;
        let body = if surface == "messages" {
            json!({"model": "m", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": WORDS}]})
        } else {
            json!({"model": "m", "stream": true, "store": false, "input": WORDS})
        };
        let (status, _, raw) = post_full(&format!("{}/{surface}", gw.base_url()), &body).await;
        assert_eq!(status, 200, "{surface}: {}", String::from_utf8_lossy(&raw));
        let (events, kinds) = typed_events(&raw);
        let last = b.requests()[0].json();
        let prefill = last["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(prefill, json!({"role": "assistant", "content": "echo: one"}), "{surface}: asked as chat");
        if surface == "messages" {
            let text: String = events
                .iter()
                .filter(|e| e["type"] == "content_block_delta")
                .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
                .collect();
            assert_eq!(text, ANSWER, "one answer, nothing repeated: {kinds:?}");
            assert_eq!((count(&kinds, "message_start"), count(&kinds, "message_delta")), (1, 1), "{kinds:?}");
            assert_eq!(kinds.last().map(String::as_str), Some("message_stop"), "{kinds:?}");
            assert_eq!(count(&kinds, "error"), 0, "{kinds:?}");
            let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
            // Both attempts' tokens: the broken one's two chunks (estimated) and the seven words after.
            assert_eq!(delta["usage"]["output_tokens"], 9, "{delta}");
        } else {
            let text: String = events
                .iter()
                .filter(|e| e["type"] == "response.output_text.delta")
                .filter_map(|e| e["delta"].as_str())
                .collect();
            assert_eq!(text, ANSWER, "one answer, nothing repeated: {kinds:?}");
            assert_eq!(count(&kinds, "response.created"), 1, "{kinds:?}");
            assert_eq!(kinds.last().map(String::as_str), Some("response.completed"), "{kinds:?}");
            assert_eq!(count(&kinds, "error") + count(&kinds, "response.failed"), 0, "{kinds:?}");
            let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
            assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>(), "numbered without gaps");
            assert_eq!(events.last().unwrap()["response"]["usage"]["output_tokens"], 9);
        }
        let metrics = gw.metrics().await;
        assert_eq!(
            metric(&metrics, "weir_stream_continuations_total", &[("target", "b/mock-model"), ("how", "prefill")]),
            1.0,
            "{surface}"
        );
    }
}

/// Model `m` over an `anthropic` upstream on `a` (relayed natively to a Messages client), then an
/// OpenAI-compatible one on `b` (translated), with `model` lines added.
fn native_then_translated(a: &MockUpstream, b: &MockUpstream, model: &str) -> String {
    bare_config(&format!(
        r#"
[[upstreams]]
name = "a"
kind = "anthropic"
endpoint = "http://{}"
api_key = "mock-key"

[[upstreams]]
name = "b"
endpoint = "{}"
{VLLM}

[[models]]
name = "m"
targets = [{{ upstream = "a", model = "claude-x" }}, {{ upstream = "b", model = "mock-model" }}]
{model}
"#,
        a.addr(),
        b.base_url()
    ))
}

fn messages_stream() -> Value {
    json!({"model": "m", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": WORDS}]})
}

#[tokio::test]
async fn a_native_stream_cut_after_content_ends_with_its_apis_error_and_is_not_continued() {
    // message_start, content_block_start, ping, "echo:", " one" reach the client, then the break.
    let a = MockUpstream::builder().break_stream_after(5).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&native_then_translated(&a, &b, CONTINUE)).await;
    let (status, _, raw) = post_full(&format!("{}/messages", gw.base_url()), &messages_stream()).await;
    assert_eq!(status, 200);
    let (events, kinds) = typed_events(&raw);
    assert_eq!(
        kinds,
        ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta", "error"]
    );
    assert_eq!(events[0]["message"]["id"], "msg_mock_1", "Anthropic's own events, relayed");
    assert_eq!(events.last().unwrap()["error"]["type"], "api_error", "{:?}", events.last());
    assert_eq!(b.request_count(), 0, "a natively relayed stream is not continued");
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, "weir_requests_total", &[("model", "m"), ("outcome", "error")]), 1.0, "{metrics}");
}

#[tokio::test]
async fn a_native_stream_that_fails_before_content_is_retried_on_a_target_that_translates() {
    // message_start and content_block_start, then the break: nothing the client reads as content.
    let a = MockUpstream::builder().break_stream_after(2).start().await;
    let b = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&native_then_translated(&a, &b, "retry = { same_target = 0 }")).await;
    let (status, _, raw) = post_full(&format!("{}/messages", gw.base_url()), &messages_stream()).await;
    assert_eq!(status, 200);
    let (events, kinds) = typed_events(&raw);
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert_eq!(count(&kinds, "message_start"), 1, "the first attempt's held events never went out: {kinds:?}");
    let id = events[0]["message"]["id"].as_str().unwrap();
    assert!(id.starts_with("msg_") && id != "msg_mock_1", "the encoder's message, not the broken one's: {id}");
    let text: String = events.iter().filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str)).collect();
    assert_eq!(text, ANSWER);
    assert_eq!(kinds.last().map(String::as_str), Some("message_stop"), "{kinds:?}");
    assert!(b.requests()[0].path.ends_with("/chat/completions"), "asked b in chat");
}

#[tokio::test]
async fn a_chat_stream_is_continued_on_an_anthropic_fallback_with_its_prefill() {
    let a = MockUpstream::builder().break_stream_after(3).start().await;
    let claude = MockUpstream::builder().api_key("mock-key").start().await;
    let gw = TestGateway::start(&bare_config(&format!(
        r#"
[[upstreams]]
name = "a"
endpoint = "{}"

[[upstreams]]
name = "claude"
kind = "anthropic"
endpoint = "http://{}"
api_key = "mock-key"

[[models]]
name = "m"
targets = [{{ upstream = "a", model = "mock-model" }}, {{ upstream = "claude", model = "claude-x" }}]
{CONTINUE}
"#,
        a.base_url(),
        claude.addr()
    )))
    .await;
    let (text, events, done) = stream(&gw, &chat(true)).await;
    assert_eq!(text, ANSWER, "one answer, nothing repeated");
    assert_one_answer(&events, done);
    let sent = claude.requests()[0].json();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last,
        json!({"role": "assistant", "content": [{"type": "text", "text": "echo: one"}]}),
        "Anthropic's prefill, without trailing whitespace: {sent}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "weir_stream_continuations_total", &[("target", "claude/claude-x"), ("how", "prefill")]),
        1.0
    );
}
