//! `POST /v1/chat/completions`: the request as the gateway understands it, every other field kept.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;

/// A chat completion request. Fields the gateway does not act on stay in `extra` and reach the
/// upstream unchanged.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stream_options`; only `include_usage` matters to the gateway.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message; its content, tool calls, name and anything else stay as the client sent them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Message {
    pub role: Role,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

string_enum! {
    pub enum Role {
        System = "system",
        Developer = "developer",
        User = "user",
        Assistant = "assistant",
        Tool = "tool",
        Function = "function",
    }
}

/// One part of a message's content, as the translating adapters read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    Text(&'a str),
    /// An `image_url` part's URL (a `data:` URL or a remote one).
    ImageUrl(&'a str),
}

/// One entry of an assistant message's `tool_calls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolCall<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// The arguments as the model wrote them: a JSON text (`{}` when missing).
    pub arguments: &'a str,
}

impl Message {
    /// The `content` as sent: a string, an array of parts, or absent.
    pub fn content(&self) -> Option<&Value> {
        self.rest.get("content")
    }

    /// The text of the content: the string, or the `text` of every part, joined.
    pub fn text(&self) -> String {
        match self.content() {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
            _ => String::new(),
        }
    }

    /// The content's text and image parts, in order; a string content is one text part, an empty
    /// string none, and parts of other types are skipped.
    pub fn parts(&self) -> impl Iterator<Item = Part<'_>> {
        let (whole, items) = match self.content() {
            Some(Value::String(s)) if !s.is_empty() => (Some(Part::Text(s)), &[][..]),
            Some(Value::Array(items)) => (None, items.as_slice()),
            _ => (None, &[][..]),
        };
        whole.into_iter().chain(items.iter().filter_map(|item| {
            let str_at = |pointer: &str| item.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
            match item.get("type").and_then(Value::as_str) {
                Some("text") => Some(Part::Text(str_at("/text"))),
                Some("image_url") => Some(Part::ImageUrl(str_at("/image_url/url"))),
                _ => None,
            }
        }))
    }

    /// An assistant message's tool calls, in order.
    pub fn tool_calls(&self) -> impl Iterator<Item = ToolCall<'_>> {
        self.rest.get("tool_calls").and_then(Value::as_array).into_iter().flatten().map(|call| {
            let str_at = |pointer: &str| call.pointer(pointer).and_then(Value::as_str);
            ToolCall {
                id: str_at("/id").unwrap_or_default(),
                name: str_at("/function/name").unwrap_or_default(),
                arguments: str_at("/function/arguments").unwrap_or("{}"),
            }
        })
    }

    /// A tool message's `tool_call_id` (empty when missing).
    pub fn tool_call_id(&self) -> &str {
        self.rest.get("tool_call_id").and_then(Value::as_str).unwrap_or_default()
    }

    /// The message's `name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.rest.get("name").and_then(Value::as_str)
    }
}

impl ChatRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let request: Self = super::parse_json(body)?;
        if request.model.trim().is_empty() {
            return Err(Error::bad_request("'model' must not be empty.").param("model").code("invalid_value"));
        }
        if request.messages.is_empty() {
            return Err(Error::bad_request("'messages' must contain at least one message.")
                .param("messages")
                .code("invalid_value"));
        }
        Ok(request)
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether the client asked for the usage chunk at the end of a stream.
    pub fn client_wants_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true)
    }

    /// A request parameter the gateway keeps as sent (`temperature`, `tools`, …), if present and
    /// not `null`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.extra.get(name).filter(|v| !v.is_null())
    }

    /// What plugins are told about this request.
    pub fn facts(&self) -> super::Facts {
        let text: usize = self.messages.iter().filter_map(|m| m.rest.get("content")).map(super::text_len).sum();
        super::Facts::from_extra(&self.extra, text)
    }

    /// The body for an upstream: the target's model name, and for streams `include_usage` forced on
    /// so that usage is always known (the relay removes that chunk again if the client did not ask).
    pub fn upstream_body(&self, model: &str) -> Result<Vec<u8>, Error> {
        #[derive(Serialize)]
        struct Upstream<'a> {
            model: &'a str,
            messages: &'a [Message],
            #[serde(skip_serializing_if = "Option::is_none")]
            stream: Option<bool>,
            #[serde(skip_serializing_if = "Option::is_none")]
            stream_options: Option<StreamOptions>,
            #[serde(flatten)]
            extra: &'a Map<String, Value>,
        }
        let stream_options = if self.is_stream() {
            let mut options = self.stream_options.clone().unwrap_or_default();
            options.include_usage = Some(true);
            Some(options)
        } else {
            self.stream_options.clone()
        };
        let body =
            Upstream { model, messages: &self.messages, stream: self.stream, stream_options, extra: &self.extra };
        serde_json::to_vec(&body).map_err(|e| Error::internal("could not encode the upstream request").source(e))
    }
}

