//! The OpenAI Responses routes of the mock: `POST /v1/responses` (whole, or streamed with the typed
//! event sequence, every event numbered by `sequence_number`), `GET` and `DELETE
//! /v1/responses/{id}`. Recorded streams replay with `model: "fixture:<name>"`
//! (`bench/fixtures/openai-responses/`).
//!
//! Like the API it keeps stored responses (`store` defaults to true) so that
//! `previous_response_id` works — and refuses an unknown one — and it refuses unknown parameters,
//! chat-style tools (`{"type":"function","function":{…}}`), and function-call outputs whose
//! `call_id` no earlier function call in the conversation had.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::{
    ApiError, Finish, MockBody, Recorded, Script, ScriptReply, Shared, TOOL_ARGUMENTS, argument_fragments,
    check_api_key, injected_failure, json_response, streamed, unix_now, with_retry_after, word_count,
};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        fn fixture(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../../fixtures/openai-responses/", $name, ".sse"))),)*
                _ => None,
            }
        }
    };
}

fixtures!("text", "text_logprobs", "function_call", "text_then_function_call", "reasoning_summary", "error_mid_stream");

/// The parameters the Responses API takes.
const KNOWN: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "max_output_tokens",
    "temperature",
    "top_p",
    "metadata",
    "user",
    "store",
    "stream",
    "previous_response_id",
    "parallel_tool_calls",
    "truncation",
    "include",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "top_logprobs",
    "max_tool_calls",
    "background",
    "prompt",
    "stream_options",
    "conversation",
];

fn invalid(param: &str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message,
        kind: "invalid_request_error",
        param: Some(leak(param)),
        code: None,
    }
}

/// Error params are `&'static str` in [`ApiError`]; the mock's few dynamic ones are leaked, which
/// is bounded by the handful of distinct paths a test produces.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    handle(shared, req, path).unwrap_or_else(ApiError::into_response)
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<http::Response<MockBody>, ApiError> {
    check_api_key(&shared.config, req)?;
    let not_found = |id: &str| ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("No response found with id '{id}'."),
        kind: "invalid_request_error",
        param: None,
        code: None,
    };
    if let Some(id) = path.strip_prefix("/v1/responses/") {
        let mut stored = shared.responses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        return match req.method.as_str() {
            "GET" => stored.get(id).map(|(r, _)| json_response(StatusCode::OK, r)).ok_or_else(|| not_found(id)),
            "DELETE" => stored
                .remove(id)
                .map(|_| {
                    json_response(StatusCode::OK, &json!({"id": id, "object": "response.deleted", "deleted": true}))
                })
                .ok_or_else(|| not_found(id)),
            _ => Err(not_found(id)),
        };
    }
    if req.method != "POST" {
        return Err(not_found(""));
    }
    if let Some(status) = injected_failure(shared) {
        return Ok(with_retry_after(shared, status, ApiError::injected(status).into_response()));
    }
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| ApiError::invalid(None, None, "We could not parse the JSON body of your request."))?;
    let Some(map) = body.as_object() else {
        return Err(ApiError::invalid(None, None, "The request body must be a JSON object."));
    };
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(unknown, format!("Unknown parameter: '{unknown}'.")));
    }
    let model = map
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("model", "Missing required parameter: 'model'.".into()))?;
    let mut conversation: Vec<Value> = Vec::new();
    if let Some(previous) = map.get("previous_response_id").and_then(Value::as_str) {
        let stored = shared.responses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((response, input)) = stored.get(previous) else {
            return Err(invalid("previous_response_id", format!("Previous response with id '{previous}' not found.")));
        };
        conversation.extend(input.iter().cloned());
        conversation.extend(response["output"].as_array().into_iter().flatten().cloned());
    }
    let own: Vec<Value> = match map.get("input") {
        Some(Value::String(s)) => vec![json!({"type": "message", "role": "user", "content": s})],
        Some(Value::Array(items)) => items.clone(),
        None if !conversation.is_empty() => Vec::new(),
        _ => {
            return Err(invalid(
                "input",
                "Invalid type for 'input': expected a string or an array of input items.".into(),
            ));
        }
    };
    conversation.extend(own.iter().cloned());
    let stream = map.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream && let Some(name) = model.strip_prefix("fixture:") {
        let recorded = fixture(name).ok_or_else(|| super::model_not_found(model))?;
        let events = recorded.split_inclusive("\n\n").map(|e| Bytes::from_static(e.as_bytes())).collect();
        return Ok(streamed(shared, events, "text/event-stream"));
    }
    let script = read(map, &conversation)?;
    let n = shared.next_id();
    let answer = Answer { script, n, model: model.to_owned(), request: body.clone() };
    let done = answer.response("completed");
    if map.get("store").and_then(Value::as_bool) != Some(false) {
        let input = conversation.clone();
        shared
            .responses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(answer.id(), (done.clone(), input));
    }
    if !stream {
        return Ok(json_response(StatusCode::OK, &done));
    }
    Ok(streamed(shared, answer.events(), "text/event-stream"))
}

