//! The Bedrock routes of the mock: `POST /model/{id}/converse`, `/converse-stream` (real
//! `application/vnd.amazon.eventstream` frames written with the AWS SDK's own codec, exceptions
//! mid-stream included), `/invoke` for Titan and Cohere embeddings, and for Claude models `/invoke`
//! and `/invoke-with-response-stream` with Anthropic's Messages body (`anthropic_version:
//! "bedrock-2023-05-31"`, no `model` or `stream`, nothing the Bedrock docs do not list), answered
//! as the Anthropic mock answers and streamed as `chunk` frames carrying each event in base64.
//!
//! Requests must carry a SigV4 `Authorization` header for the `bedrock` service (its shape is
//! checked, and with `aws_credentials` the signature itself, recomputed with the SDK's signer) or a
//! Bedrock API key as a bearer token. Like Bedrock it refuses conversations that do not alternate or start with the user,
//! tool blocks without a `toolConfig`, tool uses without their results, blank text, and unknown fields.

use std::sync::Arc;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue as EsHeaderValue, Message};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use super::{
    Finish, MockBody, Recorded, Script, ScriptReply, Shared, TOOL_ARGUMENTS, TRIGGER_STREAM_EXCEPTION,
    argument_fragments, embedding_vector, injected_failure, json_response, streamed, word_count,
};

/// An AWS JSON error: the type in `x-amzn-errortype`, the text in `message`.
pub(super) struct AwsError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl AwsError {
    fn validation(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind: "ValidationException", message: message.into() }
    }

    fn into_response(self) -> http::Response<MockBody> {
        self.into_response_of("com.amazon.bedrock")
    }

    /// The error as the service in `namespace` writes it.
    pub fn into_response_of(self, namespace: &str) -> http::Response<MockBody> {
        let mut response = json_response(self.status, &json!({"message": self.message}));
        let kind = format!("{}:http://internal.amazon.com/coral/{namespace}/", self.kind);
        if let Ok(value) = HeaderValue::from_str(&kind) {
            response.headers_mut().insert("x-amzn-errortype", value);
        }
        response
    }
}

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    handle(shared, req, path).unwrap_or_else(AwsError::into_response)
}

fn injected(status: StatusCode) -> AwsError {
    let (kind, message) = match status.as_u16() {
        429 => ("ThrottlingException", "Too many requests, please wait before trying again."),
        401 | 403 => ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
        404 => {
            ("ResourceNotFoundException", "Could not resolve the foundation model from the provided model identifier.")
        }
        503 => ("ServiceUnavailableException", "Bedrock is unable to process your request."),
        s if s >= 500 => ("InternalServerException", "The server encountered an error processing your request."),
        _ => ("ValidationException", "The request was rejected by the mock."),
    };
    AwsError { status, kind, message: message.to_owned() }
}

/// Checks `Authorization` the way Bedrock's front end reads it.
fn check_auth(shared: &Shared, req: &Recorded) -> Result<(), AwsError> {
    check_sigv4(shared, req, "bedrock", true)
}

