//! Adapter for Gemini, on Vertex AI (`kind = "vertex"`: OAuth bearer tokens from a service-account
//! key or application-default credentials, through `gcp_auth`, cached and refreshed before expiry)
//! and through the Gemini API (`kind = "gemini"`: `x-goog-api-key`). Both speak the same REST
//! `generateContent` / `streamGenerateContent?alt=sse`, translated both ways here.
//!
//! Mapping decisions where the two APIs leave room:
//! - `system` and `developer` messages, wherever they stand, join `systemInstruction`.
//! - Tool results are `functionResponse` parts named after the call they answer (looked up by
//!   `tool_call_id` in the earlier `tool_calls`); a result that is not a JSON object is wrapped as
//!   `{"result": …}`; consecutive results form one turn, as Gemini expects for parallel calls.
//! - Gemini's `thoughtSignature` must come back with the `functionCall` it was attached to. OpenAI
//!   clients keep only the tool call's `id`, so the signature travels inside it: `call_…~SIGNATURE`.
//! - A candidate that emitted a `functionCall` finishes with `tool_calls` even when Gemini says
//!   `STOP`; safety, recitation, blocklist and prohibited-content stops are `content_filter`.
//! - Completion tokens are candidates + thoughts (both are billed as output); thoughts are also
//!   reported as `reasoning_tokens`; `cachedContentTokenCount` is `cached_tokens`.
//! - Images must be `data:` URLs (`inlineData`); remote URLs are refused rather than fetched.
//! - Predictions go to Vertex AI endpoints: a `vertex` upstream serves its project's endpoints as well as
//!   Gemini, the target's model being the endpoint id (`1234567890` or `endpoints/1234567890`):
//!   `:predict` answers with Vertex's own `{"predictions", "deployedModelId", …}`, `:rawPredict` with the
//!   model's body and `X-Vertex-AI-Deployed-Model-Id`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Uri, header};
use serde_json::{Map, Value, json};
use weir_config::{Provider, Upstream, UpstreamKind};

use super::{
    Adapter, Detail, HttpClient, Translator, completion_id, content_parts, done_event, event, malformed, push_turn,
    sensitive, unix_now,
};
use crate::api::chat::{Message, Role};
use crate::api::sse::{Event, Splitter};
use crate::api::{ChatRequest, EmbeddingsRequest, ModelRequest, Operation, PredictRequest};
use crate::error::Error;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Separates a tool call id from the thought signature carried inside it.
const SIGNATURE_MARK: char = '~';

pub struct Gemini {
    /// `{endpoint}/v1/projects/{p}/locations/{l}/publishers/google/models` or `{endpoint}/v1beta/models`.
    models_url: String,
    /// `{endpoint}/v1/projects/{p}/locations/{l}/endpoints`: Vertex AI's endpoints, which serve
    /// predictions (`{id}:predict`, `{id}:rawPredict`); `None` for the Gemini API.
    endpoints_url: Option<String>,
    vertex: bool,
    /// Vertex's token source (set at once from a key file, or found on first use for
    /// application-default credentials); `None` for the Gemini API, whose key is a static header.
    tokens: Option<tokio::sync::OnceCell<Arc<dyn gcp_auth::TokenProvider>>>,
}

impl std::fmt::Debug for Gemini {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemini").field("models_url", &self.models_url).finish_non_exhaustive()
    }
}

impl Gemini {
    pub fn new(upstream: &Upstream, provider: &Provider, headers: &mut HeaderMap) -> Result<Self, Error> {
        match (upstream.kind, provider) {
            (UpstreamKind::Vertex, Provider::Vertex(v)) => {
                let tokens = tokio::sync::OnceCell::new();
                if let Some(file) = &v.credentials_file {
                    let account = gcp_auth::CustomServiceAccount::from_file(file).map_err(|e| {
                        Error::internal(format!(
                            "upstream {}: the service-account key {} could not be read",
                            upstream.name,
                            file.display()
                        ))
                        .source(e)
                    })?;
                    let provider: Arc<dyn gcp_auth::TokenProvider> = Arc::new(account);
                    let _ = tokens.set(provider);
                }
                Ok(Self {
                    models_url: format!(
                        "{}/v1/projects/{}/locations/{}/publishers/google/models",
                        upstream.endpoint, v.project, v.location
                    ),
                    endpoints_url: Some(format!(
                        "{}/v1/projects/{}/locations/{}/endpoints",
                        upstream.endpoint, v.project, v.location
                    )),
                    vertex: true,
                    tokens: Some(tokens),
                })
            }
            _ => {
                if let Some(key) = &upstream.api_key {
                    headers.insert("x-goog-api-key", sensitive(key.expose())?);
                }
                Ok(Self {
                    models_url: format!("{}/v1beta/models", upstream.endpoint),
                    endpoints_url: None,
                    vertex: false,
                    tokens: None,
                })
            }
        }
    }
}

