//! The OpenAI routes of the mock, the protocol every other one is measured against:
//! `POST /v1/chat/completions` (whole answers, streams synthesized from the same answer, and the
//! recorded streams of `bench/fixtures/openai/` replayed byte for byte for `model: "fixture:<name>"`),
//! `POST /v1/embeddings` (vectors tests can predict, float or base64), `POST /v1/completions`
//! (`mock/completions.rs`) and `GET /v1/models`, with OpenAI's error bodies and its validation
//! messages where clients depend on them.
//!
//! Any path no other protocol claims lands here, so an unknown route gets OpenAI's 404.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::{
    MockBody, MockBuilder, Recorded, Shared, TOOL_ARGUMENTS, argument_fragments, azure, cut_bytes, embedding_vector,
    event, injected_failure, json_response, sse, unix_now, with_retry_after, word_count, words,
};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        /// Names of the recorded OpenAI streams in `bench/fixtures/openai/`, usable as `fixture:<name>`.
        pub const FIXTURES: &[&str] = &[$($name),*];

        /// The recorded OpenAI stream `name` (raw `text/event-stream` bytes), if there is one.
        pub fn fixture(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(include_str!(concat!("../../fixtures/openai/", $name, ".sse"))),)*
                _ => None,
            }
        }
    };
}

fixtures!(
    "text_a",
    "text_b",
    "text_c",
    "text_logprobs",
    "length",
    "n3_choices",
    "tool_call",
    "tool_call_b",
    "tool_call_c",
    "parallel_tool_calls",
    "refusal",
    "refusal_logprobs",
);

/// Model ids listed by `GET /v1/models`.
pub const MODELS: &[&str] = &["mock-model", "gpt-4o-mini", "text-embedding-3-small"];

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Response<MockBody> {
    handle(shared, req, path).unwrap_or_else(ApiError::into_response)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<Response<MockBody>, ApiError> {
    let route = match (req.method.as_str(), path) {
        ("POST", "/v1/chat/completions") => Route::Chat,
        ("POST", "/v1/completions") => Route::Completions,
        ("POST", "/v1/embeddings") => Route::Embeddings,
        ("GET", "/v1/models") => Route::Models,
        (method, _) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("Invalid URL ({method} {path})"),
                kind: "invalid_request_error",
                param: None,
                code: None,
            });
        }
    };
    check_api_key(&shared.config, req)?;
    if route == Route::Models {
        return Ok(models());
    }
    if let Some(status) = injected_failure(shared) {
        return Ok(with_retry_after(shared, status, ApiError::injected(status).into_response()));
    }
    let body: Value = serde_json::from_slice(&req.body).map_err(|_| {
        ApiError::invalid(
            None,
            None,
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    })?;
    if !body.is_object() {
        return Err(ApiError::invalid(None, None, "The request body must be a JSON object."));
    }
    if shared.config.not_json && body.get("stream").and_then(Value::as_bool) != Some(true) {
        let page = "<html><body><h1>200 OK</h1><p>Welcome to nginx!</p></body></html>\n";
        let mut response = Response::new(
            Full::new(Bytes::from_static(page.as_bytes())).map_err(|never| match never {}).boxed_unsync(),
        );
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        return Ok(response);
    }
    match route {
        Route::Chat => chat(shared, &body),
        Route::Completions => super::completions::respond(shared, &body),
        Route::Embeddings => embeddings(&body),
        Route::Models => Ok(models()),
    }
}

pub(super) fn check_api_key(config: &MockBuilder, req: &Recorded) -> Result<(), ApiError> {
    let Some(key) = &config.api_key else {
        return Ok(());
    };
    let message = match req.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) if value.strip_prefix("Bearer ") == Some(key.as_str()) => return Ok(()),
        Some(_) => {
            "Incorrect API key provided. You can find your API key at \
                    https://platform.openai.com/account/api-keys."
        }
        None => {
            "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        }
    };
    Err(ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    })
}

// ---------------------------------------------------------------------------------------------
// Chat completions

fn chat(shared: &Arc<Shared>, body: &Value) -> Result<Response<MockBody>, ApiError> {
    chat_as(shared, body, false)
}

