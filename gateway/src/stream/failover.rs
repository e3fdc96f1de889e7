//! Stage: stream, when an upstream breaks off. What the client has been sent ([`Transcript`]),
//! whether the answer can be continued from there ([`Continuation`]), the request that continues
//! it on another target (the text already sent as an assistant prefill, in each provider's way:
//! [`prefilled`]), and the [`Splice`] that fits the new stream after what the client has, so that
//! it reads one answer: one identity (`id`, `created`, `model`), one `finish_reason`, one usage
//! block that counts every attempt.
//!
//! A continuation is only attempted at a safe boundary: one choice, plain text so far, read as
//! canonical chunks (whatever the client's API encodes them into). A tool call, a refusal or
//! reasoning already under way cannot be prefilled, nor can a stream relayed in another API's own
//! events be read, so such a stream ends with an error event instead. Where the next target takes no prefill, it answers anew, and its answer is
//! used only if it begins with exactly the text the client has (which is then skipped): never a
//! silent duplicate.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use weir_config::Prefill;

use crate::api::Usage;
use crate::api::chat::{ChatRequest, Message, Role};
use crate::api::sse::Event;

/// The most text a stream may have sent and still be continued; past it the prefill would be a
/// request of its own size.
const MAX_CONTINUED_TEXT: usize = 4 * 1024 * 1024;

/// What the relay reads of one `chat.completion.chunk`: enough to know whether it carries content,
/// its text, finishes and usage. Fields it does not know are ignored; a chunk that does not parse
/// as this is relayed as it is.
#[derive(Debug, Default, Deserialize)]
pub struct Peek {
    #[serde(default)]
    pub choices: Option<Vec<PeekChoice>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<PeekError>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Option<PeekDelta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekDelta {
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<IgnoredAny>,
    #[serde(default)]
    pub function_call: Option<IgnoredAny>,
    #[serde(default)]
    pub refusal: Option<Value>,
    #[serde(default)]
    pub reasoning_content: Option<Value>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub audio: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PeekError {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

fn non_empty(v: &Option<Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Null) | None => false,
        Some(_) => true,
    }
}

impl PeekDelta {
    fn text(&self) -> &str {
        self.content.as_ref().and_then(Value::as_str).unwrap_or_default()
    }

    /// Anything but the content text: what a prefill cannot carry.
    fn other_content(&self) -> bool {
        self.tool_calls.is_some()
            || self.function_call.is_some()
            || self.audio.is_some()
            || non_empty(&self.refusal)
            || non_empty(&self.reasoning_content)
            || non_empty(&self.reasoning)
            || self.content.as_ref().is_some_and(|c| !c.is_string() && !c.is_null())
    }

    fn has_content(&self) -> bool {
        !self.text().is_empty() || self.other_content()
    }
}

impl Peek {
    pub fn parse(data: &[u8]) -> Option<Self> {
        serde_json::from_slice(data).ok()
    }

    fn choices(&self) -> &[PeekChoice] {
        self.choices.as_deref().unwrap_or_default()
    }

    /// The chunk carries something a client reads as part of the answer: text, a tool call, a
    /// finish, usage, an error. The rest (a role chunk, empty deltas, Azure's prompt filter
    /// results) may be held back until the first content.
    pub fn has_content(&self) -> bool {
        self.error.is_some()
            || self.usage.is_some()
            || self
                .choices()
                .iter()
                .any(|c| c.finish_reason.is_some() || c.delta.as_ref().is_some_and(PeekDelta::has_content))
    }

    /// A choice produced text or another part of the answer (one completion token, roughly).
    pub fn has_choice_content(&self) -> bool {
        self.choices().iter().any(|c| c.delta.as_ref().is_some_and(PeekDelta::has_content))
    }

    /// The usage report that ends a stream: no choices, usage, no error.
    pub fn usage_only(&self) -> bool {
        self.usage.is_some() && self.choices().is_empty() && self.error.is_none()
    }

    /// An upstream's error event worth another attempt: anything but a rejected request.
    pub fn error_retryable(&self) -> bool {
        self.error.as_ref().is_some_and(|e| e.kind.as_deref() != Some("invalid_request_error"))
    }
}

/// The `id`, `created` and `model` of the stream the client reads.
#[derive(Debug, Clone, PartialEq)]
struct Identity(Map<String, Value>);

impl Identity {
    fn of(data: &[u8]) -> Option<Self> {
        let Value::Object(chunk) = serde_json::from_slice(data).ok()? else { return None };
        let keep: Map<String, Value> = ["id", "created", "model"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), chunk.get(k)?.clone())))
            .collect();
        Some(Self(keep))
    }

    fn stamp(&self, chunk: &mut Value) {
        if let Value::Object(chunk) = chunk {
            for (k, v) in &self.0 {
                chunk.insert(k.clone(), v.clone());
            }
        }
    }
}

