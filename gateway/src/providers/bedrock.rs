//! Adapter for Amazon Bedrock: Converse and ConverseStream for chat, InvokeModel for embeddings
//! (Titan and Cohere), translated both ways here.
//!
//! The requests go through the gateway's own HTTP client like every other provider's, signed with
//! the AWS SDK's own SigV4 signer (`aws-sigv4`) from static keys or the SDK's standard credential
//! chain (`aws-config`), and streams are decoded with the SDK's own event stream codec
//! (`aws-smithy-eventstream`). The full `aws-sdk-bedrockruntime` client would bring a
//! second HTTP stack with its own retries, timeouts and error types, which the gateway's attempt
//! loop, idle timeouts, cancellation and error classification would then have to be bolted onto,
//! and it roughly doubles a clean build; the wire format (REST JSON + `vnd.amazon.eventstream`) is
//! what the SDK sends, and the mock that tests it is checked with boto3.
//!
//! Mapping decisions where the APIs leave room:
//! - `system` and `developer` messages, wherever they stand, become `system` blocks; consecutive
//!   messages of one role are merged (Converse wants turns to alternate), and consecutive `tool`
//!   messages become one user turn of `toolResult`s.
//! - `tool_choice: "none"` drops the tools; when no tools are sent but the history holds tool calls
//!   and results, they are written into the conversation as text, because Converse refuses
//!   `toolUse`/`toolResult` blocks without a `toolConfig`.
//! - `response_format: json_schema` becomes a forced tool whose input schema is the schema; its input
//!   comes back as the message text with `finish_reason: "stop"`.
//! - `stopReason` → `finish_reason`: see [`finish_reason`].
//! - `prompt_tokens` counts cache reads and writes too (as OpenAI's does); `cached_tokens` is the
//!   cache reads.
//! - Images must be `data:` URLs; remote URLs are refused rather than fetched.

use std::time::SystemTime;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue as EsHeaderValue, Message};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use weir_config::{AwsCredentials, Upstream};

use super::{
    Detail, Operation, completion_id, data_url, done_event, error_event, event, malformed, sensitive, unix_now,
};
use crate::api::sse::Event;
use crate::error::Error;

/// The name of the tool that carries a `json_schema` answer.
const JSON_TOOL: &str = "json_response";

#[derive(Debug)]
pub struct Bedrock {
    endpoint: String,
    region: String,
    signing: Signing,
}

/// Where the SigV4 credentials come from.
#[derive(Debug)]
enum Signing {
    /// A Bedrock API key, already a static bearer header: nothing to sign.
    None,
    Static(aws_credential_types::Credentials),
    Chain(Box<Chain>),
}

/// The standard AWS credential chain, built on first use (it may ask an instance metadata or
/// container endpoint), and the credentials it last gave, reused until five minutes before they
/// expire. The chain reads the environment and `~/.aws` by design: that is what it is for.
#[derive(Debug)]
struct Chain {
    profile: Option<String>,
    credentials_file: Option<std::path::PathBuf>,
    provider: tokio::sync::OnceCell<aws_credential_types::provider::SharedCredentialsProvider>,
    cached: tokio::sync::Mutex<Option<aws_credential_types::Credentials>>,
}

/// How long before their expiry temporary credentials are replaced.
const REFRESH_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

impl Bedrock {
    pub fn new(upstream: &Upstream, bedrock: &weir_config::Bedrock, headers: &mut HeaderMap) -> Result<Self, Error> {
        let signing = match &bedrock.credentials {
            AwsCredentials::ApiKey(key) => {
                headers.insert(header::AUTHORIZATION, sensitive(&format!("Bearer {}", key.expose()))?);
                Signing::None
            }
            AwsCredentials::Static { access_key_id, secret_access_key, session_token } => {
                Signing::Static(aws_credential_types::Credentials::new(
                    access_key_id,
                    secret_access_key.expose(),
                    session_token.as_ref().map(|t| t.expose().to_owned()),
                    None,
                    "weir-config",
                ))
            }
            AwsCredentials::Chain { profile, credentials_file } => Signing::Chain(Box::new(Chain {
                profile: profile.clone(),
                credentials_file: credentials_file.clone(),
                provider: tokio::sync::OnceCell::new(),
                cached: tokio::sync::Mutex::new(None),
            })),
        };
        Ok(Self { endpoint: upstream.endpoint.clone(), region: bedrock.region.clone(), signing })
    }