/// A whole `chat.completion` answer, as the surface encoders read it (unknown fields ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Completion {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub usage: Option<super::Usage>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompletionChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: AnswerMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant message of an answer: text, reasoning (`reasoning_content`, as vLLM, DeepSeek and
/// the gateway's Anthropic translation write it), a refusal, tool calls.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnswerMessage {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<AnswerToolCall>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnswerToolCall {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub function: AnswerFunction,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AnswerFunction {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// One `chat.completion.chunk` (or the usage chunk, or an error event), as the surface encoders
/// read it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<super::Usage>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub refusal: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCallDelta>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// `null` read as the type's default, as some OpenAI-compatible servers write absent lists.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> Error {
        ChatRequest::parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn keeps_unknown_fields_and_rewrites_model_and_usage() {
        let r = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi","x_msg":1}],"stream":true,
                 "stream_options":{"x_opt":true},"temperature":0.2,"x_top":{"a":[1,2]}}"#,
        )
        .unwrap();
        let up: Value = serde_json::from_slice(&r.upstream_body("upstream-m").unwrap()).unwrap();
        assert_eq!(up["model"], "upstream-m");
        assert_eq!(up["stream_options"], serde_json::json!({"include_usage": true, "x_opt": true}));
        assert_eq!(up["temperature"], 0.2);
        assert_eq!(up["x_top"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(up["messages"][0], serde_json::json!({"role": "user", "content": "hi", "x_msg": 1}));
        assert!(!r.client_wants_usage());
    }

    #[test]
    fn non_streaming_requests_get_no_stream_options() {
        let r = ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let up: Value = serde_json::from_slice(&r.upstream_body("x").unwrap()).unwrap();
        assert!(up.get("stream_options").is_none() && up.get("stream").is_none(), "{up}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!((e.param.as_deref(), e.code.as_deref()), (Some("model"), Some("missing_required_parameter")));
        let e = err(r#"{"model":"m","messages":[{"role":"user"},{"role":"wizard"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[1].role"), "{e}");
        // Only the string form names a role: serde's map form for enums (`{"user": null}`) is no
        // client's, and it would have gone upstream as `"user"`.
        let e = err(r#"{"model":"m","messages":[{"role":{"function":null},"content":""}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"), "{e}");
        assert!(e.message.contains("expected a string"), "{e}");
        let e = err(r#"{"model":"m","messages":[],"stream":"yes"}"#);
        assert_eq!(e.param.as_deref(), Some("stream"), "{e}");
        let e = err(r#"{"model":"m","messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("messages"), "{e}");
        let e = err(r#"{"model":"m","#);
        assert_eq!(e.code.as_deref(), Some("invalid_json"), "{e}");
        let e = err(r#"[1,2]"#);
        assert_eq!(e.code.as_deref(), Some("invalid_value"), "{e}");
        let e = err("");
        assert_eq!(e.code.as_deref(), Some("invalid_json"), "{e}");
    }
}
