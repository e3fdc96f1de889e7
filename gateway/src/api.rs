//! Stage: parse. The client APIs the gateway speaks — OpenAI's Chat Completions, Embeddings, legacy
//! Completions and Responses, and Anthropic's Messages: read a body within its limits, parse it into
//! typed structs that keep every field they do not understand, and validate what the gateway relies
//! on. Each surface other than Chat Completions and Embeddings also turns its request into the
//! canonical chat form ([`ModelRequest`]) that every provider adapter translates from, and turns a
//! canonical answer (whole or streamed) back into its own shape (`completions.rs`, `messages.rs`,
//! `responses.rs`): N surfaces and M upstream kinds meet in the middle.

/// A unit-only enum of a request field, read only from its string form. serde's derive also reads
/// the map form (`{"user": null}`), which no client means and which would be sent on as `"user"`:
/// a different request from the one the client wrote (found by `properties.rs`).
macro_rules! string_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const NAMES: &[&str] = &[$($text),+];
                let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                match &*name {
                    $($text => Ok(Self::$variant),)+
                    other => Err(serde::de::Error::unknown_variant(other, NAMES)),
                }
            }
        }
    };
}

pub mod chat;
pub mod completions;
pub mod embeddings;
#[cfg(test)]
mod golden;
pub mod messages;
pub mod models;
pub mod predict;
pub mod responses;
pub mod sse;

#[cfg(test)]
pub(crate) mod properties;

use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Kind};

pub use chat::ChatRequest;
pub use completions::CompletionsRequest;
pub use embeddings::EmbeddingsRequest;
pub use messages::MessagesRequest;
pub use predict::PredictRequest;
pub use responses::ResponsesRequest;

