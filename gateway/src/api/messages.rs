//! `POST /v1/messages` and `POST /v1/messages/count_tokens`, Anthropic's Messages API: the request as
//! the gateway understands it (every other field kept), and the Messages wire format in both
//! directions — a Messages request ↔ the canonical chat request, and a Message answer or stream ↔
//! canonical answers and chunks. The `anthropic` provider adapter uses the same conversions when a
//! client of another API is served by Anthropic, so the format is known in this one file.
//!
//! Toward an `anthropic` upstream, or Bedrock with a Claude model, a Messages request is relayed
//! natively (Claude's features — thinking signatures, `cache_control`, citations, server tools —
//! survive). Toward every other upstream it is translated, with these mapping decisions:
//! - `system` (a string or text blocks) becomes one system message; `cache_control` is dropped.
//! - User content: text → text parts; base64 images → `data:` image URLs (URL images stay URLs,
//!   which the gateway never fetches itself); base64 PDF documents → `file` parts; plain-text
//!   documents → text. `tool_result` blocks become `tool` messages, in order, before the turn's
//!   other content; an `is_error` result is marked `[error] ` in front of its text; images inside
//!   tool results and other block types are refused with a 400 naming the block.
//! - Assistant content: text → content, `tool_use` → `tool_calls` (input as a JSON text);
//!   `thinking` and `redacted_thinking` are dropped (no chat upstream takes them back).
//! - `tools` (custom tools) → function tools; server tools (`web_search_…`, `bash_…`, …) are refused.
//!   `tool_choice` `auto`/`any`/`tool`/`none` → `auto`/`required`/the function/`none`;
//!   `disable_parallel_tool_use` → `parallel_tool_calls: false`.
//! - `max_tokens` → `max_completion_tokens`; `stop_sequences` → `stop`; `temperature`, `top_p` as
//!   they are; `metadata.user_id` → `user`; `top_k`, `thinking`, `service_tier` and fields the
//!   translation does not know are not sent (they are kept for native relays).
//! - Answers: text → `text` blocks, `reasoning_content` → a `thinking` block (unsigned), tool calls
//!   → `tool_use` blocks (arguments parsed; `{}` if they are not JSON). `finish_reason` → `stop_reason`:
//!   `stop` → `end_turn`, `length` → `max_tokens`, `tool_calls` → `tool_use`, `content_filter` →
//!   `refusal`. Usage: `input_tokens` excludes cache reads and writes (Anthropic's convention), which
//!   go to `cache_read_input_tokens` and `cache_creation_input_tokens`.
//! - Streams follow Anthropic's sequence: `message_start`, `ping`, per block `content_block_start`
//!   / `_delta` (`text_delta`, `input_json_delta`, `thinking_delta`) / `_stop`, then `message_delta`
//!   with `stop_reason` and the whole usage, and `message_stop` — only once the upstream finished;
//!   a failure ends the stream with an `error` event instead.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chat::{ChatRequest, Chunk, Completion, Message, Role};
use super::sse::{Event, Splitter};
use super::{Facts, SurfaceRequest, Usage};
use crate::error::{Error, Kind};

/// The `anthropic-version` sent when the client sent none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// The `max_tokens` sent to Anthropic for a translated request that set none (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The tool that carries a `json_schema` answer when a chat request is served by Anthropic.
pub const JSON_TOOL: &str = "json_response";

/// A Messages request. Fields the gateway does not act on stay in `extra` and reach native
/// upstreams unchanged.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<MessageParam>,
    /// Required by `POST /v1/messages` (checked there), not by `count_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The client's `anthropic-version` header, passed on to Anthropic.
    #[serde(skip)]
    pub version: Option<String>,
    /// The client's `anthropic-beta` header values, passed on to Anthropic (and to Bedrock as
    /// `anthropic_beta`).
    #[serde(skip)]
    pub betas: Vec<String>,
}

/// One message: a role and its content (a string or content blocks), other fields kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MessageParam {
    pub role: MessageRole,
    pub content: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

string_enum! {
    pub enum MessageRole {
        User = "user",
        Assistant = "assistant",
    }
}

impl MessagesRequest {
    /// Parses and validates a `POST /v1/messages` body; `headers` give `anthropic-version` and
    /// `anthropic-beta`.
    pub fn parse(body: &[u8], headers: &http::HeaderMap) -> Result<Self, Error> {
        let request = Self::parse_count(body, headers)?;
        match request.max_tokens {
            None => {
                return Err(Error::bad_request("max_tokens: Field required")
                    .param("max_tokens")
                    .code("missing_required_parameter"));
            }
            Some(0) => {
                return Err(Error::bad_request("max_tokens: must be at least 1")
                    .param("max_tokens")
                    .code("invalid_value"));
            }
            Some(_) => {}
        }
        Ok(request)
    }

