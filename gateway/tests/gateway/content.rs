//! Plugins that change content (`weir:plugin@0.3`): a rewrite in `on-request` is what the upstream,
//! later plugins and accounting see, in every chat API, and an invalid one is the plugin's fault;
//! `on-response` replaces or refuses a whole answer, which reaches each client in its own API with
//! the upstream's usage. The example `team-prompt` puts a team's system prompt in front of its
//! requests; `on-stream-event` polices a stream as it flows (the example `stream-redact`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, metric, metric_eventually, run_python_checks};

pub(crate) const SUPPORT: &str = "sk-weir-support-0123456789";
pub(crate) const SALES: &str = "sk-weir-sales-0123456789";
const PROMPT: &str = "You answer for ACME support.";

/// Two upstreams on one mock (Anthropic's API and OpenAI's), keys of two teams, and one model per
/// `(name, plugins)`: `claude-<name>` relayed natively to Anthropic, `gpt-<name>` to OpenAI.
/// `plugins` holds the `[[plugins]]` tables.
pub(crate) async fn gateway(mock: &MockUpstream, models: &[(&str, &str)], plugins: &str) -> TestGateway {
    let base = format!("http://{}", mock.addr());
    let mut text = format!(
        r#"
[[keys]]
name = "support"
team = "support"
key = "{SUPPORT}"

[[keys]]
name = "sales"
team = "sales"
key = "{SALES}"

[[upstreams]]
name = "anthropic"
kind = "anthropic"
endpoint = "{base}"
api_key = "mock-key"

[[upstreams]]
name = "openai"
endpoint = "{base}/v1"
api_key = "mock-key"
"#
    );
    for (name, chain) in models {
        text.push_str(&format!(
            r#"
[[models]]
name = "claude-{name}"
targets = [{{ upstream = "anthropic", model = "claude-sonnet-4-5" }}]
plugins = [{chain}]
[[models]]
name = "gpt-{name}"
targets = [{{ upstream = "openai", model = "mock-model" }}]
plugins = [{chain}]
"#
        ));
    }
    text.push_str(plugins);
    TestGateway::start(&bare_config(&text)).await
}

pub(crate) fn plugin(name: &str, source: &str, settings: &str) -> String {
    format!("\n[[plugins]]\nname = \"{name}\"\nsource = \"{source}\"\ndeadline = \"2s\"\n{settings}\n")
}

pub(crate) async fn send(
    gw: &TestGateway,
    path: &str,
    key: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::Client::new()
        .post(gw.url(path))
        .bearer_auth(key)
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

pub(crate) fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub(crate) fn messages(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]})
}

/// The body of the last request the mock received.
pub(crate) fn last_sent(mock: &MockUpstream) -> (String, Value) {
    let last = mock.requests().pop().expect("the upstream got a request");
    (last.path.clone(), last.json())
}

fn faults(text: &str, plugin: &str) -> f64 {
    metric(text, "weir_plugin_faults_total", &[("plugin", plugin), ("kind", "bad_decision")])
}

#[tokio::test]
async fn a_team_prompt_reaches_the_upstream_in_every_chat_api() {
    let mock = MockUpstream::builder().api_key("mock-key").record_requests(true).start().await;
    let config = format!("on_error = \"closed\"\nconfig = {{ prompts = {{ support = \"{PROMPT}\" }} }}");
    let plugins = plugin("team-prompt", "builtin:team-prompt", &config);
    let gw = gateway(&mock, &[("p", "\"team-prompt\"")], &plugins).await;

    // Chat Completions: a system message first.
    let (status, headers, answer) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-p", "hi")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["x-team-prompt"], "support");
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi");
    let (_, sent) = last_sent(&mock);
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": PROMPT}), "{sent}");
    assert_eq!(sent["messages"][1]["content"], "hi");

    // Messages, relayed natively: Anthropic's `system`, the client's own after it.
    let mut request = messages("claude-p", "hi");
    request["system"] = json!("Be brief.");
    let (status, _, answer) = send(&gw, "/v1/messages", SUPPORT, request).await;
    assert_eq!(status, 200, "{answer}");
    let (path, sent) = last_sent(&mock);
    assert_eq!(path, "/v1/messages");
    assert_eq!(sent["system"], format!("{PROMPT}\n\nBe brief."), "{sent}");

    // Messages translated to Chat Completions, and Responses: the prompt is in the canonical
    // request's system message.
    for (path, body) in [
        ("/v1/messages", messages("gpt-p", "hi")),
        ("/v1/responses", json!({"model": "gpt-p", "input": "hi", "instructions": "Mine."})),
    ] {
        let (status, _, answer) = send(&gw, path, SUPPORT, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let (upstream_path, sent) = last_sent(&mock);
        assert_eq!(upstream_path, "/v1/chat/completions");
        let system = sent["messages"][0]["content"].as_str().unwrap_or_default();
        assert!(sent["messages"][0]["role"] == "system" && system.starts_with(PROMPT), "{path}: {sent}");
    }

    // A team without a prompt is sent as it came.
    let (status, headers, _) = send(&gw, "/v1/chat/completions", SALES, chat("gpt-p", "hi")).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-team-prompt"));
    let (_, sent) = last_sent(&mock);
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "hi"}]));
}

