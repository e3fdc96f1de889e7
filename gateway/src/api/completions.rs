//! `POST /v1/completions`, OpenAI's legacy text completions: the request as the gateway understands
//! it (every other field kept), its canonical chat form, and canonical answers turned back into
//! `text_completion` objects and chunks.
//!
//! OpenAI-compatible upstreams and Weir's workers serve this API themselves, so there the request
//! is relayed as it is (model renamed, the usage chunk asked for). Every other upstream is reached
//! through the canonical chat form, with these mapping decisions:
//! - the prompt becomes one user message; a chat model answers it as a chat turn, which is the
//!   closest such a model comes to continuing a text;
//! - `max_tokens` defaults to 16, OpenAI's documented default for this API;
//! - `echo` is done by the gateway (the prompt is put before the answer's text);
//! - a list of prompts, token-id prompts, `suffix`, `logprobs` and `best_of` above 1 have no chat
//!   equivalent and are refused with a 400 naming the field, rather than answered differently;
//! - `finish_reason` stays `stop`, `length` or `content_filter` (a tool call reads as `stop`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chat::{ChatRequest, Chunk, Completion, StreamOptions};
use super::sse::Event;
use super::{Facts, SurfaceRequest};
use crate::error::Error;

/// The default of OpenAI's legacy API, applied when the request is translated.
const DEFAULT_MAX_TOKENS: u64 = 16;

/// Parameters copied into the canonical request as they are.
const CHAT_PARAMS: &[&str] =
    &["max_tokens", "temperature", "top_p", "n", "stop", "presence_penalty", "frequency_penalty", "seed", "user"];

/// A completions request. Fields the gateway does not act on stay in `extra`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CompletionsRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids, or an array of token-id arrays.
    pub prompt: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CompletionsRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let request: Self = super::parse_json(body)?;
        if request.model.trim().is_empty() {
            return Err(Error::bad_request("'model' must not be empty.").param("model").code("invalid_value"));
        }
        let valid = match &request.prompt {
            Value::String(_) => true,
            Value::Array(items) if items.is_empty() => false,
            Value::Array(items) => {
                items.iter().all(Value::is_string)
                    || items.iter().all(Value::is_u64)
                    || items
                        .iter()
                        .all(|i| matches!(i, Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64)))
            }
            _ => false,
        };
        if !valid {
            return Err(Error::bad_request(
                "'prompt' must be a string, an array of strings, an array of token ids, or an array of token-id arrays.",
            )
            .param("prompt")
            .code("invalid_value"));
        }
        match request.param("suffix") {
            None | Some(Value::String(_)) => {}
            Some(_) => {
                return Err(Error::bad_request("'suffix' must be a string.").param("suffix").code("invalid_value"));
            }
        }
        match request.param("logprobs") {
            None => {}
            Some(v) if v.as_u64().is_some_and(|n| n <= 5) => {}
            Some(_) => {
                return Err(Error::bad_request("'logprobs' must be an integer between 0 and 5.")
                    .param("logprobs")
                    .code("invalid_value"));
            }
        }
        Ok(request)
    }

    /// A parameter kept as sent, if present and not `null`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.extra.get(name).filter(|v| !v.is_null())
    }

    pub fn client_wants_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true)
    }

    /// The one text prompt, if the prompt is a string or a list of one string.
    pub fn text_prompt(&self) -> Option<&str> {
        match &self.prompt {
            Value::String(s) => Some(s),
            Value::Array(items) if items.len() == 1 => items[0].as_str(),
            _ => None,
        }
    }

    /// The body for an upstream that serves completions itself: the target's model, and for
    /// streams the usage chunk asked for (the relay removes it again if the client did not ask).
    pub fn upstream_body(&self, model: &str) -> Result<Vec<u8>, Error> {
        let mut copy = self.clone();
        copy.model = model.to_owned();
        if copy.stream == Some(true) {
            copy.stream_options.get_or_insert_with(StreamOptions::default).include_usage = Some(true);
        }
        serde_json::to_vec(&copy).map_err(|e| Error::internal("could not encode the upstream request").source(e))
    }
}

