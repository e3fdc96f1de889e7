//! `POST /v1/responses` (and the stored responses' `GET`, `DELETE`, `input_items`), OpenAI's
//! Responses API: the request as the gateway understands it (every other field kept), its canonical
//! chat form, and canonical answers and chunks turned into Response objects and the typed event
//! sequence — or, for an upstream configured to speak Responses itself, the request relayed natively.
//!
//! The gateway holds the conversation state. `previous_response_id` is looked up in the gateway's
//! store (scoped to the key's team) and replaced by the conversation it continues, so every target
//! gets a self-contained request: a conversation can move between providers, and an upstream never
//! holds a team's state under the gateway's own credentials. Earlier output items go back as input
//! without their ids (assistant messages as plain text, function calls by `call_id`); reasoning
//! items go back only when they carry `encrypted_content`, which is all an upstream can use.
//!
//! Mapping decisions toward a translated target:
//! - `instructions` → a system message (not carried to the next turn, as OpenAI does); input items:
//!   messages (`input_text`, `input_image`, `output_text`) → chat messages, `function_call` →
//!   assistant `tool_calls` (consecutive calls merged into one message), `function_call_output` →
//!   `tool` messages; `reasoning` items are dropped.
//! - Function tools → chat function tools; other tool types (web search, file search, …) are
//!   refused with a 400 naming the tool. `tool_choice` maps one to one.
//! - `text.format` `json_schema`/`json_object` → `response_format`; `reasoning.effort` →
//!   `reasoning_effort`; `max_output_tokens` → `max_completion_tokens`; `temperature`, `top_p`,
//!   `user`, `parallel_tool_calls`, `service_tier`, `prompt_cache_key`, `safety_identifier` as they
//!   are. Other fields are not sent (they are kept for native relays). `background` and
//!   `conversation` are refused everywhere: the gateway does not run responses in the background or
//!   keep Conversations-API state.
//! - Answers: text → a `message` item with an `output_text` part (a refusal reads as text),
//!   `reasoning_content` → a `reasoning` item with a summary, tool calls → `function_call` items.
//!   `finish_reason` `length` / `content_filter` → `status: incomplete` with `incomplete_details`
//!   `max_output_tokens` / `content_filter`.
//! - Streams: `response.created`, `response.in_progress`, per item `output_item.added`, its part
//!   and delta events, its `.done` events and `output_item.done`, then `response.completed` (or
//!   `response.incomplete`) once the upstream finished — numbered by `sequence_number` from 0. A
//!   failure ends the stream with `error` and `response.failed`, never `response.completed`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chat::{ChatRequest, Chunk, Completion, Message, Role};
use super::sse::{Event, Splitter};
use super::{Facts, SurfaceRequest, Usage};
use crate::error::Error;

/// A Responses request. Fields the gateway does not act on stay in `extra`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ResponsesRequest {
    pub model: String,
    /// A string, or a list of input items.
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_response_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The conversation `previous_response_id` continues, from the store (filled by the pipeline).
    #[serde(skip)]
    pub history: Vec<Value>,
}

fn bad(param: &str, message: impl Into<String>) -> Error {
    Error::bad_request(message.into()).param(param).code("invalid_value")
}