/// Reads the conversation and tools into the mocks' common script.
fn read(map: &serde_json::Map<String, Value>, conversation: &[Value]) -> Result<Script, ApiError> {
    let mut prompt_tokens = map.get("instructions").and_then(Value::as_str).map_or(0, word_count);
    let (mut last_user, mut tool_result) = (String::new(), None);
    let mut calls: Vec<String> = Vec::new();
    for (i, item) in conversation.iter().enumerate() {
        tool_result = None;
        match item.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
                if !["user", "assistant", "system", "developer"].contains(&role) {
                    return Err(invalid(
                        &format!("input[{i}].role"),
                        format!(
                            "Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."
                        ),
                    ));
                }
                let text: String = match item.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => {
                        parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
                    }
                    _ => {
                        return Err(invalid(
                            &format!("input[{i}].content"),
                            format!("Missing required parameter: 'input[{i}].content'."),
                        ));
                    }
                };
                prompt_tokens += word_count(&text);
                if role == "user" {
                    last_user = text;
                }
            }
            "function_call" => calls.push(item.get("call_id").and_then(Value::as_str).unwrap_or_default().to_owned()),
            "function_call_output" => {
                let id = item.get("call_id").and_then(Value::as_str).unwrap_or_default();
                if !calls.iter().any(|c| c == id) {
                    return Err(invalid(
                        "input",
                        format!("No tool call found for function call output with call_id {id}."),
                    ));
                }
                tool_result = Some(item.get("output").and_then(Value::as_str).unwrap_or_default().to_owned());
            }
            "reasoning" => {
                if item.get("encrypted_content").is_none() {
                    return Err(invalid(
                        &format!("input[{i}]"),
                        "Reasoning input items need their encrypted_content when not stored.".into(),
                    ));
                }
            }
            other => return Err(invalid(&format!("input[{i}].type"), format!("Invalid value: '{other}'."))),
        }
    }
    let mut tools = Vec::new();
    for (i, tool) in map.get("tools").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if tool.get("function").is_some() || tool.get("name").and_then(Value::as_str).is_none() {
            return Err(invalid(
                &format!("tools[{i}].name"),
                format!("Missing required parameter: 'tools[{i}].name'."),
            ));
        }
        tools.push(tool["name"].as_str().unwrap_or_default().to_owned());
    }
    if map.get("tool_choice").and_then(Value::as_str) == Some("none") {
        tools.clear();
    }
    let max = map.get("max_output_tokens").and_then(Value::as_u64);
    let mut script = Script::new(&last_user, tool_result.as_deref(), &tools, max, prompt_tokens);
    // A json_schema answer is an object; the mocks all answer with the same one.
    if map.get("text").and_then(|t| t.pointer("/format/type")).and_then(Value::as_str) == Some("json_schema")
        && matches!(script.reply, ScriptReply::Text(_))
    {
        script.reply = ScriptReply::Text(TOOL_ARGUMENTS.to_owned());
        script.completion_tokens = word_count(TOOL_ARGUMENTS);
    }
    Ok(script)
}