    /// Parses and validates a `POST /v1/messages/count_tokens` body (no `max_tokens`).
    pub fn parse_count(body: &[u8], headers: &http::HeaderMap) -> Result<Self, Error> {
        let mut request: Self = super::parse_json(body).map_err(dotted)?;
        let bad = |param: String, message: String| Error::bad_request(message).param(param).code("invalid_value");
        if request.model.trim().is_empty() {
            return Err(bad("model".into(), "model: must not be empty".into()));
        }
        if request.messages.is_empty() {
            return Err(bad("messages".into(), "messages: at least one message is required".into()));
        }
        for (i, m) in request.messages.iter().enumerate() {
            match &m.content {
                Value::String(_) => {}
                Value::Array(blocks) => {
                    for (j, block) in blocks.iter().enumerate() {
                        if block.get("type").and_then(Value::as_str).is_none() {
                            return Err(bad(
                                format!("messages.{i}.content.{j}.type"),
                                format!("messages.{i}.content.{j}.type: Field required"),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(bad(
                        format!("messages.{i}.content"),
                        format!("messages.{i}.content: Input should be a valid string or a list of content blocks"),
                    ));
                }
            }
        }
        match &request.system {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(Value::Array(blocks)) if blocks.iter().all(|b| b.get("text").is_some_and(Value::is_string)) => {}
            Some(_) => {
                return Err(bad("system".into(), "system: Input should be a string or a list of text blocks".into()));
            }
        }
        if let Some(tools) = request.param("tools") {
            let Some(tools) = tools.as_array() else {
                return Err(bad("tools".into(), "tools: Input should be a valid list".into()));
            };
            for (i, tool) in tools.iter().enumerate() {
                if tool.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(bad(format!("tools.{i}.name"), format!("tools.{i}.name: Field required")));
                }
            }
        }
        if let Some(choice) = request.param("tool_choice") {
            match choice.get("type").and_then(Value::as_str) {
                Some("auto" | "any" | "none") => {}
                Some("tool") if choice.get("name").is_some_and(Value::is_string) => {}
                Some("tool") => return Err(bad("tool_choice.name".into(), "tool_choice.name: Field required".into())),
                _ => {
                    return Err(bad(
                        "tool_choice.type".into(),
                        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'".into(),
                    ));
                }
            }
        }
        request.version = headers.get("anthropic-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
        request.betas = headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(request)
    }

    /// A parameter kept as sent, if present and not `null`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.extra.get(name).filter(|v| !v.is_null())
    }

    /// The request for an upstream that speaks Messages: `model` set to the target's (or left out,
    /// for Bedrock, which takes the model in the URL and `anthropic_version` in the body instead).
    pub fn upstream_body(&self, model: Option<&str>, bedrock: bool) -> Result<Vec<u8>, Error> {
        let mut value =
            serde_json::to_value(self).map_err(|e| Error::internal("could not encode the request").source(e))?;
        if let Value::Object(map) = &mut value {
            match model {
                Some(model) => {
                    map.insert("model".into(), Value::String(model.to_owned()));
                }
                None => {
                    map.remove("model");
                }
            }
            if bedrock {
                // InvokeModel chooses between a whole answer and a stream by its URL; the body
                // says which API version it is, and a Bedrock-specific list of betas.
                map.remove("stream");
                map.insert("anthropic_version".into(), json!("bedrock-2023-05-31"));
                if !self.betas.is_empty() {
                    map.insert("anthropic_beta".into(), json!(self.betas));
                }
                // Bedrock refuses what it does not know; these are the Anthropic API's own.
                for field in ["metadata", "service_tier", "container", "mcp_servers"] {
                    map.remove(field);
                }
            }
        }
        serde_json::to_vec(&value).map_err(|e| Error::internal("could not encode the request").source(e))
    }

    /// The gateway's own token count of a request, for `count_tokens` where no upstream counts:
    /// about four bytes of text per token, as the admission estimates are.
    pub fn estimate_tokens(&self) -> u64 {
        let tools = self.param("tools").map_or(0, |t| t.to_string().len());
        (self.text_bytes() + tools).div_ceil(4) as u64
    }

    fn text_bytes(&self) -> usize {
        let system = self.system.as_ref().map_or(0, super::text_len);
        system + self.messages.iter().map(|m| block_text_len(&m.content)).sum::<usize>()
    }
}

/// Field paths the way Anthropic writes them: `messages.0.role`, not `messages[0].role`.
fn dotted(mut error: Error) -> Error {
    if let Some(param) = error.param.take() {
        let dotted = param.replace('[', ".").replace(']', "");
        error.message = error.message.replace(&*param, &dotted).into();
        error.param = Some(dotted.into());
    }
    error
}

/// Bytes of text in a content value, tool results and tool inputs included.
fn block_text_len(content: &Value) -> usize {
    match content {
        Value::String(s) => s.len(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b.get("type").and_then(Value::as_str) {
                Some("tool_result") => b.get("content").map_or(0, block_text_len),
                Some("tool_use") => b.get("input").map_or(0, |i| i.to_string().len()),
                _ => b.get("text").and_then(Value::as_str).map_or(0, str::len),
            })
            .sum(),
        _ => 0,
    }
}

impl SurfaceRequest for MessagesRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    fn facts(&self) -> Facts {
        Facts {
            max_tokens: self.max_tokens.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            temperature: self.param("temperature").and_then(Value::as_f64).map(|t| t as f32),
            end_user: self.param("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str).map(str::to_owned),
            prompt_tokens_estimate: u32::try_from(self.text_bytes().div_ceil(4)).unwrap_or(u32::MAX),
        }
    }

    fn to_chat(&self) -> Result<ChatRequest, Error> {
        to_chat(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Messages request → canonical

fn refuse(param: String, what: &str) -> Error {
    Error::bad_request(format!(
        "{param}: {what} is not supported for this model, whose provider is reached through translation; use a Claude model served by Anthropic or Bedrock."
    ))
    .param(param)
    .code("unsupported_parameter")
}

fn chat_message(role: Role, rest: Map<String, Value>) -> Message {
    Message { role, rest }
}

fn to_chat(req: &MessagesRequest) -> Result<ChatRequest, Error> {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        let text = match system {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => {
                blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n\n")
            }
            _ => String::new(),
        };
        if !text.is_empty() {
            messages.push(chat_message(Role::System, Map::from_iter([("content".into(), Value::String(text))])));
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        let blocks: Vec<Value> = match &m.content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(blocks) => blocks.clone(),
            _ => Vec::new(),
        };
        match m.role {
            MessageRole::User => user_turn(i, &blocks, &mut messages)?,
            MessageRole::Assistant => messages.push(assistant_turn(i, &blocks)?),
        }
    }
    let mut extra = Map::new();
    if let Some(max) = req.max_tokens {
        extra.insert("max_completion_tokens".into(), json!(max));
    }
    for name in ["temperature", "top_p"] {
        if let Some(v) = req.param(name) {
            extra.insert(name.into(), v.clone());
        }
    }
    if let Some(stop) = req.param("stop_sequences").and_then(Value::as_array).filter(|s| !s.is_empty()) {
        extra.insert("stop".into(), Value::Array(stop.clone()));
    }
    if let Some(user) = req.param("metadata").and_then(|m| m.get("user_id")).filter(|u| u.is_string()) {
        extra.insert("user".into(), user.clone());
    }
    if let Some(tools) = req.param("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) {
        let mut functions = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            match tool.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => return Err(refuse(format!("tools.{i}.type"), &format!("The server tool '{other}'"))),
            }
            let mut function = json!({
                "name": tool.get("name").cloned().unwrap_or(Value::Null),
                "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(d) = tool.get("description") {
                function["description"] = d.clone();
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        extra.insert("tools".into(), Value::Array(functions));
        if let Some(choice) = req.param("tool_choice") {
            let mapped = match choice.get("type").and_then(Value::as_str) {
                Some("any") => json!("required"),
                Some("none") => json!("none"),
                Some("tool") => json!({"type": "function", "function": {"name": choice.get("name")}}),
                _ => json!("auto"),
            };
            extra.insert("tool_choice".into(), mapped);
            if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
                extra.insert("parallel_tool_calls".into(), Value::Bool(false));
            }
        }
    }
    for unsupported in ["mcp_servers", "container"] {
        if req.param(unsupported).is_some() {
            return Err(refuse(unsupported.into(), &format!("The field '{unsupported}'")));
        }
    }
    let stream = req.stream.filter(|s| *s);
    Ok(ChatRequest {
        model: req.model.clone(),
        messages,
        stream,
        stream_options: stream.map(|_| super::chat::StreamOptions { include_usage: Some(true), extra: Map::new() }),
        extra,
    })
}

/// A user turn: its tool results as `tool` messages, then the rest as one user message.
fn user_turn(i: usize, blocks: &[Value], out: &mut Vec<Message>) -> Result<(), Error> {
    let mut parts = Vec::new();
    let flush = |parts: &mut Vec<Value>, out: &mut Vec<Message>| {
        if parts.is_empty() {
            return;
        }
        let content = match parts.as_slice() {
            [only] if only.get("type").and_then(Value::as_str) == Some("text") => only["text"].clone(),
            _ => Value::Array(std::mem::take(parts)),
        };
        parts.clear();
        out.push(chat_message(Role::User, Map::from_iter([("content".into(), content)])));
    };
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("messages.{i}.content.{j}");
        match block.get("type").and_then(Value::as_str).unwrap_or_default() {
            "text" => parts.push(json!({"type": "text", "text": block.get("text").cloned().unwrap_or(json!(""))})),
            "image" => parts.push(image_part(block, &at)?),
            "document" => parts.push(document_part(block, &at)?),
            "tool_result" => {
                flush(&mut parts, out);
                let mut text = tool_result_text(block, &at)?;
                if block.get("is_error") == Some(&Value::Bool(true)) {
                    text.insert_str(0, "[error] ");
                }
                let id = block.get("tool_use_id").cloned().unwrap_or(json!(""));
                out.push(chat_message(
                    Role::Tool,
                    Map::from_iter([("tool_call_id".into(), id), ("content".into(), Value::String(text))]),
                ));
            }
            other => return Err(refuse(format!("{at}.type"), &format!("A block of type '{other}'"))),
        }
    }
    flush(&mut parts, out);
    Ok(())
}

fn image_part(block: &Value, at: &str) -> Result<Value, Error> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let str_at = |k: &str| source.get(k).and_then(Value::as_str).unwrap_or_default();
    let url = match str_at("type") {
        "base64" => format!("data:{};base64,{}", str_at("media_type"), str_at("data")),
        "url" => str_at("url").to_owned(),
        other => return Err(refuse(format!("{at}.source.type"), &format!("An image source of type '{other}'"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn document_part(block: &Value, at: &str) -> Result<Value, Error> {
    let source = block.get("source").unwrap_or(&Value::Null);
    let str_at = |k: &str| source.get(k).and_then(Value::as_str).unwrap_or_default();
    match (str_at("type"), str_at("media_type")) {
        ("base64", "application/pdf") => {
            let name = block.get("title").and_then(Value::as_str).unwrap_or("document.pdf");
            Ok(
                json!({"type": "file", "file": {"filename": name, "file_data": format!("data:application/pdf;base64,{}", str_at("data"))}}),
            )
        }
        ("text", _) => Ok(json!({"type": "text", "text": str_at("data")})),
        (kind, _) => Err(refuse(format!("{at}.source.type"), &format!("A document source of type '{kind}'"))),
    }
}

fn tool_result_text(block: &Value, at: &str) -> Result<String, Error> {
    match block.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(items)) => {
            let mut text = String::new();
            for (k, item) in items.iter().enumerate() {
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(item.get("text").and_then(Value::as_str).unwrap_or_default()),
                    other => {
                        return Err(refuse(
                            format!("{at}.content.{k}.type"),
                            &format!("A block of type '{}' inside a tool result", other.unwrap_or("untyped")),
                        ));
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(refuse(format!("{at}.content"), "This tool result content")),
    }
}

fn assistant_turn(i: usize, blocks: &[Value]) -> Result<Message, Error> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str).unwrap_or_default() {
            "text" => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            "tool_use" => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or(json!("")),
                    "type": "function",
                    "function": {"name": block.get("name").cloned().unwrap_or(json!("")), "arguments": input.to_string()},
                }));
            }
            // Reasoning of an earlier turn: no chat upstream takes it back.
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(refuse(format!("messages.{i}.content.{j}.type"), &format!("A block of type '{other}'")));
            }
        }
    }
    let mut rest = Map::new();
    rest.insert("content".into(), if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) });
    if !calls.is_empty() {
        rest.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(chat_message(Role::Assistant, rest))
}