    pub fn request(&self, operation: Operation, model: &str, body: &[u8]) -> Result<(Uri, Vec<u8>), Error> {
        let openai: Value =
            serde_json::from_slice(body).map_err(|e| Error::internal("could not re-read the request").source(e))?;
        // Model ids may be ARNs (`arn:aws:bedrock:…:inference-profile/…`): one path segment.
        let id: String = url::form_urlencoded::byte_serialize(model.as_bytes()).collect();
        let (action, body) = match operation {
            Operation::Chat => {
                let stream = openai.get("stream").and_then(Value::as_bool) == Some(true);
                (if stream { "converse-stream" } else { "converse" }, chat_request(&openai)?)
            }
            Operation::Embeddings => ("invoke", embeddings_request(&openai, model)?),
        };
        let uri = format!("{}/model/{id}/{action}", self.endpoint).parse().map_err(|e| {
            Error::bad_request("the model name cannot be used in a Bedrock URL").param("model").source(e)
        })?;
        let body = serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the request").source(e))?;
        Ok((uri, body))
    }

    /// Signs the request with SigV4 (a Bedrock API key is already among the static headers).
    pub async fn authorize(&self, upstream: &str, request: &mut Request<Bytes>) -> Result<(), Error> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let credentials = match &self.signing {
            Signing::None => return Ok(()),
            Signing::Static(credentials) => credentials.clone(),
            // Boxed: the chain's first run (aws-config's loader) is a large future, and it would
            // otherwise be part of every request's future.
            Signing::Chain(chain) => Box::pin(chain.credentials(upstream, &self.region)).await?,
        };
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("bedrock")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| super::credentials_failed(upstream, "SigV4 parameters are incomplete", false).source(e))?
            .into();
        let uri = request.uri().to_string();
        let headers: Vec<(&str, &str)> =
            request.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
        let signable = SignableRequest::new("POST", &uri, headers.into_iter(), SignableBody::Bytes(request.body()))
            .map_err(|e| Error::internal("the request cannot be signed").source(e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::internal("the request cannot be signed").source(e))?
            .into_parts();
        let mut signed = Request::new(());
        instructions.apply_to_request_http1x(&mut signed);
        for (name, value) in signed.headers() {
            let mut value = value.clone();
            value.set_sensitive(true);
            request.headers_mut().insert(name, value);
        }
        Ok(())
    }
}

impl Chain {
    async fn credentials(&self, upstream: &str, region: &str) -> Result<aws_credential_types::Credentials, Error> {
        use aws_credential_types::provider::ProvideCredentials;
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = &*cached
            && credentials.expiry().is_none_or(|at| at > SystemTime::now() + REFRESH_AHEAD)
        {
            return Ok(credentials.clone());
        }
        let provider = self
            .provider
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_owned()));
                if let Some(profile) = &self.profile {
                    loader = loader.profile_name(profile);
                }
                if let Some(file) = &self.credentials_file {
                    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
                    let files = EnvConfigFiles::builder()
                        .include_default_config_file(false)
                        .include_default_credentials_file(false)
                        .with_file(EnvConfigFileKind::Credentials, file)
                        .build();
                    loader = loader.profile_files(files);
                }
                loader
                    .load()
                    .await
                    .credentials_provider()
                    .ok_or_else(|| super::credentials_failed(upstream, "the AWS credential chain is empty", false))
            })
            .await?;
        let credentials = provider.provide_credentials().await.map_err(|e| {
            super::credentials_failed(upstream, "the AWS credential chain found no usable credentials", true).source(e)
        })?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI → Converse

