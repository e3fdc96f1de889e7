//! Conversions between the two shapes of a chat completion: the whole JSON object
//! (`chat.completion`) and a stream of `chat.completion.chunk` events. The cache stores the whole
//! object; a streamed miss is assembled into one, and a streamed hit is replayed from one.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// Why a stream could not be assembled into a response worth caching.
#[derive(Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// No `data: [DONE]`: the stream broke off.
    NoDone,
    /// An event carried an error object.
    Error,
    /// A choice has no finish reason, or there is no choice at all.
    Unfinished,
    /// An event's data was not JSON.
    BadEvent,
}

/// One choice, accumulated from its deltas.
#[derive(Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, ToolCall>,
    logprobs_content: Option<Vec<Value>>,
    logprobs_refusal: Option<Vec<Value>>,
    finish_reason: Option<Value>,
}

#[derive(Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

/// Assembles the raw SSE bytes of a complete chat stream (as the upstream sent them, usage chunk
/// included) into the `chat.completion` object a non-streamed request would have received: text,
/// refusals, tool calls (arguments concatenated), logprobs, finish reasons and usage.
pub fn assemble(sse: &[u8]) -> Result<Value, Incomplete> {
    let text = String::from_utf8_lossy(sse);
    let mut top = Map::new();
    let mut choices: BTreeMap<u64, Choice> = BTreeMap::new();
    let mut usage = Value::Null;
    let mut done = false;
    for data in events(&text) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).map_err(|_| Incomplete::BadEvent)?;
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            return Err(Incomplete::Error);
        }
        for field in ["id", "created", "model", "system_fingerprint", "service_tier"] {
            if let Some(value) = chunk.get(field).filter(|v| !v.is_null()) {
                top.entry(field).or_insert_with(|| value.clone());
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            usage = u.clone();
        }
        for delta_choice in chunk.get("choices").and_then(Value::as_array).into_iter().flatten() {
            let index = delta_choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            merge(choices.entry(index).or_default(), delta_choice);
        }
    }
    if !done {
        return Err(Incomplete::NoDone);
    }
    if choices.is_empty() || choices.values().any(|c| c.finish_reason.is_none()) {
        return Err(Incomplete::Unfinished);
    }
    let mut out = Map::new();
    out.insert("id".into(), top.remove("id").unwrap_or(Value::Null));
    out.insert("object".into(), "chat.completion".into());
    out.insert("created".into(), top.remove("created").unwrap_or(Value::Null));
    out.insert("model".into(), top.remove("model").unwrap_or(Value::Null));
    out.insert("choices".into(), choices.into_iter().map(|(index, c)| finish(index, c)).collect());
    out.insert("usage".into(), usage);
    // Only what the stream carried: a field absent from the stream stays absent.
    out.extend(top);
    Ok(Value::Object(out))
}

/// The `data` payloads of an SSE body, one per event (multi-line data joined with `\n`).
fn events(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split("\n\n").flat_map(|block| block.split("\r\n\r\n")).filter_map(|block| {
        let mut data: Option<String> = None;
        for line in block.lines() {
            if let Some(rest) = line.strip_prefix("data:") {
                let rest = rest.strip_prefix(' ').unwrap_or(rest);
                match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(rest);
                    }
                    None => data = Some(rest.to_owned()),
                }
            }
        }
        data
    })
}

fn merge(choice: &mut Choice, delta_choice: &Value) {
    if let Some(reason) = delta_choice.get("finish_reason").filter(|r| !r.is_null()) {
        choice.finish_reason = Some(reason.clone());
    }
    if let Some(logprobs) = delta_choice.get("logprobs").filter(|l| l.is_object()) {
        for (field, into) in [("content", &mut choice.logprobs_content), ("refusal", &mut choice.logprobs_refusal)] {
            if let Some(items) = logprobs.get(field).and_then(Value::as_array) {
                into.get_or_insert_with(Vec::new).extend(items.iter().cloned());
            }
        }
    }
    let Some(delta) = delta_choice.get("delta") else { return };
    if let Some(role) = delta.get("role").and_then(Value::as_str) {
        choice.role = Some(role.to_owned());
    }
    if let Some(content) = delta.get("content").and_then(Value::as_str) {
        choice.content.get_or_insert_with(String::new).push_str(content);
    }
    if let Some(refusal) = delta.get("refusal").and_then(Value::as_str) {
        choice.refusal.get_or_insert_with(String::new).push_str(refusal);
    }
    for call in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let acc = choice.tool_calls.entry(index).or_default();
        if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
            acc.id = Some(id.clone());
        }
        if let Some(kind) = call.get("type").filter(|v| !v.is_null()) {
            acc.kind = Some(kind.clone());
        }
        if let Some(function) = call.get("function") {
            if let Some(name) = function.get("name").and_then(Value::as_str) {
                acc.name.push_str(name);
            }
            if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                acc.arguments.push_str(arguments);
            }
        }
    }
}

