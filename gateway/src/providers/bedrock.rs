//! Adapter for Amazon Bedrock: Converse and ConverseStream for chat, InvokeModel for embeddings
//! (Titan and Cohere), translated both ways here — and, for a Messages client asking a Claude
//! model, InvokeModel / InvokeModelWithResponseStream with the Messages body itself, so that
//! Claude's features survive: the body is the client's less `model` and `stream`, with
//! `anthropic_version: "bedrock-2023-05-31"` and the client's `anthropic-beta` values as
//! `anthropic_beta`; the answer is Anthropic's Message, and the stream's `chunk` frames carry
//! Anthropic's events, which [`InvokeStream`] writes out as Messages SSE.
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

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue as EsHeaderValue, Message};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use weir_config::{AwsCredentials, Upstream};

use super::aws::SigV4;
use super::{
    Adapter, Detail, HttpClient, Translator, completion_id, content_parts, done_event, error_event, event, malformed,
    push_turn, sensitive, unix_now,
};
use crate::api::chat::{Message as ChatMessage, Role};
use crate::api::sse::Event;
use crate::api::{ChatRequest, ClientRequest, EmbeddingsRequest, ModelRequest, Operation};
use crate::error::Error;

/// The name of the tool that carries a `json_schema` answer.
const JSON_TOOL: &str = "json_response";

#[derive(Debug)]
pub struct Bedrock {
    endpoint: String,
    signer: SigV4,
}

impl Bedrock {
    pub fn new(upstream: &Upstream, bedrock: &weir_config::Aws, headers: &mut HeaderMap) -> Result<Self, Error> {
        // A Bedrock API key is a bearer header; everything else is signed.
        if let AwsCredentials::ApiKey(key) = &bedrock.credentials {
            headers.insert(header::AUTHORIZATION, sensitive(&format!("Bearer {}", key.expose()))?);
        }
        Ok(Self { endpoint: upstream.endpoint.clone(), signer: SigV4::new(bedrock, "bedrock") })
    }
}

/// Whether `model` is one of Anthropic's Claude models on Bedrock (a foundation model id or a
/// cross-region inference profile such as `us.anthropic.claude-…`), which take the Messages body.
pub fn is_claude(model: &str) -> bool {
    model.contains("anthropic.claude")
}

impl Adapter for Bedrock {
    fn native(&self, request: &ClientRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        let ClientRequest::Messages(s) = request else {
            return Err(Error::internal("only Messages requests are relayed to Bedrock"));
        };
        // One path segment, refused unless a plausible name, as for Converse.
        let id = super::path_segment(model)?;
        let action = if s.request.stream == Some(true) { "invoke-with-response-stream" } else { "invoke" };
        let uri = format!("{}/model/{id}/{action}", self.endpoint).parse().map_err(|e| {
            Error::bad_request("the model name cannot be used in a Bedrock URL").param("model").source(e)
        })?;
        Ok((uri, s.request.upstream_body(None, true)?))
    }

    fn native_translator(&self, upstream: &str) -> Option<Translator> {
        Some(Translator::BedrockMessages(InvokeStream::new(upstream)))
    }

    fn request(&self, request: &ModelRequest, model: &str) -> Result<(Uri, Vec<u8>), Error> {
        // Model ids may be ARNs (`arn:aws:bedrock:…:inference-profile/…`): one path segment.
        let id = super::path_segment(model)?;
        let (action, body) = match request {
            ModelRequest::Chat(chat) => {
                (if chat.is_stream() { "converse-stream" } else { "converse" }, chat_request(chat)?)
            }
            ModelRequest::Embeddings(embeddings) => ("invoke", embeddings_request(embeddings, model)?),
        };
        let uri = format!("{}/model/{id}/{action}", self.endpoint).parse().map_err(|e| {
            Error::bad_request("The model name cannot be used in a Bedrock URL.").param("model").source(e)
        })?;
        let body = serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the request").source(e))?;
        Ok((uri, body))
    }

    /// Signs the request with SigV4 (a Bedrock API key is already among the static headers).
    async fn authorize(&self, upstream: &str, _: &HttpClient, request: &mut Request<Bytes>) -> Result<(), Error> {
        self.signer.sign(upstream, request).await
    }

    fn response(&self, upstream: &str, operation: Operation, model: &str, body: Bytes) -> Result<Bytes, Error> {
        let answer: Value = serde_json::from_slice(&body).map_err(|_| malformed(upstream, "an answer"))?;
        let out = match operation {
            Operation::Chat => chat_response(&answer, model),
            Operation::Embeddings => embeddings_response(&answer, model),
            Operation::Predict => return Err(Error::internal("predictions have no answer to translate")),
        };
        serde_json::to_vec(&out).map(Bytes::from).map_err(|e| Error::internal("could not encode the answer").source(e))
    }

    fn translator(&self, upstream: &str, model: &str) -> Option<Translator> {
        Some(Translator::Bedrock(ChunkStream::new(upstream, model)))
    }

