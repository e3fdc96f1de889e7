//! Helpers for the golden translation tests of the providers: stable renderings of JSON and of
//! translated streams, with the generated ids and timestamps replaced.

use serde_json::{Value, json};

use crate::api::ChatRequest;
use crate::api::sse::Event;
use crate::error::Error;

/// Parses `body` as the pipeline does, translates it with `translate`, and renders the result (or
/// the error's message).
pub(crate) fn request(body: &Value, translate: impl Fn(&ChatRequest) -> Result<Value, Error>) -> String {
    let parsed = ChatRequest::parse(&serde_json::to_vec(body).unwrap_or_default()).expect("a valid chat request");
    render(&translate(&parsed).unwrap_or_else(|e| json!({"error": e.message})))
}

/// Pretty JSON with `chatcmpl-…` ids, generated tool call ids and `created` made stable.
pub(crate) fn render(value: &Value) -> String {
    let mut value = value.clone();
    redact(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &*v) {
                    ("created", Value::Number(_)) => *v = Value::from(0),
                    ("id", Value::String(s)) if s.starts_with("chatcmpl-") => *v = Value::from("chatcmpl-ID"),
                    ("id", Value::String(s)) if s.starts_with("call_") => {
                        // `call_<random>_<n>`, and a thought signature after `~` kept as it is.
                        let (id, signature) = s.split_once('~').map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
                        let n = id.rsplit('_').next().unwrap_or_default();
                        *v = Value::from(match signature {
                            Some(sig) => format!("call_ID_{n}~{sig}"),
                            None => format!("call_ID_{n}"),
                        });
                    }
                    _ => redact(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// One line per event: compact JSON (redacted), `[DONE]`, or the raw text.
pub(crate) fn stream_text(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match serde_json::from_slice::<Value>(&e.data) {
            Ok(mut v) => {
                redact(&mut v);
                v.to_string()
            }
            Err(_) => String::from_utf8_lossy(&e.data).into_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}