impl ResponsesRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let request: Self = super::parse_json(body)?;
        if request.model.trim().is_empty() {
            return Err(bad("model", "'model' must not be empty."));
        }
        match &request.input {
            None | Some(Value::Null) => {
                if request.previous_response_id.is_none() {
                    return Err(Error::bad_request("Missing required parameter: 'input'.")
                        .param("input")
                        .code("missing_required_parameter"));
                }
            }
            Some(Value::String(_)) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    check_item(i, item)?;
                }
            }
            Some(_) => return Err(bad("input", "'input' must be a string or an array of input items.")),
        }
        if let Some(tools) = request.param("tools") {
            let Some(tools) = tools.as_array() else { return Err(bad("tools", "'tools' must be an array.")) };
            for (i, tool) in tools.iter().enumerate() {
                let kind = tool.get("type").and_then(Value::as_str);
                if kind.is_none() {
                    return Err(Error::bad_request(format!("Missing required parameter: 'tools[{i}].type'."))
                        .param(format!("tools[{i}].type"))
                        .code("missing_required_parameter"));
                }
                if kind == Some("function") && tool.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(Error::bad_request(format!("Missing required parameter: 'tools[{i}].name'."))
                        .param(format!("tools[{i}].name"))
                        .code("missing_required_parameter"));
                }
            }
        }
        if let Some(max) = request.param("max_output_tokens")
            && max.as_u64().is_none_or(|n| n < 16)
        {
            return Err(bad("max_output_tokens", "'max_output_tokens' must be an integer of at least 16."));
        }
        if let Some(format) = request.param("text").and_then(|t| t.get("format")) {
            match format.get("type").and_then(Value::as_str) {
                Some("text" | "json_object") => {}
                Some("json_schema") if format.get("schema").is_some_and(Value::is_object) => {}
                Some("json_schema") => {
                    return Err(Error::bad_request("Missing required parameter: 'text.format.schema'.")
                        .param("text.format.schema")
                        .code("missing_required_parameter"));
                }
                _ => {
                    return Err(bad(
                        "text.format.type",
                        "'text.format.type' must be 'text', 'json_object' or 'json_schema'.",
                    ));
                }
            }
        }
        if request.param("background") == Some(&Value::Bool(true)) {
            return Err(Error::bad_request(
                "Background responses are not supported by this gateway; send the request without 'background'.",
            )
            .param("background")
            .code("unsupported_parameter"));
        }
        if request.param("conversation").is_some() {
            return Err(Error::bad_request("The Conversations API is not supported by this gateway; use 'previous_response_id' to continue a response.")
                .param("conversation")
                .code("unsupported_parameter"));
        }
        Ok(request)
    }

    /// A parameter kept as sent, if present and not `null`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.extra.get(name).filter(|v| !v.is_null())
    }

    /// Whether the response is to be stored (`store` defaults to true, as OpenAI's does).
    pub fn stores(&self) -> bool {
        self.store != Some(false)
    }

    /// This request's own input as items (a string is one user message).
    pub fn own_items(&self) -> Vec<Value> {
        match &self.input {
            Some(Value::String(s)) => {
                vec![json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": s}]})]
            }
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        }
    }

    /// Every item the model sees: the stored conversation, then this request's input.
    pub fn conversation(&self) -> Vec<Value> {
        self.history.iter().cloned().chain(self.own_items()).collect()
    }

    /// The request for an upstream that speaks Responses: the target's model, and the conversation
    /// in full instead of `previous_response_id`.
    pub fn upstream_body(&self, model: &str) -> Result<Vec<u8>, Error> {
        let mut copy = self.clone();
        copy.model = model.to_owned();
        if copy.previous_response_id.take().is_some() {
            copy.input = Some(Value::Array(self.conversation()));
        }
        copy.history.clear();
        serde_json::to_vec(&copy).map_err(|e| Error::internal("could not encode the upstream request").source(e))
    }

    fn text_bytes(&self) -> usize {
        let items = self.conversation();
        let content: usize = items
            .iter()
            .map(|item| {
                item.get("content").map_or(0, super::text_len)
                    + item.get("output").and_then(Value::as_str).map_or(0, str::len)
                    + item.get("arguments").and_then(Value::as_str).map_or(0, str::len)
            })
            .sum();
        content + self.instructions.as_deref().map_or(0, str::len)
    }
}

/// Checks one input item's shape (what the translation and the store rely on).
fn check_item(i: usize, item: &Value) -> Result<(), Error> {
    let at = |f: &str| format!("input[{i}].{f}");
    let missing = |f: &str| {
        Error::bad_request(format!("Missing required parameter: '{}'.", at(f)))
            .param(at(f))
            .code("missing_required_parameter")
    };
    let Some(map) = item.as_object() else {
        return Err(bad(&format!("input[{i}]"), format!("'input[{i}]' must be an object.")));
    };
    let kind = map.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            match map.get("role").and_then(Value::as_str) {
                Some("user" | "assistant" | "system" | "developer") => {}
                Some(_) => {
                    return Err(bad(
                        &at("role"),
                        format!("'{}' must be 'user', 'assistant', 'system' or 'developer'.", at("role")),
                    ));
                }
                None => return Err(missing("role")),
            }
            match map.get("content") {
                Some(Value::String(_) | Value::Array(_)) => {}
                Some(_) => {
                    return Err(bad(
                        &at("content"),
                        format!("'{}' must be a string or an array of parts.", at("content")),
                    ));
                }
                None => return Err(missing("content")),
            }
        }
        "function_call" => {
            for f in ["call_id", "name", "arguments"] {
                if !map.get(f).is_some_and(Value::is_string) {
                    return Err(missing(f));
                }
            }
        }
        "function_call_output" => {
            if !map.get("call_id").is_some_and(Value::is_string) {
                return Err(missing("call_id"));
            }
            if map.get("output").is_none() {
                return Err(missing("output"));
            }
        }
        _ => {}
    }
    Ok(())
}