// ---------------------------------------------------------------------------------------------
// Canonical request → Messages (for the `anthropic` upstream kind)

/// A canonical chat request as a Messages request body for `model`. `json_schema` answers become a
/// forced tool ([`JSON_TOOL`]) whose input is returned as the answer's text.
pub fn from_chat(req: &ChatRequest, model: &str) -> Result<Value, Error> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        match m.role {
            Role::System | Role::Developer => {
                let text = m.text();
                if !text.is_empty() {
                    system.push(text);
                }
            }
            Role::User => {
                let blocks = content_blocks(m, &param)?;
                push_turn(&mut turns, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks: Vec<Value> = Vec::new();
                let text = m.text();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m.tool_calls() {
                    let input: Value = serde_json::from_str(call.arguments).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            Role::Tool | Role::Function => {
                let block = json!({"type": "tool_result", "tool_use_id": m.tool_call_id(), "content": m.text()});
                push_turn(&mut turns, "user", vec![block]);
            }
        }
    }
    let max_tokens = req.param("max_completion_tokens").or_else(|| req.param("max_tokens")).cloned();
    let mut out = json!({
        "model": model,
        "messages": turns,
        "max_tokens": max_tokens.unwrap_or(json!(DEFAULT_MAX_TOKENS)),
    });
    if !system.is_empty() {
        out["system"] = json!(system.join("\n\n"));
    }
    for name in ["temperature", "top_p"] {
        if let Some(v) = req.param(name) {
            out[name] = v.clone();
        }
    }
    match req.param("stop") {
        Some(Value::String(s)) => out["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) if !a.is_empty() => out["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    if let Some(user) = req.param("user").filter(|u| u.is_string()) {
        out["metadata"] = json!({"user_id": user});
    }
    let schema = req
        .param("response_format")
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
        .map(|f| f.pointer("/json_schema/schema").cloned().unwrap_or(json!({"type": "object"})));
    let choice = req.param("tool_choice");
    let drop_tools = matches!(choice, Some(Value::String(s)) if s == "none");
    let mut tools: Vec<Value> = Vec::new();
    for f in req.param("tools").and_then(Value::as_array).into_iter().flatten().filter_map(|t| t.get("function")) {
        let mut tool = json!({
            "name": f.get("name").cloned().unwrap_or(Value::Null),
            "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}})),
        });
        if let Some(d) = f.get("description") {
            tool["description"] = d.clone();
        }
        tools.push(tool);
    }
    let mut tool_choice = match choice {
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(Value::Object(o)) => Some(json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name"))})),
        _ => None,
    };
    if let Some(schema) = schema {
        tools.push(json!({"name": JSON_TOOL, "description": "Respond with a JSON object that matches this schema.", "input_schema": schema}));
        tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
    }
    if !(tools.is_empty() || drop_tools && tool_choice.as_ref().is_some_and(|c| c["type"] == "none")) {
        out["tools"] = Value::Array(tools);
        if req.param("parallel_tool_calls") == Some(&Value::Bool(false)) {
            let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        if let Some(c) = tool_choice {
            out["tool_choice"] = c;
        }
    }
    if req.is_stream() {
        out["stream"] = Value::Bool(true);
    }
    Ok(out)
}

/// Appends `blocks` to the last turn when it has the same role (Anthropic wants roles to
/// alternate), else starts a new turn.
fn push_turn(turns: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(content) = last.get_mut("content").and_then(Value::as_array_mut)
    {
        content.extend(blocks);
        return;
    }
    turns.push(json!({"role": role, "content": blocks}));
}

/// A chat message's content as Messages blocks: text, images (`data:` URLs as base64, other URLs as
/// URL sources, which Anthropic fetches itself) and PDF files.
fn content_blocks(message: &Message, param: &str) -> Result<Vec<Value>, Error> {
    let mut blocks = Vec::new();
    match message.content() {
        Some(Value::String(s)) if !s.is_empty() => blocks.push(json!({"type": "text", "text": s})),
        Some(Value::Array(parts)) => {
            for (k, part) in parts.iter().enumerate() {
                let str_at = |p: &str| part.pointer(p).and_then(Value::as_str).unwrap_or_default();
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => blocks.push(json!({"type": "text", "text": str_at("/text")})),
                    Some("image_url") => {
                        let url = str_at("/image_url/url");
                        blocks.push(match url.strip_prefix("data:").and_then(|r| r.split_once(',')) {
                            Some((meta, data)) => json!({"type": "image", "source": {"type": "base64",
                                "media_type": meta.strip_suffix(";base64").unwrap_or(meta), "data": data}}),
                            None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                        });
                    }
                    Some("file") => {
                        let data = str_at("/file/file_data");
                        let Some(("application/pdf;base64", data)) =
                            data.strip_prefix("data:").and_then(|r| r.split_once(','))
                        else {
                            return Err(Error::bad_request("Only base64 PDF files can be sent to Anthropic.")
                                .param(format!("{param}[{k}]"))
                                .code("invalid_value"));
                        };
                        blocks.push(json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}));
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Ok(blocks)
}

// ---------------------------------------------------------------------------------------------
// Message answers → canonical

/// `stop_reason` → `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // `end_turn`, `stop_sequence`, and `pause_turn` (a server tool paused the turn).
        _ => "stop",
    }
}

/// Anthropic usage → OpenAI's: `prompt_tokens` counts cache reads and writes too.
pub fn canonical_usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cache_read = n("cache_read_input_tokens");
    let cache_write = n("cache_creation_input_tokens");
    let prompt = n("input_tokens") + cache_read + cache_write;
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    })
}

/// Anthropic usage as the gateway accounts it.
pub fn usage_of(u: &Value) -> Usage {
    serde_json::from_value(canonical_usage(u)).unwrap_or_default()
}

/// A whole Message → a `chat.completion` (a [`JSON_TOOL`] call read back as text).
pub fn decode_whole(answer: &Value, model: &str) -> Value {
    let blocks = answer.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let mut json_answer = false;
    for block in &blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => {
                let input = block.get("input").map(Value::to_string).unwrap_or_else(|| "{}".into());
                if block.get("name").and_then(Value::as_str) == Some(JSON_TOOL) {
                    text.push_str(&input);
                    json_answer = true;
                    continue;
                }
                calls.push(json!({
                    "id": block.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": input},
                }));
            }
            _ => {}
        }
    }
    let stop = answer.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
    let reason = if json_answer && stop == "tool_use" { "stop" } else { finish_reason(stop) };
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": super::completion_id(),
        "object": "chat.completion",
        "created": super::unix_now(),
        "model": answer.get("model").and_then(Value::as_str).unwrap_or(model),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reason}],
        "usage": canonical_usage(answer.get("usage").unwrap_or(&Value::Null)),
    })
}