/// A chat completion; `azure` adds Azure's content-filter fields and its empty first chunk.
pub(super) fn chat_as(shared: &Arc<Shared>, body: &Value, azure: bool) -> Result<Response<MockBody>, ApiError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(Some("model"), None, "you must provide a model parameter"))?;
    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("missing_required_parameter"),
                "Missing required parameter: 'messages'.",
            ));
        }
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("empty_array"),
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but \
                 got an empty array instead.",
            ));
        }
        Some(Value::Array(m)) => m,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("messages"),
                Some("invalid_type"),
                "Invalid type for 'messages': expected an array of objects.",
            ));
        }
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let last = messages.last().unwrap_or(&Value::Null);
    let prefill = (last.get("role").and_then(Value::as_str) == Some("assistant")).then(|| message_text(last));
    if prefill.is_some() && shared.config.refuse_prefill {
        return Err(ApiError::invalid(
            Some("messages"),
            None,
            "This model does not support assistant message prefill. The conversation must end with a user or tool message.",
        ));
    }
    let words: usize = messages.iter().map(|m| word_count(&message_text(m))).sum();
    if let Some(window) = shared.config.context_window.filter(|w| words > *w) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "This model's maximum context length is {window} tokens. However, your messages resulted in {words} tokens. Please reduce the length of the messages."
            ),
            kind: "invalid_request_error",
            param: Some("messages"),
            code: Some("context_length_exceeded"),
        });
    }

    if stream && let Some(name) = model.strip_prefix("fixture:") {
        let text = fixture(name).ok_or_else(|| model_not_found(model))?;
        return Ok(sse(shared, replay(text, include_usage)));
    }

    let mut answer = Answer::new(body, messages)?;
    // vLLM's and DeepSeek's ways of asking to continue the final assistant message; without either,
    // a final assistant message is just history and the answer starts anew, as OpenAI's does.
    let continues = body.get("continue_final_message").and_then(Value::as_bool) == Some(true)
        || last.get("prefix").and_then(Value::as_bool) == Some(true);
    if let (Some(prefill), true) = (&prefill, continues) {
        answer.continue_after(prefill);
    }
    let id = format!("chatcmpl-mock-{}", shared.next_id());
    let created = unix_now();
    if stream {
        let mut events = answer.chunks(&id, model, created, include_usage, shared.config.piece_bytes);
        if azure {
            events = azure::stream_events(events, &id, created);
        }
        return Ok(sse(shared, events));
    }
    let message = match &answer.reply {
        Reply::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
        Reply::ToolCall { name } => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": "call_mock_1",
                "type": "function",
                "function": {"name": name, "arguments": TOOL_ARGUMENTS},
            }],
            "refusal": null,
        }),
    };
    let mut completion = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": answer.finish_reason(),
            }],
            "usage": answer.usage(),
            // Lets tests check that a gateway passes unknown fields through in both directions.
            "x_mock": {"echo_unknown": body.get("x_probe").cloned().unwrap_or(Value::Null)},
    });
    if azure {
        azure::add_filter_results(&mut completion);
    }
    Ok(json_response(StatusCode::OK, &completion))
}

enum Reply {
    Text(String),
    ToolCall { name: String },
}

struct Answer {
    reply: Reply,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Answer {
    fn new(body: &Value, messages: &[Value]) -> Result<Self, ApiError> {
        let last = messages.last().unwrap_or(&Value::Null);
        let last_is_tool = last.get("role").and_then(Value::as_str) == Some("tool");
        let first_tool = body.get("tools").and_then(Value::as_array).and_then(|t| t.first());
        let reply = match first_tool {
            Some(tool) if !last_is_tool => {
                let name = tool.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(
                        Some("tools[0].function.name"),
                        Some("missing_required_parameter"),
                        "Missing required parameter: 'tools[0].function.name'.",
                    )
                })?;
                Reply::ToolCall { name: name.to_owned() }
            }
            _ if last_is_tool => Reply::Text(format!("tool said: {}", message_text(last))),
            _ => {
                let user = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
                Reply::Text(format!("echo: {}", user.map(message_text).unwrap_or_default()))
            }
        };
        let prompt_tokens = messages.iter().map(|m| word_count(&message_text(m))).sum();
        let completion_tokens = match &reply {
            Reply::Text(text) => word_count(text),
            Reply::ToolCall { .. } => word_count(TOOL_ARGUMENTS),
        };
        Ok(Self { reply, prompt_tokens, completion_tokens })
    }

    /// The rest of the answer after `prefill`, its start (a model continuing its own words).
    fn continue_after(&mut self, prefill: &str) {
        if let Reply::Text(text) = &mut self.reply
            && let Some(rest) = text.strip_prefix(prefill)
        {
            *text = rest.to_owned();
            self.completion_tokens = word_count(text);
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self.reply {
            Reply::Text(_) => "stop",
            Reply::ToolCall { .. } => "tool_calls",
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// The answer as `chat.completion.chunk` events, shaped like OpenAI's own streams.
    fn chunks(
        &self,
        id: &str,
        model: &str,
        created: u64,
        include_usage: bool,
        piece_bytes: Option<usize>,
    ) -> Vec<Bytes> {
        let chunk = |delta: Value, finish_reason: Option<&str>| {
            event(&json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
            }))
        };
        let mut events = Vec::new();
        match &self.reply {
            Reply::Text(text) => {
                events.push(chunk(json!({"role": "assistant", "content": ""}), None));
                let pieces = words(text).flat_map(|w| piece_bytes.map_or_else(|| vec![w], |n| cut_bytes(w, n)));
                events.extend(pieces.map(|w| chunk(json!({"content": w}), None)));
            }
            Reply::ToolCall { name } => {
                events.push(chunk(
                    json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "index": 0,
                            "id": "call_mock_1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }],
                    }),
                    None,
                ));
                events.extend(argument_fragments(TOOL_ARGUMENTS).map(|fragment| {
                    chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}), None)
                }));
            }
        }
        events.push(chunk(json!({}), Some(self.finish_reason())));
        if include_usage {
            events.push(event(&json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": self.usage(),
            })));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}

