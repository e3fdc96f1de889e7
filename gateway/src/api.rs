//! Stage: parse. The OpenAI-compatible request surface: read a body within its limits, parse it into
//! typed structs that keep every field they do not understand, and validate what the gateway relies on.

pub mod chat;
pub mod embeddings;
pub mod models;
pub mod sse;

use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Kind};

pub use chat::ChatRequest;
pub use embeddings::EmbeddingsRequest;

/// What a model request asks of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Embeddings,
}

impl Operation {
    pub fn label(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// A model request, parsed once: the canonical form every stage and every provider adapter reads.
/// Adapters translate from it directly, so the body is never parsed twice.
#[derive(Debug, Clone)]
pub enum ModelRequest {
    Chat(ChatRequest),
    Embeddings(EmbeddingsRequest),
}

impl ModelRequest {
    pub fn operation(&self) -> Operation {
        match self {
            ModelRequest::Chat(_) => Operation::Chat,
            ModelRequest::Embeddings(_) => Operation::Embeddings,
        }
    }

    /// The public model name the client asked for.
    pub fn model(&self) -> &str {
        match self {
            ModelRequest::Chat(chat) => &chat.model,
            ModelRequest::Embeddings(embeddings) => &embeddings.model,
        }
    }

    /// `Some(whether the client wants the usage chunk)` for a streamed request, `None` otherwise.
    pub fn stream(&self) -> Option<bool> {
        match self {
            ModelRequest::Chat(chat) => chat.is_stream().then(|| chat.client_wants_usage()),
            ModelRequest::Embeddings(_) => None,
        }
    }

    /// What plugins are told about this request.
    pub fn facts(&self) -> Facts {
        match self {
            ModelRequest::Chat(chat) => chat.facts(),
            ModelRequest::Embeddings(embeddings) => embeddings.facts(),
        }
    }

    /// The request in OpenAI's shape for an upstream that speaks it, with the target's model name
    /// (and, for streams, the usage chunk asked for).
    pub fn upstream_body(&self, model: &str) -> Result<Vec<u8>, Error> {
        match self {
            ModelRequest::Chat(chat) => chat.upstream_body(model),
            ModelRequest::Embeddings(embeddings) => embeddings.upstream_body(model),
        }
    }
}

/// Token counts as OpenAI reports them; upstreams that omit a detail leave it at zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    pub fn cached_tokens(&self) -> u64 {
        self.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0)
    }

    pub fn reasoning_tokens(&self) -> u64 {
        self.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0)
    }
}

/// What plugins are told about a request without parsing it again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub end_user: Option<String>,
    /// About four bytes of text per token: cheap, and close enough for admission-time reservations.
    pub prompt_tokens_estimate: u32,
}

impl Facts {
    pub(crate) fn from_extra(extra: &serde_json::Map<String, serde_json::Value>, text_bytes: usize) -> Self {
        let uint =
            |k: &str| extra.get(k).and_then(serde_json::Value::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        Facts {
            max_tokens: uint("max_completion_tokens").or_else(|| uint("max_tokens")),
            temperature: extra.get("temperature").and_then(serde_json::Value::as_f64).map(|t| t as f32),
            end_user: extra.get("user").and_then(serde_json::Value::as_str).map(str::to_owned),
            prompt_tokens_estimate: u32::try_from(text_bytes.div_ceil(4)).unwrap_or(u32::MAX),
        }
    }
}

/// Bytes of text in a message `content` (a string, or an array of parts with `text`).
pub(crate) fn text_len(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) => s.len(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                serde_json::Value::String(s) => s.len(),
                other => other.get("text").and_then(serde_json::Value::as_str).map_or(0, str::len),
            })
            .sum(),
        _ => 0,
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`.
pub async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Error> {
    let too_large = || {
        Error::new(
            Kind::PayloadTooLarge,
            format!("The request body is larger than this gateway accepts ({limit} bytes)."),
        )
        .code("request_too_large")
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Error::new(Kind::RequestTimeout, "The request body was not received in time.")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Error::bad_request("The request body could not be read.").source(e)),
    }
}

/// Parses a JSON body into `T`, turning serde's complaint into an OpenAI error that names the field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::bad_request("The request body is empty; expected a JSON object.").code("invalid_json"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let e = e.into_inner();
        if e.is_syntax() || e.is_eof() {
            return Error::bad_request(format!(
                "We could not parse the JSON body of your request ({e}). Send a valid JSON object."
            ))
            .code("invalid_json");
        }
        let text = e.to_string();
        if let Some(field) = text.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            let param = if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
            return Error::bad_request(format!("Missing required parameter: '{param}'."))
                .param(param)
                .code("missing_required_parameter");
        }
        let detail = text.split(" at line ").next().unwrap_or(&text).to_owned();
        if path.is_empty() {
            Error::bad_request(format!("Invalid request body: {detail}.")).code("invalid_value")
        } else {
            Error::bad_request(format!("Invalid value for '{path}': {detail}.")).param(path).code("invalid_value")
        }
    })?;
    de.end()
        .map_err(|e| Error::bad_request(format!("Unexpected data after the JSON body ({e}).")).code("invalid_json"))?;
    Ok(value)
}