impl Adapter for Gemini {
    fn request(&self, request: &ModelRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let (method, body) = match request {
            ModelRequest::Chat(chat) => {
                let method = if chat.is_stream() { ":streamGenerateContent?alt=sse" } else { ":generateContent" };
                (method, chat_request(chat)?)
            }
            ModelRequest::Embeddings(embeddings) => embeddings_request(embeddings, model, self.vertex)?,
        };
        let segment = super::path_segment(model)?;
        let uri = format!("{}/{segment}{method}", self.models_url).parse().map_err(|e| {
            Error::bad_request("The model name cannot be used in a Gemini URL.").param("model").source(e)
        })?;
        let body = serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the request").source(e))?;
        Ok((uri, body))
    }

    /// A Vertex AI endpoint's `:predict` or `:rawPredict`, the target's model being the endpoint's
    /// id (one path segment). The Gemini API serves no predictions.
    fn predict(&self, request: &PredictRequest, model: &str, _: &mut HeaderMap) -> Option<Result<Uri, Error>> {
        let base = self.endpoints_url.as_ref()?;
        let verb = request.verb().as_str();
        let id = model.strip_prefix("endpoints/").unwrap_or(model);
        Some(super::path_segment(id).and_then(|id| {
            format!("{base}/{id}:{verb}")
                .parse::<Uri>()
                .map_err(|e| Error::internal("the Vertex AI endpoint URL is not valid").source(e))
        }))
    }

    /// `:rawPredict` names the deployed model that answered in a header (`:predict` in its body).
    fn deployed(&self, headers: &HeaderMap) -> Option<String> {
        super::deployed_header(headers, "x-vertex-ai-deployed-model-id")
    }

