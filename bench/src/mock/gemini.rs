//! The Gemini routes of the mock, for the Gemini API (`/v1beta/models/{m}:…` or `/v1/…`, `x-goog-api-key` or
//! `?key=`) and Vertex AI (`/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:…`, a bearer
//! token from the mock's OAuth endpoint): `generateContent`, `streamGenerateContent?alt=sse`,
//! `embedContent` / `batchEmbedContents`, Vertex's `predict` for embeddings, and Vertex AI endpoints'
//! `:predict` and `:rawPredict` (prediction traffic).
//!
//! It is as strict as Gemini where gateways trip: unknown request fields, JSON-schema keywords that
//! Gemini's schemas reject, roles other than `user`/`model`, a function call sent back without the
//! thought signature it came with, or a function response without a name are 400s. Field names are
//! accepted in camelCase and snake_case, as Google's JSON mapping does.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use serde_json::{Map, Value, json};

use super::{
    Finish, MockBody, Recorded, Script, ScriptReply, Shared, TOOL_ARGUMENTS, TRIGGER_STREAM_EXCEPTION,
    embedding_vector, injected_failure, json_response, streamed, word_count,
};

pub(super) fn respond(shared: &Arc<Shared>, req: &Recorded, path: &str) -> http::Response<MockBody> {
    match handle(shared, req, path) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// Google's error: `{"error": {"code", "message", "status", "details"}}`.
struct GoogleError {
    status: StatusCode,
    message: String,
    details: Vec<Value>,
}

impl GoogleError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            message: message.into(),
            details: vec![],
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    fn body(&self) -> Value {
        let status = match self.status.as_u16() {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        };
        json!({"error": {"code": self.status.as_u16(), "message": self.message, "status": status, "details": self.details}})
    }

    fn into_response(self) -> http::Response<MockBody> {
        let mut response = json_response(self.status, &self.body());
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response
    }
}

/// A Vertex AI endpoint (`…/endpoints/{id}:predict` or `:rawPredict`) serving the mock fraud
/// score ([`super::sagemaker_score`]) from one deployed model, `{id}01`. `:predict` takes only
/// `instances` and `parameters`, as Vertex does, and answers with Vertex's fields; `:rawPredict`
/// takes a JSON body of `{"instances"}` or a bare array and answers with the model's own
/// `{"predictions"}` and the deployed model in `X-Vertex-AI-Deployed-Model-Id`.
fn endpoint_predict(req: &Recorded, id: &str, method: &str) -> Result<http::Response<MockBody>, GoogleError> {
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| GoogleError::invalid("Invalid JSON payload received. Unexpected token."))?;
    let instances = match (method, &body) {
        ("predict", Value::Object(map)) => {
            if let Some(key) = map.keys().find(|k| *k != "instances" && *k != "parameters") {
                return Err(GoogleError::invalid(format!(
                    "Invalid JSON payload received. Unknown name \"{key}\": Cannot find field."
                )));
            }
            map.get("instances").and_then(Value::as_array)
        }
        ("rawPredict", Value::Array(items)) => Some(items),
        ("rawPredict", Value::Object(map)) => map.get("instances").and_then(Value::as_array),
        ("predict" | "rawPredict", _) => None,
        _ => return Err(GoogleError::new(404, "Not found")),
    }
    .ok_or_else(|| GoogleError::invalid("\"instances\" must be a list."))?;
    let mut scores = Vec::with_capacity(instances.len());
    for instance in instances {
        let features: Option<Vec<f64>> = match instance {
            Value::Array(items) => items.iter().map(Value::as_f64).collect(),
            Value::Object(map) => map.values().map(Value::as_f64).collect(),
            other => other.as_f64().map(|n| vec![n]),
        };
        let features = features.ok_or_else(|| GoogleError::invalid("Failed to parse the instances: not numbers."))?;
        scores.push(super::sagemaker_score(&features));
    }
    let deployed = format!("{id}01");
    if method == "rawPredict" {
        let mut response = json_response(StatusCode::OK, &json!({"predictions": scores}));
        if let Ok(value) = HeaderValue::from_str(&deployed) {
            response.headers_mut().insert("x-vertex-ai-deployed-model-id", value);
        }
        return Ok(response);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "predictions": scores,
            "deployedModelId": deployed,
            "model": format!("projects/mock/locations/us-central1/models/{id}"),
            "modelDisplayName": "fraud",
            "modelVersionId": "1",
        }),
    ))
}

