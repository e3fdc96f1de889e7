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

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Uri, header};
use serde_json::{Map, Value, json};
use weir_config::{Provider, Upstream, UpstreamKind};

use super::{Detail, Operation, completion_id, data_url, done_event, event, malformed, sensitive, unix_now};
use crate::api::sse::{Event, Splitter};
use crate::error::Error;

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Separates a tool call id from the thought signature carried inside it.
const SIGNATURE_MARK: char = '~';

pub struct Gemini {
    /// `{endpoint}/v1/projects/{p}/locations/{l}/publishers/google/models` or `{endpoint}/v1beta/models`.
    models_url: String,
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
                    vertex: true,
                    tokens: Some(tokens),
                })
            }
            _ => {
                if let Some(key) = &upstream.api_key {
                    headers.insert("x-goog-api-key", sensitive(key.expose())?);
                }
                Ok(Self { models_url: format!("{}/v1beta/models", upstream.endpoint), vertex: false, tokens: None })
            }
        }
    }

    pub fn request(&self, operation: Operation, model: &str, body: &[u8]) -> Result<(Uri, Vec<u8>), Error> {
        let openai: Value =
            serde_json::from_slice(body).map_err(|e| Error::internal("could not re-read the request").source(e))?;
        let model = model.strip_prefix("models/").unwrap_or(model);
        let (method, body) = match operation {
            Operation::Chat => {
                let stream = openai.get("stream").and_then(Value::as_bool) == Some(true);
                let method = if stream { ":streamGenerateContent?alt=sse" } else { ":generateContent" };
                (method, chat_request(&openai)?)
            }
            Operation::Embeddings => embeddings_request(&openai, model, self.vertex)?,
        };
        let uri = format!("{}/{model}{method}", self.models_url).parse().map_err(|e| {
            Error::bad_request("the model name cannot be used in a Gemini URL").param("model").source(e)
        })?;
        let body = serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the request").source(e))?;
        Ok((uri, body))
    }

    /// Adds Vertex's bearer token (the Gemini API's key is already among the static headers).
    pub async fn authorize(&self, upstream: &str, request: &mut Request<Bytes>) -> Result<(), Error> {
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

    pub fn response(&self, upstream: &str, operation: Operation, model: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
        let answer: Value = serde_json::from_slice(body).map_err(|_| malformed(upstream, "an answer"))?;
        let out = match operation {
            Operation::Chat => chat_response(&answer, model),
            Operation::Embeddings => embeddings_response(&answer, model, self.vertex),
        };
        serde_json::to_vec(&out).map_err(|e| Error::internal("could not encode the answer").source(e))
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI → Gemini

fn chat_request(req: &Value) -> Result<Value, Error> {
    let messages = req.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool call id → function name, for the results that answer them.
    let mut call_names: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let param = format!("messages[{i}].content");
        match role {
            "system" | "developer" => system.extend(parts_of(m.get("content"), &param)?),
            "assistant" => {
                let mut parts = parts_of(m.get("content"), &param)?;
                for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                    let args = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    let args: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    call_names.push((id.to_owned(), name.to_owned()));
                    let mut part = json!({"functionCall": {"name": name, "args": args}});
                    if let Some((_, signature)) = id.split_once(SIGNATURE_MARK) {
                        part["thoughtSignature"] = json!(signature);
                    }
                    parts.push(part);
                }
                push_turn(&mut contents, "model", parts);
            }
            "tool" | "function" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                let name = call_names
                    .iter()
                    .find(|(call, _)| call == id)
                    .map(|(_, name)| name.clone())
                    .or_else(|| m.get("name").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                let text = text_of(m.get("content"));
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(object)) => Value::Object(object),
                    Ok(other) => json!({"result": other}),
                    Err(_) => json!({"result": text}),
                };
                push_turn(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            _ => push_turn(&mut contents, "user", parts_of(m.get("content"), &param)?),
        }
    }
    let mut out = json!({"contents": contents});
    if !system.is_empty() {
        out["systemInstruction"] = json!({"parts": system});
    }
    let choice = req.get("tool_choice");
    let tools = req.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty());
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
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
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
    match req.get("stop") {
        Some(Value::String(s)) => {
            generation.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            generation.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    match req.pointer("/response_format/type").and_then(Value::as_str) {
        Some("json_object") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            if let Some(schema) = req.pointer("/response_format/json_schema/schema") {
                generation.insert("responseSchema".into(), clean_schema(schema));
            }
        }
        _ => {}
    }
    if let Some(effort) = req.get("reasoning_effort").and_then(Value::as_str) {
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

/// Appends parts to the last turn when it has the same role (Gemini wants turns to alternate).
fn push_turn(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(existing) = last.get_mut("parts").and_then(Value::as_array_mut)
    {
        existing.extend(parts);
        return;
    }
    contents.push(json!({"role": role, "parts": parts}));
}

/// A message `content` (a string or an array of parts) as Gemini parts.
fn parts_of(content: Option<&Value>, param: &str) -> Result<Vec<Value>, Error> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![json!({"text": s})]),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(json!({"text": item.get("text").cloned().unwrap_or_default()})),
                    Some("image_url") => {
                        let url = item.pointer("/image_url/url").and_then(Value::as_str).unwrap_or_default();
                        let (mime, data) = data_url(url, param)?;
                        parts.push(json!({"inlineData": {"mimeType": mime, "data": data}}));
                    }
                    _ => {}
                }
            }
            Ok(parts)
        }
        _ => Ok(Vec::new()),
    }
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
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

