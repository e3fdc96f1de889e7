//! The common edits of a request body, in whichever API the client spoke: a team's system prompt
//! added or replaced, the text of every message rewritten (redaction). Read the body with
//! [`crate::Request::body`] (declare [`crate::PluginInfo::needing_body`]), edit it, and hand it
//! back with [`crate::rewrite`]; the host re-validates it as that API.
//!
//! ```ignore
//! let mut body: serde_json::Value = serde_json::from_slice(&req.body()).map_err(...)?;
//! let api = req.info().api;
//! weir_sdk::edit::prepend_system(api, &mut body, "Answer in French.")?;
//! weir_sdk::edit::map_text(api, &mut body, |text| text.contains("secret").then(|| text.replace("secret", "[redacted]")));
//! weir_sdk::rewrite(&req, &body);
//! ```

use std::ops::Range;

use serde_json::{Map, Value};

use crate::ApiKind;

/// Adds `text` as the request's system prompt, before what the client's own says (joined by a
/// blank line): Chat Completions' first `system` (or `developer`) message, else a new one first;
/// Messages' `system`; Responses' `instructions`; for a legacy completion, the start of the
/// prompt. Embeddings and predictions have none (an error).
pub fn prepend_system(api: ApiKind, body: &mut Value, text: &str) -> Result<(), String> {
    system(api, body, text, false)
}

/// Makes `text` the request's only system prompt, whatever the client's said (Chat Completions'
/// `system` and `developer` messages are removed and one put first; Messages' `system`;
/// Responses' `instructions`). Legacy completions, embeddings and predictions have none (an error).
pub fn replace_system(api: ApiKind, body: &mut Value, text: &str) -> Result<(), String> {
    system(api, body, text, true)
}

fn system(api: ApiKind, body: &mut Value, text: &str, replace: bool) -> Result<(), String> {
    let object = body.as_object_mut().ok_or("the body is not a JSON object")?;
    let joined = |old: &str| if old.is_empty() { text.to_owned() } else { format!("{text}\n\n{old}") };
    match api {
        ApiKind::ChatCompletions => {
            let messages = object.get_mut("messages").and_then(Value::as_array_mut).ok_or("no `messages` array")?;
            let is_system = |m: &Value| matches!(m.get("role").and_then(Value::as_str), Some("system" | "developer"));
            if replace {
                messages.retain(|m| !is_system(m));
            } else if let Some(first) = messages.first_mut().filter(|m| is_system(m)) {
                match first.get_mut("content") {
                    Some(Value::String(old)) => {
                        *old = joined(old);
                        return Ok(());
                    }
                    Some(Value::Array(parts)) => {
                        parts.insert(0, text_part("text", &format!("{text}\n\n")));
                        return Ok(());
                    }
                    _ => {}
                }
            }
            messages.insert(0, serde_json::json!({"role": "system", "content": text}));
        }
        ApiKind::Messages => {
            let system = match object.remove("system") {
                Some(Value::String(old)) if !replace => Value::String(joined(&old)),
                Some(Value::Array(mut blocks)) if !replace => {
                    blocks.insert(0, text_part("text", text));
                    Value::Array(blocks)
                }
                _ => Value::String(text.to_owned()),
            };
            object.insert("system".to_owned(), system);
        }
        ApiKind::Responses => {
            let instructions = match object.get("instructions").and_then(Value::as_str) {
                Some(old) if !replace => joined(old),
                _ => text.to_owned(),
            };
            object.insert("instructions".to_owned(), Value::String(instructions));
        }
        ApiKind::Completions if !replace => match object.get_mut("prompt") {
            Some(Value::String(prompt)) => *prompt = joined(prompt),
            Some(Value::Array(prompts)) if prompts.iter().all(Value::is_string) => {
                for prompt in prompts {
                    if let Value::String(p) = prompt {
                        *p = joined(p);
                    }
                }
            }
            _ => return Err("the prompt is not text (token ids cannot take a system prompt)".to_owned()),
        },
        ApiKind::Completions => return Err("a legacy completion has no system prompt to replace".to_owned()),
        ApiKind::Embeddings | ApiKind::Predict => return Err("this API has no system prompt".to_owned()),
    }
    Ok(())
}