fn injected(status: StatusCode) -> GoogleError {
    let mut e = GoogleError::new(
        status.as_u16(),
        match status.as_u16() {
            429 => "Resource has been exhausted (e.g. check quota).",
            401 => "Request had invalid authentication credentials.",
            403 => "Permission denied on resource project.",
            404 => "models/x is not found for API version v1beta.",
            503 => "The model is overloaded. Please try again later.",
            s if s >= 500 => "An internal error has occurred.",
            _ => "Request contains an invalid argument.",
        },
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        e.details.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}));
    }
    e
}

/// A field in camelCase or snake_case.
fn field<'a>(object: &'a Value, camel: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(snake(camel).as_str()))
}

fn snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rejects keys outside `allowed` (given in camelCase), as Google's JSON parser does.
fn known_fields(object: &Value, allowed: &[&str], at: &str) -> Result<(), GoogleError> {
    let Some(map) = object.as_object() else { return Ok(()) };
    for key in map.keys() {
        if !allowed.iter().any(|a| a == key || snake(a) == *key) {
            return Err(GoogleError::invalid(format!(
                "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
            )));
        }
    }
    Ok(())
}

fn handle(shared: &Arc<Shared>, req: &Recorded, path: &str) -> Result<http::Response<MockBody>, GoogleError> {
    let endpoint = path.contains("/endpoints/");
    let vertex = endpoint || path.contains("/publishers/google/models/");
    if vertex {
        if !shared.has_issued_token(req) {
            return Err(GoogleError::new(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or \
                 other valid authentication credential.",
            ));
        }
    } else {
        let query_key = req.path.split_once('?').and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("key=")));
        match (req.header("x-goog-api-key").or(query_key), &shared.config.api_key) {
            (None, _) => {
                return Err(GoogleError::new(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use \
                     API Key or other form of API consumer identity to call this API.",
                ));
            }
            (Some(given), Some(key)) if given != key => {
                let mut e = GoogleError::invalid("API key not valid. Please pass a valid API key.");
                e.details.push(json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}));
                return Err(e);
            }
            _ => {}
        }
    }
    let (model_path, method) = path.rsplit_once(':').ok_or_else(|| GoogleError::new(404, "Not found"))?;
    let model = model_path.rsplit('/').next().unwrap_or_default().to_owned();
    if req.method != "POST" {
        return Err(GoogleError::new(404, "Not found"));
    }
    if let Some(status) = injected_failure(shared) {
        return Err(injected(status));
    }
    if endpoint {
        return endpoint_predict(req, &model, method);
    }
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| GoogleError::invalid("Invalid JSON payload received. Unexpected token."))?;
    match method {
        "generateContent" => generate(shared, &body, &model, false),
        "streamGenerateContent" => {
            if !req.path.contains("alt=sse") {
                return Err(GoogleError::invalid("this mock streams only with alt=sse"));
            }
            generate(shared, &body, &model, true)
        }
        "embedContent" => {
            let values = embed(field(&body, "content"), field(&body, "outputDimensionality"))?;
            Ok(json_response(StatusCode::OK, &json!({"embedding": {"values": values}})))
        }
        "batchEmbedContents" => {
            let requests = body.get("requests").and_then(Value::as_array).cloned().unwrap_or_default();
            let embeddings = requests
                .iter()
                .map(|r| Ok(json!({"values": embed(field(r, "content"), field(r, "outputDimensionality"))?})))
                .collect::<Result<Vec<_>, GoogleError>>()?;
            Ok(json_response(StatusCode::OK, &json!({"embeddings": embeddings})))
        }
        "predict" if vertex => {
            let dims = body.pointer("/parameters/outputDimensionality");
            let instances = body.get("instances").and_then(Value::as_array).cloned().unwrap_or_default();
            let predictions = instances
                .iter()
                .map(|i| {
                    let text = i.get("content").and_then(Value::as_str).unwrap_or_default();
                    let values = embed(Some(&json!({"parts": [{"text": text}]})), dims)?;
                    Ok(json!({"embeddings": {"values": values, "statistics": {"token_count": word_count(text).max(1), "truncated": false}}}))
                })
                .collect::<Result<Vec<_>, GoogleError>>()?;
            Ok(json_response(StatusCode::OK, &json!({"predictions": predictions})))
        }
        _ => Err(GoogleError::new(404, format!("Method {method} not found."))),
    }
}

fn embed(content: Option<&Value>, dims: Option<&Value>) -> Result<Vec<Value>, GoogleError> {
    let text: String = content
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    if text.is_empty() {
        return Err(GoogleError::invalid("* BatchEmbedContentsRequest.requests: content is not specified"));
    }
    let dims = dims.and_then(Value::as_u64).map_or(8, |d| d as usize);
    Ok(embedding_vector(text.as_bytes(), dims)
        .iter()
        .map(|x| x.to_string().parse::<f64>().map_or(Value::Null, Value::from))
        .collect())
}