/// Checks a SigV4 `Authorization` for `service` the way AWS front ends read it (its shape, and with
/// `aws_credentials` the signature itself); `bearer`: a Bedrock API key is accepted instead.
pub(super) fn check_sigv4(shared: &Shared, req: &Recorded, service: &str, bearer: bool) -> Result<(), AwsError> {
    let denied = |message: &str| AwsError {
        status: StatusCode::FORBIDDEN,
        kind: "UnrecognizedClientException",
        message: message.to_owned(),
    };
    let Some(auth) = req.header("authorization") else {
        return Err(AwsError {
            status: StatusCode::FORBIDDEN,
            kind: "MissingAuthenticationTokenException",
            message: "Missing Authentication Token".to_owned(),
        });
    };
    if let Some(key) = auth.strip_prefix("Bearer ").filter(|_| bearer) {
        return match &shared.config.api_key {
            Some(expected) if key == expected => Ok(()),
            _ => Err(denied("Invalid API Key format: Must start with pre-defined prefix")),
        };
    }
    let sigv4 = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| denied("Authorization header requires 'Credential' parameter."))?;
    let part = |name: &str| sigv4.split(", ").find_map(|p| p.strip_prefix(name)).map(str::trim);
    let credential =
        part("Credential=").ok_or_else(|| denied("Authorization header requires 'Credential' parameter."))?;
    let signed =
        part("SignedHeaders=").ok_or_else(|| denied("Authorization header requires 'SignedHeaders' parameter."))?;
    let signature = part("Signature=").ok_or_else(|| denied("Authorization header requires 'Signature' parameter."))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let well_formed = scope.len() == 5
        && scope[3] == service
        && scope[4] == "aws4_request"
        && signed.split(';').any(|h| h == "host")
        && signed.split(';').any(|h| h == "x-amz-date")
        && req.header("x-amz-date").is_some()
        && signature.len() == 64
        && signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(denied("The request signature we calculated does not match the signature you provided."));
    }
    if let Some((id, secret)) = &shared.config.aws_credentials {
        if id != scope[0] {
            return Err(denied("The security token included in the request is invalid."));
        }
        let expected = expected_signature(req, id, secret, scope[2], service, signed)
            .ok_or_else(|| denied("The request signature we calculated does not match the signature you provided."))?;
        if expected != signature {
            return Err(AwsError {
                status: StatusCode::FORBIDDEN,
                kind: "InvalidSignatureException",
                message: "The request signature we calculated does not match the signature you provided. Check \
                          your AWS Secret Access Key and signing method."
                    .to_owned(),
            });
        }
    }
    Ok(())
}

/// The SigV4 signature of a recorded request, computed with the AWS SDK's signer over the headers
/// the client said it signed, at the time it said it signed.
fn expected_signature(
    req: &Recorded,
    id: &str,
    secret: &str,
    region: &str,
    service: &str,
    signed: &str,
) -> Option<String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let time = amz_date(req.header("x-amz-date")?)?;
    let identity = aws_credential_types::Credentials::new(
        id,
        secret,
        req.header("x-amz-security-token").map(str::to_owned),
        None,
        "mock",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let names: Vec<&str> = signed.split(';').collect();
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .filter(|(name, _)| names.contains(&name.as_str()) && *name != "x-amz-date" && *name != "x-amz-security-token")
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let host = req.header("host")?;
    let uri = format!("http://{host}{}", req.path);
    let signable = SignableRequest::new(&req.method, &uri, headers.into_iter(), SignableBody::Bytes(&req.body)).ok()?;
    let (_, signature) = sign(signable, &params).ok()?.into_parts();
    Some(signature)
}