fn text_part(kind: &str, text: &str) -> Value {
    serde_json::json!({"type": kind, "text": text})
}

/// Calls `f` on every text the request carries — each message's content (string or text parts,
/// tool results included), Messages' `system`, Responses' `instructions` and `input`, a legacy
/// completion's prompt, an embeddings input — and replaces the text where `f` returns `Some`.
/// Returns how many texts changed. Token-id prompts and predictions carry no text.
pub fn map_text(api: ApiKind, body: &mut Value, mut f: impl FnMut(&str) -> Option<String>) -> usize {
    let mut changed = 0;
    let mut visit = |text: &mut String| {
        if let Some(new) = f(text) {
            if new != *text {
                changed += 1;
            }
            *text = new;
        }
    };
    let Some(object) = body.as_object_mut() else { return 0 };
    match api {
        ApiKind::ChatCompletions => messages(object, &mut visit),
        ApiKind::Messages => {
            if let Some(system) = object.get_mut("system") {
                content(system, &mut visit);
            }
            messages(object, &mut visit);
        }
        ApiKind::Responses => {
            if let Some(Value::String(instructions)) = object.get_mut("instructions") {
                visit(instructions);
            }
            match object.get_mut("input") {
                Some(Value::String(input)) => visit(input),
                Some(Value::Array(items)) => {
                    for item in items {
                        if let Some(c) = item.get_mut("content") {
                            content(c, &mut visit);
                        }
                        // A function call's output is text the model reads too.
                        if let Some(Value::String(output)) = item.get_mut("output") {
                            visit(output);
                        }
                    }
                }
                _ => {}
            }
        }
        ApiKind::Completions => strings(object.get_mut("prompt"), &mut visit),
        ApiKind::Embeddings => strings(object.get_mut("input"), &mut visit),
        ApiKind::Predict => {}
    }
    changed
}

fn messages(object: &mut Map<String, Value>, visit: &mut dyn FnMut(&mut String)) {
    for message in object.get_mut("messages").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(c) = message.get_mut("content") {
            content(c, visit);
        }
    }
}

/// A content: a string, or parts whose text is in `text` (a tool result's in its own `content`).
fn content(value: &mut Value, visit: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(parts) => {
            for part in parts {
                if let Some(Value::String(text)) = part.get_mut("text") {
                    visit(text);
                }
                if let Some(inner) = part.get_mut("content") {
                    content(inner, visit);
                }
            }
        }
        _ => {}
    }
}

/// A string or an array of strings (arrays of token ids are left alone).
fn strings(value: Option<&mut Value>, visit: &mut dyn FnMut(&mut String)) {
    let Some(value) = value else { return };
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => {
            for item in items {
                if let Value::String(text) = item {
                    visit(text);
                }
            }
        }
        _ => {}
    }
}