/// Anthropic's error body (`{"type":"error","error":{"type","message"}}`): its type and message.
pub fn error_detail(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    Some((
        error.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
        error.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
    ))
}

/// A Messages event stream → canonical chunks: `message_stop` brings the usage chunk and `[DONE]`;
/// an `error` event becomes an OpenAI error event and the stream ends without `[DONE]`.
#[derive(Debug)]
pub struct Decoder {
    upstream: String,
    splitter: Splitter,
    id: String,
    model: String,
    created: u64,
    /// The usage of `message_start`, updated by `message_delta`.
    usage: Value,
    /// Content block index → tool call index.
    tool_blocks: Vec<(u64, usize)>,
    json_block: Option<u64>,
    stopped: bool,
    failed: bool,
}

impl Decoder {
    pub fn new(upstream: &str, model: &str) -> Self {
        Self {
            upstream: upstream.to_owned(),
            splitter: Splitter::default(),
            id: super::completion_id(),
            model: model.to_owned(),
            created: super::unix_now(),
            usage: json!({}),
            tool_blocks: Vec::new(),
            json_block: None,
            stopped: false,
            failed: false,
        }
    }

    /// Feeds bytes of the upstream's SSE. An event over [`super::sse::MAX_EVENT_BYTES`] ends the
    /// stream with an error event, and nothing more is buffered.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        if self.failed {
            return;
        }
        self.splitter.push(bytes);
        while !self.failed
            && let Some(event) = self.splitter.next_event()
        {
            self.event(&event, out);
        }
        if !self.failed && self.splitter.oversized() {
            self.failed = true;
            self.splitter = Splitter::default();
            out.push(super::sse::error_event(&super::sse::event_too_large(&self.upstream)));
        }
    }

    /// One whole Messages event.
    pub fn event(&mut self, event: &Event, out: &mut Vec<Event>) {
        if self.failed || event.data.is_empty() {
            return;
        }
        let Ok(payload) = serde_json::from_slice::<Value>(&event.data) else { return };
        let index = payload.get("index").and_then(Value::as_u64).unwrap_or(0);
        match payload.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let message = payload.get("message").unwrap_or(&Value::Null);
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = model.to_owned();
                }
                self.usage = message.get("usage").cloned().unwrap_or(json!({}));
                out.push(self.chunk(&json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let block = payload.get("content_block").unwrap_or(&Value::Null);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") if block.get("name").and_then(Value::as_str) == Some(JSON_TOOL) => {
                        self.json_block = Some(index);
                    }
                    Some("tool_use") => {
                        let n = self.tool_blocks.len();
                        self.tool_blocks.push((index, n));
                        out.push(self.chunk(
                            &json!({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                "function": {"name": block.get("name"), "arguments": ""}}]}),
                            None,
                        ));
                    }
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                            out.push(self.chunk(&json!({"content": text}), None));
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = payload.get("delta").unwrap_or(&Value::Null);
                let str_at = |k: &str| delta.get(k).and_then(Value::as_str);
                match str_at("type") {
                    Some("text_delta") => out.push(self.chunk(&json!({"content": str_at("text")}), None)),
                    Some("thinking_delta") => {
                        out.push(self.chunk(&json!({"reasoning_content": str_at("thinking")}), None));
                    }
                    Some("input_json_delta") => {
                        let fragment = str_at("partial_json").unwrap_or_default();
                        if fragment.is_empty() {
                        } else if self.json_block == Some(index) {
                            out.push(self.chunk(&json!({"content": fragment}), None));
                        } else if let Some(&(_, n)) = self.tool_blocks.iter().find(|(b, _)| *b == index) {
                            out.push(self.chunk(
                                &json!({"tool_calls": [{"index": n, "function": {"arguments": fragment}}]}),
                                None,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let (Some(usage), Value::Object(known)) =
                    (payload.get("usage").and_then(Value::as_object), &mut self.usage)
                {
                    for (k, v) in usage {
                        if !v.is_null() {
                            known.insert(k.clone(), v.clone());
                        }
                    }
                }
                let stop = payload.pointer("/delta/stop_reason").and_then(Value::as_str).unwrap_or("end_turn");
                let reason = if self.json_block.is_some() && stop == "tool_use" { "stop" } else { finish_reason(stop) };
                out.push(self.chunk(&json!({}), Some(reason)));
            }
            Some("message_stop") => {
                let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": []});
                chunk["usage"] = canonical_usage(&self.usage);
                out.push(super::sse::data_event(&chunk));
                self.stopped = true;
            }
            Some("error") => {
                let error = payload.get("error").unwrap_or(&Value::Null);
                let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
                let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
                self.failed = true;
                out.push(super::sse::error_event(&stream_error(&self.upstream, kind, message)));
            }
            _ => {}
        }
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>) -> Event {
        super::sse::data_event(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    /// The upstream body ended: `[DONE]` only after `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if self.stopped && !self.failed && self.splitter.pending() == 0 {
            out.push(super::sse::done_event());
        }
    }
}

/// An Anthropic error `type` met in a stream, as the gateway's error.
pub fn stream_error(upstream: &str, kind: &str, message: &str) -> Error {
    let message = format!("The upstream '{upstream}' failed mid-stream ({kind}): {message}");
    match kind {
        "overloaded_error" => Error::new(Kind::UpstreamFailed, message)
            .status(http::StatusCode::from_u16(529).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE))
            .code("overloaded"),
        "rate_limit_error" => Error::new(Kind::RateLimited, message).code("rate_limit_exceeded"),
        "invalid_request_error" => Error::new(Kind::UpstreamRejected, message).code("invalid_request_error"),
        _ => Error::new(Kind::UpstreamFailed, message).code("upstream_stream_error"),
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical answers → Messages

fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

fn usage_json(usage: Option<&Usage>) -> Value {
    let u = usage.copied().unwrap_or_default();
    let (read, written) = (u.cached_tokens(), u.cache_write_tokens());
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(read + written),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": u.completion_tokens,
    })
}