/// `20240101T120000Z` as a time.
fn amz_date(text: &str) -> Option<std::time::SystemTime> {
    let digits = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hh, mm, ss) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<http::Response<MockBody>, AwsError> {
    check_auth(shared, req)?;
    let rest = path.strip_prefix("/model/").unwrap_or_default();
    let (model, action) = rest.rsplit_once('/').ok_or_else(|| AwsError {
        status: StatusCode::NOT_FOUND,
        kind: "UnknownOperationException",
        message: String::new(),
    })?;
    let model = percent_decode(model);
    if req.method != "POST" {
        return Err(AwsError {
            status: StatusCode::NOT_FOUND,
            kind: "UnknownOperationException",
            message: String::new(),
        });
    }
    if let Some(status) = injected_failure(shared) {
        return Err(injected(status));
    }
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| AwsError::validation("Malformed input request, please reformat your input and try again."))?;
    match action {
        "converse" => converse(shared, &body, &model, false),
        "converse-stream" => converse(shared, &body, &model, true),
        "invoke" if model.contains("anthropic.claude") => claude(shared, &body, &model, false),
        "invoke-with-response-stream" if model.contains("anthropic.claude") => claude(shared, &body, &model, true),
        "invoke" => invoke(&body, &model),
        _ => Err(AwsError { status: StatusCode::NOT_FOUND, kind: "UnknownOperationException", message: String::new() }),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn converse(
    shared: &Arc<Shared>,
    body: &Value,
    model: &str,
    stream: bool,
) -> Result<http::Response<MockBody>, AwsError> {
    const KNOWN: &[&str] = &[
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
    ];
    if let Some(map) = body.as_object()
        && let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str()))
    {
        return Err(AwsError::validation(format!("Unable to parse request body: unknown field '{unknown}'")));
    }
    let messages = body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    if messages.is_empty() {
        return Err(AwsError::validation(
            "The model returned the following errors: messages: at least one message is required",
        ));
    }
    let has_tool_config = body.get("toolConfig").is_some();
    let mut prompt_tokens = 0;
    let mut last_user = String::new();
    let mut tool_result = None;
    let mut pending_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if role != expected {
            return Err(AwsError::validation(if i == 0 {
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.".to_owned()
            } else {
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".to_owned()
            }));
        }
        let blocks = m.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
        if blocks.is_empty() {
            return Err(AwsError::validation(format!("messages.{i}.content: at least one content block is required")));
        }
        tool_result = None;
        let mut results: Vec<String> = Vec::new();
        for block in &blocks {
            if let Some(text) = block.get("text") {
                let text = text.as_str().unwrap_or_default();
                if text.trim().is_empty() {
                    return Err(AwsError::validation(
                        "The text field in the ContentBlock object at messages.0.content.0 is blank. Add text to the text field, and try again.",
                    ));
                }
                prompt_tokens += word_count(text);
                if role == "user" {
                    last_user = text.to_owned();
                }
            }
            if let Some(image) = block.get("image") {
                let format = image.get("format").and_then(Value::as_str).unwrap_or_default();
                if !["png", "jpeg", "gif", "webp"].contains(&format)
                    || image.pointer("/source/bytes").and_then(Value::as_str).is_none()
                {
                    return Err(AwsError::validation("messages: image format or source is invalid"));
                }
                prompt_tokens += 1;
            }
            if let Some(tool_use) = block.get("toolUse") {
                if !has_tool_config {
                    return Err(AwsError::validation(
                        "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
                    ));
                }
                pending_uses.push(tool_use.get("toolUseId").and_then(Value::as_str).unwrap_or_default().to_owned());
            }
            if let Some(result) = block.get("toolResult") {
                if !has_tool_config {
                    return Err(AwsError::validation(
                        "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
                    ));
                }
                results.push(result.get("toolUseId").and_then(Value::as_str).unwrap_or_default().to_owned());
                let content = result.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
                let text: String = content
                    .iter()
                    .map(|c| {
                        c.get("text")
                            .and_then(Value::as_str)
                            .map_or_else(|| c.get("json").map(Value::to_string).unwrap_or_default(), str::to_owned)
                    })
                    .collect();
                tool_result = Some(text);
            }
        }
        if role == "user" && !pending_uses.is_empty() {
            let mut expected_ids = std::mem::take(&mut pending_uses);
            expected_ids.sort();
            results.sort();
            if expected_ids != results {
                return Err(AwsError::validation(format!(
                    "messages.{i}: Expected toolResult blocks for the toolUse ids {expected_ids:?} of the previous turn, got {results:?}"
                )));
            }
        }
    }
    let mut tools: Vec<String> = Vec::new();
    if let Some(config) = body.get("toolConfig") {
        for tool in config.get("tools").and_then(Value::as_array).into_iter().flatten() {
            let name = tool.pointer("/toolSpec/name").and_then(Value::as_str).unwrap_or_default();
            if tool.pointer("/toolSpec/inputSchema/json").is_none() {
                return Err(AwsError::validation("toolConfig.tools: inputSchema.json is required"));
            }
            tools.push(name.to_owned());
        }
        if let Some(name) = config.pointer("/toolChoice/tool/name").and_then(Value::as_str) {
            tools.retain(|t| t == name);
        }
    }
    let last = messages.last().unwrap_or(&Value::Null);
    let prefill = (last.get("role").and_then(Value::as_str) == Some("assistant")).then(|| {
        let blocks = last.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
        blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect::<String>()
    });
    if let Some(prefill) = &prefill {
        if shared.config.refuse_prefill {
            return Err(AwsError::validation(
                "This model does not support assistant message prefill. The conversation must end with a user message.",
            ));
        }
        if prefill.ends_with(char::is_whitespace) {
            return Err(AwsError::validation("final assistant content cannot end with trailing whitespace"));
        }
    }
    if shared.config.context_window.is_some_and(|window| prompt_tokens > window) {
        return Err(AwsError::validation("Input is too long for requested model."));
    }
    let max_tokens = body.pointer("/inferenceConfig/maxTokens").and_then(Value::as_u64);
    let mut script = Script::new(&last_user, tool_result.as_deref(), &tools, max_tokens, prompt_tokens);
    if let Some(prefill) = &prefill {
        script.continue_after(prefill);
    }
    if body.pointer("/toolConfig/toolChoice/tool").is_some() {
        // A forced tool is called alone.
        if let ScriptReply::Calls(calls) = &mut script.reply {
            calls.truncate(1);
        }
    }
    let cached = body.get("system").is_some();
    let usage = json!({
        "inputTokens": script.prompt_tokens,
        "outputTokens": script.completion_tokens,
        "totalTokens": script.prompt_tokens + script.completion_tokens + if cached { 4 } else { 0 },
        // A system prompt is taken as cached, to exercise the cache fields: 3 tokens read, 1 written.
        "cacheReadInputTokens": if cached { 3 } else { 0 },
        "cacheWriteInputTokens": if cached { 1 } else { 0 },
    });
    let stop_reason = match script.finish {
        Finish::Stop => "end_turn",
        Finish::Calls => "tool_use",
        Finish::Length => "max_tokens",
        Finish::Filtered => "content_filtered",
    };
    let id = shared.next_id();
    let tool_id = |n: usize| format!("tooluse_mock{id}_{n}");
    if !stream {
        let content: Vec<Value> = match &script.reply {
            ScriptReply::Text(t) if t.is_empty() => vec![],
            ScriptReply::Text(t) => vec![json!({"text": t})],
            ScriptReply::Calls(calls) => calls
                .iter()
                .enumerate()
                .map(|(n, name)| json!({"toolUse": {"toolUseId": tool_id(n), "name": name, "input": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or_default()}}))
                .collect(),
        };
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "output": {"message": {"role": "assistant", "content": content}},
                "stopReason": stop_reason,
                "usage": usage,
                "metrics": {"latencyMs": 1},
                "x_mock_model": model,
            }),
        ));
    }
    let mut frames = vec![frame("messageStart", &json!({"role": "assistant"}))];
    if let Some(bytes) = shared.config.giant_event {
        // The prelude of a frame of `bytes` (total length, headers length, prelude CRC, which a
        // decoder checks only once the frame is whole); `streamed` sends the filler after it.
        let total = u32::try_from(bytes.saturating_add(16)).unwrap_or(u32::MAX);
        let mut prelude = total.to_be_bytes().to_vec();
        prelude.extend_from_slice(&[0; 8]);
        frames.push(Bytes::from(prelude));
        return Ok(streamed(shared, frames, "application/vnd.amazon.eventstream"));
    }
    match &script.reply {
        ScriptReply::Text(_) => {
            for piece in script.pieces() {
                frames.push(frame("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"text": piece}})));
            }
            if last_user.contains(TRIGGER_STREAM_EXCEPTION) {
                frames.truncate(2);
                frames.push(exception(
                    "modelStreamErrorException",
                    &json!({"message": "The model stream failed (mock).", "originalStatusCode": 500}),
                ));
                return Ok(streamed(shared, frames, "application/vnd.amazon.eventstream"));
            }
            frames.push(frame("contentBlockStop", &json!({"contentBlockIndex": 0})));
        }
        ScriptReply::Calls(calls) => {
            for (n, name) in calls.iter().enumerate() {
                frames.push(frame(
                    "contentBlockStart",
                    &json!({"contentBlockIndex": n, "start": {"toolUse": {"toolUseId": tool_id(n), "name": name}}}),
                ));
                for fragment in argument_fragments(TOOL_ARGUMENTS) {
                    frames.push(frame(
                        "contentBlockDelta",
                        &json!({"contentBlockIndex": n, "delta": {"toolUse": {"input": fragment}}}),
                    ));
                }
                frames.push(frame("contentBlockStop", &json!({"contentBlockIndex": n})));
            }
        }
    }
    frames.push(frame("messageStop", &json!({"stopReason": stop_reason})));
    frames.push(frame("metadata", &json!({"usage": usage, "metrics": {"latencyMs": 1}})));
    Ok(streamed(shared, frames, "application/vnd.amazon.eventstream"))
}

/// Fields of the Claude Messages body that InvokeModel takes.
const CLAUDE_FIELDS: &[&str] = &[
    "anthropic_version",
    "anthropic_beta",
    "max_tokens",
    "system",
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "stop_sequences",
    "thinking",
];

/// InvokeModel(WithResponseStream) for a Claude model: the Messages body, answered as Anthropic's
/// API answers.
fn claude(shared: &Arc<Shared>, body: &Value, model: &str, stream: bool) -> Result<http::Response<MockBody>, AwsError> {
    use base64::Engine as _;
    if let Some(extra) = body.as_object().and_then(|m| m.keys().find(|k| !CLAUDE_FIELDS.contains(&k.as_str()))) {
        return Err(AwsError::validation(format!(
            "Malformed input request: extraneous key [{extra}] is not permitted, please reformat your input and try again."
        )));
    }
    if body.get("anthropic_version").and_then(Value::as_str) != Some("bedrock-2023-05-31") {
        return Err(AwsError::validation(
            "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.",
        ));
    }
    let request = super::anthropic::Messages::read(body, true).map_err(|e| AwsError::validation(e.message))?;
    let answer = super::anthropic::Answer::new(&request, model, shared.next_id());
    if !stream {
        return Ok(json_response(StatusCode::OK, &answer.message()));
    }
    let mut frames = Vec::new();
    for mut event in answer.events() {
        if event["type"] == "error" {
            frames.push(exception(
                "modelStreamErrorException",
                &json!({"message": "The model stream failed (mock).", "originalStatusCode": 529}),
            ));
            return Ok(streamed(shared, frames, "application/vnd.amazon.eventstream"));
        }
        if event["type"] == "message_stop" {
            event["amazon-bedrock-invocationMetrics"] = json!({"inputTokenCount": request.prompt_tokens, "outputTokenCount": 1, "invocationLatency": 1, "firstByteLatency": 1});
        }
        let bytes = base64::engine::general_purpose::STANDARD.encode(event.to_string());
        frames.push(frame("chunk", &json!({"bytes": bytes})));
    }
    Ok(streamed(shared, frames, "application/vnd.amazon.eventstream"))
}

/// One event frame; Bedrock pads every payload with a `p` field so sizes do not leak content.
fn frame(event_type: &'static str, payload: &Value) -> Bytes {
    let mut payload = payload.clone();
    payload["p"] = json!("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789");
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(":event-type", EsHeaderValue::String(event_type.into())))
        .add_header(Header::new(":content-type", EsHeaderValue::String("application/json".into())))
        .add_header(Header::new(":message-type", EsHeaderValue::String("event".into())));
    encode(&message)
}