    /// Adds Vertex's bearer token (the Gemini API's key is already among the static headers).
    async fn authorize(&self, upstream: &str, _: &HttpClient, request: &mut Request<Bytes>) -> Result<(), Error> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        // Application-default credentials are looked for on first use (finding them may ask the
        // metadata server); a key file was read when the upstream was built.
        let provider = tokens
            .get_or_try_init(|| {
                // Boxed so that the credential search does not grow every request's future.
                Box::pin(async {
                    gcp_auth::provider().await.map_err(|e| {
                        super::credentials_failed(upstream, "no application-default credentials were found", false)
                            .source(e)
                    })
                })
            })
            .await?;
        // gcp_auth caches the token and fetches a new one shortly before it expires.
        let token = provider.token(&[SCOPE]).await.map_err(|e| {
            super::credentials_failed(upstream, "Google's token endpoint did not issue a token", true).source(e)
        })?;
        request.headers_mut().insert(header::AUTHORIZATION, sensitive(&format!("Bearer {}", token.as_str()))?);
        Ok(())
    }

    fn response(&self, upstream: &str, operation: Operation, model: &str, body: Bytes) -> Result<Bytes, Error> {
        let answer: Value = serde_json::from_slice(&body).map_err(|_| malformed(upstream, "an answer"))?;
        let out = match operation {
            Operation::Chat => chat_response(&answer, model),
            Operation::Embeddings => embeddings_response(&answer, model, self.vertex),
            Operation::Predict => return Err(Error::internal("predictions have no answer to translate")),
        };
        serde_json::to_vec(&out).map(Bytes::from).map_err(|e| Error::internal("could not encode the answer").source(e))
    }

    fn translator(&self, upstream: &str, model: &str) -> Option<Translator> {
        Some(Translator::Gemini(ChunkStream::new(upstream, model)))
    }

    fn detail(&self, _: &HeaderMap, body: &[u8]) -> Detail {
        detail(body)
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI → Gemini

fn chat_request(req: &ChatRequest) -> Result<Value, Error> {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool call id → function name, for the results that answer them.
    let mut call_names: Vec<(&str, &str)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        match m.role {
            Role::System | Role::Developer => system.extend(parts_of(m, &param)?),
            Role::Assistant => {
                let mut parts = parts_of(m, &param)?;
                for call in m.tool_calls() {
                    let args: Value = serde_json::from_str(call.arguments).unwrap_or_else(|_| json!({}));
                    call_names.push((call.id, call.name));
                    let mut part = json!({"functionCall": {"name": call.name, "args": args}});
                    // The last mark: Gemini's own call ids may hold one, base64 signatures never do.
                    if let Some((_, signature)) = call.id.rsplit_once(SIGNATURE_MARK) {
                        part["thoughtSignature"] = json!(signature);
                    }
                    parts.push(part);
                }
                push_turn(&mut contents, "model", "parts", parts);
            }
            Role::Tool | Role::Function => {
                let id = m.tool_call_id();
                let name = call_names
                    .iter()
                    .find(|(call, _)| *call == id)
                    .map(|(_, name)| *name)
                    .or_else(|| m.name())
                    .unwrap_or_default();
                let text = m.text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(object)) => Value::Object(object),
                    Ok(other) => json!({"result": other}),
                    Err(_) => json!({"result": text}),
                };
                push_turn(
                    &mut contents,
                    "user",
                    "parts",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            Role::User => push_turn(&mut contents, "user", "parts", parts_of(m, &param)?),
        }
    }
    let mut out = json!({"contents": contents});
    if !system.is_empty() {
        out["systemInstruction"] = json!({"parts": system});
    }
    let choice = req.param("tool_choice");
    let tools = req.param("tools").and_then(Value::as_array).filter(|t| !t.is_empty());
    if let Some(tools) = tools {
        let declarations: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut d = json!({"name": f.get("name").cloned().unwrap_or(Value::Null)});
                if let Some(description) = f.get("description") {
                    d["description"] = description.clone();
                }
                if let Some(parameters) = f.get("parameters") {
                    d["parameters"] = clean_schema(parameters);
                }
                d
            })
            .collect();
        out["tools"] = json!([{"functionDeclarations": declarations}]);
        let config = match choice {
            Some(Value::String(s)) if s == "none" => json!({"mode": "NONE"}),
            Some(Value::String(s)) if s == "required" => json!({"mode": "ANY"}),
            Some(Value::Object(o)) => {
                let name = o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null);
                json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
            _ => json!({"mode": "AUTO"}),
        };
        out["toolConfig"] = json!({"functionCallingConfig": config});
    }
    let mut generation = Map::new();
    let copy = |from: &str, to: &str, generation: &mut Map<String, Value>| {
        if let Some(v) = req.param(from) {
            generation.insert(to.to_owned(), v.clone());
        }
    };
    copy("temperature", "temperature", &mut generation);
    copy("top_p", "topP", &mut generation);
    copy("n", "candidateCount", &mut generation);
    copy("seed", "seed", &mut generation);
    copy("presence_penalty", "presencePenalty", &mut generation);
    copy("frequency_penalty", "frequencyPenalty", &mut generation);
    copy("max_tokens", "maxOutputTokens", &mut generation);
    copy("max_completion_tokens", "maxOutputTokens", &mut generation);
    match req.param("stop") {
        Some(Value::String(s)) => {
            generation.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            generation.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    let format = req.param("response_format");
    match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        Some("json_object") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = format.and_then(|f| f.pointer("/json_schema/schema")) {
                generation.insert("responseSchema".into(), clean_schema(schema));
            }
        }
        _ => {}
    }
    if let Some(effort) = req.param("reasoning_effort").and_then(Value::as_str) {
        let budget = match effort {
            "minimal" | "none" => 0,
            "low" => 1024,
            "medium" => 8192,
            _ => 24576,
        };
        generation.insert("thinkingConfig".into(), json!({"thinkingBudget": budget}));
    }
    if !generation.is_empty() {
        out["generationConfig"] = Value::Object(generation);
    }
    Ok(out)
}