struct Answer {
    script: Script,
    n: u64,
    model: String,
    request: Value,
}

impl Answer {
    fn id(&self) -> String {
        format!("resp_mock{}", self.n)
    }

    fn items(&self, status: &str) -> Vec<Value> {
        match &self.script.reply {
            ScriptReply::Text(t) => vec![
                json!({"id": format!("msg_mock{}", self.n), "type": "message", "status": status, "role": "assistant",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": t}]}),
            ],
            ScriptReply::Calls(calls) => calls
                .iter()
                .enumerate()
                .map(|(k, name)| {
                    json!({"id": format!("fc_mock{}_{k}", self.n), "type": "function_call", "status": status,
                    "arguments": TOOL_ARGUMENTS, "call_id": format!("call_mock{}_{k}", self.n), "name": name})
                })
                .collect(),
        }
    }

    fn response(&self, status: &str) -> Value {
        let done = status == "completed";
        let (status, incomplete) = match (done, self.script.finish) {
            (true, Finish::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
            (true, Finish::Filtered) => ("incomplete", json!({"reason": "content_filter"})),
            _ => (status, Value::Null),
        };
        let field = |k: &str, default: Value| self.request.get(k).cloned().unwrap_or(default);
        json!({
            "id": self.id(), "object": "response", "created_at": unix_now(), "status": status, "background": false, "error": null,
            "incomplete_details": incomplete, "instructions": field("instructions", Value::Null), "max_output_tokens": field("max_output_tokens", Value::Null),
            "model": self.model, "output": if done { self.items("completed") } else { vec![] }, "parallel_tool_calls": true,
            "previous_response_id": field("previous_response_id", Value::Null), "reasoning": {"effort": null, "summary": null},
            "store": field("store", json!(true)), "temperature": field("temperature", json!(1.0)), "text": field("text", json!({"format": {"type": "text"}})),
            "tool_choice": field("tool_choice", json!("auto")), "tools": field("tools", json!([])), "top_p": field("top_p", json!(1.0)),
            "truncation": "disabled", "user": null, "metadata": field("metadata", json!({})),
            "usage": if done { json!({"input_tokens": self.script.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.script.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.script.prompt_tokens + self.script.completion_tokens}) } else { Value::Null },
        })
    }

    fn events(&self) -> Vec<Bytes> {
        let mut seq = 0;
        let mut out = Vec::new();
        let mut emit = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(seq);
            seq += 1;
            out.push(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
        };
        let progress = self.response("in_progress");
        emit("response.created", json!({"response": progress}));
        emit("response.in_progress", json!({"response": progress}));
        for (index, item) in self.items("completed").iter().enumerate() {
            let id = item["id"].clone();
            let mut added = item.clone();
            added["status"] = json!("in_progress");
            if item["type"] == "message" {
                added["content"] = json!([]);
                emit("response.output_item.added", json!({"output_index": index, "item": added}));
                emit(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}),
                );
                for piece in self.script.pieces() {
                    emit(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "delta": piece, "logprobs": []}),
                    );
                }
                if self.script.pieces().is_empty()
                    && let ScriptReply::Text(t) = &self.script.reply
                {
                    emit(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t, "logprobs": []}),
                    );
                }
                let text = item["content"][0]["text"].clone();
                emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                );
                emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": item["content"][0]}),
                );
            } else {
                added["arguments"] = json!("");
                emit("response.output_item.added", json!({"output_index": index, "item": added}));
                for fragment in argument_fragments(TOOL_ARGUMENTS) {
                    emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": fragment}),
                    );
                }
                emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "arguments": TOOL_ARGUMENTS}),
                );
            }
            emit("response.output_item.done", json!({"output_index": index, "item": item}));
        }
        let done = self.response("completed");
        let kind = if done["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        emit(kind, json!({"response": done}));
        out
    }
}