fn exception(kind: &'static str, payload: &Value) -> Bytes {
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(":exception-type", EsHeaderValue::String(kind.into())))
        .add_header(Header::new(":content-type", EsHeaderValue::String("application/json".into())))
        .add_header(Header::new(":message-type", EsHeaderValue::String("exception".into())));
    encode(&message)
}

fn encode(message: &Message) -> Bytes {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and the mock's headers are within the format's limits.
    let _ = write_message_to(message, &mut out);
    Bytes::from(out)
}

fn invoke(body: &Value, model: &str) -> Result<http::Response<MockBody>, AwsError> {
    let vector = |text: &str, dims: usize| -> Vec<Value> {
        embedding_vector(text.as_bytes(), dims)
            .iter()
            .map(|x| x.to_string().parse::<f64>().map_or(Value::Null, Value::from))
            .collect()
    };
    if model.contains("titan-embed") {
        let text =
            body.get("inputText").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or_else(|| {
                AwsError::validation("Malformed input request: #: required key [inputText] not found")
            })?;
        let dims = body.get("dimensions").and_then(Value::as_u64).map_or(8, |d| d as usize);
        return Ok(json_response(
            StatusCode::OK,
            &json!({"embedding": vector(text, dims), "inputTextTokenCount": word_count(text).max(1)}),
        ));
    }
    if model.contains("cohere.embed") {
        let texts: Vec<&str> =
            body.get("texts").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        if texts.is_empty() || body.get("input_type").is_none() {
            return Err(AwsError::validation("Malformed input request: texts and input_type are required"));
        }
        let embeddings: Vec<Vec<Value>> = texts.iter().map(|t| vector(t, 8)).collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"id": "mock", "embeddings": embeddings, "texts": texts, "response_type": "embeddings_floats"}),
        ));
    }
    Err(AwsError::validation(format!("The provided model {model} does not support InvokeModel in this mock.")))
}