/// `msg_…` for a translated answer.
fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// A whole `chat.completion` → a Message (choice 0; Messages has one answer per request).
pub fn encode_whole(completion: &Completion) -> Value {
    let choice = completion.choices.first().cloned().unwrap_or_default();
    let mut content = Vec::new();
    if let Some(thinking) = choice.message.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
    }
    let text = choice.message.content.as_deref().or(choice.message.refusal.as_deref()).unwrap_or_default();
    if !text.is_empty() || choice.message.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in &choice.message.tool_calls {
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.function.name, "input": tool_input(&call.function.arguments)}));
    }
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": completion.model.as_deref().unwrap_or_default(),
        "content": content,
        "stop_reason": stop_reason(choice.finish_reason.as_deref()),
        "stop_sequence": null,
        "usage": usage_json(completion.usage.as_ref()),
    })
}

/// Which kind of content block is open in an encoded stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its canonical index.
    Tool(usize),
}

/// Canonical chunks → Anthropic's event sequence.
#[derive(Debug, Default)]
pub struct Encoder {
    started: bool,
    /// The open block and its index.
    open: Option<(Block, u64)>,
    next_index: u64,
    finish: Option<String>,
    usage: Option<Usage>,
    ended: bool,
}

fn named_event(name: &str, data: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

impl Encoder {
    /// One canonical event → the Messages events it becomes, appended to `out`.
    pub fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.ended || event.data.is_empty() {
            return;
        }
        if &event.data[..] == b"[DONE]" {
            self.start(None, out);
            self.close_block(out);
            let delta = json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                "usage": usage_json(self.usage.as_ref())});
            named_event("message_delta", &delta, out);
            named_event("message_stop", &json!({"type": "message_stop"}), out);
            self.ended = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(&event.data) else { return };
        if let Some(error) = &chunk.error {
            self.error(error, out);
            return;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else { return };
        self.start(chunk.model.as_deref(), out);
        let delta = &choice.delta;
        if let Some(thinking) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
            self.open_block(Block::Thinking, out);
            let index = self.index();
            named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "thinking_delta", "thinking": thinking}}),
                out,
            );
        }
        for text in [delta.content.as_deref(), delta.refusal.as_deref()].into_iter().flatten().filter(|t| !t.is_empty())
        {
            self.open_block(Block::Text, out);
            let index = self.index();
            named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
                out,
            );
        }
        for call in &delta.tool_calls {
            let function = call.function.as_ref();
            if call.id.is_some() || self.open != Some((Block::Tool(call.index), self.index())) {
                self.close_block(out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((Block::Tool(call.index), index));
                let name = function.and_then(|f| f.name.as_deref()).unwrap_or_default();
                named_event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": call.id.as_deref().unwrap_or_default(), "name": name, "input": {}}}),
                    out,
                );
            }
            if let Some(arguments) = function.and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty()) {
                let index = self.index();
                named_event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                    out,
                );
            }
        }
        if let Some(finish) = &choice.finish_reason {
            self.finish = Some(finish.clone());
            self.close_block(out);
        }
    }

    /// The stream failed after it started: Anthropic's `error` event (built by `error.rs`).
    pub fn fail(&mut self, error: &Error, out: &mut Vec<u8>) {
        if !self.ended {
            out.extend_from_slice(&error.anthropic_sse_event());
            self.ended = true;
        }
    }

    /// An OpenAI error event from a translated upstream, in Anthropic's words.
    fn error(&mut self, error: &Value, out: &mut Vec<u8>) {
        let kind = match error.get("type").and_then(Value::as_str) {
            Some("rate_limit_error") => "rate_limit_error",
            Some("invalid_request_error") => "invalid_request_error",
            Some("authentication_error") => "authentication_error",
            _ if error.get("code").and_then(Value::as_str) == Some("overloaded") => "overloaded_error",
            _ => "api_error",
        };
        let message = error.get("message").and_then(Value::as_str).unwrap_or("The upstream failed.");
        named_event("error", &json!({"type": "error", "error": {"type": kind, "message": message}}), out);
        self.ended = true;
    }

    fn index(&self) -> u64 {
        self.open.map_or(0, |(_, i)| i)
    }

    fn start(&mut self, model: Option<&str>, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let message = json!({"type": "message_start", "message": {
            "id": message_id(), "type": "message", "role": "assistant", "model": model.unwrap_or_default(),
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0},
        }});
        named_event("message_start", &message, out);
        named_event("ping", &json!({"type": "ping"}), out);
    }

    fn open_block(&mut self, block: Block, out: &mut Vec<u8>) {
        if self.open.is_some_and(|(b, _)| b == block) {
            return;
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((block, index));
        let content_block = match block {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
            out,
        );
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            named_event("content_block_stop", &json!({"type": "content_block_stop", "index": index}), out);
        }
    }
}