impl SurfaceRequest for ResponsesRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    fn facts(&self) -> Facts {
        Facts {
            max_tokens: self
                .param("max_output_tokens")
                .and_then(Value::as_u64)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            temperature: self.param("temperature").and_then(Value::as_f64).map(|t| t as f32),
            end_user: self.param("user").and_then(Value::as_str).map(str::to_owned),
            prompt_tokens_estimate: u32::try_from(self.text_bytes().div_ceil(4)).unwrap_or(u32::MAX),
        }
    }

    fn to_chat(&self) -> Result<ChatRequest, Error> {
        to_chat(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Responses request → canonical

fn refuse(param: String, what: &str) -> Error {
    Error::bad_request(format!(
        "{what} is not supported for this model, whose provider is reached through chat completions; use a model served by an upstream that speaks the Responses API."
    ))
    .param(param)
    .code("unsupported_parameter")
}

fn to_chat(req: &ResponsesRequest) -> Result<ChatRequest, Error> {
    let mut messages: Vec<Message> = Vec::new();
    let push =
        |messages: &mut Vec<Message>, role: Role, rest: Map<String, Value>| messages.push(Message { role, rest });
    if let Some(instructions) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        push(&mut messages, Role::System, Map::from_iter([("content".into(), json!(instructions))]));
    }
    let history = req.history.len();
    for (n, item) in req.conversation().iter().enumerate() {
        // Input items of this request are named by their own index; earlier turns' by theirs.
        let at =
            if n >= history { format!("input[{}]", n - history) } else { format!("previous_response_id (item {n})") };
        match item.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("assistant") => Role::Assistant,
                    Some("system") => Role::System,
                    Some("developer") => Role::Developer,
                    _ => Role::User,
                };
                let content = content_parts(item.get("content").unwrap_or(&Value::Null), &at, role == Role::Assistant)?;
                push(&mut messages, role, Map::from_iter([("content".into(), content)]));
            }
            "function_call" => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or(json!("")),
                    "type": "function",
                    "function": {"name": item.get("name").cloned().unwrap_or(json!("")), "arguments": item.get("arguments").cloned().unwrap_or(json!("{}"))},
                });
                // Consecutive calls are one assistant message with several tool calls.
                if let Some(last) = messages.last_mut()
                    && last.role == Role::Assistant
                    && let Some(Value::Array(calls)) = last.rest.get_mut("tool_calls")
                {
                    calls.push(call);
                    continue;
                }
                if let Some(last) = messages.last_mut()
                    && last.role == Role::Assistant
                    && !last.rest.contains_key("tool_calls")
                {
                    last.rest.insert("tool_calls".into(), json!([call]));
                    continue;
                }
                push(
                    &mut messages,
                    Role::Assistant,
                    Map::from_iter([("content".into(), Value::Null), ("tool_calls".into(), json!([call]))]),
                );
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
                    }
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                push(
                    &mut messages,
                    Role::Tool,
                    Map::from_iter([
                        ("tool_call_id".into(), item.get("call_id").cloned().unwrap_or(json!(""))),
                        ("content".into(), json!(output)),
                    ]),
                );
            }
            // Reasoning of an earlier turn: no chat upstream takes it back.
            "reasoning" => {}
            other => return Err(refuse(format!("{at}.type"), &format!("An input item of type '{other}'"))),
        }
    }
    let mut extra = Map::new();
    if let Some(max) = req.param("max_output_tokens") {
        extra.insert("max_completion_tokens".into(), max.clone());
    }
    for name in
        ["temperature", "top_p", "user", "parallel_tool_calls", "service_tier", "prompt_cache_key", "safety_identifier"]
    {
        if let Some(v) = req.param(name) {
            extra.insert(name.into(), v.clone());
        }
    }
    if let Some(effort) = req.param("reasoning").and_then(|r| r.get("effort")).filter(|e| e.is_string()) {
        extra.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(format) = req.param("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = json!({"name": format.get("name").cloned().unwrap_or(json!("response")), "schema": format.get("schema")});
                if let Some(strict) = format.get("strict") {
                    schema["strict"] = strict.clone();
                }
                if let Some(d) = format.get("description") {
                    schema["description"] = d.clone();
                }
                extra.insert("response_format".into(), json!({"type": "json_schema", "json_schema": schema}));
            }
            Some("json_object") => {
                extra.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    if let Some(tools) = req.param("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) {
        let mut functions = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {}
                other => {
                    return Err(refuse(
                        format!("tools[{i}].type"),
                        &format!("The tool type '{}'", other.unwrap_or_default()),
                    ));
                }
            }
            let mut function = json!({"name": tool.get("name"), "parameters": tool.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}))});
            for key in ["description", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function[key] = v.clone();
                }
            }
            functions.push(json!({"type": "function", "function": function}));
        }
        extra.insert("tools".into(), Value::Array(functions));
        if let Some(choice) = req.param("tool_choice") {
            let mapped = match choice {
                Value::String(_) => choice.clone(),
                Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                    json!({"type": "function", "function": {"name": o.get("name")}})
                }
                _ => return Err(refuse("tool_choice".into(), "This tool_choice")),
            };
            extra.insert("tool_choice".into(), mapped);
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