fn finish(index: u64, c: Choice) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), c.role.unwrap_or_else(|| "assistant".to_owned()).into());
    message.insert("content".into(), c.content.map_or(Value::Null, Value::from));
    message.insert("refusal".into(), c.refusal.map_or(Value::Null, Value::from));
    if !c.tool_calls.is_empty() {
        let calls: Vec<Value> = c
            .tool_calls
            .into_values()
            .map(|t| {
                json!({
                    "id": t.id.unwrap_or(Value::Null),
                    "type": t.kind.unwrap_or_else(|| "function".into()),
                    "function": {"name": t.name, "arguments": t.arguments},
                })
            })
            .collect();
        message.insert("tool_calls".into(), calls.into());
    }
    let logprobs = if c.logprobs_content.is_some() || c.logprobs_refusal.is_some() {
        json!({
            "content": c.logprobs_content.map_or(Value::Null, Value::from),
            "refusal": c.logprobs_refusal.map_or(Value::Null, Value::from),
        })
    } else {
        Value::Null
    };
    json!({
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": c.finish_reason.unwrap_or(Value::Null),
    })
}

/// Replays a `chat.completion` object as the SSE body of a stream: per choice a role chunk, the
/// text (and its logprobs), the refusal, each tool call whole, and a finish chunk; then the usage
/// chunk if `include_usage` (as OpenAI sends it only when `stream_options.include_usage` is set),
/// and `data: [DONE]`.
pub fn replay(completion: &Value, include_usage: bool) -> Vec<u8> {
    let mut header = Map::new();
    for field in ["id", "created", "model", "system_fingerprint", "service_tier"] {
        if let Some(value) = completion.get(field) {
            header.insert(field.into(), value.clone());
        }
    }
    header.insert("object".into(), "chat.completion.chunk".into());
    let chunk = |choices: Value| {
        let mut c = header.clone();
        c.insert("choices".into(), choices);
        Value::Object(c)
    };
    let one = |index: &Value, delta: Value, logprobs: Value, finish_reason: Value| {
        chunk(json!([{ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason }]))
    };

    let mut out = Vec::new();
    let mut push = |value: &Value| {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(value.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    };
    let empty = Vec::new();
    let choices = completion.get("choices").and_then(Value::as_array).unwrap_or(&empty);
    for choice in choices {
        let index = choice.get("index").cloned().unwrap_or(Value::from(0));
        let message = choice.get("message").cloned().unwrap_or(Value::Null);
        let logprobs = choice.get("logprobs").filter(|l| l.is_object());
        let role = message.get("role").cloned().unwrap_or_else(|| "assistant".into());
        let content = message.get("content").and_then(Value::as_str);
        let tool_calls = message.get("tool_calls").and_then(Value::as_array);

        // OpenAI opens with the role and an empty text, or a null text when there is none (tool
        // calls, refusals).
        let opening = content.map_or(Value::Null, |_| Value::from(""));
        push(&one(&index, json!({"role": role, "content": opening}), Value::Null, Value::Null));
        if let Some(text) = content.filter(|t| !t.is_empty()) {
            let lp = logprobs.map_or(Value::Null, |l| json!({"content": l.get("content"), "refusal": null}));
            push(&one(&index, json!({"content": text}), lp, Value::Null));
        }
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            let lp = logprobs.map_or(Value::Null, |l| json!({"content": null, "refusal": l.get("refusal")}));
            push(&one(&index, json!({"refusal": refusal}), lp, Value::Null));
        }
        for (i, call) in tool_calls.into_iter().flatten().enumerate() {
            let mut call = call.clone();
            if let Value::Object(map) = &mut call {
                map.insert("index".into(), i.into());
            }
            push(&one(&index, json!({"tool_calls": [call]}), Value::Null, Value::Null));
        }
        let finish_reason = choice.get("finish_reason").cloned().unwrap_or_else(|| "stop".into());
        push(&one(&index, json!({}), Value::Null, finish_reason));
    }
    if include_usage && let Some(usage) = completion.get("usage").filter(|u| u.is_object()) {
        let mut c = header.clone();
        c.insert("choices".into(), json!([]));
        c.insert("usage".into(), usage.clone());
        push(&Value::Object(c));
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n",
    );

    fn fixture(name: &str) -> String {
        let path = format!("{}/../../bench/fixtures/openai/{name}.sse", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn a_text_stream_assembles_into_the_completion_object() {
        let c = assemble(TEXT.as_bytes()).expect("complete");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!((c["id"].as_str(), c["created"].as_u64(), c["model"].as_str()), (Some("c1"), Some(7), Some("m")));
        assert_eq!(c["system_fingerprint"], "fp");
        assert_eq!(c["choices"][0]["message"], json!({"role":"assistant","content":"Hello world","refusal":null}));
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert_eq!(c["usage"]["total_tokens"], 5);
    }

    #[test]
    fn broken_or_failed_streams_are_not_complete() {
        let without_done = TEXT.replace("data: [DONE]\n\n", "");
        assert_eq!(assemble(without_done.as_bytes()), Err(Incomplete::NoDone));
        let unfinished = TEXT.replace("\"finish_reason\":\"stop\"", "\"finish_reason\":null");
        assert_eq!(assemble(unfinished.as_bytes()), Err(Incomplete::Unfinished));
        let error = format!("{}data: {{\"error\":{{\"message\":\"boom\"}}}}\n\ndata: [DONE]\n\n", &TEXT[..200]);
        assert!(assemble(error.as_bytes()).is_err());
        assert_eq!(assemble(b"data: [DONE]\n\n"), Err(Incomplete::Unfinished));
    }

    #[test]
    fn recorded_tool_call_streams_assemble_with_whole_arguments() {
        for name in ["tool_call", "parallel_tool_calls"] {
            let c = assemble(fixture(name).as_bytes()).expect(name);
            let calls = c["choices"][0]["message"]["tool_calls"].as_array().expect("tool calls");
            assert!(!calls.is_empty(), "{name}");
            for call in calls {
                let args = call["function"]["arguments"].as_str().expect("arguments");
                let parsed: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{name}: {args}: {e}"));
                assert!(parsed.is_object(), "{name}");
                assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{name}: {call}");
                assert_eq!(call["type"], "function");
            }
            assert_eq!(c["choices"][0]["finish_reason"], "tool_calls", "{name}");
            assert!(c["usage"]["prompt_tokens"].as_u64().is_some(), "{name}");
        }
    }

    #[test]
    fn every_recorded_stream_survives_a_round_trip() {
        for name in [
            "text_a",
            "text_b",
            "text_c",
            "text_logprobs",
            "length",
            "n3_choices",
            "tool_call",
            "tool_call_b",
            "tool_call_c",
            "parallel_tool_calls",
            "refusal",
            "refusal_logprobs",
        ] {
            let original = assemble(fixture(name).as_bytes()).expect(name);
            let replayed = replay(&original, true);
            let again = assemble(&replayed).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(original, again, "{name}: stream → object → stream → object changed something");
        }
    }

    #[test]
    fn the_usage_chunk_is_replayed_only_when_asked_for() {
        let c = assemble(TEXT.as_bytes()).expect("complete");
        let usage_chunks = |sse: &[u8]| {
            events(&String::from_utf8_lossy(sse))
                .filter(|d| d.contains("\"usage\"") && d.contains("\"choices\":[]"))
                .count()
        };
        assert_eq!(usage_chunks(&replay(&c, true)), 1);
        assert_eq!(usage_chunks(&replay(&c, false)), 0);
        let sse = replay(&c, false);
        assert!(sse.ends_with(b"data: [DONE]\n\n"));
        let text: String = events(&String::from_utf8_lossy(&sse))
            .filter(|d| d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
            .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, "Hello world");
    }

    #[test]
    fn a_whole_json_answer_replays_as_a_stream_with_its_tool_calls() {
        let completion = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 9, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        });
        let again = assemble(&replay(&completion, true)).expect("complete");
        assert_eq!(again, completion);
    }
}