/// `text` with each byte range of `spans` replaced by `placeholder`. Spans may come in any order
/// and overlap (they are merged); a span off a character boundary or past the end is widened to
/// the characters it touches, so the result is always valid text.
pub fn redact_spans(text: &str, spans: &[Range<usize>], placeholder: &str) -> String {
    let widen_start = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let widen_end = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i += 1;
        }
        i
    };
    let mut spans: Vec<Range<usize>> =
        spans.iter().map(|s| widen_start(s.start)..widen_end(s.end)).filter(|s| s.start < s.end).collect();
    spans.sort_by_key(|s| s.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in merged {
        out.push_str(&text[at..span.start]);
        out.push_str(placeholder);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_system_prompt_goes_first_in_every_api_that_has_one() {
        let mut chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        prepend_system(ApiKind::ChatCompletions, &mut chat, "Be brief.").unwrap();
        assert_eq!(chat["messages"][0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(chat["messages"][1]["content"], "hi");

        let mut chat = json!({"messages": [{"role": "system", "content": "Mine."}, {"role": "user", "content": "hi"}]});
        prepend_system(ApiKind::ChatCompletions, &mut chat, "Team.").unwrap();
        assert_eq!(chat["messages"][0]["content"], "Team.\n\nMine.");
        assert_eq!(chat["messages"].as_array().unwrap().len(), 2);
        replace_system(ApiKind::ChatCompletions, &mut chat, "Only this.").unwrap();
        assert_eq!(
            chat["messages"],
            json!([{"role": "system", "content": "Only this."}, {"role": "user", "content": "hi"}])
        );

        let mut messages = json!({"system": [{"type": "text", "text": "Mine."}], "messages": []});
        prepend_system(ApiKind::Messages, &mut messages, "Team.").unwrap();
        assert_eq!(messages["system"][0], json!({"type": "text", "text": "Team."}));
        assert_eq!(messages["system"][1]["text"], "Mine.");
        let mut messages = json!({"messages": []});
        prepend_system(ApiKind::Messages, &mut messages, "Team.").unwrap();
        assert_eq!(messages["system"], "Team.");

        let mut responses = json!({"input": "hi", "instructions": "Mine."});
        prepend_system(ApiKind::Responses, &mut responses, "Team.").unwrap();
        assert_eq!(responses["instructions"], "Team.\n\nMine.");

        let mut completions = json!({"prompt": ["a", "b"]});
        prepend_system(ApiKind::Completions, &mut completions, "T").unwrap();
        assert_eq!(completions["prompt"], json!(["T\n\na", "T\n\nb"]));
        assert!(prepend_system(ApiKind::Completions, &mut json!({"prompt": [1, 2]}), "T").is_err());
        assert!(prepend_system(ApiKind::Embeddings, &mut json!({"input": "x"}), "T").is_err());
    }

    #[test]
    fn every_text_of_a_request_is_visited_and_only_changes_count() {
        let mut chat = json!({"messages": [
            {"role": "user", "content": "mail a@b.c"},
            {"role": "user", "content": [{"type": "text", "text": "and a@b.c"}, {"type": "image_url", "image_url": {"url": "a@b.c"}}]},
            {"role": "assistant", "content": null},
        ]});
        let n = map_text(ApiKind::ChatCompletions, &mut chat, |t| Some(t.replace("a@b.c", "[EMAIL]")));
        assert_eq!(n, 2);
        assert_eq!(chat["messages"][0]["content"], "mail [EMAIL]");
        assert_eq!(chat["messages"][1]["content"][0]["text"], "and [EMAIL]");
        assert_eq!(chat["messages"][1]["content"][1]["image_url"]["url"], "a@b.c", "not text: left alone");

        let mut messages = json!({"system": "s x", "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}]},
        ]}]});
        assert_eq!(map_text(ApiKind::Messages, &mut messages, |t| Some(t.replace('x', "y"))), 2);
        assert_eq!(messages["system"], "s y");
        assert_eq!(messages["messages"][0]["content"][0]["content"][0]["text"], "y");

        let mut responses = json!({"instructions": "x", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "x"}]},
            {"type": "function_call_output", "call_id": "c", "output": "x"},
        ]});
        assert_eq!(map_text(ApiKind::Responses, &mut responses, |t| Some(t.replace('x', "y"))), 3);
        let mut embeddings = json!({"input": ["x", "z"]});
        assert_eq!(map_text(ApiKind::Embeddings, &mut embeddings, |t| Some(t.replace('x', "y"))), 1);
        assert_eq!(embeddings["input"], json!(["y", "z"]));
    }

    #[test]
    #[expect(clippy::single_range_in_vec_init, reason = "one span of text is what these cases redact")]
    fn spans_are_merged_and_widened_to_characters() {
        assert_eq!(redact_spans("call 555-1234 now", &[5..13], "[PHONE]"), "call [PHONE] now");
        assert_eq!(redact_spans("a b c", &[4..5, 0..1], "#"), "# b #");
        assert_eq!(redact_spans("abcdef", &[1..3, 2..5], "#"), "a#f");
        // "é" is two bytes: a span ending inside it takes all of it.
        assert_eq!(redact_spans("xé y", &[0..2], "#"), "# y");
        assert_eq!(redact_spans("abc", &[2..99], "#"), "ab#");
        assert_eq!(redact_spans("abc", &[], "#"), "abc");
    }
}