/// A message item's content as chat content: a string, or text and image parts.
fn content_parts(content: &Value, at: &str, assistant: bool) -> Result<Value, Error> {
    let Value::Array(parts) = content else { return Ok(content.clone()) };
    let mut out = Vec::with_capacity(parts.len());
    for (k, part) in parts.iter().enumerate() {
        let text = || part.get("text").cloned().unwrap_or(json!(""));
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => out.push(json!({"type": "text", "text": text()})),
            Some("refusal") => {
                out.push(json!({"type": "text", "text": part.get("refusal").cloned().unwrap_or(json!(""))}))
            }
            Some("input_image") if !assistant => {
                let url = part
                    .get("image_url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refuse(format!("{at}.content[{k}].file_id"), "An image by file id"))?;
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = detail.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some("input_file") if !assistant => {
                let Some(data) = part.get("file_data").and_then(Value::as_str) else {
                    return Err(refuse(format!("{at}.content[{k}]"), "A file by id or URL"));
                };
                let name = part.get("filename").and_then(Value::as_str).unwrap_or("file");
                out.push(json!({"type": "file", "file": {"filename": name, "file_data": data}}));
            }
            other => {
                return Err(refuse(
                    format!("{at}.content[{k}].type"),
                    &format!("A content part of type '{}'", other.unwrap_or_default()),
                ));
            }
        }
    }
    // An assistant turn is plain text for every chat upstream.
    if assistant {
        return Ok(Value::String(out.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()));
    }
    Ok(Value::Array(out))
}

// ---------------------------------------------------------------------------------------------
// Response objects

/// `resp_…`, `msg_…`, `fc_…`, `rs_…`
fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// What a Response object repeats of its request, and its identity.
#[derive(Debug, Clone)]
pub struct Echo {
    pub id: String,
    pub created_at: u64,
    fields: Map<String, Value>,
}

impl Echo {
    pub fn new(req: &ResponsesRequest) -> Self {
        let param = |name: &str, default: Value| req.param(name).cloned().unwrap_or(default);
        let mut fields = Map::new();
        fields.insert("instructions".into(), req.instructions.clone().map_or(Value::Null, Value::String));
        fields.insert("max_output_tokens".into(), param("max_output_tokens", Value::Null));
        fields.insert("metadata".into(), param("metadata", json!({})));
        fields.insert("parallel_tool_calls".into(), param("parallel_tool_calls", json!(true)));
        fields
            .insert("previous_response_id".into(), req.previous_response_id.clone().map_or(Value::Null, Value::String));
        fields.insert("reasoning".into(), param("reasoning", json!({"effort": null, "summary": null})));
        fields.insert("service_tier".into(), param("service_tier", json!("default")));
        fields.insert("store".into(), json!(req.stores()));
        fields.insert("temperature".into(), param("temperature", json!(1.0)));
        fields.insert("text".into(), param("text", json!({"format": {"type": "text"}})));
        fields.insert("tool_choice".into(), param("tool_choice", json!("auto")));
        fields.insert("tools".into(), param("tools", json!([])));
        fields.insert("top_p".into(), param("top_p", json!(1.0)));
        fields.insert("truncation".into(), param("truncation", json!("disabled")));
        fields.insert("user".into(), param("user", Value::Null));
        Self { id: new_id("resp"), created_at: super::unix_now(), fields }
    }

    /// The Response object: `status`, the output items and usage so far.
    fn object(
        &self,
        model: &str,
        status: &str,
        output: Vec<Value>,
        usage: Option<Value>,
        error: Value,
        incomplete: Value,
    ) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created_at));
        object.insert("status".into(), json!(status));
        object.insert("background".into(), json!(false));
        object.insert("error".into(), error);
        object.insert("incomplete_details".into(), incomplete);
        object.insert("model".into(), json!(model));
        object.insert("output".into(), Value::Array(output));
        for (k, v) in &self.fields {
            object.insert(k.clone(), v.clone());
        }
        object.insert("usage".into(), usage.unwrap_or(Value::Null));
        Value::Object(object)
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens()},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens()},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// `status` and `incomplete_details` for a canonical `finish_reason`.
fn status_of(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}], "role": "assistant"})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id, "name": name})
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]})
}