impl SurfaceRequest for CompletionsRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    fn facts(&self) -> Facts {
        Facts::from_extra(&self.extra, super::text_len(&self.prompt))
    }

    fn to_chat(&self) -> Result<ChatRequest, Error> {
        let refuse = |param: &str, what: &str| {
            Error::bad_request(format!(
                "{what} This model's provider is reached through chat completions; use a model served by an OpenAI-compatible upstream."
            ))
            .param(param)
            .code("unsupported_parameter")
        };
        let Some(prompt) = self.text_prompt() else {
            return Err(refuse(
                "prompt",
                "Only one text prompt per request can be translated (not a list or token ids).",
            ));
        };
        if self.param("suffix").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            return Err(refuse("suffix", "'suffix' (insertion) has no chat equivalent."));
        }
        if self.param("logprobs").is_some() {
            return Err(refuse("logprobs", "'logprobs' cannot be translated for this model."));
        }
        if self.param("best_of").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(refuse("best_of", "'best_of' has no chat equivalent."));
        }
        let mut extra = Map::new();
        for name in CHAT_PARAMS {
            if let Some(v) = self.param(name) {
                extra.insert((*name).to_owned(), v.clone());
            }
        }
        extra.entry("max_tokens").or_insert(json!(DEFAULT_MAX_TOKENS));
        let messages = vec![super::chat::Message {
            role: super::chat::Role::User,
            rest: Map::from_iter([("content".to_owned(), Value::String(prompt.to_owned()))]),
        }];
        Ok(ChatRequest {
            model: self.model.clone(),
            messages,
            stream: self.stream,
            stream_options: self.stream_options.clone(),
            extra,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical answers → completions

/// Turns canonical answers, whole or streamed, into `text_completion`s.
#[derive(Debug)]
pub struct Encoder {
    /// The prompt, when `echo` asks for it before the answer.
    echo: Option<String>,
    /// Choices whose echo was already sent.
    echoed: Vec<u32>,
    include_usage: bool,
}

impl Encoder {
    pub fn new(request: &CompletionsRequest) -> Self {
        let echo = (request.echo == Some(true)).then(|| request.text_prompt().unwrap_or_default().to_owned());
        Self { echo, echoed: Vec::new(), include_usage: request.client_wants_usage() }
    }

    /// A whole `chat.completion` → a `text_completion`.
    pub fn whole(&self, completion: &Completion) -> Value {
        let echo = self.echo.as_deref().unwrap_or_default();
        let choices: Vec<Value> = completion
            .choices
            .iter()
            .map(|c| {
                let text = format!("{echo}{}", c.message.content.as_deref().unwrap_or_default());
                json!({"text": text, "index": c.index, "logprobs": null, "finish_reason": finish_reason(c.finish_reason.as_deref())})
            })
            .collect();
        let mut out = json!({
            "id": id(completion.id.as_deref()),
            "object": "text_completion",
            "created": completion.created.unwrap_or_else(super::unix_now),
            "model": completion.model.as_deref().unwrap_or_default(),
            "choices": choices,
        });
        if let Some(usage) = completion.usage {
            out["usage"] = usage_json(&usage);
        }
        out
    }

    /// One canonical event → the completions events it becomes, appended to `out`.
    pub fn event(&mut self, event: &Event, out: &mut Vec<u8>) {
        if event.data.is_empty() || &event.data[..] == b"[DONE]" {
            out.extend_from_slice(&event.raw);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(&event.data) else {
            out.extend_from_slice(&event.raw);
            return;
        };
        if chunk.error.is_some() {
            // An OpenAI error event is this API's own.
            out.extend_from_slice(&event.raw);
            return;
        }
        let head = |choices: Value| {
            json!({
                "id": id(chunk.id.as_deref()),
                "object": "text_completion",
                "created": chunk.created.unwrap_or_default(),
                "model": chunk.model.as_deref().unwrap_or_default(),
                "choices": choices,
            })
        };
        if chunk.choices.is_empty() {
            if let Some(usage) = chunk.usage.filter(|_| self.include_usage) {
                let mut c = head(json!([]));
                c["usage"] = usage_json(&usage);
                data_event(&c, out);
            }
            return;
        }
        let mut choices = Vec::new();
        for choice in &chunk.choices {
            let mut text = String::new();
            if let Some(echo) = &self.echo
                && !self.echoed.contains(&choice.index)
            {
                self.echoed.push(choice.index);
                text.push_str(echo);
            }
            text.push_str(choice.delta.content.as_deref().unwrap_or_default());
            if text.is_empty() && choice.finish_reason.is_none() {
                continue;
            }
            let finish = choice.finish_reason.as_deref().map(|f| finish_reason(Some(f)));
            choices.push(json!({"text": text, "index": choice.index, "logprobs": null, "finish_reason": finish}));
        }
        if !choices.is_empty() {
            data_event(&head(Value::Array(choices)), out);
        }
    }
}

fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        _ => "stop",
    }
}

/// `cmpl-…`, from the canonical answer's id where there is one.
fn id(canonical: Option<&str>) -> String {
    match canonical {
        Some(id) => format!("cmpl-{}", id.strip_prefix("chatcmpl-").unwrap_or(id)),
        None => format!("cmpl-{}", uuid::Uuid::now_v7().simple()),
    }
}

fn usage_json(usage: &super::Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

fn data_event(value: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

// ---------------------------------------------------------------------------------------------
// Completions answers → canonical (what plugins read of a natively relayed answer)

/// A whole `text_completion` → a `chat.completion`, without the prompt an `echo` put in front
/// (the canonical answer is what the model wrote).
pub fn decode_whole(body: &[u8], echo: Option<&str>) -> Option<Value> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let choices: Vec<Value> = answer
        .get("choices")?
        .as_array()?
        .iter()
        .map(|c| {
            let text = c.get("text").and_then(Value::as_str).unwrap_or_default();
            let text = echo.and_then(|e| text.strip_prefix(e)).unwrap_or(text);
            json!({
                "index": c.get("index").cloned().unwrap_or(json!(0)),
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let mut out = json!({
        "id": answer.get("id"), "object": "chat.completion", "created": answer.get("created"),
        "model": answer.get("model"), "choices": choices,
    });
    if let Some(usage) = answer.get("usage") {
        out["usage"] = usage.clone();
    }
    Some(out)
}

/// Completions stream events → the canonical events plugins see (the usage chunk, `[DONE]` and
/// errors unchanged), without the prompt an `echo` put in front.
#[derive(Debug, Default)]
pub struct Decoder {
    /// What is left to remove of the echoed prompt, for choice 0.
    echo: String,
}

impl Decoder {
    pub fn new(request: &CompletionsRequest) -> Self {
        let echo = if request.echo == Some(true) {
            request.text_prompt().unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        Self { echo }
    }

    pub fn event(&mut self, event: &Event) -> Bytes {
        let Ok(mut chunk) = serde_json::from_slice::<Value>(&event.data) else { return event.raw.clone() };
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else { return event.raw.clone() };
        for choice in choices.iter_mut() {
            let mut text = choice.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
            let index = choice.get("index").cloned().unwrap_or(json!(0));
            if index == json!(0) && !self.echo.is_empty() {
                let common = text.len().min(self.echo.len());
                if self.echo.as_bytes()[..common] == text.as_bytes()[..common] && self.echo.is_char_boundary(common) {
                    self.echo.drain(..common);
                    text.drain(..common);
                } else {
                    self.echo.clear();
                }
            }
            let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
            *choice = json!({"index": index, "delta": {"content": text}, "logprobs": null, "finish_reason": finish});
        }
        chunk["object"] = json!("chat.completion.chunk");
        let mut out = Vec::with_capacity(event.raw.len() + 16);
        data_event(&chunk, &mut out);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests;
