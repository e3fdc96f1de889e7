//! The Anthropic routes of the mock: `POST /v1/messages` (whole, or streamed with Anthropic's event
//! sequence, the API's space padding before each payload's last `}` included) and
//! `POST /v1/messages/count_tokens`, with Anthropic's error shape and statuses (429
//! `rate_limit_error`, 529 `overloaded_error`, …). Recorded streams replay with
//! `model: "fixture:<name>"` (`bench/fixtures/anthropic/`).
//!
//! Like the API it requires the key (when the mock has one: `x-api-key`, or a bearer token as the
//! Anthropic SDKs from 2.x on send it) and `anthropic-version`, refuses
//! unknown top-level fields, `tool_use` blocks not answered by `tool_result`s in the next turn,
//! images that are not base64 PNG, JPEG, GIF or WebP, and requests without `max_tokens`. A
//! conversation ending with an assistant turn is continued after it (Anthropic's prefill; refused
//! when it ends with whitespace, as the API does, or with the `refuse_prefill` knob), and
//! `context_window` refuses prompts longer than it in the API's words. The same answers serve
//! Bedrock's InvokeModel for Claude (`mock/bedrock.rs`), which wraps these events in its own
//! frames.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::{
    Finish, MockBody, Recorded, Script, ScriptReply, Shared, TOOL_ARGUMENTS, TRIGGER_STREAM_EXCEPTION,
    argument_fragments, injected_failure, json_response, streamed, with_retry_after, word_count,
};

/// An Anthropic error: `{"type":"error","error":{"type","message"}}` with its status.
#[derive(Debug)]
pub(crate) struct AnthropicError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl AnthropicError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind: "invalid_request_error", message: message.into() }
    }

    /// What the API answers with `status` (for `fail_first` and `always_fail`).
    pub(crate) fn injected(status: StatusCode) -> Self {
        let (kind, message) = match status.as_u16() {
            429 => ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (mock)."),
            529 | 503 => ("overloaded_error", "Overloaded"),
            401 => ("authentication_error", "invalid x-api-key"),
            403 => ("permission_error", "Your API key does not have permission to use the specified resource."),
            404 => ("not_found_error", "model: not found"),
            s if s >= 500 => ("api_error", "Internal server error"),
            _ => ("invalid_request_error", "The request was rejected by the mock."),
        };
        let status = if status.as_u16() == 503 { StatusCode::from_u16(529).unwrap_or(status) } else { status };
        Self { status, kind, message: message.to_owned() }
    }

    pub(crate) fn into_response(self) -> http::Response<MockBody> {
        let body =
            json!({"type": "error", "error": {"type": self.kind, "message": self.message}, "request_id": "req_mock"});
        let mut response = json_response(self.status, &body);
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response.headers_mut().insert("request-id", HeaderValue::from_static("req_mock"));
        response
    }
}

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        /// A recorded Anthropic stream (`bench/fixtures/anthropic/<name>.sse`) or whole answer (`.json`).
        fn fixture(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../../fixtures/anthropic/", $name))),)*
                _ => None,
            }
        }
    };
}

fixtures!(
    "text.sse",
    "text_short.sse",
    "tool_use.sse",
    "thinking.sse",
    "redacted_thinking.sse",
    "thinking_server_tool.sse",
    "message_text.json",
    "message_tool_use.json",
);