/// Output items as input items for the next turn: ids removed, messages as plain text, reasoning
/// only with its `encrypted_content`.
pub fn next_input(output: &[Value]) -> Vec<Value> {
    output
        .iter()
        .filter_map(|item| match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let text: String = item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("text").or_else(|| p.get("refusal")).and_then(Value::as_str))
                    .collect();
                Some(json!({"type": "message", "role": "assistant", "content": text}))
            }
            Some("function_call") => Some(json!({
                "type": "function_call", "call_id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments"),
            })),
            Some("reasoning") if item.get("encrypted_content").is_some_and(Value::is_string) => Some(item.clone()),
            _ => None,
        })
        .collect()
}

/// Input items as `input_items` lists them: each with an id (`msg_…` assigned where missing).
pub fn listed_items(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if let Value::Object(map) = &mut item {
                map.entry("type").or_insert(json!("message"));
                if !map.contains_key("id") {
                    let prefix = match map.get("type").and_then(Value::as_str) {
                        Some("function_call") => "fc",
                        Some("function_call_output") => "fco",
                        _ => "msg",
                    };
                    map.insert("id".into(), json!(new_id(prefix)));
                }
                if let Some(Value::String(text)) = map.get("content").cloned() {
                    let kind = if map.get("role").and_then(Value::as_str) == Some("assistant") {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    map.insert("content".into(), json!([{"type": kind, "text": text}]));
                }
            }
            item
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Canonical answers → Responses

/// A whole `chat.completion` → a Response object.
pub fn encode_whole(echo: &Echo, completion: &Completion) -> Value {
    let choice = completion.choices.first().cloned().unwrap_or_default();
    let mut output = Vec::new();
    if let Some(reasoning) = choice.message.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
        output.push(reasoning_item(&new_id("rs"), reasoning));
    }
    let text = choice.message.content.as_deref().or(choice.message.refusal.as_deref()).unwrap_or_default();
    if !text.is_empty() || choice.message.tool_calls.is_empty() {
        output.push(message_item(&new_id("msg"), text, "completed"));
    }
    for call in &choice.message.tool_calls {
        output.push(call_item(&new_id("fc"), &call.id, &call.function.name, &call.function.arguments, "completed"));
    }
    let (status, incomplete) = status_of(choice.finish_reason.as_deref());
    let usage = completion.usage.as_ref().map(usage_json);
    echo.object(completion.model.as_deref().unwrap_or_default(), status, output, usage, Value::Null, incomplete)
}

/// One output item being streamed.
#[derive(Debug)]
enum Item {
    Message { id: String, text: String },
    Reasoning { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String, canonical: usize },
}

/// Canonical chunks → the Responses event sequence.
#[derive(Debug)]
pub struct Encoder {
    echo: Echo,
    model: String,
    sequence: u64,
    started: bool,
    items: Vec<Item>,
    /// The output index of the open item.
    open: Option<usize>,
    finish: Option<String>,
    usage: Option<Usage>,
    /// The final Response object, once the stream ended (for the store).
    pub finished: Option<Value>,
    ended: bool,
}

impl Encoder {
    pub fn new(echo: Echo) -> Self {
        Self {
            echo,
            model: String::new(),
            sequence: 0,
            started: false,
            items: Vec::new(),
            open: None,
            finish: None,
            usage: None,
            finished: None,
            ended: false,
        }
    }

    /// What the Response object repeats of the request, and its id.
    pub fn echo(&self) -> &Echo {
        &self.echo
    }

    fn emit(&mut self, kind: &str, mut data: Value, out: &mut Vec<u8>) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(&data).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
    }

    fn object(&self, status: &str, usage: Option<Value>, error: Value, incomplete: Value) -> Value {
        let output = self.items.iter().map(|item| Self::item_json(item, "completed")).collect();
        self.echo.object(&self.model, status, output, usage, error, incomplete)
    }

    fn item_json(item: &Item, status: &str) -> Value {
        match item {
            Item::Message { id, text } => message_item(id, text, status),
            Item::Reasoning { id, text } => reasoning_item(id, text),
            Item::Call { id, call_id, name, arguments, .. } => call_item(id, call_id, name, arguments, status),
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let object = self.echo.object(&self.model, "in_progress", Vec::new(), None, Value::Null, Value::Null);
        self.emit("response.created", json!({"response": object}), out);
        self.emit("response.in_progress", json!({"response": object}), out);
    }

    /// Closes the open item with its `.done` events.
    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(index) = self.open.take() else { return };
        let done = Self::item_json(&self.items[index], "completed");
        match &self.items[index] {
            Item::Message { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": text}}),
                    out,
                );
            }
            Item::Reasoning { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                self.emit(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                    out,
                );
                self.emit(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": text}}),
                    out,
                );
            }
            Item::Call { id, arguments, .. } => {
                let (id, arguments) = (id.clone(), arguments.clone());
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": arguments}),
                    out,
                );
            }
        }
        self.emit("response.output_item.done", json!({"output_index": index, "item": done}), out);
    }

    /// Opens a new item and announces it.
    fn open_item(&mut self, item: Item, out: &mut Vec<u8>) -> usize {
        self.close(out);
        let index = self.items.len();
        let added = match &item {
            Item::Message { id, .. } => {
                json!({"id": id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"})
            }
            Item::Reasoning { id, .. } => json!({"id": id, "type": "reasoning", "summary": []}),
            Item::Call { id, call_id, name, .. } => call_item(id, call_id, name, "", "in_progress"),
        };
        self.items.push(item);
        self.open = Some(index);
        self.emit("response.output_item.added", json!({"output_index": index, "item": added}), out);
        match &self.items[index] {
            Item::Message { id, .. } => {
                let id = id.clone();
                self.emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}),
                    out,
                );
            }
            Item::Reasoning { id, .. } => {
                let id = id.clone();
                self.emit(
                    "response.reasoning_summary_part.added",
                    json!({"item_id": id, "output_index": index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""}}),
                    out,
                );
            }
            Item::Call { .. } => {}
        }
        index
    }

    /// One canonical event → the Responses events it becomes, appended to `out`.
    pub fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if self.ended || event.data.is_empty() {
            return;
        }
        if &event.data[..] == b"[DONE]" {
            self.start(out);
            self.close(out);
            let (status, incomplete) = status_of(self.finish.as_deref());
            let usage = self.usage.as_ref().map(usage_json);
            let object = self.object(status, usage, Value::Null, incomplete);
            let kind = if status == "incomplete" { "response.incomplete" } else { "response.completed" };
            self.emit(kind, json!({"response": object}), out);
            self.finished = Some(object);
            self.ended = true;
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(&event.data) else { return };
        if let Some(model) = chunk.model.as_deref().filter(|m| self.model.is_empty() && !m.is_empty()) {
            self.model = model.to_owned();
        }
        if let Some(error) = &chunk.error {
            let error = Error::new(
                crate::error::Kind::UpstreamFailed,
                error.get("message").and_then(Value::as_str).unwrap_or("The upstream failed.").to_owned(),
            )
            .code(error.get("code").and_then(Value::as_str).unwrap_or("upstream_error").to_owned());
            self.fail(&error, out);
            return;
        }
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.iter().find(|c| c.index == 0) else { return };
        self.start(out);
        let delta = &choice.delta;
        if let Some(text) = delta.reasoning_content.as_deref().filter(|t| !t.is_empty()) {
            let index = match self.open.filter(|&i| matches!(self.items[i], Item::Reasoning { .. })) {
                Some(i) => i,
                None => self.open_item(Item::Reasoning { id: new_id("rs"), text: String::new() }, out),
            };
            if let Item::Reasoning { id, text: all } = &mut self.items[index] {
                all.push_str(text);
                let id = id.clone();
                self.emit(
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": text}),
                    out,
                );
            }
        }
        for text in [delta.content.as_deref(), delta.refusal.as_deref()].into_iter().flatten().filter(|t| !t.is_empty())
        {
            let index = match self.open.filter(|&i| matches!(self.items[i], Item::Message { .. })) {
                Some(i) => i,
                None => self.open_item(Item::Message { id: new_id("msg"), text: String::new() }, out),
            };
            if let Item::Message { id, text: all } = &mut self.items[index] {
                all.push_str(text);
                let id = id.clone();
                self.emit(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                    out,
                );
            }
        }
        for call in &delta.tool_calls {
            let function = call.function.as_ref();
            let existing =
                self.items.iter().position(|i| matches!(i, Item::Call { canonical, .. } if *canonical == call.index));
            let index = match (existing, &call.id) {
                (Some(i), None) => i,
                _ => {
                    let item = Item::Call {
                        id: new_id("fc"),
                        call_id: call.id.clone().unwrap_or_default(),
                        name: function.and_then(|f| f.name.clone()).unwrap_or_default(),
                        arguments: String::new(),
                        canonical: call.index,
                    };
                    self.open_item(item, out)
                }
            };
            if let Some(fragment) = function.and_then(|f| f.arguments.as_deref()).filter(|a| !a.is_empty())
                && let Item::Call { id, arguments, .. } = &mut self.items[index]
            {
                arguments.push_str(fragment);
                let id = id.clone();
                self.emit(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": index, "delta": fragment}),
                    out,
                );
            }
        }
        if let Some(finish) = &choice.finish_reason {
            self.finish = Some(finish.clone());
            self.close(out);
        }
    }

    /// The stream failed: `error` and `response.failed` (the error built by `error.rs`).
    pub fn fail(&mut self, error: &Error, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.start(out);
        out.extend_from_slice(&error.responses_error_event(self.sequence));
        self.sequence += 1;
        let object = self.object("failed", self.usage.as_ref().map(usage_json), error.responses_error(), Value::Null);
        self.emit("response.failed", json!({"response": object}), out);
        self.finished = Some(object);
        self.ended = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Natively relayed Responses: what the relay reads, and what plugins see

/// What the relay learns from one native Responses event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct NativePeek {
    pub content: bool,
    /// A terminal event: `response.completed`, `.incomplete` or `.failed`.
    pub done: bool,
    /// `error` or `response.failed`.
    pub error: bool,
    pub usage: Option<Usage>,
    pub sequence_number: Option<u64>,
    /// The Response object of a lifecycle event (`created`, `in_progress`, terminal ones).
    pub response: Option<Value>,
}