#[tokio::test]
async fn a_rewrite_is_what_later_plugins_and_the_upstream_see() {
    let mock = MockUpstream::builder().api_key("mock-key").record_requests(true).start().await;
    let source = weir_test_plugins::CONTENT_EDIT;
    let plugins = plugin("redact", source, "on_error = \"closed\"\nconfig = { rewrite = \"redact\" }")
        + &plugin("probe", source, "on_error = \"closed\"");
    let gw = gateway(&mock, &[("r", "\"redact\", \"probe\"")], &plugins).await;
    let text = "write to bob.smith@example.com about the offer";

    for (path, body) in [("/v1/chat/completions", chat("gpt-r", text)), ("/v1/messages", messages("claude-r", text))] {
        let (status, headers, answer) = send(&gw, path, SUPPORT, body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let (_, sent) = last_sent(&mock);
        assert_eq!(sent["messages"][0]["content"], "write to [EMAIL] about the offer", "{path}: {sent}");
        assert!(!sent.to_string().contains("example.com"), "the address never reaches the upstream: {sent}");
        // The first plugin saw the client's request, the second the rewrite: another digest.
        let digests: Vec<_> = headers.get_all("x-seen-digest").iter().collect();
        assert_eq!(digests.len(), 2, "{headers:?}");
        assert_ne!(digests[0], digests[1], "the digest is of the rewritten request");
    }
}

#[tokio::test]
async fn an_invalid_rewrite_is_the_plugins_fault_and_open_or_closed_decides() {
    let mock = MockUpstream::builder().api_key("mock-key").record_requests(true).start().await;
    let source = weir_test_plugins::CONTENT_EDIT;
    let plugins = [
        plugin("not-json", source, "on_error = \"open\"\nconfig = { rewrite = \"not-json\" }"),
        plugin("other-model", source, "on_error = \"open\"\nconfig = { rewrite = \"other-model\" }"),
        plugin("stream", source, "on_error = \"open\"\nconfig = { rewrite = \"stream\" }"),
        plugin("closed", source, "on_error = \"closed\"\nconfig = { rewrite = \"not-json\" }"),
    ]
    .concat();
    let models = [("a", "\"not-json\""), ("b", "\"other-model\""), ("c", "\"stream\""), ("d", "\"closed\"")];
    let gw = gateway(&mock, &models, &plugins).await;

    for (model, name) in [("gpt-a", "not-json"), ("gpt-b", "other-model"), ("gpt-c", "stream")] {
        let (status, _, answer) = send(&gw, "/v1/chat/completions", SUPPORT, chat(model, "as sent")).await;
        assert_eq!(status, 200, "open: the request goes on as it was: {answer}");
        assert_eq!(answer["choices"][0]["message"]["content"], "echo: as sent", "not streamed, not elsewhere");
        let (_, sent) = last_sent(&mock);
        assert_eq!(sent["messages"], json!([{"role": "user", "content": "as sent"}]), "{name}");
        assert!(sent.get("stream").is_none_or(|s| s == false), "{name}: {sent}");
        assert_eq!(faults(&gw.metrics().await, name), 1.0, "{name}'s rewrite is its fault");
    }

    let before = mock.request_count();
    let (status, _, answer) = send(&gw, "/v1/messages", SUPPORT, messages("claude-d", "as sent")).await;
    assert_eq!(status, 500, "closed: the request fails: {answer}");
    assert_eq!(answer["type"], "error", "in the Messages API's own error shape: {answer}");
    assert_eq!(mock.request_count(), before, "nothing was sent upstream");
    assert_eq!(faults(&gw.metrics().await, "closed"), 1.0);
}

#[tokio::test]
async fn on_response_replaces_or_refuses_a_whole_answer_in_each_clients_api() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let source = weir_test_plugins::CONTENT_EDIT;
    let plugins = [
        plugin("replace", source, "on_error = \"closed\"\nconfig = { answer = \"replace\" }"),
        plugin("refuse", source, "on_error = \"closed\"\nconfig = { answer = \"refuse\" }"),
        plugin("bad", source, "on_error = \"open\"\nconfig = { answer = \"no-choices\" }"),
    ]
    .concat();
    let models = [("clean", ""), ("replace", "\"replace\""), ("refuse", "\"refuse\""), ("bad", "\"bad\"")];
    let gw = gateway(&mock, &models, &plugins).await;

    // The usage a client gets is the upstream's, whatever the replacement said.
    let (_, _, clean) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-clean", "hi")).await;
    assert!(clean["usage"]["prompt_tokens"].as_u64() > Some(0), "{clean}");
    let (status, _, answer) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-replace", "hi")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "[replaced] echo: hi");
    assert_eq!(answer["usage"], clean["usage"], "the upstream's usage, not the plugin's zeros");

    // A native Anthropic answer, replaced in the canonical form, reaches the client as a Message.
    let (_, _, clean) = send(&gw, "/v1/messages", SUPPORT, messages("claude-clean", "hi")).await;
    let (status, _, answer) = send(&gw, "/v1/messages", SUPPORT, messages("claude-replace", "hi")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["type"], "message", "{answer}");
    assert_eq!(answer["content"][0]["text"], "[replaced] echo: hi");
    assert_eq!(answer["usage"]["input_tokens"], clean["usage"]["input_tokens"], "{answer}");
    assert_eq!(answer["usage"]["output_tokens"], clean["usage"]["output_tokens"], "{answer}");

    // A Responses client gets a Response object.
    let (status, _, answer) = send(&gw, "/v1/responses", SUPPORT, json!({"model": "gpt-replace", "input": "hi"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "response", "{answer}");
    assert_eq!(answer["output"][0]["content"][0]["text"], "[replaced] echo: hi", "{answer}");

    // A refusal is the client's error, and the upstream's tokens are still counted.
    let (status, _, answer) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-refuse", "hi")).await;
    assert_eq!(status, 451, "{answer}");
    assert_eq!(answer["error"]["code"], "answer_refused", "{answer}");
    let tokens = metric(&gw.metrics().await, "weir_tokens_total", &[("model", "gpt-refuse"), ("token_type", "input")]);
    assert!(tokens > 0.0, "the refused answer's prompt tokens are accounted");
    let (status, _, answer) = send(&gw, "/v1/messages", SUPPORT, messages("claude-refuse", "hi")).await;
    assert_eq!(status, 451, "{answer}");
    assert_eq!(answer["type"], "error", "in the Messages API's error shape: {answer}");

    // A replacement that is not an answer is the plugin's fault; open, the answer goes out as it came.
    let (status, _, answer) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-bad", "hi")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hi");
    assert_eq!(faults(&gw.metrics().await, "bad"), 1.0);

    // A stream is not a whole answer: `on-response` is not called, the events go out as they came.
    let mut streamed = chat("gpt-replace", "hi");
    streamed["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(SUPPORT)
        .json(&streamed)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(text.contains("echo") && !text.contains("[replaced]"), "{text}");
    metric_eventually(&gw, "weir_plugin_call_seconds_count", &[("plugin", "replace"), ("hook", "on_response")], 3.0)
        .await;
}

/// A streamed request, read event by event: the data of each event and when it came.
pub(crate) async fn stream(gw: &TestGateway, path: &str, mut body: Value) -> (u16, Vec<(Duration, String)>) {
    body["stream"] = json!(true);
    let started = Instant::now();
    let mut response = reqwest::Client::new()
        .post(gw.url(path))
        .bearer_auth(SUPPORT)
        .header("x-api-key", SUPPORT)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    let mut events = Vec::new();
    let mut buf = String::new();
    while let Some(bytes) = response.chunk().await.expect("read") {
        buf.push_str(std::str::from_utf8(&bytes).expect("utf-8"));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if !data.is_empty() {
                events.push((started.elapsed(), data.join("\n")));
            }
        }
    }
    (status, events)
}

/// The text of a stream's chat chunks or Messages `text_delta`s, and when its first and last
/// pieces came.
pub(crate) fn text_of(events: &[(Duration, String)]) -> (String, Option<Duration>, Option<Duration>) {
    let mut text = String::new();
    let (mut first, mut last) = (None, None);
    for (at, data) in events {
        let Ok(event) = serde_json::from_str::<Value>(data) else { continue };
        let piece = event
            .pointer("/choices/0/delta/content")
            .or_else(|| event.pointer("/delta/text"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !piece.is_empty() {
            first.get_or_insert(*at);
            last = Some(*at);
            text.push_str(piece);
        }
    }
    (text, first, last)
}

#[tokio::test]
async fn a_card_number_split_across_streamed_chunks_is_redacted_as_the_stream_flows() {
    let interval = Duration::from_millis(40);
    let mock = MockUpstream::builder().api_key("mock-key").chunk_interval(interval).start().await;
    let plugins = plugin("redact", "builtin:stream-redact", "on_error = \"closed\"");
    let gw = gateway(&mock, &[("clean", ""), ("s", "\"redact\"")], &plugins).await;
    let prompt = "pay with 4111 1111 1111 1111 or mail bob@example.com today";

    let (status, clean) = stream(&gw, "/v1/chat/completions", chat("gpt-clean", prompt)).await;
    assert_eq!(status, 200);
    let (clean_text, clean_first, _) = text_of(&clean);
    assert_eq!(clean_text, format!("echo: {prompt}"), "the mock sends the card in four chunks");

    let (status, guarded) = stream(&gw, "/v1/chat/completions", chat("gpt-s", prompt)).await;
    assert_eq!(status, 200);
    let (text, first, last) = text_of(&guarded);
    assert_eq!(text, "echo: pay with [CARD] or mail [EMAIL] today");
    assert!(guarded.iter().all(|(_, d)| !d.contains("4111") && !d.contains("example.com")), "{guarded:?}");
    assert_eq!(guarded.last().map(|(_, d)| d.as_str()), Some("[DONE]"), "a whole stream");
    // Still a stream: the words went out one by one as they came, the first long before the
    // last, and a held chunk costs at most a chunk or two of delay.
    let pieces =
        guarded.iter().filter(|(_, d)| d.contains("\"content\":\"") && !d.contains("\"content\":\"\"")).count();
    assert!(pieces >= 7, "not buffered: {pieces} pieces of text: {guarded:?}");
    let (first, last, clean_first) = (first.expect("text"), last.expect("text"), clean_first.expect("text"));
    assert!(last - first >= interval * 4, "not buffered: first {first:?}, last {last:?}");
    eprintln!("first content: unguarded {clean_first:?}, guarded {first:?}");
    assert!(first < clean_first + interval * 2, "first content: unguarded {clean_first:?}, guarded {first:?}");

    // A Messages client of an Anthropic upstream reads the same: the upstream is asked in the
    // canonical form, so that the plugin reads every event, and the client gets Anthropic's events.
    let (status, events) = stream(&gw, "/v1/messages", messages("claude-s", prompt)).await;
    assert_eq!(status, 200);
    let (text, _, _) = text_of(&events);
    assert_eq!(text, "echo: pay with [CARD] or mail [EMAIL] today", "{events:?}");
    assert!(events.iter().any(|(_, d)| d.contains("\"message_stop\"")), "{events:?}");
}

#[tokio::test]
async fn a_stream_plugin_ends_a_stream_or_faults_as_it_is_configured() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let source = weir_test_plugins::CONTENT_EDIT;
    let plugins = [
        plugin("end", source, "on_error = \"closed\"\nconfig = { stream = \"end\" }"),
        plugin("hoard", source, "on_error = \"open\"\nconfig = { stream = \"hoard\" }"),
    ]
    .concat();
    let gw = gateway(&mock, &[("end", "\"end\""), ("hoard", "\"hoard\"")], &plugins).await;

    // `end`: what came before goes out, then the client's API's error event, and no clean end.
    let (status, events) = stream(&gw, "/v1/chat/completions", chat("gpt-end", "go on then STOP here")).await;
    assert_eq!(status, 200);
    let (text, _, _) = text_of(&events);
    assert_eq!(text, "echo: go on then", "{events:?}");
    let last: Value = serde_json::from_str(&events.last().expect("events").1).expect("json");
    assert_eq!(last["error"]["code"], "stream_refused", "{events:?}");
    assert!(events.iter().all(|(_, d)| d != "[DONE]"));
    let (_, events) = stream(&gw, "/v1/messages", messages("claude-end", "go on then STOP here")).await;
    assert!(events.last().is_some_and(|(_, d)| d.contains("\"type\":\"error\"")), "{events:?}");

    // `hoard` holds past what it declared: its fault, and open, the stream goes on whole.
    let (status, events) = stream(&gw, "/v1/chat/completions", chat("gpt-hoard", "one two three four five")).await;
    assert_eq!(status, 200);
    let (text, _, _) = text_of(&events);
    assert_eq!(text, "echo: one two three four five", "nothing is lost: {events:?}");
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    assert!(faults(&gw.metrics().await, "hoard") >= 1.0);
}

#[tokio::test]
async fn the_openai_sdk_reads_a_redacted_stream() {
    let mock = MockUpstream::builder().api_key("mock-key").chunk_interval(Duration::from_millis(40)).start().await;
    let plugins = plugin("redact", "builtin:stream-redact", "on_error = \"closed\"");
    let gw = gateway(&mock, &[("s", "\"redact\"")], &plugins).await;
    run_python_checks(&gw, "redact_sdk.py", SUPPORT, &[("WEIR_MODEL", "gpt-s")]).await;
}