/// What the client has been sent of the answer.
#[derive(Debug, Default)]
pub struct Transcript {
    /// Choice 0's text.
    text: String,
    /// Chunks with content sent: an estimate of the completion tokens (a token per chunk, as
    /// OpenAI streams them).
    chunks: u64,
    /// Any content at all reached the client.
    delivered: bool,
    /// Choices that sent their `finish_reason`.
    finished: Vec<u32>,
    /// Why the answer cannot be continued, once that is so.
    blocked: Option<&'static str>,
    identity: Option<Identity>,
}

/// How to continue an answer: the text to prefill and what the splice needs.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// The text sent, without trailing whitespace (Anthropic and Bedrock refuse a prefill that
    /// ends with it).
    pub prefill: String,
    /// The whitespace cut off, which the continuation may well begin with.
    trimmed: String,
    /// Content chunks sent so far.
    pub chunks: u64,
    identity: Option<Identity>,
}

impl Transcript {
    /// Any content reached the client.
    pub fn delivered(&self) -> bool {
        self.delivered
    }

    /// Every one of the `choices` sent its `finish_reason`: the answer is whole.
    pub fn finished(&self, choices: usize) -> bool {
        choices > 0 && self.finished.len() >= choices
    }

    /// Notes a chunk the client was sent (`data` its JSON).
    pub fn record(&mut self, peek: &Peek, data: &[u8]) {
        if !peek.has_content() {
            return;
        }
        if !self.delivered {
            self.identity = Identity::of(data);
        }
        self.delivered = true;
        if peek.has_choice_content() {
            self.chunks += 1;
        }
        for choice in peek.choices() {
            if choice.index != 0 {
                self.blocked.get_or_insert("it has several choices");
            }
            if let Some(delta) = &choice.delta {
                if delta.other_content() {
                    self.blocked.get_or_insert("a tool call, refusal or reasoning was under way");
                }
                if choice.index == 0 {
                    self.text.push_str(delta.text());
                }
            }
            if choice.finish_reason.is_some() && !self.finished.contains(&choice.index) {
                self.finished.push(choice.index);
            }
        }
        if self.text.len() > MAX_CONTINUED_TEXT {
            self.blocked.get_or_insert("it is too long");
            self.text = String::new();
        }
    }

    /// Notes content of a stream relayed in another API's own events (a native Messages,
    /// Responses or legacy Completions stream): the client has content, and since the gateway does
    /// not read it as canonical chunks, the answer cannot be continued.
    pub fn record_native(&mut self) {
        self.delivered = true;
        self.chunks += 1;
        self.blocked.get_or_insert("it is relayed in its own API's events, not as canonical chunks");
    }

    /// How to continue from here, or why it cannot be.
    pub fn continuation(&self) -> Result<Continuation, &'static str> {
        if let Some(why) = self.blocked {
            return Err(why);
        }
        let prefill = self.text.trim_end();
        Ok(Continuation {
            prefill: prefill.to_owned(),
            trimmed: self.text[prefill.len()..].to_owned(),
            chunks: self.chunks,
            identity: self.identity.clone(),
        })
    }

    /// The text the client has (choice 0).
    #[cfg(test)]
    fn text(&self) -> &str {
        &self.text
    }
}

/// `chat` continued after `continuation` on an upstream that continues as `how` says: the text so
/// far as a final assistant message (marked as the upstream wants it), and the completion limit
/// reduced by what was already generated. `Prefill::None` (or nothing to prefill) asks anew.
pub fn prefilled(chat: &ChatRequest, continuation: &Continuation, how: Prefill) -> ChatRequest {
    let mut chat = chat.clone();
    if how == Prefill::None || continuation.prefill.is_empty() {
        return chat;
    }
    let mut rest = Map::new();
    rest.insert("content".into(), json!(continuation.prefill));
    match how {
        Prefill::Prefix => {
            rest.insert("prefix".into(), json!(true));
        }
        Prefill::ContinueFinalMessage => {
            chat.extra.insert("continue_final_message".into(), json!(true));
            chat.extra.insert("add_generation_prompt".into(), json!(false));
        }
        Prefill::Assistant | Prefill::None => {}
    }
    chat.messages.push(Message { role: Role::Assistant, rest });
    for limit in ["max_tokens", "max_completion_tokens"] {
        if let Some(max) = chat.extra.get(limit).and_then(Value::as_u64) {
            chat.extra.insert(limit.into(), json!(max.saturating_sub(continuation.chunks).max(1)));
        }
    }
    chat
}