/// Reads one native Responses event.
pub fn peek(data: &[u8]) -> NativePeek {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        sequence_number: Option<u64>,
        #[serde(default)]
        response: Option<Value>,
    }
    let Ok(peek) = serde_json::from_slice::<Peek>(data) else { return NativePeek::default() };
    let kind = peek.kind.as_deref().unwrap_or_default();
    let usage = peek.response.as_ref().and_then(|r| r.get("usage")).and_then(native_usage);
    NativePeek {
        content: kind.ends_with(".delta"),
        done: matches!(kind, "response.completed" | "response.incomplete" | "response.failed"),
        error: matches!(kind, "response.failed" | "error"),
        usage,
        sequence_number: peek.sequence_number,
        response: peek.response,
    }
}

/// Responses usage as the gateway accounts it.
pub fn native_usage(u: &Value) -> Option<Usage> {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64);
    Some(Usage {
        prompt_tokens: n("/input_tokens")?,
        completion_tokens: n("/output_tokens").unwrap_or(0),
        prompt_tokens_details: Some(super::PromptDetails {
            cached_tokens: n("/input_tokens_details/cached_tokens"),
            cache_write_tokens: None,
        }),
        completion_tokens_details: Some(super::CompletionDetails {
            reasoning_tokens: n("/output_tokens_details/reasoning_tokens"),
        }),
    })
}