/// Top-level fields the Messages API takes.
const KNOWN: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
];

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    handle(shared, req, path).unwrap_or_else(AnthropicError::into_response)
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<http::Response<MockBody>, AnthropicError> {
    if req.method != "POST" {
        return Err(AnthropicError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: "Not Found".into(),
        });
    }
    // The API takes its key in `x-api-key`; the SDKs from 2.x on send it as a bearer token.
    let bearer = req.header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    if let Some(key) = &shared.config.api_key
        && req.header("x-api-key") != Some(key.as_str())
        && bearer != Some(key.as_str())
    {
        return Err(AnthropicError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: "invalid x-api-key".into(),
        });
    }
    if req.header("anthropic-version").is_none() {
        return Err(AnthropicError::invalid("anthropic-version: header is required"));
    }
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| AnthropicError::invalid("There was an issue with your request body: invalid JSON"))?;
    if path == "/v1/messages/count_tokens" {
        let request = Messages::read(&body, false)?;
        return Ok(json_response(StatusCode::OK, &json!({"input_tokens": request.prompt_tokens})));
    }
    if let Some(status) = injected_failure(shared) {
        return Ok(with_retry_after(shared, status, AnthropicError::injected(status).into_response()));
    }
    let request = Messages::read(&body, true)?;
    if let Some(prefill) = &request.prefill {
        if shared.config.refuse_prefill {
            return Err(AnthropicError::invalid(
                "This model does not support assistant message prefill. The conversation must end with a user message.",
            ));
        }
        if prefill.ends_with(char::is_whitespace) {
            return Err(AnthropicError::invalid("final assistant content cannot end with trailing whitespace"));
        }
    }
    if let Some(window) = shared.config.context_window.filter(|w| request.prompt_tokens > *w) {
        return Err(AnthropicError::invalid(format!(
            "prompt is too long: {} tokens > {window} maximum",
            request.prompt_tokens
        )));
    }
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if let Some(name) = model.strip_prefix("fixture:") {
        let recorded =
            fixture(&format!("{name}.{}", if stream { "sse" } else { "json" })).ok_or_else(|| AnthropicError {
                status: StatusCode::NOT_FOUND,
                kind: "not_found_error",
                message: format!("model: {model}"),
            })?;
        if stream {
            let events = recorded.split_inclusive("\n\n").map(|e| Bytes::from_static(e.as_bytes())).collect();
            return Ok(streamed(shared, events, "text/event-stream"));
        }
        let mut response = json_response(StatusCode::OK, &Value::Null);
        *response.body_mut() = super::full_body(Bytes::from_static(recorded.as_bytes()));
        return Ok(response);
    }
    let answer = Answer::new(&request, model, shared.next_id());
    if !stream {
        return Ok(json_response(StatusCode::OK, &answer.message()));
    }
    let events = answer.events().iter().map(sse).collect();
    Ok(streamed(shared, events, "text/event-stream"))
}

/// A Messages request as the mock reads it.
pub(crate) struct Messages {
    pub last_user: String,
    pub tool_result: Option<String>,
    pub tools: Vec<String>,
    pub max_tokens: Option<u64>,
    pub prompt_tokens: usize,
    pub forced_tool: Option<String>,
    /// The text of a final assistant turn, which the answer continues.
    pub prefill: Option<String>,
}