/// What to do with one chunk of a continuation.
#[derive(Debug, PartialEq)]
pub enum Spliced {
    /// Send this event (rewritten to follow what the client has).
    Send(Event),
    /// The client has it already (or needs no second role chunk): drop it.
    Drop,
    /// The new answer does not begin with what the client has: the stream cannot go on.
    Mismatch,
}

#[derive(Debug, PartialEq)]
enum Mode {
    /// New deltas follow the prefill; whitespace that was trimmed off it is dropped from the first.
    After { trimmed: String },
    /// The answer starts over: its text is dropped while it repeats `expect`.
    Over { expect: String, matched: usize },
    /// Spliced: chunks pass with the client's identity.
    Through,
}

/// Fits a continuation's chunks after what the client already has.
#[derive(Debug)]
pub struct Splice {
    mode: Mode,
    identity: Option<Identity>,
    /// The usage of the attempts given up, added to the continuation's report.
    spent: Usage,
    /// Content from the continuation reached the client.
    started: bool,
}

impl Splice {
    /// A splice for a continuation sent with the prefill (`prefilled`), or started over.
    pub fn new(continuation: &Continuation, prefilled: bool, spent: Usage) -> Self {
        let mode = if prefilled {
            Mode::After { trimmed: continuation.trimmed.clone() }
        } else {
            Mode::Over { expect: format!("{}{}", continuation.prefill, continuation.trimmed), matched: 0 }
        };
        Self { mode, identity: continuation.identity.clone(), spent, started: false }
    }

    /// Whether the continuation is still repeating what the client has (a `[DONE]` now would
    /// end it short).
    pub fn repeating(&self) -> bool {
        matches!(self.mode, Mode::Over { .. })
    }

    /// One chunk of the continuation (`data` its JSON, `peek` what the relay read of it).
    pub fn chunk(&mut self, data: &[u8], peek: &Peek) -> Spliced {
        if !peek.has_content() && !self.started {
            return Spliced::Drop;
        }
        let Ok(mut chunk) = serde_json::from_slice::<Value>(data) else { return Spliced::Drop };
        // The client had its role chunk from the first stream (Gemini's first text carries one).
        for choice in chunk.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                delta.remove("role");
            }
        }
        if peek.usage_only() {
            self.add_spent(&mut chunk);
        } else if peek.has_content() {
            let text = chunk.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or_default().to_owned();
            let other = peek.choices().first().and_then(|c| c.delta.as_ref()).is_some_and(PeekDelta::other_content);
            let finish = peek.choices().iter().any(|c| c.finish_reason.is_some());
            match std::mem::replace(&mut self.mode, Mode::Through) {
                Mode::After { trimmed } => {
                    if text.is_empty() && !other && !finish {
                        self.mode = Mode::After { trimmed };
                    } else {
                        let kept = strip_repeated_whitespace(&text, &trimmed);
                        if kept.len() != text.len() {
                            set_text(&mut chunk, kept);
                        }
                    }
                }
                Mode::Over { expect, matched } => {
                    let rest = &expect[matched..];
                    if text.len() <= rest.len() {
                        if !rest.starts_with(&text) || other {
                            return Spliced::Mismatch;
                        }
                        let matched = matched + text.len();
                        if matched < expect.len() {
                            if finish {
                                // It ended before it had repeated what the client has.
                                return Spliced::Mismatch;
                            }
                            self.mode = Mode::Over { expect, matched };
                            return Spliced::Drop;
                        }
                        // Caught up exactly: only a finish here is news to the client.
                        if !finish {
                            return Spliced::Drop;
                        }
                        set_text(&mut chunk, "");
                    } else {
                        if !text.starts_with(rest) {
                            return Spliced::Mismatch;
                        }
                        let new = text[rest.len()..].to_owned();
                        set_text(&mut chunk, &new);
                    }
                }
                Mode::Through => {}
            }
            self.started = true;
        }
        if let Some(identity) = &self.identity {
            identity.stamp(&mut chunk);
        }
        Spliced::Send(crate::providers::event(&chunk))
    }

    /// Adds the attempts given up to a usage report, so the client is told the total.
    fn add_spent(&self, chunk: &mut Value) {
        let Some(usage) = chunk.get_mut("usage").and_then(Value::as_object_mut) else { return };
        let add = |usage: &mut Map<String, Value>, key: &str, n: u64| {
            let old = usage.get(key).and_then(Value::as_u64).unwrap_or(0);
            usage.insert(key.into(), json!(old + n));
        };
        add(usage, "prompt_tokens", self.spent.prompt_tokens);
        add(usage, "completion_tokens", self.spent.completion_tokens);
        let total = ["prompt_tokens", "completion_tokens"]
            .iter()
            .map(|k| usage.get(*k).and_then(Value::as_u64).unwrap_or(0))
            .sum::<u64>();
        usage.insert("total_tokens".into(), json!(total));
    }
}