/// A message's content as Gemini parts.
fn parts_of(message: &Message, param: &str) -> Result<Vec<Value>, Error> {
    content_parts(message, param, |mime, data| Ok(json!({"inlineData": {"mimeType": mime, "data": data}})))
}

/// Keeps what Gemini's OpenAPI-subset schemas accept, recursively; `["T", "null"]` types become
/// `T` with `nullable`.
pub(crate) fn clean_schema(schema: &Value) -> Value {
    const KEEP: &[&str] = &[
        "type",
        "format",
        "description",
        "nullable",
        "enum",
        "items",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "anyOf",
        "propertyOrdering",
        "title",
    ];
    let Value::Object(object) = schema else { return schema.clone() };
    let mut out = Map::new();
    for (key, value) in object {
        if !KEEP.contains(&key.as_str()) {
            continue;
        }
        let value = match key.as_str() {
            "properties" => match value {
                Value::Object(props) => {
                    Value::Object(props.iter().map(|(k, v)| (k.clone(), clean_schema(v))).collect())
                }
                other => other.clone(),
            },
            "items" => clean_schema(value),
            "anyOf" => match value {
                Value::Array(options) => Value::Array(options.iter().map(clean_schema).collect()),
                other => other.clone(),
            },
            "type" => match value {
                Value::Array(types) => {
                    let non_null: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
                    if non_null.len() < types.len() {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                    non_null.first().map_or(json!("string"), |t| (*t).clone())
                }
                other => other.clone(),
            },
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    // Gemini wants a type beside every enum; JSON Schema lets it be implied.
    if out.contains_key("enum") && !out.contains_key("type") {
        out.insert("type".into(), json!("string"));
    }
    Value::Object(out)
}

fn embeddings_request(req: &EmbeddingsRequest, model: &str, vertex: bool) -> Result<(&'static str, Value), Error> {
    let Some(inputs) = req.texts() else {
        return Err(Error::bad_request("This model's provider embeds text only; token-id inputs are not supported.")
            .param("input")
            .code("invalid_value"));
    };
    let dimensions = req.param("dimensions").and_then(Value::as_u64);
    if vertex {
        let mut body = json!({"instances": inputs.iter().map(|t| json!({"content": t})).collect::<Vec<_>>()});
        if let Some(d) = dimensions {
            body["parameters"] = json!({"outputDimensionality": d});
        }
        return Ok((":predict", body));
    }
    let requests: Vec<Value> = inputs
        .iter()
        .map(|t| {
            let mut r = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": t}]}});
            if let Some(d) = dimensions {
                r["outputDimensionality"] = json!(d);
            }
            r
        })
        .collect();
    Ok((":batchEmbedContents", json!({"requests": requests})))
}

// ---------------------------------------------------------------------------------------------
// Gemini → OpenAI

/// `finishReason` → `finish_reason`; `called` says whether the candidate emitted a `functionCall`.
fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        _ if called => "tool_calls",
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" | "LANGUAGE" => {
            "content_filter"
        }
        // STOP, FINISH_REASON_UNSPECIFIED, OTHER, MALFORMED_FUNCTION_CALL (the model tried a call
        // Gemini could not parse, so none was emitted): the answer is what it is.
        _ => "stop",
    }
}

fn usage(metadata: &Value) -> Value {
    let n = |k: &str| metadata.get(k).and_then(Value::as_u64).unwrap_or(0);
    let prompt = n("promptTokenCount") + n("toolUsePromptTokenCount");
    let thoughts = n("thoughtsTokenCount");
    let completion = n("candidatesTokenCount") + thoughts;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": n("cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    })
}

