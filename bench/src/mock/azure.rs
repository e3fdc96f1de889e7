//! The Azure OpenAI routes of the mock: deployment URLs with a required `api-version`, the
//! `/openai/v1` surface, `api-key` or Entra bearer authentication, content-filter results on every
//! choice and the prompt's filter results in an empty first chunk, as Azure streams them.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::openai::{ApiError, chat_as, embeddings};
use super::{MockBody, Recorded, Shared, TRIGGER_CONTENT_FILTER, injected_failure};

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    handle(shared, req, path).unwrap_or_else(ApiError::into_response)
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<http::Response<MockBody>, ApiError> {
    let not_found = || ApiError {
        status: StatusCode::NOT_FOUND,
        message: "Resource not found".to_owned(),
        kind: "invalid_request_error",
        param: None,
        code: Some("404"),
    };
    let (deployment, operation) = if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (deployment, operation) = rest.split_once('/').ok_or_else(not_found)?;
        let has_version =
            req.path.split_once('?').is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("api-version=")));
        if !has_version {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: "Resource not found: the api-version query parameter is missing".to_owned(),
                kind: "invalid_request_error",
                param: None,
                code: Some("404"),
            });
        }
        (Some(deployment.to_owned()), operation)
    } else if let Some(operation) = path.strip_prefix("/openai/v1/") {
        (None, operation)
    } else {
        return Err(not_found());
    };
    if req.method != "POST" {
        return Err(not_found());
    }
    // The v1 surface also takes the key as a bearer token, which is what the plain OpenAI client sends.
    let given = req.header("api-key").or_else(|| {
        deployment.is_none().then(|| req.header("authorization").and_then(|a| a.strip_prefix("Bearer "))).flatten()
    });
    let key_ok = match (&shared.config.api_key, given) {
        (_, None) => false,
        (Some(key), Some(given)) => given == key,
        (None, Some(_)) => true,
    };
    if !key_ok && !shared.has_issued_token(req) {
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide \
                      a valid key for an active subscription and use a correct regional API endpoint for your resource."
                .to_owned(),
            kind: "invalid_request_error",
            param: None,
            code: Some("401"),
        });
    }
    if let Some(status) = injected_failure(shared) {
        return Err(ApiError::injected(status));
    }
    let mut body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| ApiError::invalid(None, None, "The request body is not valid JSON."))?;
    if let Some(deployment) = deployment {
        // The deployment decides the model; Azure ignores the body's `model`.
        body["model"] = json!(deployment);
    }
    match operation {
        "chat/completions" => {
            let prompt = body.get("messages").map(Value::to_string).unwrap_or_default();
            if prompt.contains(TRIGGER_CONTENT_FILTER) {
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: "The response was filtered due to the prompt triggering Azure OpenAI's content \
                              management policy."
                        .to_owned(),
                    kind: "invalid_request_error",
                    param: Some("prompt"),
                    code: Some("content_filter"),
                });
            }
            chat_as(shared, &body, true)
        }
        "embeddings" => embeddings(&body),
        _ => Err(not_found()),
    }
}

fn filters() -> Value {
    json!({
        "hate": {"filtered": false, "severity": "safe"},
        "self_harm": {"filtered": false, "severity": "safe"},
        "sexual": {"filtered": false, "severity": "safe"},
        "violence": {"filtered": false, "severity": "safe"},
    })
}

/// Adds `prompt_filter_results` and each choice's `content_filter_results` to a whole answer.
pub(super) fn add_filter_results(completion: &mut Value) {
    completion["prompt_filter_results"] = json!([{"prompt_index": 0, "content_filter_results": filters()}]);
    if let Some(choices) = completion.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            choice["content_filter_results"] = filters();
        }
    }
}

/// Azure's stream: an empty first chunk (no `id`, no model, `choices: []`) carrying the prompt's
/// filter results, then OpenAI's chunks with filter results on their choices.
pub(super) fn stream_events(events: Vec<Bytes>, _id: &str, _created: u64) -> Vec<Bytes> {
    let first = json!({
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters()}],
    });
    let mut out = vec![super::event(&first)];
    for event in events {
        let Some(data) = std::str::from_utf8(&event).ok().and_then(|e| e.strip_prefix("data: ")) else {
            out.push(event);
            continue;
        };
        match serde_json::from_str::<Value>(data.trim_end()) {
            Ok(mut chunk) => {
                if let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) {
                    for choice in choices {
                        choice["content_filter_results"] = filters();
                    }
                }
                out.push(super::event(&chunk));
            }
            Err(_) => out.push(event),
        }
    }
    out
}