/// The text of a message: a string `content`, or its text parts joined.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

/// Splits a recorded stream into its events, leaving out the final usage chunk unless asked for,
/// as OpenAI only sends it with `stream_options.include_usage`.
fn replay(text: &'static str, include_usage: bool) -> Vec<Bytes> {
    text.split_inclusive("\n\n")
        .filter(|event| include_usage || !is_usage_event(event))
        .map(|event| Bytes::from_static(event.as_bytes()))
        .collect()
}

fn is_usage_event(event: &str) -> bool {
    let Some(data) = event.strip_prefix("data: ") else {
        return false;
    };
    serde_json::from_str::<Value>(data).is_ok_and(|chunk| {
        chunk.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty)
            && chunk.get("usage").is_some_and(Value::is_object)
    })
}

// ---------------------------------------------------------------------------------------------
// Embeddings

pub(super) fn embeddings(body: &Value) -> Result<Response<MockBody>, ApiError> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(Some("model"), None, "you must provide a model parameter"))?;
    let inputs = embedding_inputs(body.get("input"))?;
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => 8,
        Some(v) => {
            v.as_u64().filter(|d| (1..=8192).contains(d)).and_then(|d| usize::try_from(d).ok()).ok_or_else(|| {
                ApiError::invalid(
                    Some("dimensions"),
                    Some("invalid_value"),
                    "Invalid 'dimensions': expected an integer between 1 and 8192.",
                )
            })?
        }
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                Some("invalid_value"),
                "Invalid 'encoding_format': expected 'float' or 'base64'.",
            ));
        }
    };
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += input.tokens;
            let vector = embedding_vector(&input.key, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                // Through the f32's shortest decimal form, so the JSON reads like OpenAI's
                // ("-0.0069292835") rather than the f64 widening ("-0.006929283495992422").
                vector.iter().map(|x| x.to_string().parse::<f64>().map_or(Value::Null, Value::from)).collect()
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    ))
}

struct EmbeddingInput {
    /// What the vector is derived from: the text, or the token ids.
    key: Vec<u8>,
    tokens: usize,
}

fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            Some("input"),
            Some("invalid_value"),
            "Invalid 'input': expected a non-empty string, array of strings, array of integers, \
             or array of integer arrays.",
        )
    };
    let text =
        |s: &str| (!s.is_empty()).then(|| EmbeddingInput { key: s.as_bytes().to_vec(), tokens: word_count(s).max(1) });
    let token_ids = |ids: &[Value]| -> Option<EmbeddingInput> {
        if ids.is_empty() {
            return None;
        }
        let key = ids.iter().map(Value::as_u64).collect::<Option<Vec<_>>>()?;
        Some(EmbeddingInput { key: key.iter().flat_map(|id| id.to_le_bytes()).collect(), tokens: key.len() })
    };
    match input {
        None | Some(Value::Null) => Err(ApiError::invalid(
            Some("input"),
            Some("missing_required_parameter"),
            "Missing required parameter: 'input'.",
        )),
        Some(Value::String(s)) => text(s).map(|i| vec![i]).ok_or_else(invalid),
        Some(Value::Array(items)) if items.first().is_some_and(Value::is_number) => {
            token_ids(items).map(|i| vec![i]).ok_or_else(invalid)
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) => text(s),
                Value::Array(ids) => token_ids(ids),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        Some(_) => Err(invalid()),
    }
}

// ---------------------------------------------------------------------------------------------
// Models

fn models() -> Response<MockBody> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "weir-mock"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

// ---------------------------------------------------------------------------------------------
// Responses and errors

/// An OpenAI error response: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) kind: &'static str,
    pub(super) param: Option<&'static str>,
    pub(super) code: Option<&'static str>,
}

impl ApiError {
    pub(super) fn invalid(param: Option<&'static str>, code: Option<&'static str>, message: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.to_owned(),
            kind: "invalid_request_error",
            param,
            code,
        }
    }

    /// The error a real upstream would send with `status`, for `fail_first` and `always_fail`.
    pub(super) fn injected(status: StatusCode) -> Self {
        let (message, kind, code) = match status.as_u16() {
            429 => (
                "Rate limit reached for requests (mock upstream). Please try again in 1s.",
                "requests",
                Some("rate_limit_exceeded"),
            ),
            500 => ("The server had an error while processing your request. Sorry about that!", "server_error", None),
            503 => ("The engine is currently overloaded, please try again later.", "server_error", None),
            s if s >= 500 => ("Upstream failure injected by the mock.", "server_error", None),
            _ => ("Request rejected by the mock.", "invalid_request_error", None),
        };
        Self { status, message: message.to_owned(), kind, param: None, code }
    }

    pub(super) fn into_response(self) -> Response<MockBody> {
        let mut response = json_response(
            self.status,
            &json!({"error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }}),
        );
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

pub(super) fn model_not_found(model: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("The model `{model}` does not exist or you do not have access to it."),
        kind: "invalid_request_error",
        param: None,
        code: Some("model_not_found"),
    }
}