    fn detail(&self, headers: &HeaderMap, body: &[u8]) -> Detail {
        detail(headers, body)
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI → Converse

fn chat_request(req: &ChatRequest) -> Result<Value, Error> {
    let tools = req.param("tools").and_then(Value::as_array).filter(|t| !t.is_empty());
    let choice = req.param("tool_choice");
    let schema = req
        .param("response_format")
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("json_schema"))
        .map(|f| f.pointer("/json_schema/schema").cloned().unwrap_or(json!({"type": "object"})));
    let drop_tools = matches!(choice, Some(Value::String(s)) if s == "none");
    let send_tools = (tools.is_some() && !drop_tools) || schema.is_some();

    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let param = format!("messages[{i}].content");
        match m.role {
            Role::System | Role::Developer => {
                let text = m.text();
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            Role::Assistant => {
                let mut blocks = blocks_of(m, &param)?;
                for call in m.tool_calls() {
                    let input: Value = serde_json::from_str(call.arguments).unwrap_or_else(|_| json!({}));
                    if send_tools {
                        blocks.push(json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": input}}));
                    } else {
                        blocks.push(json!({"text": format!("[called tool {} with {}]", call.name, call.arguments)}));
                    }
                }
                push_turn(&mut turns, "assistant", "content", blocks);
            }
            Role::Tool | Role::Function => {
                let text = m.text();
                let block = if send_tools {
                    let content = match serde_json::from_str::<Value>(&text) {
                        Ok(Value::Object(o)) => json!([{"json": o}]),
                        _ => json!([{"text": text}]),
                    };
                    json!({"toolResult": {"toolUseId": m.tool_call_id(), "content": content}})
                } else {
                    json!({"text": format!("[tool result: {text}]")})
                };
                push_turn(&mut turns, "user", "content", vec![block]);
            }
            Role::User => push_turn(&mut turns, "user", "content", blocks_of(m, &param)?),
        }
    }
    let mut out = json!({"messages": turns});
    if !system.is_empty() {
        out["system"] = Value::Array(system);
    }
    let mut inference = Map::new();
    if let Some(max) = req.param("max_completion_tokens").or_else(|| req.param("max_tokens")) {
        inference.insert("maxTokens".into(), max.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.param(from) {
            inference.insert(to.into(), v.clone());
        }
    }
    match req.param("stop") {
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

/// A message's content as Converse blocks.
fn blocks_of(message: &ChatMessage, param: &str) -> Result<Vec<Value>, Error> {
    content_parts(message, param, |mime, data| {
        let format = match mime.as_str() {
            "image/png" => "png",
            "image/jpeg" | "image/jpg" => "jpeg",
            "image/gif" => "gif",
            "image/webp" => "webp",
            _ => {
                // The MIME type is the client's text: named by kind, not repeated.
                return Err(Error::bad_request(
                    "Bedrock accepts png, jpeg, gif and webp images; this image's `data:` URL names another type.",
                )
                .param(param)
                .code("invalid_image_format"));
            }
        };
        Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
    })
}

/// Titan (`amazon.titan-embed-*`, one text per call) or Cohere (`cohere.embed-*`, a batch).
fn embeddings_request(req: &EmbeddingsRequest, model: &str) -> Result<Value, Error> {
    let Some(texts) = req.texts() else {
        return Err(Error::bad_request("Bedrock embeds text only; token-id inputs are not supported.")
            .param("input")
            .code("invalid_value"));
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
    if let Some(d) = req.param("dimensions") {
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

/// The most bytes of one event-stream frame the gateway buffers: the limit of one SSE event
/// (ConverseStream events are a few KiB; a frame this large is an upstream that is broken or hostile).
const MAX_FRAME: usize = crate::api::sse::MAX_EVENT_BYTES;

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
        if self.failed {
            // The stream already ended with an error event: nothing more is read, or kept.
            return;
        }
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
        // A frame's prelude may declare up to 4 GiB; the decoder would wait for all of it.
        if !self.failed && self.buf.len() > MAX_FRAME {
            self.failed = true;
            self.buf.clear();
            out.push(error_event(&super::event_too_large(&self.upstream)));
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

/// InvokeModelWithResponseStream's event stream → Messages SSE events: each `chunk` frame's
/// base64 `bytes` is one Anthropic event, written out with its `event:` line; an exception frame
/// becomes Anthropic's `error` event.
#[derive(Debug)]
pub struct InvokeStream {
    upstream: String,
    buf: BytesMut,
    decoder: MessageFrameDecoder,
    failed: bool,
}

impl InvokeStream {
    pub fn new(upstream: &str) -> Self {
        Self { upstream: upstream.to_owned(), buf: BytesMut::new(), decoder: MessageFrameDecoder::new(), failed: false }
    }

    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        use base64::Engine as _;
        if self.failed {
            // The stream already ended with an error event: nothing more is read, or kept.
            return;
        }
        self.buf.extend_from_slice(bytes);
        while !self.failed {
            let message = match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(message)) => message,
                Ok(DecodedFrame::Incomplete) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable event-stream frame");
                    self.fail(&malformed(&self.upstream, "an event-stream frame"), out);
                    break;
                }
            };
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
                    Some("serviceUnavailableException") => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                self.fail(&super::classify(&self.upstream, status, &HeaderMap::new(), detail), out);
                break;
            }
            if header(":event-type").as_deref() != Some("chunk") {
                continue;
            }
            let Some(Ok(event)) = payload
                .get("bytes")
                .and_then(Value::as_str)
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
            else {
                self.fail(&malformed(&self.upstream, "a stream chunk"), out);
                break;
            };
            out.push(crate::api::messages::sse_event(&event));
        }
        // As for ConverseStream: a frame's prelude may declare up to 4 GiB.
        if !self.failed && self.buf.len() > MAX_FRAME {
            self.buf.clear();
            self.fail(&super::event_too_large(&self.upstream), out);
        }
    }

    fn fail(&mut self, error: &Error, out: &mut Vec<Event>) {
        self.failed = true;
        let raw = error.anthropic_sse_event();
        let data = raw.strip_prefix(b"event: error\ndata: ").unwrap_or(&raw).trim_ascii_end().to_vec();
        out.push(Event { raw, data: Bytes::from(data) });
    }

    /// Nothing is added at the end: `message_stop` is Anthropic's own event, relayed when it came.
    pub fn finish(&mut self, _out: &mut Vec<Event>) {}
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