/// The client API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `POST /v1/chat/completions`: the canonical form itself.
    ChatCompletions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/completions`, OpenAI's legacy text completions.
    Completions,
    /// `POST /v1/messages`, Anthropic's Messages API.
    Messages,
    /// `POST /v1/responses`, OpenAI's Responses API.
    Responses,
    /// `POST /v1/models/{model}:predict` and `:rawPredict`: prediction traffic.
    Predict,
}

impl Surface {
    /// The `surface` label of metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Surface::ChatCompletions => "chat_completions",
            Surface::Embeddings => "embeddings",
            Surface::Completions => "completions",
            Surface::Messages => "messages",
            Surface::Responses => "responses",
            Surface::Predict => "predict",
        }
    }

    /// The error format of this API.
    pub fn error_shape(self) -> crate::error::Shape {
        match self {
            Surface::Messages => crate::error::Shape::Anthropic,
            _ => crate::error::Shape::OpenAi,
        }
    }
}

/// A model request as the client sent it: the canonical request itself (Chat Completions,
/// Embeddings), or another surface's parsed request, whose canonical form is built the first time a
/// target that must translate it asks — a request relayed natively (Messages to Anthropic, say)
/// never pays for it.
#[derive(Debug)]
pub enum ClientRequest {
    Canonical(ModelRequest),
    Completions(Surfaced<CompletionsRequest>),
    Messages(Surfaced<MessagesRequest>),
    Responses(Surfaced<ResponsesRequest>),
    /// A prediction: no canonical chat form, served only by the kinds that predict.
    Predict(PredictRequest),
}

/// What each non-canonical surface's request can say about itself.
pub trait SurfaceRequest {
    /// The public model name.
    fn model(&self) -> &str;
    /// Whether the client asked for a stream.
    fn is_stream(&self) -> bool;
    /// What plugins are told.
    fn facts(&self) -> Facts;
    /// The canonical chat request, or why this request cannot be translated (a field that only its
    /// own API's upstreams understand, named in the error).
    fn to_chat(&self) -> Result<ChatRequest, Error>;
}

/// A surface's request and, once built, its canonical form.
#[derive(Debug)]
pub struct Surfaced<T> {
    pub request: T,
    canonical: std::sync::OnceLock<Result<ModelRequest, Refusal>>,
}

impl<T> Surfaced<T> {
    pub fn new(request: T) -> Self {
        Self { request, canonical: std::sync::OnceLock::new() }
    }
}

/// Why a request cannot be translated, kept so that every attempt reports it the same way.
#[derive(Debug, Clone)]
struct Refusal {
    message: String,
    param: Option<String>,
    code: Option<String>,
}

impl Refusal {
    fn of(error: &Error) -> Self {
        Self {
            message: error.message.to_string(),
            param: error.param.as_deref().map(str::to_owned),
            code: error.code.as_deref().map(str::to_owned),
        }
    }

    fn error(&self) -> Error {
        let mut e = Error::bad_request(self.message.clone());
        e.param = self.param.as_deref().map(Into::into);
        e.code = Some(self.code.clone().unwrap_or_else(|| "unsupported_parameter".to_owned()).into());
        e
    }
}

impl ClientRequest {
    pub fn surface(&self) -> Surface {
        match self {
            ClientRequest::Canonical(ModelRequest::Chat(_)) => Surface::ChatCompletions,
            ClientRequest::Canonical(ModelRequest::Embeddings(_)) => Surface::Embeddings,
            ClientRequest::Completions(_) => Surface::Completions,
            ClientRequest::Messages(_) => Surface::Messages,
            ClientRequest::Responses(_) => Surface::Responses,
            ClientRequest::Predict(_) => Surface::Predict,
        }
    }

    fn surfaced(&self) -> Option<&dyn SurfaceRequest> {
        match self {
            ClientRequest::Canonical(_) | ClientRequest::Predict(_) => None,
            ClientRequest::Completions(s) => Some(&s.request),
            ClientRequest::Messages(s) => Some(&s.request),
            ClientRequest::Responses(s) => Some(&s.request),
        }
    }

    pub fn operation(&self) -> Operation {
        match self {
            ClientRequest::Canonical(request) => request.operation(),
            ClientRequest::Predict(_) => Operation::Predict,
            _ => Operation::Chat,
        }
    }

    /// The public model name the client asked for.
    pub fn model(&self) -> &str {
        match (self, self.surfaced()) {
            (ClientRequest::Canonical(request), _) => request.model(),
            (ClientRequest::Predict(p), _) => &p.model,
            (_, Some(s)) => s.model(),
            (_, None) => "",
        }
    }

    /// `Some(whether the client wants the canonical usage chunk)` for a streamed request, `None`
    /// otherwise. Only Chat Completions and Completions have such a chunk; the other surfaces
    /// report usage in their own final events.
    pub fn stream(&self) -> Option<bool> {
        match self {
            ClientRequest::Canonical(request) => request.stream(),
            ClientRequest::Completions(s) => s.request.is_stream().then(|| s.request.client_wants_usage()),
            ClientRequest::Messages(s) => s.request.is_stream().then_some(false),
            ClientRequest::Responses(s) => s.request.is_stream().then_some(false),
            ClientRequest::Predict(_) => None,
        }
    }

    /// What plugins are told about this request.
    pub fn facts(&self) -> Facts {
        match (self, self.surfaced()) {
            (ClientRequest::Canonical(request), _) => request.facts(),
            (_, Some(s)) => s.facts(),
            (_, None) => Facts::default(),
        }
    }

    /// The same kind of request, parsed and validated from `body` as the client's was: a plugin's
    /// rewrite (`request.set-body`). It must keep the model and whether it streams (a plugin
    /// routes a request elsewhere with `route`), and a Responses request the conversation it
    /// continues; the client's headers (`anthropic-version`, `anthropic-beta`) carry over.
    pub fn reparse(&self, body: &[u8]) -> Result<ClientRequest, Error> {
        let next = match self {
            ClientRequest::Canonical(ModelRequest::Chat(_)) => {
                ClientRequest::Canonical(ModelRequest::Chat(ChatRequest::parse(body)?))
            }
            ClientRequest::Canonical(ModelRequest::Embeddings(_)) => {
                ClientRequest::Canonical(ModelRequest::Embeddings(EmbeddingsRequest::parse(body)?))
            }
            ClientRequest::Completions(_) => {
                ClientRequest::Completions(Surfaced::new(CompletionsRequest::parse(body)?))
            }
            ClientRequest::Messages(s) => {
                let mut request = MessagesRequest::parse(body, &http::HeaderMap::new())?;
                request.version.clone_from(&s.request.version);
                request.betas.clone_from(&s.request.betas);
                ClientRequest::Messages(Surfaced::new(request))
            }
            ClientRequest::Responses(s) => {
                let mut request = ResponsesRequest::parse(body)?;
                if request.previous_response_id != s.request.previous_response_id {
                    return Err(Error::bad_request("it changed `previous_response_id`").param("previous_response_id"));
                }
                request.history.clone_from(&s.request.history);
                ClientRequest::Responses(Surfaced::new(request))
            }
            ClientRequest::Predict(_) => return Err(Error::bad_request("a prediction's payload is not rewritten")),
        };
        if next.model() != self.model() {
            return Err(Error::bad_request(format!(
                "it changed the model from `{}` to `{}` (a plugin sends a request elsewhere with `route`)",
                self.model(),
                next.model()
            ))
            .param("model"));
        }
        if next.stream().is_some() != self.stream().is_some() {
            return Err(Error::bad_request("it turned streaming on or off").param("stream"));
        }
        Ok(next)
    }

    /// The canonical request, for a target that translates: built once, on first use.
    pub fn canonical(&self) -> Result<&ModelRequest, Error> {
        let (cell, surface) = match self {
            ClientRequest::Canonical(request) => return Ok(request),
            ClientRequest::Completions(s) => (&s.canonical, &s.request as &dyn SurfaceRequest),
            ClientRequest::Messages(s) => (&s.canonical, &s.request as &dyn SurfaceRequest),
            ClientRequest::Responses(s) => (&s.canonical, &s.request as &dyn SurfaceRequest),
            ClientRequest::Predict(_) => {
                return Err(Error::bad_request(
                    "This model's target does not serve predictions (`worker`, `sagemaker`, `vertex` and `azureml` upstreams do).",
                )
                .param("model")
                .code("unsupported_operation"));
            }
        };
        cell.get_or_init(|| surface.to_chat().map(ModelRequest::Chat).map_err(|e| Refusal::of(&e)))
            .as_ref()
            .map_err(Refusal::error)
    }
}

/// What a model request asks of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Chat,
    Embeddings,
    Predict,
}

impl Operation {
    pub fn label(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
            Operation::Predict => "predict",
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
    /// Prompt tokens written to the provider's cache (Anthropic's and Bedrock's cache writes), which
    /// `prompt_tokens` includes.
    #[serde(default)]
    pub cache_write_tokens: Option<u64>,
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

    pub fn cache_write_tokens(&self) -> u64 {
        self.prompt_tokens_details.and_then(|d| d.cache_write_tokens).unwrap_or(0)
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

/// A fresh `chatcmpl-…` id for a translated answer.
pub fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::now_v7().simple())
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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

/// The longest model name the gateway accepts.
pub const MAX_MODEL_NAME: usize = 256;

/// Refuses a model name that no provider could mean: empty, longer than [`MAX_MODEL_NAME`], with
/// characters outside the ones real names use (letters, digits, `-._:/@+~`; `org/name`, ARNs,
/// `name:tag` and `name@version` all fit), or with a `.` or `..` path piece. Names reach upstream
/// URLs (Gemini, Bedrock, Azure deployments), where they are also percent-encoded; refusing the
/// implausible ones first means a client never gets to probe a provider's other paths, and the
/// error never repeats what was sent.
pub fn check_model_name(model: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._:/@+~".contains(c);
    let traverses = model.split('/').any(|piece| piece == "." || piece == "..");
    if model.is_empty() || model.len() > MAX_MODEL_NAME || !model.chars().all(allowed) || traverses {
        return Err(Error::bad_request(format!(
            "'model' is not a valid model name: use at most {MAX_MODEL_NAME} letters, digits and `-._:/@+~`, \
             without `.` or `..` path segments."
        ))
        .param("model")
        .code("invalid_value"));
    }
    Ok(())
}

/// Reads a request body of at most `limit` bytes within `timeout`.
pub async fn read_body(
    body: impl crate::body::RequestBody,
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

/// serde's complaint with the offending value taken out: `invalid type: string "…", expected u32`
/// becomes `invalid type: expected u32, got a string`, and an unknown variant or field is not
/// repeated. The value may be prompt text, and error messages reach logs and clients; they name
/// fields and types only. Syntax errors carry positions, never input, and pass unchanged.
fn without_values(text: &str) -> String {
    const KINDS: [&str; 16] = [
        "string",
        "integer",
        "floating point",
        "boolean",
        "character",
        "byte array",
        "unit value",
        "null",
        "Option value",
        "sequence",
        "map",
        "newtype struct",
        "unit variant",
        "newtype variant",
        "tuple variant",
        "struct variant",
    ];
    // The expected part is the gateway's own and comes last, so the last `, expected ` is ours
    // even when the value contains those words.
    let expected = text.rfind(", expected ").map(|at| &text[at + ", expected ".len()..]);
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(unexpected) = text.strip_prefix(prefix) {
            let kind = KINDS.iter().find(|k| unexpected.starts_with(*k)).copied().unwrap_or("another value");
            let what = prefix.trim_end_matches(": ");
            return match expected {
                Some(expected) => format!("{what}: expected {expected}, got {kind}"),
                None => format!("{what}: got {kind}"),
            };
        }
    }
    for prefix in ["unknown variant", "unknown field"] {
        if text.starts_with(prefix) {
            return match expected {
                Some(expected) => format!("{prefix}, expected {expected}"),
                None => prefix.to_owned(),
            };
        }
    }
    text.to_owned()
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
        let full = e.to_string();
        // serde_json ends with the position; the last ` at line ` is its own, whatever the value held.
        let text = without_values(full.rfind(" at line ").map_or(&full[..], |at| &full[..at]));
        if let Some(field) = text.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            let param = if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") };
            return Error::bad_request(format!("Missing required parameter: '{param}'."))
                .param(param)
                .code("missing_required_parameter");
        }
        let detail = text;
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