fn embeddings_request(req: &Value, model: &str, vertex: bool) -> Result<(&'static str, Value), Error> {
    let inputs: Vec<String> = match req.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        _ => {
            return Err(Error::bad_request(
                "This model's provider embeds text only; token-id inputs are not supported.",
            )
            .param("input")
            .code("invalid_value"));
        }
    };
    let dimensions = req.get("dimensions").and_then(Value::as_u64);
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
    usage: Option<Value>,
}

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
            usage: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.splitter.push(bytes);
        while let Some(sse) = self.splitter.next_event() {
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
                }
                Ok(answer) => self.on_answer(&answer, out),
                Err(_) => out.push(super::error_event(&malformed(&self.upstream, "a stream event"))),
            }
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
            let index = candidate.get("index").and_then(Value::as_u64).unwrap_or(i as u64) as usize;
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
        if !self.finished || self.splitter.pending() > 0 {
            return;
        }
        let mut usage_chunk = self.chunk(&json!([]));
        usage_chunk["usage"] = usage(self.usage.as_ref().unwrap_or(&Value::Null));
        out.push(event(&usage_chunk));
        out.push(done_event());
    }
}

#[cfg(test)]
mod tests {
    //! Golden translations: each case's OpenAI request, Gemini answer or Gemini stream, and what the
    //! gateway makes of it. `UPDATE_EXPECT=1 cargo test -p weir providers::gemini` rewrites them.
    #![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

    use expect_test::{Expect, expect};
    use serde_json::{Value, json};

    use super::*;
    use crate::providers::golden::{render, stream_text};

    fn request(body: Value, expected: Expect) {
        expected.assert_eq(&render(&chat_request(&body).unwrap_or_else(|e| json!({"error": e.message}))));
    }

    fn answer(answer: Value, expected: Expect) {
        expected.assert_eq(&render(&chat_response(&answer, "gemini-2.5-flash")));
    }

    fn stream(events: &[Value], expected: Expect) {
        let mut stream = ChunkStream::new("up", "gemini-2.5-flash");
        let mut out = Vec::new();
        for e in events {
            stream.push(format!("data: {e}\r\n\r\n").as_bytes(), &mut out);
        }
        stream.finish(&mut out);
        expected.assert_eq(&stream_text(&out));
    }