/// A `functionCall` part as an OpenAI tool call (without `index`).
fn tool_call(part: &Value, n: usize) -> Value {
    let call = &part["functionCall"];
    let mut id = call
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("call_{}_{n}", &uuid::Uuid::now_v7().simple().to_string()[20..]), str::to_owned);
    if let Some(signature) = part.get("thoughtSignature").and_then(Value::as_str) {
        id.push(SIGNATURE_MARK);
        id.push_str(signature);
    }
    let arguments = serde_json::to_string(call.get("args").unwrap_or(&json!({}))).unwrap_or_else(|_| "{}".into());
    json!({"id": id, "type": "function", "function": {"name": call.get("name").cloned().unwrap_or(Value::Null), "arguments": arguments}})
}

fn is_thought(part: &Value) -> bool {
    part.get("thought").and_then(Value::as_bool) == Some(true)
}

fn chat_response(answer: &Value, model: &str) -> Value {
    let mut choices = Vec::new();
    for (i, candidate) in answer.get("candidates").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
        let parts = candidate.pointer("/content/parts").and_then(Value::as_array).cloned().unwrap_or_default();
        let text: String =
            parts.iter().filter(|p| !is_thought(p)).filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
        let calls: Vec<Value> = parts
            .iter()
            .filter(|p| p.get("functionCall").is_some())
            .enumerate()
            .map(|(n, p)| tool_call(p, n))
            .collect();
        let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls.clone());
        }
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reason, !calls.is_empty()),
        }));
    }
    if choices.is_empty() {
        // The prompt itself was blocked (`promptFeedback.blockReason`): no candidates at all.
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": answer.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
        "usage": usage(answer.get("usageMetadata").unwrap_or(&Value::Null)),
    })
}