fn chat_request(req: &Value) -> Result<Value, Error> {
    let messages = req.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let tools = req.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty());
    let choice = req.get("tool_choice");
    let schema = (req.pointer("/response_format/type").and_then(Value::as_str) == Some("json_schema"))
        .then(|| req.pointer("/response_format/json_schema/schema").cloned().unwrap_or(json!({"type": "object"})));
    let drop_tools = matches!(choice, Some(Value::String(s)) if s == "none");
    let send_tools = (tools.is_some() && !drop_tools) || schema.is_some();

    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let param = format!("messages[{i}].content");
        match role {
            "system" | "developer" => {
                let text = text_of(m.get("content"));
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            "assistant" => {
                let mut blocks = blocks_of(m.get("content"), &param)?;
                for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or_default();
                    let args = call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    if send_tools {
                        blocks.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
                    } else {
                        blocks.push(json!({"text": format!("[called tool {name} with {args}]")}));
                    }
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" | "function" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or_default();
                let text = text_of(m.get("content"));
                let block = if send_tools {
                    let content = match serde_json::from_str::<Value>(&text) {
                        Ok(Value::Object(o)) => json!([{"json": o}]),
                        _ => json!([{"text": text}]),
                    };
                    json!({"toolResult": {"toolUseId": id, "content": content}})
                } else {
                    json!({"text": format!("[tool result: {text}]")})
                };
                push_turn(&mut turns, "user", vec![block]);
            }
            _ => push_turn(&mut turns, "user", blocks_of(m.get("content"), &param)?),
        }
    }
    let mut out = json!({"messages": turns});
    if !system.is_empty() {
        out["system"] = Value::Array(system);
    }
    let mut inference = Map::new();
    if let Some(max) = req.get("max_completion_tokens").or_else(|| req.get("max_tokens")).filter(|v| !v.is_null()) {
        inference.insert("maxTokens".into(), max.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            inference.insert(to.into(), v.clone());
        }
    }
    match req.get("stop") {
        Some(Value::String(s)) => {
            inference.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if !a.is_empty() => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if !inference.is_empty() {
        out["inferenceConfig"] = Value::Object(inference);
    }
    if send_tools {
        let mut specs: Vec<Value> = Vec::new();
        if !drop_tools {
            for f in tools.into_iter().flatten().filter_map(|t| t.get("function")) {
                let mut spec = json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "inputSchema": {"json": f.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}}))},
                });
                if let Some(d) = f.get("description") {
                    spec["description"] = d.clone();
                }
                specs.push(json!({"toolSpec": spec}));
            }
        }
        let tool_choice = if let Some(schema) = schema {
            specs.push(json!({"toolSpec": {
                "name": JSON_TOOL,
                "description": "Respond with a JSON object that matches this schema.",
                "inputSchema": {"json": schema},
            }}));
            Some(json!({"tool": {"name": JSON_TOOL}}))
        } else {
            match choice {
                Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
                Some(Value::Object(o)) => {
                    let name = o.get("function").and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null);
                    Some(json!({"tool": {"name": name}}))
                }
                Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
                _ => None,
            }
        };
        let mut config = json!({"tools": specs});
        if let Some(c) = tool_choice {
            config["toolChoice"] = c;
        }
        out["toolConfig"] = config;
    }
    Ok(out)
}

fn push_turn(turns: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(existing) = last.get_mut("content").and_then(Value::as_array_mut)
    {
        existing.extend(blocks);
        return;
    }
    turns.push(json!({"role": role, "content": blocks}));
}

fn blocks_of(content: Option<&Value>, param: &str) -> Result<Vec<Value>, Error> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![json!({"text": s})]),
        Some(Value::Array(items)) => {
            let mut blocks = Vec::new();
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => blocks.push(json!({"text": item.get("text").cloned().unwrap_or_default()})),
                    Some("image_url") => {
                        let url = item.pointer("/image_url/url").and_then(Value::as_str).unwrap_or_default();
                        let (mime, data) = data_url(url, param)?;
                        let format = match mime.as_str() {
                            "image/png" => "png",
                            "image/jpeg" | "image/jpg" => "jpeg",
                            "image/gif" => "gif",
                            "image/webp" => "webp",
                            other => {
                                return Err(Error::bad_request(format!(
                                    "Bedrock accepts png, jpeg, gif and webp images, not {other}."
                                ))
                                .param(param)
                                .code("invalid_image_format"));
                            }
                        };
                        blocks.push(json!({"image": {"format": format, "source": {"bytes": data}}}));
                    }
                    _ => {}
                }
            }
            Ok(blocks)
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

/// Titan (`amazon.titan-embed-*`, one text per call) or Cohere (`cohere.embed-*`, a batch).
fn embeddings_request(req: &Value, model: &str) -> Result<Value, Error> {
    let texts: Vec<&str> = match req.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        _ => {
            return Err(Error::bad_request("Bedrock embeds text only; token-id inputs are not supported.")
                .param("input")
                .code("invalid_value"));
        }
    };
    if model.contains("cohere.") {
        return Ok(json!({"texts": texts, "input_type": "search_document"}));
    }
    let [text] = texts.as_slice() else {
        return Err(Error::bad_request("Titan embedding models take one input per request.")
            .param("input")
            .code("invalid_value"));
    };
    let mut body = json!({"inputText": text});
    if let Some(d) = req.get("dimensions") {
        body["dimensions"] = d.clone();
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Converse → OpenAI

/// `stopReason` → `finish_reason`, for all nine values Converse documents.
fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "end_turn" | "stop_sequence" => "stop",
        "tool_use" => "tool_calls",
        "max_tokens" => "length",
        // The output was cut where the context window ended: as truncated as `max_tokens`.
        "model_context_window_exceeded" => "length",
        // A guardrail or the provider's filter stopped the answer.
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // The model produced something Bedrock could not parse (a tool call among them): nothing
        // usable was called, so the answer stops as it is rather than claiming `tool_calls`.
        "malformed_model_output" | "malformed_tool_use" => "stop",
        _ => "stop",
    }
}

fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cache_read = n("cacheReadInputTokens");
    let prompt = n("inputTokens") + cache_read + n("cacheWriteInputTokens");
    let completion = n("outputTokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": n("cacheWriteInputTokens")},
    })
}

pub(crate) fn response(upstream: &str, operation: Operation, model: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
    let answer: Value = serde_json::from_slice(body).map_err(|_| malformed(upstream, "an answer"))?;
    let out = match operation {
        Operation::Chat => chat_response(&answer, model),
        Operation::Embeddings => embeddings_response(&answer, model),
    };
    serde_json::to_vec(&out).map_err(|e| Error::internal("could not encode the answer").source(e))
}

fn chat_response(answer: &Value, model: &str) -> Value {
    let blocks = answer.pointer("/output/message/content").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut text: String = blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect();
    let mut calls = Vec::new();
    let mut json_answer = false;
    for block in blocks.iter().filter_map(|b| b.get("toolUse")) {
        let input = serde_json::to_string(block.get("input").unwrap_or(&json!({}))).unwrap_or_default();
        if block.get("name").and_then(Value::as_str) == Some(JSON_TOOL) {
            text.push_str(&input);
            json_answer = true;
            continue;
        }
        calls.push(json!({
            "id": block.get("toolUseId").cloned().unwrap_or(Value::Null),
            "type": "function",
            "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": input},
        }));
    }
    let reason = answer.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
    let reason = if json_answer && reason == "tool_use" { "stop" } else { finish_reason(reason) };
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": reason}],
        "usage": usage(answer.get("usage").unwrap_or(&Value::Null)),
    })
}

fn embeddings_response(answer: &Value, model: &str) -> Value {
    let (vectors, tokens) = if let Some(one) = answer.get("embedding") {
        (vec![one.clone()], answer.get("inputTextTokenCount").and_then(Value::as_u64).unwrap_or(0))
    } else {
        let many = answer.get("embeddings").and_then(Value::as_array).cloned().unwrap_or_default();
        (many, 0)
    };
    json!({
        "object": "list",
        "data": vectors.into_iter().enumerate().map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v})).collect::<Vec<_>>(),
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// Reads Bedrock's error: the type in `x-amzn-errortype` (`ThrottlingException:…`) or `__type`,
/// the text in `message` (or `Message`).
pub(crate) fn detail(headers: &HeaderMap, body: &[u8]) -> Detail {
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .or_else(|| value.get("__type").and_then(Value::as_str))
        .map(|t| t.split([':', '#']).find(|s| s.ends_with("Exception")).unwrap_or(t).to_owned());
    exception_detail(kind.as_deref(), &value)
}

