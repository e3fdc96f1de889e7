//! The legacy Completions route of the mock, `POST /v1/completions` (OpenAI's `text_completion`
//! objects, whole or streamed, `echo` and the usage chunk as the API has them), reached through the
//! OpenAI routes (`mock/openai.rs`), whose key check, injected failures and error bodies it shares.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::{ApiError, MockBody, Shared, event, json_response, sse, unix_now, word_count, words};

/// `POST /v1/completions`: `echo: <prompt>`, cut at `max_tokens` words (16 by default, as OpenAI's),
/// the prompt put in front when `echo` is set.
pub(super) fn respond(shared: &Arc<Shared>, body: &Value) -> Result<Response<MockBody>, ApiError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(Some("model"), None, "you must provide a model parameter"))?;
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return Err(ApiError::invalid(
                Some("prompt"),
                Some("invalid_type"),
                "Invalid 'prompt': this mock takes one text prompt.",
            ));
        }
    };
    if body.get("messages").is_some() {
        return Err(ApiError::invalid(Some("messages"), None, "Unrecognized request argument supplied: messages"));
    }
    let max = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as usize;
    let answer = format!("echo: {prompt}");
    let pieces: Vec<&str> = words(&answer).take(max).collect();
    let finish = if words(&answer).count() > max { "length" } else { "stop" };
    let echo = if body.get("echo").and_then(Value::as_bool) == Some(true) { prompt.clone() } else { String::new() };
    let (prompt_tokens, completion_tokens) = (word_count(&prompt), pieces.len());
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
    let id = format!("cmpl-mock-{}", shared.next_id());
    let created = unix_now();
    let choice = |text: String, finish: Option<&str>| json!({"text": text, "index": 0, "logprobs": null, "finish_reason": finish});
    let chunk = |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        let mut whole = chunk(json!([choice(format!("{echo}{}", pieces.concat()), Some(finish))]));
        whole["usage"] = usage;
        return Ok(json_response(StatusCode::OK, &whole));
    }
    let mut events = Vec::new();
    if !echo.is_empty() {
        events.push(event(&chunk(json!([choice(echo, None)]))));
    }
    events.extend(pieces.iter().map(|p| event(&chunk(json!([choice((*p).to_owned(), None)])))));
    events.push(event(&chunk(json!([choice(String::new(), Some(finish))]))));
    if body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(event(&last));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Ok(sse(shared, events))
}