impl Messages {
    /// Reads and checks a Messages body as the API does; `create` is `POST /v1/messages` (which
    /// requires `max_tokens`), else `count_tokens`.
    pub(crate) fn read(body: &Value, create: bool) -> Result<Self, AnthropicError> {
        let Some(map) = body.as_object() else {
            return Err(AnthropicError::invalid("body: Input should be an object"));
        };
        let known: &[&str] = if create {
            KNOWN
        } else {
            &["model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"]
        };
        if let Some(extra) = map.keys().find(|k| {
            !known.contains(&k.as_str()) && k.as_str() != "anthropic_version" && k.as_str() != "anthropic_beta"
        }) {
            return Err(AnthropicError::invalid(format!("{extra}: Extra inputs are not permitted")));
        }
        if map.get("model").and_then(Value::as_str).is_none() && !map.contains_key("anthropic_version") {
            return Err(AnthropicError::invalid("model: Field required"));
        }
        let max_tokens = map.get("max_tokens").and_then(Value::as_u64);
        if create && max_tokens.is_none() {
            return Err(AnthropicError::invalid("max_tokens: Field required"));
        }
        let messages = map
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| AnthropicError::invalid("messages: Field required"))?;
        if messages.is_empty() {
            return Err(AnthropicError::invalid("messages: at least one message is required"));
        }
        let mut prompt_tokens = match map.get("system") {
            Some(Value::String(s)) => word_count(s),
            Some(Value::Array(blocks)) => {
                blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).map(word_count).sum()
            }
            _ => 0,
        };
        let (mut last_user, mut tool_result, mut prefill) = (String::new(), None, None);
        let mut pending: Vec<String> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
            if !["user", "assistant"].contains(&role) {
                return Err(AnthropicError::invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                )));
            }
            let blocks: Vec<Value> = match m.get("content") {
                Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
                Some(Value::Array(b)) => b.clone(),
                _ => return Err(AnthropicError::invalid(format!("messages.{i}.content: Field required"))),
            };
            let mut results = Vec::new();
            tool_result = None;
            prefill = (role == "assistant").then(String::new);
            for (j, block) in blocks.iter().enumerate() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or_default();
                        prompt_tokens += word_count(text);
                        if role == "user" {
                            last_user = text.to_owned();
                        } else if let Some(prefill) = &mut prefill {
                            prefill.push_str(text);
                        }
                    }
                    Some("image") => {
                        let source = &block["source"];
                        let ok = match source.get("type").and_then(Value::as_str) {
                            Some("base64") => {
                                ["image/png", "image/jpeg", "image/gif", "image/webp"]
                                    .contains(&source.get("media_type").and_then(Value::as_str).unwrap_or_default())
                                    && source.get("data").is_some_and(Value::is_string)
                            }
                            Some("url") => source.get("url").is_some_and(Value::is_string),
                            _ => false,
                        };
                        if !ok {
                            return Err(AnthropicError::invalid(format!(
                                "messages.{i}.content.{j}.image.source: Input should be a valid image source"
                            )));
                        }
                        prompt_tokens += 1;
                    }
                    Some("document") => prompt_tokens += 1,
                    Some("tool_use") => {
                        pending.push(block.get("id").and_then(Value::as_str).unwrap_or_default().to_owned())
                    }
                    Some("tool_result") => {
                        results.push(block.get("tool_use_id").and_then(Value::as_str).unwrap_or_default().to_owned());
                        let text = match block.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Array(items)) => {
                                items.iter().filter_map(|c| c.get("text").and_then(Value::as_str)).collect()
                            }
                            _ => String::new(),
                        };
                        tool_result = Some(text);
                    }
                    Some("thinking" | "redacted_thinking") => {}
                    other => {
                        return Err(AnthropicError::invalid(format!(
                            "messages.{i}.content.{j}: Input tag '{}' found using 'type' does not match any of the expected tags",
                            other.unwrap_or_default()
                        )));
                    }
                }
            }
            if role == "user" && !pending.is_empty() {
                let mut expected = std::mem::take(&mut pending);
                expected.sort();
                results.sort();
                if expected != results {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}",
                        expected.join(", ")
                    )));
                }
            }
        }
        let mut tools = Vec::new();
        for (i, tool) in map.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let name = tool
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| AnthropicError::invalid(format!("tools.{i}.name: Field required")))?;
            if tool.get("type").is_none() && tool.get("input_schema").is_none() {
                return Err(AnthropicError::invalid(format!("tools.{i}.custom.input_schema: Field required")));
            }
            if let Some(extra) = tool.as_object().and_then(|t| {
                t.keys()
                    .find(|k| !["name", "description", "input_schema", "type", "cache_control"].contains(&k.as_str()))
            }) {
                return Err(AnthropicError::invalid(format!(
                    "tools.{i}.custom.{extra}: Extra inputs are not permitted"
                )));
            }
            tools.push(name.to_owned());
        }
        let forced_tool = map
            .get("tool_choice")
            .filter(|c| c.get("type").and_then(Value::as_str) == Some("tool"))
            .and_then(|c| c.get("name").and_then(Value::as_str))
            .map(str::to_owned);
        if map.get("tool_choice").is_some_and(|c| c.get("type").and_then(Value::as_str) == Some("none")) {
            tools.clear();
        }
        Ok(Self { last_user, tool_result, tools, max_tokens, prompt_tokens, forced_tool, prefill })
    }
}