/// The events that end a natively relayed stream that broke: `error` and `response.failed`, built
/// from the last Response object the upstream sent, numbered after its last event.
pub fn native_failure(error: &Error, last: Option<&Value>, sequence: u64) -> Bytes {
    let mut out = error.responses_error_event(sequence).to_vec();
    let mut object = last.cloned().unwrap_or_else(|| json!({"object": "response", "output": []}));
    object["status"] = json!("failed");
    object["error"] = error.responses_error();
    let failed = json!({"type": "response.failed", "sequence_number": sequence + 1, "response": object});
    out.extend_from_slice(b"event: response.failed\ndata: ");
    out.extend_from_slice(&serde_json::to_vec(&failed).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// A whole Response object → a `chat.completion`.
pub fn decode_whole(response: &Value) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for item in response.get("output").and_then(Value::as_array).into_iter().flatten() {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item.get("content").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(t) = part.get("text").or_else(|| part.get("refusal")).and_then(Value::as_str) {
                        text.push_str(t);
                    }
                }
            }
            Some("reasoning") => {
                for part in item.get("summary").and_then(Value::as_array).into_iter().flatten() {
                    reasoning.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                }
            }
            Some("function_call") => calls.push(json!({
                "id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            })),
            _ => {}
        }
    }
    let finish = match (
        response.get("status").and_then(Value::as_str),
        response.pointer("/incomplete_details/reason").and_then(Value::as_str),
    ) {
        (Some("incomplete"), Some("content_filter")) => "content_filter",
        (Some("incomplete"), _) => "length",
        _ if !calls.is_empty() => "tool_calls",
        _ => "stop",
    };
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut out = json!({
        "id": response.get("id"), "object": "chat.completion", "created": response.get("created_at"), "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
    });
    if let Some(usage) = response.get("usage").and_then(native_usage) {
        out["usage"] = canonical_usage(&usage);
    }
    out
}

fn canonical_usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens()},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens()},
    })
}