/// Schema keywords Gemini's `parameters` and `responseSchema` refuse.
const REJECTED_SCHEMA_KEYS: &[&str] = &["additionalProperties", "$schema", "$ref", "$defs", "strict", "const"];

fn check_schema(schema: &Value, at: &str) -> Result<(), GoogleError> {
    match schema {
        Value::Object(map) => {
            for (k, v) in map {
                if REJECTED_SCHEMA_KEYS.contains(&k.as_str()) {
                    return Err(GoogleError::invalid(format!(
                        "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
                    )));
                }
                if k == "type" && !v.is_string() {
                    return Err(GoogleError::invalid(format!("Invalid value at '{at}.type'")));
                }
                if k != "enum" && k != "required" && k != "propertyOrdering" {
                    check_schema(v, &format!("{at}.{k}"))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|i| check_schema(i, at)),
        _ => Ok(()),
    }
}

fn generate(
    shared: &Arc<Shared>,
    body: &Value,
    model: &str,
    stream: bool,
) -> Result<http::Response<MockBody>, GoogleError> {
    known_fields(
        body,
        &[
            "contents",
            "systemInstruction",
            "tools",
            "toolConfig",
            "generationConfig",
            "safetySettings",
            "cachedContent",
            "labels",
        ],
        "",
    )?;
    let config = field(body, "generationConfig").cloned().unwrap_or(Value::Null);
    known_fields(
        &config,
        &[
            "temperature",
            "topP",
            "topK",
            "candidateCount",
            "maxOutputTokens",
            "stopSequences",
            "responseMimeType",
            "responseSchema",
            "responseJsonSchema",
            "seed",
            "presencePenalty",
            "frequencyPenalty",
            "thinkingConfig",
            "responseModalities",
            "responseLogprobs",
            "logprobs",
        ],
        "generation_config",
    )?;
    if let Some(schema) = field(&config, "responseSchema") {
        check_schema(schema, "generation_config.response_schema")?;
    }
    let contents = body.get("contents").and_then(Value::as_array).cloned().unwrap_or_default();
    if contents.is_empty() {
        return Err(GoogleError::invalid("* GenerateContentRequest.contents: contents is not specified"));
    }
    let mut last_user = String::new();
    let mut tool_result = None;
    let mut prompt_tokens = 0;
    for (i, content) in contents.iter().enumerate() {
        let role = content.get("role").and_then(Value::as_str).unwrap_or("user");
        if role != "user" && role != "model" {
            return Err(GoogleError::invalid(format!(
                "Please use a valid role: user, model. (contents[{i}].role: {role})"
            )));
        }
        let parts = content.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        if parts.is_empty() {
            return Err(GoogleError::invalid(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )));
        }
        let mut first_call = true;
        tool_result = None;
        for part in &parts {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                prompt_tokens += word_count(text);
                if role == "user" {
                    last_user = text.to_owned();
                }
            }
            if field(part, "functionCall").is_some() {
                if first_call && field(part, "thoughtSignature").is_none() {
                    return Err(GoogleError::invalid(format!(
                        "Function call is missing a thought_signature in functionCall parts. This is required for \
                         tools to work correctly, and missing thought_signature may lead to degraded model \
                         performance. (contents[{i}])"
                    )));
                }
                first_call = false;
            }
            if let Some(response) = field(part, "functionResponse") {
                if response.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(GoogleError::invalid(format!(
                        "* GenerateContentRequest.contents[{i}].parts.function_response.name: Name cannot be empty."
                    )));
                }
                if !response.get("response").is_some_and(Value::is_object) {
                    return Err(GoogleError::invalid("function_response.response must be a JSON object"));
                }
                tool_result = Some(response.get("response").map(Value::to_string).unwrap_or_default());
            }
            if let Some(data) = field(part, "inlineData") {
                if field(data, "mimeType").is_none() || data.get("data").is_none() {
                    return Err(GoogleError::invalid("inline_data needs mime_type and data"));
                }
                prompt_tokens += 1;
            }
        }
        if role == "model" {
            tool_result = None;
        }
    }
    let mut tools: Vec<String> = Vec::new();
    for tool in body.get("tools").and_then(Value::as_array).into_iter().flatten() {
        for declaration in field(tool, "functionDeclarations").and_then(Value::as_array).into_iter().flatten() {
            if let Some(parameters) = declaration.get("parameters") {
                check_schema(parameters, "tools[0].function_declarations[0].parameters")?;
            }
            tools.push(declaration.get("name").and_then(Value::as_str).unwrap_or_default().to_owned());
        }
    }
    let calling = field(body, "toolConfig").and_then(|t| field(t, "functionCallingConfig"));
    match calling.and_then(|c| c.get("mode")).and_then(Value::as_str) {
        Some("NONE") => tools.clear(),
        Some("ANY") => {
            if let Some(allowed) = calling.and_then(|c| field(c, "allowedFunctionNames")).and_then(Value::as_array) {
                tools.retain(|t| allowed.iter().any(|a| a.as_str() == Some(t)));
            }
        }
        _ => {}
    }
    let last = contents.last().unwrap_or(&Value::Null);
    let prefill = (last.get("role").and_then(Value::as_str) == Some("model")).then(|| {
        let parts = last.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<String>()
    });
    if prefill.is_some() && shared.config.refuse_prefill {
        return Err(GoogleError::invalid(
            "Please ensure that multiturn requests end with a user role or a function response.",
        ));
    }
    if let Some(window) = shared.config.context_window.filter(|w| prompt_tokens > *w) {
        return Err(GoogleError::invalid(format!(
            "The input token count ({prompt_tokens}) exceeds the maximum number of tokens allowed ({window})."
        )));
    }
    let max_tokens = field(&config, "maxOutputTokens").and_then(Value::as_u64);
    let mut script = Script::new(&last_user, tool_result.as_deref(), &tools, max_tokens, prompt_tokens);
    if let Some(prefill) = &prefill {
        script.continue_after(prefill);
    }
    let usage = json!({
        "promptTokenCount": script.prompt_tokens,
        "candidatesTokenCount": script.completion_tokens,
        "thoughtsTokenCount": 2,
        "totalTokenCount": script.prompt_tokens + script.completion_tokens + 2,
    });
    let finish = match script.finish {
        Finish::Stop | Finish::Calls => "STOP",
        Finish::Length => "MAX_TOKENS",
        Finish::Filtered => "SAFETY",
    };
    let response_id = format!("mock-{}", shared.next_id());
    let call_part = |(n, name): (usize, &String)| {
        let mut part = json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or_default()}});
        // Gemini signs the first call of a turn only.
        if n == 0 {
            part["thoughtSignature"] =
                json!(base64::engine::general_purpose::STANDARD.encode(format!("signature of the call to {name}")));
        }
        part
    };
    let candidate = |parts: Vec<Value>, finish: Option<&str>| {
        let mut c = Map::new();
        if !parts.is_empty() {
            c.insert("content".into(), json!({"role": "model", "parts": parts}));
        }
        if let Some(f) = finish {
            c.insert("finishReason".into(), json!(f));
            if f == "SAFETY" {
                c.insert(
                    "safetyRatings".into(),
                    json!([{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]),
                );
            }
        }
        c.insert("index".into(), json!(0));
        Value::Object(c)
    };
    if !stream {
        let mut parts = vec![json!({"text": "Thinking about it.", "thought": true})];
        match &script.reply {
            ScriptReply::Text(t) if !t.is_empty() => parts.push(json!({"text": t})),
            ScriptReply::Text(_) => parts.clear(),
            ScriptReply::Calls(calls) => parts.extend(calls.iter().enumerate().map(call_part)),
        }
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "candidates": [candidate(parts, Some(finish))],
                "usageMetadata": usage,
                "modelVersion": model,
                "responseId": response_id,
            }),
        ));
    }
    let mut answers: Vec<Value> = Vec::new();
    let wrap = |candidate: Value, usage: Option<&Value>| {
        let mut a = json!({"candidates": [candidate], "modelVersion": model, "responseId": response_id});
        if let Some(u) = usage {
            a["usageMetadata"] = u.clone();
        }
        a
    };
    let pieces = script.pieces();
    match &script.reply {
        ScriptReply::Calls(calls) => {
            for (n, name) in calls.iter().enumerate() {
                answers.push(wrap(candidate(vec![call_part((n, name))], None), None));
            }
        }
        ScriptReply::Text(_) => {
            for piece in &pieces {
                answers.push(wrap(candidate(vec![json!({"text": piece})], None), None));
            }
        }
    }
    let mut events: Vec<Bytes> = answers.iter().map(sse_event).collect();
    if last_user.contains(TRIGGER_STREAM_EXCEPTION) {
        events.truncate(1);
        events.push(sse_event(&GoogleError::new(503, "The model is overloaded. Please try again later.").body()));
        return Ok(streamed(shared, events, "text/event-stream"));
    }
    // Gemini sends the finish reason and usage with the last piece of the answer, or alone.
    let last = if script.finish == Finish::Filtered { vec![] } else { vec![json!({"text": ""})] };
    events.push(sse_event(&wrap(candidate(last, Some(finish)), Some(&usage))));
    Ok(streamed(shared, events, "text/event-stream"))
}

fn sse_event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\r\n\r\n"))
}