fn exception_detail(kind: Option<&str>, payload: &Value) -> Detail {
    let message = payload.get("message").or_else(|| payload.get("Message")).and_then(Value::as_str).map(str::to_owned);
    let throttled = matches!(
        kind,
        Some(
            "ThrottlingException" | "throttlingException" | "ServiceQuotaExceededException" | "ModelNotReadyException"
        )
    );
    // The model failed (Bedrock answers 424): the provider's fault, and another target may do.
    let model_failed = matches!(kind, Some("ModelErrorException" | "modelStreamErrorException"));
    let code = kind.map(|k| {
        let k = k.strip_suffix("Exception").unwrap_or(k);
        let mut snake = String::new();
        for (i, c) in k.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        snake
    });
    Detail { message, code, throttled, model_failed, ..Detail::default() }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// ConverseStream's event stream → `chat.completion.chunk`s. Usage arrives in `metadata` after
/// `messageStop`, so the usage chunk and `[DONE]` wait for it; an exception frame becomes an
/// OpenAI error event and the stream ends without `[DONE]`.
#[derive(Debug)]
pub struct ChunkStream {
    upstream: String,
    id: String,
    model: String,
    created: u64,
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    /// Converse content block index → OpenAI tool call index, for tool-use blocks.
    tool_blocks: Vec<(u64, usize)>,
    /// The block that carries a `json_schema` answer, streamed as text.
    json_block: Option<u64>,
    stopped: bool,
    metadata: bool,
    failed: bool,
}

impl ChunkStream {
    pub fn new(upstream: &str, model: &str) -> Self {
        Self {
            upstream: upstream.to_owned(),
            id: completion_id(),
            model: model.to_owned(),
            created: unix_now(),
            buf: BytesMut::new(),
            decoder: MessageFrameDecoder::new(),
            tool_blocks: Vec::new(),
            json_block: None,
            stopped: false,
            metadata: false,
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        self.buf.extend_from_slice(bytes);
        while !self.failed {
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(message)) => self.on_message(&message, out),
                Ok(DecodedFrame::Incomplete) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable event-stream frame");
                    self.failed = true;
                    out.push(error_event(&malformed(&self.upstream, "an event-stream frame")));
                }
            }
        }
    }

    fn chunk(&self, delta: &Value, finish: Option<&str>) -> Event {
        event(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    }

    fn on_message(&mut self, message: &Message, out: &mut Vec<Event>) {
        let header = |name: &str| {
            message.headers().iter().find(|h| h.name().as_str() == name).and_then(|h| match h.value() {
                EsHeaderValue::String(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
        };
        let payload: Value = serde_json::from_slice(message.payload()).unwrap_or(Value::Null);
        if header(":message-type").as_deref() != Some("event") {
            let kind = header(":exception-type").or_else(|| header(":error-code"));
            let mut detail = exception_detail(kind.as_deref(), &payload);
            if detail.message.is_none() {
                detail.message = header(":error-message");
            }
            let status = match kind.as_deref() {
                Some("validationException") => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            let error = super::classify(&self.upstream, status, &HeaderMap::new(), detail);
            self.failed = true;
            out.push(error_event(&error));
            return;
        }
        let index = payload.get("contentBlockIndex").and_then(Value::as_u64).unwrap_or(0);
        match header(":event-type").as_deref() {
            Some("messageStart") => out.push(self.chunk(&json!({"role": "assistant", "content": ""}), None)),
            Some("contentBlockStart") => {
                if let Some(tool) = payload.pointer("/start/toolUse") {
                    if tool.get("name").and_then(Value::as_str) == Some(JSON_TOOL) {
                        self.json_block = Some(index);
                        return;
                    }
                    let n = self.tool_blocks.len();
                    self.tool_blocks.push((index, n));
                    out.push(self.chunk(
                        &json!({"tool_calls": [{"index": n, "id": tool.get("toolUseId"), "type": "function",
                            "function": {"name": tool.get("name"), "arguments": ""}}]}),
                        None,
                    ));
                }
            }
            Some("contentBlockDelta") => {
                if let Some(text) = payload.pointer("/delta/text").and_then(Value::as_str) {
                    out.push(self.chunk(&json!({"content": text}), None));
                } else if let Some(input) = payload.pointer("/delta/toolUse/input").and_then(Value::as_str) {
                    if self.json_block == Some(index) {
                        out.push(self.chunk(&json!({"content": input}), None));
                    } else if let Some(&(_, n)) = self.tool_blocks.iter().find(|(b, _)| *b == index) {
                        out.push(
                            self.chunk(&json!({"tool_calls": [{"index": n, "function": {"arguments": input}}]}), None),
                        );
                    }
                }
            }
            Some("messageStop") => {
                let reason = payload.get("stopReason").and_then(Value::as_str).unwrap_or("end_turn");
                let reason =
                    if self.json_block.is_some() && reason == "tool_use" { "stop" } else { finish_reason(reason) };
                out.push(self.chunk(&json!({}), Some(reason)));
                self.stopped = true;
            }
            Some("metadata") => {
                let mut chunk = json!({
                    "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [],
                });
                chunk["usage"] = usage(payload.get("usage").unwrap_or(&Value::Null));
                out.push(event(&chunk));
                self.metadata = true;
            }
            _ => {}
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if self.stopped && self.metadata && !self.failed && self.buf.is_empty() {
            out.push(done_event());
        }
    }
}

#[cfg(test)]
mod tests {
    //! Golden translations: each case's OpenAI request, Converse answer or ConverseStream frames, and
    //! what the gateway makes of it. `UPDATE_EXPECT=1 cargo test -p weir providers::bedrock` rewrites them.
    #![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use expect_test::{Expect, expect};
    use serde_json::{Value, json};

    use super::*;
    use crate::providers::golden::{render, stream_text};

    fn request(body: Value, expected: Expect) {
        expected.assert_eq(&render(&chat_request(&body).unwrap_or_else(|e| json!({"error": e.message}))));
    }

    fn answer(answer: Value, expected: Expect) {
        expected.assert_eq(&render(&chat_response(&answer, "anthropic.claude")));
    }

    fn frame(kind: &str, event: &str, payload: &Value) -> Vec<u8> {
        let type_header = if kind == "event" { ":event-type" } else { ":exception-type" };
        let message = Message::new(Bytes::from(payload.to_string()))
            .add_header(Header::new(type_header, EsHeaderValue::String(event.to_owned().into())))
            .add_header(Header::new(":content-type", EsHeaderValue::String("application/json".into())))
            .add_header(Header::new(":message-type", EsHeaderValue::String(kind.to_owned().into())));
        let mut out = Vec::new();
        write_message_to(&message, &mut out).unwrap();
        out
    }

    /// Feeds the frames one byte at a time, as a slow network would.
    fn stream(frames: &[(&str, &str, Value)], expected: Expect) {
        let mut stream = ChunkStream::new("up", "anthropic.claude");
        let mut out = Vec::new();
        for (kind, event, payload) in frames {
            for byte in frame(kind, event, payload) {
                stream.push(&[byte], &mut out);
            }
        }
        stream.finish(&mut out);
        expected.assert_eq(&stream_text(&out));
    }

    fn tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time"}}
        ])
    }

    #[test]
    fn requests() {
        request(
            json!({"model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}}]},
                {"role": "developer", "content": "use metric"},
                {"role": "user", "content": "and quickly"},
            ], "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 10, "stop": ["END", "STOP"], "x_unknown": true}),
            expect![[r#"
                {
                  "inferenceConfig": {
                    "maxTokens": 10,
                    "stopSequences": [
                      "END",
                      "STOP"
                    ],
                    "temperature": 0.2,
                    "topP": 0.9
                  },
                  "messages": [
                    {
                      "content": [
                        {
                          "text": "what is this"
                        },
                        {
                          "image": {
                            "format": "webp",
                            "source": {
                              "bytes": "UklGRg=="
                            }
                          }
                        },
                        {
                          "text": "and quickly"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "system": [
                    {
                      "text": "be brief"
                    },
                    {
                      "text": "use metric"
                    }
                  ]
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "required"}),
            expect![[r#"
            {
              "messages": [
                {
                  "content": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "toolChoice": {
                  "any": {}
                },
                "tools": [
                  {
                    "toolSpec": {
                      "description": "Weather now",
                      "inputSchema": {
                        "json": {
                          "properties": {
                            "location": {
                              "type": "string"
                            }
                          },
                          "type": "object"
                        }
                      },
                      "name": "get_weather"
                    }
                  },
                  {
                    "toolSpec": {
                      "inputSchema": {
                        "json": {
                          "properties": {},
                          "type": "object"
                        }
                      },
                      "name": "get_time"
                    }
                  }
                ]
              }
            }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "auto"}),
            expect![[r#"
            {
              "messages": [
                {
                  "content": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "toolChoice": {
                  "auto": {}
                },
                "tools": [
                  {
                    "toolSpec": {
                      "description": "Weather now",
                      "inputSchema": {
                        "json": {
                          "properties": {
                            "location": {
                              "type": "string"
                            }
                          },
                          "type": "object"
                        }
                      },
                      "name": "get_weather"
                    }
                  },
                  {
                    "toolSpec": {
                      "inputSchema": {
                        "json": {
                          "properties": {},
                          "type": "object"
                        }
                      },
                      "name": "get_time"
                    }
                  }
                ]
              }
            }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
            expect![[r#"
                {
                  "messages": [
                    {
                      "content": [
                        {
                          "text": "x"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "toolConfig": {
                    "toolChoice": {
                      "tool": {
                        "name": "get_time"
                      }
                    },
                    "tools": [
                      {
                        "toolSpec": {
                          "description": "Weather now",
                          "inputSchema": {
                            "json": {
                              "properties": {
                                "location": {
                                  "type": "string"
                                }
                              },
                              "type": "object"
                            }
                          },
                          "name": "get_weather"
                        }
                      },
                      {
                        "toolSpec": {
                          "inputSchema": {
                            "json": {
                              "properties": {},
                              "type": "object"
                            }
                          },
                          "name": "get_time"
                        }
                      }
                    ]
                  }
                }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}),
            expect![[r#"
                {
                  "messages": [
                    {
                      "content": [
                        {
                          "text": "x"
                        }
                      ],
                      "role": "user"
                    }
                  ],
                  "toolConfig": {
                    "toolChoice": {
                      "tool": {
                        "name": "json_response"
                      }
                    },
                    "tools": [
                      {
                        "toolSpec": {
                          "description": "Respond with a JSON object that matches this schema.",
                          "inputSchema": {
                            "json": {
                              "properties": {
                                "a": {
                                  "type": "integer"
                                }
                              },
                              "type": "object"
                            }
                          },
                          "name": "json_response"
                        }
                      }
                    ]
                  }
                }"#]],
        );
        let history = json!([
            {"role": "user", "content": "weather and time"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "tooluse_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "{\"temp\":21}"},
            {"role": "tool", "tool_call_id": "tooluse_2", "content": "noon"},
        ]);
        // Results merged into one user turn of toolResults.
        request(
            json!({"model": "m", "messages": history, "tools": tools()}),
            expect![[r#"
            {
              "messages": [
                {
                  "content": [
                    {
                      "text": "weather and time"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": [
                    {
                      "text": "Let me look."
                    },
                    {
                      "toolUse": {
                        "input": {
                          "location": "Paris"
                        },
                        "name": "get_weather",
                        "toolUseId": "tooluse_1"
                      }
                    },
                    {
                      "toolUse": {
                        "input": {},
                        "name": "get_time",
                        "toolUseId": "tooluse_2"
                      }
                    }
                  ],
                  "role": "assistant"
                },
                {
                  "content": [
                    {
                      "toolResult": {
                        "content": [
                          {
                            "json": {
                              "temp": 21
                            }
                          }
                        ],
                        "toolUseId": "tooluse_1"
                      }
                    },
                    {
                      "toolResult": {
                        "content": [
                          {
                            "text": "noon"
                          }
                        ],
                        "toolUseId": "tooluse_2"
                      }
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "tools": [
                  {
                    "toolSpec": {
                      "description": "Weather now",
                      "inputSchema": {
                        "json": {
                          "properties": {
                            "location": {
                              "type": "string"
                            }
                          },
                          "type": "object"
                        }
                      },
                      "name": "get_weather"
                    }
                  },
                  {
                    "toolSpec": {
                      "inputSchema": {
                        "json": {
                          "properties": {},
                          "type": "object"
                        }
                      },
                      "name": "get_time"
                    }
                  }
                ]
              }
            }"#]],
        );
        // The same history with tool_choice none (tools dropped) goes as text.
        request(
            json!({"model": "m", "messages": history, "tools": tools(), "tool_choice": "none"}),
            expect![[r#"
            {
              "messages": [
                {
                  "content": [
                    {
                      "text": "weather and time"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": [
                    {
                      "text": "Let me look."
                    },
                    {
                      "text": "[called tool get_weather with {\"location\":\"Paris\"}]"
                    },
                    {
                      "text": "[called tool get_time with {}]"
                    }
                  ],
                  "role": "assistant"
                },
                {
                  "content": [
                    {
                      "text": "[tool result: {\"temp\":21}]"
                    },
                    {
                      "text": "[tool result: noon]"
                    }
                  ],
                  "role": "user"
                }
              ]
            }"#]],
        );
        request(
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}),
            expect![[r#"
                {
                  "error": "Bedrock accepts png, jpeg, gif and webp images, not image/tiff."
                }"#]],
        );
    }

    #[test]
    fn answers() {
        answer(
            json!({"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " there"}]}}, "stopReason": "end_turn",
                   "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 11, "cacheReadInputTokens": 3, "cacheWriteInputTokens": 1}, "metrics": {"latencyMs": 10}, "x_new": 1}),
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
                  "model": "anthropic.claude",
                  "object": "chat.completion",
                  "usage": {
                    "completion_tokens": 2,
                    "prompt_tokens": 9,
                    "prompt_tokens_details": {
                      "cache_write_tokens": 1,
                      "cached_tokens": 3
                    },
                    "total_tokens": 11
                  }
                }"#]],
        );
        answer(
            json!({"output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"location": "Paris"}}},
                {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time", "input": {}}}
            ]}}, "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}}),
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
                            "id": "tooluse_1",
                            "type": "function"
                          },
                          {
                            "function": {
                              "arguments": "{}",
                              "name": "get_time"
                            },
                            "id": "tooluse_2",
                            "type": "function"
                          }
                        ]
                      }
                    }
                  ],
                  "created": 0,
                  "id": "chatcmpl-ID",
                  "model": "anthropic.claude",
                  "object": "chat.completion",
                  "usage": {
                    "completion_tokens": 9,
                    "prompt_tokens": 5,
                    "prompt_tokens_details": {
                      "cache_write_tokens": 0,
                      "cached_tokens": 0
                    },
                    "total_tokens": 14
                  }
                }"#]],
        );
        answer(
            json!({"output": {"message": {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "json_response", "input": {"a": 1}}}]}}, "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 3}}),
            expect![[r#"
                {
                  "choices": [
                    {
                      "finish_reason": "stop",
                      "index": 0,
                      "logprobs": null,
                      "message": {
                        "content": "{\"a\":1}",
                        "refusal": null,
                        "role": "assistant"
                      }
                    }
                  ],
                  "created": 0,
                  "id": "chatcmpl-ID",
                  "model": "anthropic.claude",
                  "object": "chat.completion",
                  "usage": {
                    "completion_tokens": 3,
                    "prompt_tokens": 5,
                    "prompt_tokens_details": {
                      "cache_write_tokens": 0,
                      "cached_tokens": 0
                    },
                    "total_tokens": 8
                  }
                }"#]],
        );
        let reasons: Vec<(&str, &str)> = [
            "end_turn",
            "tool_use",
            "max_tokens",
            "stop_sequence",
            "guardrail_intervened",
            "content_filtered",
            "malformed_model_output",
            "malformed_tool_use",
            "model_context_window_exceeded",
        ]
        .into_iter()
        .map(|r| (r, finish_reason(r)))
        .collect();
        expect![[r#"
            [
                (
                    "end_turn",
                    "stop",
                ),
                (
                    "tool_use",
                    "tool_calls",
                ),
                (
                    "max_tokens",
                    "length",
                ),
                (
                    "stop_sequence",
                    "stop",
                ),
                (
                    "guardrail_intervened",
                    "content_filter",
                ),
                (
                    "content_filtered",
                    "content_filter",
                ),
                (
                    "malformed_model_output",
                    "stop",
                ),
                (
                    "malformed_tool_use",
                    "stop",
                ),
                (
                    "model_context_window_exceeded",
                    "length",
                ),
            ]
        "#]]
        .assert_debug_eq(&reasons);
    }

    #[test]
    fn streams() {
        let usage =
            json!({"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {"latencyMs": 1}});
        stream(
            &[
                ("event", "messageStart", json!({"role": "assistant"})),
                ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "abc"})),
                ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo"}})),
                ("event", "contentBlockStop", json!({"contentBlockIndex": 0})),
                ("event", "messageStop", json!({"stopReason": "max_tokens"})),
                ("event", "metadata", usage.clone()),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"content":"Hel"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"content":"lo"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{},"finish_reason":"length","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":3,"prompt_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"total_tokens":5}}
                [DONE]"#]],
        );
        stream(
            &[
                ("event", "messageStart", json!({"role": "assistant"})),
                (
                    "event",
                    "contentBlockStart",
                    json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
                ),
                (
                    "event",
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"loc"}}}),
                ),
                (
                    "event",
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "ation\":\"Paris\"}"}}}),
                ),
                ("event", "contentBlockStop", json!({"contentBlockIndex": 0})),
                (
                    "event",
                    "contentBlockStart",
                    json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time"}}}),
                ),
                ("event", "contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}})),
                ("event", "contentBlockStop", json!({"contentBlockIndex": 1})),
                ("event", "messageStop", json!({"stopReason": "tool_use"})),
                ("event", "metadata", usage.clone()),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"tooluse_1","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"loc"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"ation\":\"Paris\"}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_time"},"id":"tooluse_2","index":1,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"},"index":1}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":3,"prompt_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"total_tokens":5}}
                [DONE]"#]],
        );
        // messageStop without its metadata: the stream was cut before usage, so no [DONE].
        stream(
            &[
                ("event", "messageStart", json!({"role": "assistant"})),
                ("event", "messageStop", json!({"stopReason": "end_turn"})),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}"#]],
        );
        stream(
            &[
                ("event", "messageStart", json!({"role": "assistant"})),
                ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
                ("exception", "throttlingException", json!({"message": "Too many tokens, please wait."})),
            ],
            expect![[r#"
                {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"choices":[{"delta":{"content":"Hel"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
                {"error":{"code":"throttling","message":"The upstream 'up' is rate limiting requests: Too many tokens, please wait.","param":null,"type":"rate_limit_error"}}"#]],
        );
    }

    #[test]
    fn errors() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/".parse().unwrap(),
        );
        let d = detail(&headers, br#"{"message":"Too many requests"}"#);
        assert_eq!(
            (d.code.as_deref(), d.throttled, d.message.as_deref()),
            (Some("throttling"), true, Some("Too many requests"))
        );
        let d =
            detail(&HeaderMap::new(), br#"{"__type":"com.amazon.coral.validate#ValidationException","Message":"bad"}"#);
        assert_eq!((d.code.as_deref(), d.message.as_deref()), (Some("validation"), Some("bad")));
    }
}