/// Native Responses events → canonical chunks (what plugins read of a natively relayed stream).
#[derive(Debug, Default)]
pub struct Decoder {
    splitter: Splitter,
    id: String,
    model: String,
    /// Function-call item ids, in the order their calls began.
    calls: Vec<String>,
}

impl Decoder {
    pub fn new() -> Self {
        Self { id: super::completion_id(), ..Self::default() }
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>) -> Event {
        super::sse::data_event(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    /// One native event → the canonical events it becomes.
    pub fn event(&mut self, event: &Event, out: &mut Vec<Event>) {
        let Ok(payload) = serde_json::from_slice::<Value>(&event.data) else { return };
        let str_at = |k: &str| payload.get(k).and_then(Value::as_str).unwrap_or_default();
        match str_at("type") {
            "response.created" => {
                self.model = payload.pointer("/response/model").and_then(Value::as_str).unwrap_or_default().to_owned();
                out.push(self.chunk(&json!({"role": "assistant", "content": ""}), None));
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                out.push(self.chunk(&json!({"content": str_at("delta")}), None))
            }
            "response.reasoning_summary_text.delta" => {
                out.push(self.chunk(&json!({"reasoning_content": str_at("delta")}), None))
            }
            "response.output_item.added"
                if payload.pointer("/item/type").and_then(Value::as_str) == Some("function_call") =>
            {
                let item = &payload["item"];
                let n = self.calls.len();
                self.calls.push(item.get("id").and_then(Value::as_str).unwrap_or_default().to_owned());
                out.push(self.chunk(
                    &json!({"tool_calls": [{"index": n, "id": item.get("call_id"), "type": "function", "function": {"name": item.get("name"), "arguments": ""}}]}),
                    None,
                ));
            }
            "response.function_call_arguments.delta" => {
                if let Some(n) = self.calls.iter().position(|id| id == str_at("item_id")) {
                    out.push(self.chunk(
                        &json!({"tool_calls": [{"index": n, "function": {"arguments": str_at("delta")}}]}),
                        None,
                    ));
                }
            }
            "response.completed" | "response.incomplete" => {
                let response = &payload["response"];
                let decoded = decode_whole(response);
                let finish =
                    decoded.pointer("/choices/0/finish_reason").and_then(Value::as_str).unwrap_or("stop").to_owned();
                out.push(self.chunk(&json!({}), Some(&finish)));
                if let Some(usage) = decoded.get("usage") {
                    out.push(super::sse::data_event(&json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model, "choices": [], "usage": usage})));
                }
                out.push(super::sse::done_event());
            }
            "error" | "response.failed" => {
                let error =
                    payload.get("error").or_else(|| payload.pointer("/response/error")).cloned().unwrap_or(Value::Null);
                out.push(super::sse::data_event(&json!({"error": error})));
            }
            _ => {}
        }
    }

    /// Feeds raw bytes (for a whole local body).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.splitter.push(bytes);
        while let Some(event) = self.splitter.next_event() {
            self.event(&event, out);
        }
    }
}

#[cfg(test)]
mod tests;