/// `text` without the leading whitespace the client already received (`trimmed`, cut off the
/// prefill): a model continuing "Hello" after a delivered "Hello " writes " world".
fn strip_repeated_whitespace<'a>(text: &'a str, trimmed: &str) -> &'a str {
    let mut rest = text;
    for expected in trimmed.chars() {
        match rest.chars().next() {
            Some(c) if c == expected => rest = &rest[c.len_utf8()..],
            Some(c) if c.is_whitespace() && expected.is_whitespace() => rest = &rest[c.len_utf8()..],
            _ => break,
        }
    }
    rest
}

fn set_text(chunk: &mut Value, text: &str) {
    if let Some(delta) = chunk.pointer_mut("/choices/0/delta").and_then(Value::as_object_mut) {
        delta.insert("content".into(), json!(text));
    }
}

/// Adds two usage reports.
pub fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        prompt_tokens: a.prompt_tokens + b.prompt_tokens,
        completion_tokens: a.completion_tokens + b.completion_tokens,
        ..b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[expect(clippy::needless_pass_by_value, reason = "the tests read best with json! literals passed straight in")]
    fn chunk(delta: Value, finish: Option<&str>) -> String {
        json!({"id": "chatcmpl-new", "object": "chat.completion.chunk", "created": 2, "model": "b",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        .to_string()
    }

    #[expect(clippy::needless_pass_by_value, reason = "the tests read best with json! literals passed straight in")]
    fn first(delta: Value) -> String {
        json!({"id": "chatcmpl-first", "object": "chat.completion.chunk", "created": 1, "model": "a",
               "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
        .to_string()
    }

    fn record(t: &mut Transcript, data: &str) {
        t.record(&Peek::parse(data.as_bytes()).unwrap(), data.as_bytes());
    }

    /// What a splice sends for these chunks: their text, and whether any mismatched.
    fn splice(splice: &mut Splice, chunks: &[String]) -> (String, Vec<Value>, bool) {
        let mut text = String::new();
        let mut sent = Vec::new();
        for c in chunks {
            match splice.chunk(c.as_bytes(), &Peek::parse(c.as_bytes()).unwrap()) {
                Spliced::Send(e) => {
                    let v: Value = serde_json::from_slice(&e.data).unwrap();
                    text.push_str(v.pointer("/choices/0/delta/content").and_then(Value::as_str).unwrap_or_default());
                    sent.push(v);
                }
                Spliced::Drop => {}
                Spliced::Mismatch => return (text, sent, true),
            }
        }
        (text, sent, false)
    }

    fn delivered(parts: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        record(&mut t, &first(json!({"role": "assistant", "content": ""})));
        for p in parts {
            record(&mut t, &first(json!({"content": p})));
        }
        t
    }

    #[test]
    fn the_transcript_keeps_the_text_and_knows_when_it_cannot_be_continued() {
        let t = delivered(&["Hello", " wor"]);
        assert!(t.delivered() && !t.finished(1));
        assert_eq!(t.text(), "Hello wor");
        let c = t.continuation().unwrap();
        assert_eq!((c.prefill.as_str(), c.chunks), ("Hello wor", 2));

        let mut tools = delivered(&["Let me check."]);
        record(&mut tools, &first(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"lo"}}]})));
        assert!(tools.continuation().is_err());
        let mut two = Transcript::default();
        record(&mut two, &json!({"choices": [{"index": 1, "delta": {"content": "x"}}]}).to_string());
        assert!(two.continuation().is_err());

        let empty = delivered(&[]);
        assert!(!empty.delivered(), "a role chunk is no content");
        let mut done = delivered(&["Hi"]);
        record(&mut done, &chunk(json!({}), Some("stop")));
        assert!(done.finished(1) && !done.finished(2));
    }

    #[test]
    fn a_prefill_is_written_the_way_each_upstream_continues() {
        let chat = ChatRequest::parse(
            br#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"count"}],"stream":true}"#,
        )
        .unwrap();
        let c = delivered(&["one", " two "]).continuation().unwrap();
        assert_eq!((c.prefill.as_str(), c.trimmed.as_str()), ("one two", " "));
        let last = |r: &ChatRequest| serde_json::to_value(r.messages.last().unwrap()).unwrap();
        let p = prefilled(&chat, &c, Prefill::Assistant);
        assert_eq!(last(&p), json!({"role": "assistant", "content": "one two"}));
        assert_eq!(p.extra["max_tokens"], 98, "two tokens were spent already");
        let p = prefilled(&chat, &c, Prefill::Prefix);
        assert_eq!(last(&p), json!({"role": "assistant", "content": "one two", "prefix": true}));
        let p = prefilled(&chat, &c, Prefill::ContinueFinalMessage);
        assert_eq!(
            (p.extra["continue_final_message"].clone(), p.extra["add_generation_prompt"].clone()),
            (json!(true), json!(false))
        );
        let p = prefilled(&chat, &c, Prefill::None);
        assert_eq!((p.messages.len(), p.extra["max_tokens"].clone()), (1, json!(100)), "asked anew");
    }

    #[test]
    fn a_prefilled_continuation_follows_the_text_with_the_first_streams_identity() {
        let c = delivered(&["Hello", " "]).continuation().unwrap();
        let mut s = Splice::new(&c, true, Usage { prompt_tokens: 5, completion_tokens: 2, ..Usage::default() });
        let usage = json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}).to_string();
        let (text, sent, mismatch) = splice(
            &mut s,
            &[
                chunk(json!({"role": "assistant", "content": ""}), None),
                chunk(json!({"content": " world"}), None),
                chunk(json!({"content": "!"}), None),
                chunk(json!({}), Some("stop")),
                usage,
            ],
        );
        assert!(!mismatch);
        assert_eq!(text, "world!", "no second role chunk, no doubled space");
        assert!(sent.iter().all(|c| c["id"] == "chatcmpl-first" && c["created"] == 1 && c["model"] == "a"), "{sent:?}");
        assert_eq!(sent[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(sent[3]["usage"], json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}));
    }

    #[test]
    fn a_restart_is_used_only_when_it_repeats_what_the_client_has() {
        let c = delivered(&["echo: one", " two"]).continuation().unwrap();
        let again = [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "echo:"}), None),
            chunk(json!({"content": " one"}), None),
            chunk(json!({"content": " tw"}), None),
            chunk(json!({"content": "o three"}), None),
            chunk(json!({}), Some("stop")),
        ];
        let mut s = Splice::new(&c, false, Usage::default());
        let (text, sent, mismatch) = splice(&mut s, &again);
        assert!(!mismatch && !s.repeating());
        assert_eq!(text, " three");
        assert_eq!(sent.len(), 2);

        let other = [chunk(json!({"content": "echo: one"}), None), chunk(json!({"content": " deux"}), None)];
        let (text, _, mismatch) = splice(&mut Splice::new(&c, false, Usage::default()), &other);
        assert!(mismatch && text.is_empty(), "a different answer is never spliced");
        let short = [chunk(json!({"content": "echo:"}), None), chunk(json!({}), Some("stop"))];
        assert!(splice(&mut Splice::new(&c, false, Usage::default()), &short).2, "ended before it caught up");
        let exact = [chunk(json!({"content": "echo: one two"}), None), chunk(json!({}), Some("stop"))];
        let (text, sent, mismatch) = splice(&mut Splice::new(&c, false, Usage::default()), &exact);
        assert!(!mismatch && text.is_empty());
        assert_eq!(sent.len(), 1, "only the finish is news");
    }

    #[test]
    fn repeated_whitespace_is_dropped_once() {
        assert_eq!(strip_repeated_whitespace(" world", " "), "world");
        assert_eq!(strip_repeated_whitespace("\nworld", " "), "world");
        assert_eq!(strip_repeated_whitespace("world", " "), "world");
        assert_eq!(strip_repeated_whitespace("  world", " "), " world");
        assert_eq!(strip_repeated_whitespace(" x", ""), " x");
    }
}
