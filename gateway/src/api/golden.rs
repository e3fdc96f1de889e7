//! Helpers for the surfaces' golden translation tests: stable renderings of JSON and of SSE streams,
//! with the ids and timestamps the gateway generates replaced.

use serde_json::Value;

use super::sse::{Event, Splitter};

/// Pretty JSON, redacted.
pub(crate) fn render(value: &Value) -> String {
    let mut value = value.clone();
    redact(&mut value);
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// `<prefix>_<32 hex digits>` and `<prefix>-<32 hex>` ids → `<prefix>_ID`; timestamps → 0.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &*v) {
                    ("created" | "created_at", Value::Number(_)) => *v = Value::from(0),
                    (_, Value::String(s)) => {
                        if let Some(id) = redacted_id(s) {
                            *v = Value::from(id);
                        }
                    }
                    _ => redact(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn redacted_id(s: &str) -> Option<String> {
    let cut = s.rfind(['_', '-'])?;
    let (prefix, hex) = (&s[..cut], &s[cut + 1..]);
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !prefix.is_empty())
        .then(|| format!("{prefix}_ID"))
}

/// Splits an SSE byte stream into events.
pub(crate) fn events(bytes: &[u8]) -> Vec<Event> {
    let mut splitter = Splitter::default();
    splitter.push(bytes);
    std::iter::from_fn(|| splitter.next_event()).collect()
}

/// One line per event: its `event:` name (if any) and its data as compact JSON (redacted), or as text.
pub(crate) fn stream_text(bytes: &[u8]) -> String {
    events(bytes)
        .iter()
        .map(|e| {
            let name = String::from_utf8_lossy(&e.raw)
                .lines()
                .find_map(|l| l.strip_prefix("event: ").map(|n| format!("{n} ")))
                .unwrap_or_default();
            let data = match serde_json::from_slice::<Value>(&e.data) {
                Ok(mut v) => {
                    redact(&mut v);
                    v.to_string()
                }
                Err(_) => String::from_utf8_lossy(&e.data).into_owned(),
            };
            format!("{name}{data}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Feeds `bytes` to `push` one byte at a time, as a slow network would, and collects the events.
pub(crate) fn byte_by_byte(bytes: &[u8], mut push: impl FnMut(&[u8], &mut Vec<Event>)) -> Vec<Event> {
    let mut out = Vec::new();
    for byte in bytes {
        push(std::slice::from_ref(byte), &mut out);
    }
    out
}

/// Events' raw bytes, joined.
pub(crate) fn raw(events: &[Event]) -> Vec<u8> {
    events.iter().flat_map(|e| e.raw.to_vec()).collect()
}