/// The mock's answer to a Messages request, as a whole Message or as its events.
pub(crate) struct Answer {
    script: Script,
    model: String,
    id: u64,
    failing: bool,
}

impl Answer {
    pub(crate) fn new(request: &Messages, model: &str, id: u64) -> Self {
        let tools = match &request.forced_tool {
            Some(name) => vec![name.clone()],
            None => request.tools.clone(),
        };
        let mut script = Script::new(
            &request.last_user,
            request.tool_result.as_deref(),
            &tools,
            request.max_tokens,
            request.prompt_tokens,
        );
        if let Some(prefill) = &request.prefill {
            script.continue_after(prefill);
        }
        Self { script, model: model.to_owned(), id, failing: request.last_user.contains(TRIGGER_STREAM_EXCEPTION) }
    }

    fn stop_reason(&self) -> &'static str {
        match self.script.finish {
            Finish::Stop => "end_turn",
            Finish::Calls => "tool_use",
            Finish::Length => "max_tokens",
            Finish::Filtered => "refusal",
        }
    }

    fn tool_id(&self, n: usize) -> String {
        format!("toolu_mock{}_{n}", self.id)
    }

    fn usage(&self) -> Value {
        json!({"input_tokens": self.script.prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": self.script.completion_tokens})
    }

    /// The whole Message.
    pub(crate) fn message(&self) -> Value {
        let content: Vec<Value> = match &self.script.reply {
            ScriptReply::Text(t) => vec![json!({"type": "text", "text": t})],
            ScriptReply::Calls(calls) => calls
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    json!({"type": "tool_use", "id": self.tool_id(n), "name": name,
                    "input": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or_default()})
                })
                .collect(),
        };
        json!({"id": format!("msg_mock_{}", self.id), "type": "message", "role": "assistant", "model": self.model,
            "content": content, "stop_reason": self.stop_reason(), "stop_sequence": null, "usage": self.usage()})
    }

    /// The event payloads of the streamed answer, in order.
    pub(crate) fn events(&self) -> Vec<Value> {
        let mut start_usage = self.usage();
        start_usage["output_tokens"] = json!(1);
        let mut events = vec![
            json!({"type": "message_start", "message": {"id": format!("msg_mock_{}", self.id), "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage}}),
        ];
        match &self.script.reply {
            ScriptReply::Text(_) => {
                events.push(
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                );
                events.push(json!({"type": "ping"}));
                for (n, piece) in self.script.pieces().iter().enumerate() {
                    if self.failing && n == 2 {
                        events.push(
                            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                        );
                        return events;
                    }
                    events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}));
                }
                events.push(json!({"type": "content_block_stop", "index": 0}));
            }
            ScriptReply::Calls(calls) => {
                for (n, name) in calls.iter().enumerate() {
                    events.push(json!({"type": "content_block_start", "index": n, "content_block": {"type": "tool_use", "id": self.tool_id(n), "name": name, "input": {}}}));
                    // The API opens every tool input with an empty fragment.
                    events.push(json!({"type": "content_block_delta", "index": n, "delta": {"type": "input_json_delta", "partial_json": ""}}));
                    for fragment in argument_fragments(TOOL_ARGUMENTS) {
                        events.push(json!({"type": "content_block_delta", "index": n, "delta": {"type": "input_json_delta", "partial_json": fragment}}));
                    }
                    events.push(json!({"type": "content_block_stop", "index": n}));
                }
            }
        }
        events.push(json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason(), "stop_sequence": null}, "usage": self.usage()}));
        events.push(json!({"type": "message_stop"}));
        events
    }
}

/// One SSE event as the API writes it: `event:` and `data:`, the payload padded with spaces before
/// its last `}` (except `ping`, written `{"type": "ping"}`).
fn sse(payload: &Value) -> Bytes {
    let kind = payload.get("type").and_then(Value::as_str).unwrap_or_default();
    let data = if kind == "ping" {
        r#"{"type": "ping"}"#.to_owned()
    } else {
        let text = payload.to_string();
        format!("{}{}}}", &text[..text.len() - 1], " ".repeat(7))
    };
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}