/// What the relay learns from one event of a natively relayed Messages stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NativePeek {
    pub content: bool,
    pub done: bool,
    pub error: bool,
}

/// Reads a native Messages event: content deltas, `message_stop`, `error`, and the usage of
/// `message_start` and `message_delta`, accumulated into `usage` (Anthropic's own fields).
pub fn peek(data: &[u8], usage: &mut Map<String, Value>) -> NativePeek {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        usage: Option<Map<String, Value>>,
        #[serde(default)]
        message: Option<MessagePeek>,
    }
    #[derive(Deserialize)]
    struct MessagePeek {
        #[serde(default)]
        usage: Option<Map<String, Value>>,
    }
    let Ok(peek) = serde_json::from_slice::<Peek>(data) else { return NativePeek::default() };
    for found in [peek.usage, peek.message.and_then(|m| m.usage)].into_iter().flatten() {
        for (k, v) in found {
            if !v.is_null() {
                usage.insert(k, v);
            }
        }
    }
    match peek.kind.as_deref() {
        Some("content_block_delta") => NativePeek { content: true, ..NativePeek::default() },
        Some("message_stop") => NativePeek { done: true, ..NativePeek::default() },
        Some("error") => NativePeek { error: true, ..NativePeek::default() },
        _ => NativePeek::default(),
    }
}

/// `data` of a natively relayed whole answer: its usage.
pub fn whole_usage(body: &[u8]) -> Option<Usage> {
    let value: Value = serde_json::from_slice(body).ok()?;
    Some(usage_of(value.get("usage")?))
}

/// Bytes of a Messages SSE event built from a type and JSON payload (for Bedrock's frames, which
/// carry the same events without the SSE framing).
pub fn sse_event(payload: &[u8]) -> Event {
    let kind = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let mut raw = Vec::with_capacity(payload.len() + kind.len() + 16);
    raw.extend_from_slice(b"event: ");
    raw.extend_from_slice(kind.as_bytes());
    raw.extend_from_slice(b"\ndata: ");
    raw.extend_from_slice(payload);
    raw.extend_from_slice(b"\n\n");
    let data = Bytes::copy_from_slice(payload);
    Event { raw: Bytes::from(raw), data }
}

#[cfg(test)]
mod tests;