    const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"location":{"type":["string","null"],"default":"Paris"},"unit":{"enum":["c","f"]}},"required":["location"],"additionalProperties":false,"$schema":"x"},"strict":true}},{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{}}}}]"#;

    fn tools() -> Value {
        serde_json::from_str(TOOLS).unwrap()
    }

    #[test]
    fn requests() {
        request(
            json!({"model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "use metric"},
                {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
            ], "temperature": 0.2, "top_p": 0.9, "max_tokens": 10, "stop": "END", "n": 1, "x_unknown": true}),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "what is this"
                        },
                        {
                          "inlineData": {
                            "data": "iVBORw0KGgo=",
                            "mimeType": "image/png"
                          }
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "generationConfig": {
                    "candidateCount": 1,
                    "maxOutputTokens": 10,
                    "stopSequences": [
                      "END"
                    ],
                    "temperature": 0.2,
                    "topP": 0.9
                  },
                  "systemInstruction": {
                    "parts": [
                      {
                        "text": "be brief"
                      },
                      {
                        "text": "use metric"
                      }
                    ]
                  }
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "required"}),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "x"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "toolConfig": {
                    "functionCallingConfig": {
                      "mode": "ANY"
                    }
                  },
                  "tools": [
                    {
                      "functionDeclarations": [
                        {
                          "description": "Weather now",
                          "name": "get_weather",
                          "parameters": {
                            "properties": {
                              "location": {
                                "nullable": true,
                                "type": "string"
                              },
                              "unit": {
                                "enum": [
                                  "c",
                                  "f"
                                ],
                                "type": "string"
                              }
                            },
                            "required": [
                              "location"
                            ],
                            "type": "object"
                          }
                        },
                        {
                          "name": "get_time",
                          "parameters": {
                            "properties": {},
                            "type": "object"
                          }
                        }
                      ]
                    }
                  ]
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "x"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "toolConfig": {
                    "functionCallingConfig": {
                      "allowedFunctionNames": [
                        "get_time"
                      ],
                      "mode": "ANY"
                    }
                  },
                  "tools": [
                    {
                      "functionDeclarations": [
                        {
                          "description": "Weather now",
                          "name": "get_weather",
                          "parameters": {
                            "properties": {
                              "location": {
                                "nullable": true,
                                "type": "string"
                              },
                              "unit": {
                                "enum": [
                                  "c",
                                  "f"
                                ],
                                "type": "string"
                              }
                            },
                            "required": [
                              "location"
                            ],
                            "type": "object"
                          }
                        },
                        {
                          "name": "get_time",
                          "parameters": {
                            "properties": {},
                            "type": "object"
                          }
                        }
                      ]
                    }
                  ]
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "none", "max_completion_tokens": 5}),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "x"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "generationConfig": {
                    "maxOutputTokens": 5
                  },
                  "toolConfig": {
                    "functionCallingConfig": {
                      "mode": "NONE"
                    }
                  },
                  "tools": [
                    {
                      "functionDeclarations": [
                        {
                          "description": "Weather now",
                          "name": "get_weather",
                          "parameters": {
                            "properties": {
                              "location": {
                                "nullable": true,
                                "type": "string"
                              },
                              "unit": {
                                "enum": [
                                  "c",
                                  "f"
                                ],
                                "type": "string"
                              }
                            },
                            "required": [
                              "location"
                            ],
                            "type": "object"
                          }
                        },
                        {
                          "name": "get_time",
                          "parameters": {
                            "properties": {},
                            "type": "object"
                          }
                        }
                      ]
                    }
                  ]
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}, "additionalProperties": false}}}}),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "x"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "generationConfig": {
                    "responseMimeType": "application/json",
                    "responseSchema": {
                      "properties": {
                        "a": {
                          "nullable": true,
                          "type": "integer"
                        }
                      },
                      "type": "object"
                    }
                  }
                }"#]],
        );
        // A tool-result round trip: the signature rides in the call id; results are one turn.
        request(
            json!({"model": "m", "tools": tools(), "messages": [
                {"role": "user", "content": "weather and time"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_a_0~c2lnQQ==", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                    {"id": "call_a_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_a_0~c2lnQQ==", "content": "{\"temp\":21}"},
                {"role": "tool", "tool_call_id": "call_a_1", "content": "noon"},
                {"role": "user", "content": "thanks"},
                {"role": "user", "content": "and tomorrow?"}
            ]}),
            expect![[r#"
                {
                  "contents": [
                    {
                      "parts": [
                        {
                          "text": "weather and time"
                        }
                      ],
                      "role": "user"
                    },
                    {
                      "parts": [
                        {
                          "functionCall": {
                            "args": {
                              "location": "Paris"
                            },
                            "name": "get_weather"
                          },
                          "thoughtSignature": "c2lnQQ=="
                        },
                        {
                          "functionCall": {
                            "args": {},
                            "name": "get_time"
                          }
                        }
                      ],
                      "role": "model"
                    },
                    {
                      "parts": [
                        {
                          "functionResponse": {
                            "name": "get_weather",
                            "response": {
                              "temp": 21
                            }
                          }
                        },
                        {
                          "functionResponse": {
                            "name": "get_time",
                            "response": {
                              "result": "noon"
                            }
                          }
                        },
                        {
                          "text": "thanks"
                        },
                        {
                          "text": "and tomorrow?"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "toolConfig": {
                    "functionCallingConfig": {
                      "mode": "AUTO"
                    }
                  },
                  "tools": [
                    {
                      "functionDeclarations": [
                        {
                          "description": "Weather now",
                          "name": "get_weather",
                          "parameters": {
                            "properties": {
                              "location": {
                                "nullable": true,
                                "type": "string"
                              },
                              "unit": {
                                "enum": [
                                  "c",
                                  "f"
                                ],
                                "type": "string"
                              }
                            },
                            "required": [
                              "location"
                            ],
                            "type": "object"
                          }
                        },
                        {
                          "name": "get_time",
                          "parameters": {
                            "properties": {},
                            "type": "object"
                          }
                        }
                      ]
                    }
                  ]
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
            expect![[r#"
                {
                  "error": "Only base64 `data:` image URLs are supported for this model's provider; the gateway does not fetch remote URLs."
                }"#]],
        );
    }

    #[test]
    fn answers() {
        answer(
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hmm", "thought": true}, {"text": "Hello"}, {"text": " there"}]}, "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 7, "cachedContentTokenCount": 1, "totalTokenCount": 13},
                   "modelVersion": "gemini-2.5-flash", "responseId": "r1", "x_new_field": {}}),
            expect![[r#"
                {
                  "choices": [
                    {
                      "finish_reason": "stop",
                      "index": 0,
                      "logprobs": null,
                      "message": {
                        "content": "Hello there",
                        "refusal": null,
                        "role": "assistant"
                      }
                    }
                  ],
                  "created": 0,
                  "id": "chatcmpl-ID",
                  "model": "gemini-2.5-flash",
                  "object": "chat.completion",
                  "usage": {
                    "completion_tokens": 9,
                    "completion_tokens_details": {
                      "reasoning_tokens": 7
                    },
                    "prompt_tokens": 4,
                    "prompt_tokens_details": {
                      "cached_tokens": 1
                    },
                    "total_tokens": 13
                  }
                }"#]],
        );
        answer(
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnQQ=="},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "totalTokenCount": 10}}),
            expect![[r#"
                {
                  "choices": [
                    {
                      "finish_reason": "tool_calls",
                      "index": 0,
                      "logprobs": null,
                      "message": {
                        "content": null,
                        "refusal": null,
                        "role": "assistant",
                        "tool_calls": [
                          {
                            "function": {
                              "arguments": "{\"location\":\"Paris\"}",
                              "name": "get_weather"
                            },
                            "id": "call_ID_0~c2lnQQ==",
                            "type": "function"
                          },
                          {
                            "function": {
                              "arguments": "{}",
                              "name": "get_time"
                            },
                            "id": "call_ID_1",
                            "type": "function"
                          }
                        ]
                      }
                    }
                  ],
                  "created": 0,
                  "id": "chatcmpl-ID",
                  "model": "gemini-2.5-flash",
                  "object": "chat.completion",
                  "usage": {
                    "completion_tokens": 6,
                    "completion_tokens_details": {
                      "reasoning_tokens": 0
                    },
                    "prompt_tokens": 4,
                    "prompt_tokens_details": {
                      "cached_tokens": 0
                    },
                    "total_tokens": 10
                  }
                }"#]],
        );
        answer(
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "a b"}]}, "finishReason": "MAX_TOKENS"}]}),
            expect![[r#"
            {
              "choices": [
                {
                  "finish_reason": "length",
                  "index": 0,
                  "logprobs": null,
                  "message": {
                    "content": "a b",
                    "refusal": null,
                    "role": "assistant"
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "gemini-2.5-flash",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 0,
                "completion_tokens_details": {
                  "reasoning_tokens": 0
                },
                "prompt_tokens": 0,
                "prompt_tokens_details": {
                  "cached_tokens": 0
                },
                "total_tokens": 0
              }
            }"#]],
        );
        answer(
            json!({"candidates": [{"finishReason": "SAFETY", "safetyRatings": []}]}),
            expect![[r#"
            {
              "choices": [
                {
                  "finish_reason": "content_filter",
                  "index": 0,
                  "logprobs": null,
                  "message": {
                    "content": "",
                    "refusal": null,
                    "role": "assistant"
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "gemini-2.5-flash",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 0,
                "completion_tokens_details": {
                  "reasoning_tokens": 0
                },
                "prompt_tokens": 0,
                "prompt_tokens_details": {
                  "cached_tokens": 0
                },
                "total_tokens": 0
              }
            }"#]],
        );
        answer(
            json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 3}}),
            expect![[r#"
            {
              "choices": [
                {
                  "finish_reason": "content_filter",
                  "index": 0,
                  "logprobs": null,
                  "message": {
                    "content": "",
                    "refusal": null,
                    "role": "assistant"
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "gemini-2.5-flash",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 0,
                "completion_tokens_details": {
                  "reasoning_tokens": 0
                },
                "prompt_tokens": 3,
                "prompt_tokens_details": {
                  "cached_tokens": 0
                },
                "total_tokens": 3
              }
            }"#]],
        );
    }

    #[test]
    fn streams() {
        stream(
            &[
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]}),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "index": 0}]}),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "thoughtsTokenCount": 3}}),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"Hel","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"content":"lo"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"choices":[],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk","usage":{"completion_tokens":5,"completion_tokens_details":{"reasoning_tokens":3},"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":7}}
                [DONE]"#]],
        );
        // Parallel calls in separate events, then STOP: distinct indexes and `tool_calls`.
        stream(
            &[
                json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnQQ=="}]}}]}),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]}}]}),
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 8}}),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"","role":"assistant","tool_calls":[{"function":{"arguments":"{\"location\":\"Paris\"}","name":"get_weather"},"id":"call_ID_0~c2lnQQ==","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}","name":"get_time"},"id":"call_ID_1","index":1,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"choices":[],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk","usage":{"completion_tokens":8,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":10}}
                [DONE]"#]],
        );
        // A stream that stops without a finish reason is incomplete: no usage, no [DONE].
        stream(
            &[json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]})],
            expect![[
                r#"{"choices":[{"delta":{"content":"Hel","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}"#
            ]],
        );
        // An error event mid-stream.
        stream(
            &[
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]}),
                json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"Hel","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
                {"error":{"code":"upstream_error","message":"The upstream 'up' failed with status 503: The model is overloaded.","param":null,"type":"server_error"}}"#]],
        );
    }

    #[test]
    fn errors() {
        let d = detail(br#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12.5s"}]}}"#);
        assert_eq!((d.code.as_deref(), d.retry_after), (Some("rate_limit_exceeded"), Some(13)));
        let d = detail(br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}]"#);
        assert!(d.credentials_rejected);
    }
}