fn embeddings_response(answer: &Value, model: &str, vertex: bool) -> Value {
    let (vectors, tokens): (Vec<Value>, u64) = if vertex {
        let predictions = answer.get("predictions").and_then(Value::as_array).cloned().unwrap_or_default();
        let tokens = predictions
            .iter()
            .filter_map(|p| p.pointer("/embeddings/statistics/token_count").and_then(Value::as_f64))
            .sum::<f64>() as u64;
        (predictions.iter().map(|p| p.pointer("/embeddings/values").cloned().unwrap_or(json!([]))).collect(), tokens)
    } else {
        let embeddings = answer.get("embeddings").and_then(Value::as_array).cloned().unwrap_or_default();
        (embeddings.iter().map(|e| e.get("values").cloned().unwrap_or(json!([]))).collect(), 0)
    };
    json!({
        "object": "list",
        "data": vectors.into_iter().enumerate().map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v})).collect::<Vec<_>>(),
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// Reads Google's error shape: `{"error": {"code", "message", "status", "details"}}`.
pub(crate) fn detail(body: &[u8]) -> Detail {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Detail { message: Some(String::from_utf8_lossy(body).trim().to_owned()), ..Detail::default() };
    };
    // Some Google front ends wrap the error in a one-element array.
    let error = value.get(0).unwrap_or(&value).get("error").cloned().unwrap_or(Value::Null);
    let retry_after = error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(|d| d.strip_suffix('s')?.parse::<f64>().ok())
        .map(|s| s.ceil() as u64);
    let credentials_rejected = error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    let code = match error.get("status").and_then(Value::as_str) {
        Some("RESOURCE_EXHAUSTED") => Some("rate_limit_exceeded".to_owned()),
        other => other.map(str::to_ascii_lowercase),
    };
    Detail {
        message: error.get("message").and_then(Value::as_str).map(str::to_owned),
        code,
        retry_after,
        credentials_rejected,
        ..Detail::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// `streamGenerateContent?alt=sse` → `chat.completion.chunk`s. Gemini ends its stream by closing it;
/// the stream is complete once a candidate finished, and only then ends with usage and `[DONE]`.
#[derive(Debug)]
pub struct ChunkStream {
    upstream: String,
    id: String,
    model: String,
    created: u64,
    splitter: Splitter,
    /// Per candidate index: whether its first chunk (with the role) went out, and how many tool
    /// calls it emitted (each gets the next index, so parallel calls stay apart).
    candidates: Vec<(bool, usize)>,
    finished: bool,
    /// An error event went out (an upstream error, an undecodable or oversized event): the stream is
    /// over, whatever the upstream sends after it.
    failed: bool,
    usage: Option<Value>,
}

/// Candidates a stream may have (OpenAI's `n` goes to 128).
const MAX_CANDIDATES: usize = 128;

impl ChunkStream {
    pub fn new(upstream: &str, model: &str) -> Self {
        Self {
            upstream: upstream.to_owned(),
            id: completion_id(),
            model: model.to_owned(),
            created: unix_now(),
            splitter: Splitter::default(),
            candidates: Vec::new(),
            finished: false,
            failed: false,
            usage: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        if self.failed {
            return;
        }
        self.splitter.push(bytes);
        while !self.failed
            && let Some(sse) = self.splitter.next_event()
        {
            if sse.data.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Value>(&sse.data) {
                Ok(answer) if answer.get("error").is_some() => {
                    let status = answer
                        .pointer("/error/code")
                        .and_then(Value::as_u64)
                        .and_then(|c| http::StatusCode::from_u16(u16::try_from(c).ok()?).ok())
                        .unwrap_or(http::StatusCode::BAD_GATEWAY);
                    let error = super::classify(&self.upstream, status, &HeaderMap::new(), detail(&sse.data));
                    out.push(super::error_event(&error));
                    self.failed = true;
                }
                Ok(answer) => self.on_answer(&answer, out),
                Err(_) => {
                    out.push(super::error_event(&malformed(&self.upstream, "a stream event")));
                    self.failed = true;
                }
            }
        }
        if self.splitter.oversized() {
            self.failed = true;
            out.push(super::error_event(&super::event_too_large(&self.upstream)));
        }
    }

    fn chunk(&self, choices: &Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": choices})
    }

    fn on_answer(&mut self, answer: &Value, out: &mut Vec<Event>) {
        if let Some(usage) = answer.get("usageMetadata") {
            self.usage = Some(usage.clone());
        }
        let candidates = answer.get("candidates").and_then(Value::as_array).cloned().unwrap_or_default();
        if candidates.is_empty() && answer.pointer("/promptFeedback/blockReason").is_some() {
            out.push(event(&self.chunk(&json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": "content_filter"}]))));
            self.finished = true;
        }
        for (i, candidate) in candidates.iter().enumerate() {
            let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
            // The index sizes a table: one a client could not have asked for (`n` is at most
            // MAX_CANDIDATES) is a broken answer, not a reason to allocate gigabytes.
            let Some(index) = usize::try_from(index).ok().filter(|i| *i < MAX_CANDIDATES) else {
                out.push(super::error_event(&malformed(&self.upstream, "a candidate index")));
                self.failed = true;
                return;
            };
            if self.candidates.len() <= index {
                self.candidates.resize(index + 1, (false, 0));
            }
            let parts = candidate.pointer("/content/parts").and_then(Value::as_array).cloned().unwrap_or_default();
            let text: String =
                parts.iter().filter(|p| !is_thought(p)).filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            let mut calls = Vec::new();
            for part in parts.iter().filter(|p| p.get("functionCall").is_some()) {
                let n = self.candidates[index].1;
                self.candidates[index].1 += 1;
                let mut call = tool_call(part, n);
                call["index"] = json!(n);
                calls.push(call);
            }
            let mut delta = Map::new();
            if !self.candidates[index].0 {
                self.candidates[index].0 = true;
                delta.insert("role".into(), json!("assistant"));
                delta.insert("content".into(), json!(""));
            }
            if !text.is_empty() {
                delta.insert("content".into(), json!(text));
            }
            if !calls.is_empty() {
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            if !delta.is_empty() {
                out.push(event(
                    &self.chunk(&json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}])),
                ));
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                let reason = finish_reason(reason, self.candidates[index].1 > 0);
                out.push(event(
                    &self.chunk(&json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}])),
                ));
                self.finished = true;
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Event>) {
        // Whatever is left in the splitter is an event cut in half: the stream was not complete.
        if !self.finished || self.failed || self.splitter.pending() > 0 {
            return;
        }
        let mut usage_chunk = self.chunk(&json!([]));
        usage_chunk["usage"] = usage(self.usage.as_ref().unwrap_or(&Value::Null));
        out.push(event(&usage_chunk));
        out.push(done_event());
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
