//! The client's API at the edge of a model call: what the client gets of an upstream's answer,
//! whole or streamed, and what the gateway learns from it on the way.
//!
//! An [`Edge`] is made per answer. When the upstream answered in the canonical chat form (a chat
//! client; or any client whose request was translated, every translated provider's answer having
//! been turned into canonical chunks by its adapter first), the edge relays it or encodes it into
//! the client's API (`api::completions`, `api::messages`, `api::responses`). When the upstream speaks
//! the client's API itself, the answer is relayed untouched and the edge reads it in that dialect:
//! content events for time to first token, usage, and the terminal events — Messages'
//! `message_stop` / `error`, Responses' `response.completed` / `response.failed` — so that
//! accounting, usage stripping and the "a broken stream never ends cleanly" rule are the same for
//! every surface (`stream.rs` asks the edge about these dialects and knows none of them; canonical
//! chunks it reads itself, in more detail, for mid-stream failover). Plugins that read responses
//! are given the canonical form either way, so one cache or guardrail serves every API.
//!
//! For the Responses API the edge also stores the finished response (when `store` is on) in the
//! team's scope, with the conversation it continued, for `GET` and `previous_response_id`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::accounting::Accounting;
use crate::api::chat::Completion;
use crate::api::sse::{Event, Splitter};
use crate::api::{ClientRequest, Usage, completions, messages, responses};
use crate::error::{Error, Kind};
use crate::plugins::LocalResponse;
use crate::state::responses::{ResponseStore, Stored, StoredResponse};

/// What the relay learns from one event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// It carries generated content (counted for time to first token and abort estimates).
    pub content: bool,
    pub usage: Option<Usage>,
    /// The upstream's stream completed: `[DONE]`, `message_stop`, a terminal Responses event.
    pub done: bool,
    /// The upstream itself reported an error.
    pub error: bool,
    /// A canonical usage-only chunk (removed when the client did not ask for it).
    pub usage_only: bool,
}

/// Where a finished Responses answer is stored.
#[derive(Debug)]
pub struct Sink {
    pub store: Arc<ResponseStore>,
    pub team: String,
    /// Every input item the model saw, the stored conversation first.
    pub input: Vec<Value>,
    pub own_from: usize,
}

impl Sink {
    /// The sink for a Responses request that is to be stored.
    pub fn for_request(request: &ClientRequest, store: &Arc<ResponseStore>, team: &str) -> Option<Self> {
        let ClientRequest::Responses(s) = request else { return None };
        s.request.stores().then(|| Sink {
            store: store.clone(),
            team: team.to_owned(),
            input: s.request.conversation(),
            own_from: s.request.history.len(),
        })
    }

    /// Stores a finished answer; what the answer's last bytes wait for, if anything.
    fn put(&self, response: &Value) -> Option<Stored> {
        let id = response.get("id").and_then(Value::as_str)?;
        // Only answers that came to an end are worth continuing.
        if !matches!(response.get("status").and_then(Value::as_str), Some("completed" | "incomplete")) {
            return None;
        }
        let output = response.get("output").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        self.store.put(StoredResponse {
            id: id.to_owned(),
            team: self.team.clone(),
            response: response.clone(),
            input: self.input.clone(),
            own_from: self.own_from,
            next_input: responses::next_input(output),
        })
    }
}

#[derive(Debug)]
enum Way {
    /// A Chat Completions or Embeddings client: canonical events, relayed.
    Canonical,
    Completions(completions::Encoder),
    Messages(messages::Encoder),
    Responses(Box<(responses::Encoder, Option<Sink>)>),
    /// Relayed from an upstream that speaks the client's API.
    NativeCompletions {
        /// The canonical form, for plugins that read the response (the echoed prompt removed).
        capture: completions::Decoder,
        echo: Option<String>,
    },
    NativeMessages {
        /// Anthropic's usage fields, from `message_start` and `message_delta`.
        usage: Map<String, Value>,
        /// The canonical form, for plugins that read the response.
        capture: Option<messages::Decoder>,
    },
    NativeResponses {
        /// The last Response object seen, and the last sequence number, for a failure to append.
        last: Option<Value>,
        sequence: Option<u64>,
        capture: Option<responses::Decoder>,
        sink: Option<Sink>,
        previous_response_id: Option<String>,
    },
}

/// What the client gets of one answer, and what the gateway reads of it.
#[derive(Debug)]
pub struct Edge {
    way: Way,
    /// A scratch buffer for encoded events.
    buf: Vec<u8>,
    /// The store's write of a finished Responses answer, which its last bytes wait for.
    stored: Option<Stored>,
}

/// A whole answer at the edge.
#[derive(Debug)]
pub struct Whole {
    /// What the client gets.
    pub body: Bytes,
    pub usage: Option<Usage>,
    /// The canonical form, for plugins that read the response.
    pub canonical: Option<Bytes>,
    /// The body is the upstream's own, so its content type holds.
    pub passed_through: bool,
}

impl Edge {
    /// The edge of `request`'s answer: `native` when the upstream speaks the client's API (the
    /// answer is then relayed untouched), `sink` where a Responses answer is to be stored.
    pub fn new(request: &ClientRequest, native: bool, sink: Option<Sink>) -> Self {
        let way = match (request, native) {
            // A prediction's answer (and a plugin's, a cache hit) is not translated.
            (ClientRequest::Canonical(_) | ClientRequest::Predict(_), _) => Way::Canonical,
            (ClientRequest::Completions(s), false) => Way::Completions(completions::Encoder::new(&s.request)),
            (ClientRequest::Completions(s), true) => Way::NativeCompletions {
                capture: completions::Decoder::new(&s.request),
                echo: (s.request.echo == Some(true)).then(|| s.request.text_prompt().unwrap_or_default().to_owned()),
            },
            (ClientRequest::Messages(_), false) => Way::Messages(messages::Encoder::default()),
            (ClientRequest::Messages(_), true) => Way::NativeMessages { usage: Map::new(), capture: None },
            (ClientRequest::Responses(s), false) => {
                Way::Responses(Box::new((responses::Encoder::new(responses::Echo::new(&s.request)), sink)))
            }
            (ClientRequest::Responses(s), true) => Way::NativeResponses {
                last: None,
                sequence: None,
                capture: None,
                sink,
                previous_response_id: s.request.previous_response_id.clone(),
            },
        };
        Self { way, buf: Vec::new(), stored: None }
    }

    /// The store's write of the finished answer, for its last bytes to wait for (at most
    /// `[state.redis] timeout`): a client that continues the conversation as soon as it has the
    /// answer then finds it on every replica.
    pub fn take_stored(&mut self) -> Option<Stored> {
        self.stored.take()
    }

    /// Whether the upstream's events are the client's API's own, relayed as they are.
    pub fn is_native(&self) -> bool {
        matches!(self.way, Way::NativeCompletions { .. } | Way::NativeMessages { .. } | Way::NativeResponses { .. })
    }

    /// Whether the relay must hand the canonical usage chunk to the edge whatever the client asked
    /// (an encoder reports usage in its own events).
    pub fn needs_usage_chunk(&self) -> bool {
        matches!(self.way, Way::Completions(_) | Way::Messages(_) | Way::Responses(_))
    }

    /// Reads one event of a natively relayed stream (after its adapter's framing, if any); `None`
    /// where the upstream's events are canonical chunks, which the relay reads itself
    /// (`stream/failover.rs`), whatever the edge turns them into.
    pub fn peek(&mut self, event: &Event) -> Option<Peek> {
        if !self.is_native() {
            return None;
        }
        if event.data.is_empty() {
            return Some(Peek::default());
        }
        Some(match &mut self.way {
            Way::NativeMessages { usage, .. } => {
                let native = messages::peek(&event.data, usage);
                let usage = (!usage.is_empty()).then(|| messages::usage_of(&Value::Object(usage.clone())));
                // Anthropic's `error` ends its stream.
                let done = native.done || native.error;
                Peek { content: native.content, usage, done, error: native.error, usage_only: false }
            }
            Way::NativeResponses { last, sequence, sink, previous_response_id, .. } => {
                let native = responses::peek(&event.data);
                if let Some(n) = native.sequence_number {
                    *sequence = Some(n);
                }
                if let Some(mut response) = native.response {
                    if native.done
                        && !native.error
                        && let Some(sink) = sink
                    {
                        restore_previous(&mut response, previous_response_id.as_deref());
                        self.stored = sink.put(&response);
                    }
                    *last = Some(response);
                }
                Peek {
                    content: native.content,
                    usage: native.usage,
                    done: native.done,
                    error: native.error,
                    usage_only: false,
                }
            }
            _ => canonical_peek(&event.data),
        })
    }

    /// Keeps the event's canonical form for plugins that read the response.
    pub fn capture(&mut self, event: &Event, acct: &mut Accounting) {
        if !acct.captures() {
            return;
        }
        match &mut self.way {
            Way::NativeCompletions { capture, .. } => acct.capture(&capture.event(event)),
            Way::NativeMessages { capture, .. } => {
                let decoder = capture.get_or_insert_with(|| messages::Decoder::new("upstream", ""));
                let mut out = Vec::new();
                decoder.event(event, &mut out);
                for e in &out {
                    acct.capture(&e.raw);
                }
                // The decoder's `[DONE]` waits for the end of the body; plugins need it after
                // `message_stop`.
                if messages::peek(&event.data, &mut Map::new()).done {
                    acct.capture(&crate::api::sse::done_event().raw);
                }
            }
            Way::NativeResponses { capture, .. } => {
                let decoder = capture.get_or_insert_with(responses::Decoder::new);
                let mut out = Vec::new();
                decoder.event(event, &mut out);
                for e in &out {
                    acct.capture(&e.raw);
                }
            }
            _ => acct.capture(&event.raw),
        }
    }

    /// Queues what the client receives of one event.
    pub fn emit(&mut self, event: Event, out: &mut VecDeque<Bytes>) {
        match &mut self.way {
            Way::Canonical
            | Way::NativeCompletions { .. }
            | Way::NativeMessages { .. }
            | Way::NativeResponses { .. } => {
                out.push_back(event.raw);
                return;
            }
            Way::Completions(encoder) => encoder.event(&event, &mut self.buf),
            Way::Messages(encoder) => encoder.event(&event, &mut self.buf),
            Way::Responses(boxed) => {
                let (encoder, sink) = &mut **boxed;
                encoder.event(&event, &mut self.buf);
                if let (Some(finished), Some(sink)) = (encoder.finished.take(), sink.as_ref()) {
                    self.stored = sink.put(&finished);
                }
            }
        }
        if !self.buf.is_empty() {
            out.push_back(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }

    /// Ends a stream that failed after its first byte, in the client's API: an OpenAI error event,
    /// Anthropic's `error`, or the Responses API's `error` and `response.failed`.
    pub fn fail(&mut self, error: &Error, out: &mut VecDeque<Bytes>) {
        let bytes = match &mut self.way {
            Way::Canonical | Way::NativeCompletions { .. } | Way::Completions(_) => error.sse_event(),
            Way::NativeMessages { .. } => error.anthropic_sse_event(),
            Way::Messages(encoder) => {
                encoder.fail(error, &mut self.buf);
                Bytes::from(std::mem::take(&mut self.buf))
            }
            Way::Responses(boxed) => {
                boxed.0.fail(error, &mut self.buf);
                Bytes::from(std::mem::take(&mut self.buf))
            }
            Way::NativeResponses { last, sequence, .. } => {
                responses::native_failure(error, last.as_ref(), sequence.map_or(0, |n| n + 1))
            }
        };
        out.push_back(bytes);
    }

    /// A whole answer: what the client gets, its usage, and its canonical form if `capture`.
    pub fn whole(&mut self, upstream: &str, body: Bytes, capture: bool) -> Result<Whole, Error> {
        let canonical_usage = |body: &[u8]| serde_json::from_slice::<UsageOnly>(body).ok().and_then(|u| u.usage);
        let unreadable = || {
            Error::new(
                Kind::UpstreamFailed,
                format!("The upstream '{upstream}' sent an answer the gateway could not read."),
            )
            .code("upstream_error")
        };
        let encode =
            |body: &Bytes| -> Result<Completion, Error> { serde_json::from_slice(body).map_err(|_| unreadable()) };
        let to_bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
        Ok(match &mut self.way {
            Way::Canonical => {
                Whole { usage: canonical_usage(&body), canonical: Some(body.clone()), body, passed_through: true }
            }
            Way::NativeCompletions { echo, .. } => Whole {
                usage: canonical_usage(&body),
                canonical: capture
                    .then(|| completions::decode_whole(&body, echo.as_deref()).as_ref().map(to_bytes))
                    .flatten(),
                body,
                passed_through: true,
            },
            Way::NativeMessages { .. } => Whole {
                usage: messages::whole_usage(&body),
                canonical: capture
                    .then(|| {
                        serde_json::from_slice::<Value>(&body).ok().map(|v| to_bytes(&messages::decode_whole(&v, "")))
                    })
                    .flatten(),
                body,
                passed_through: true,
            },
            Way::NativeResponses { sink, previous_response_id, .. } => {
                let mut response: Value = serde_json::from_slice(&body).map_err(|_| unreadable())?;
                let usage = response.get("usage").and_then(responses::native_usage);
                let canonical = capture.then(|| to_bytes(&responses::decode_whole(&response)));
                let changed = restore_previous(&mut response, previous_response_id.as_deref());
                if let Some(sink) = sink {
                    self.stored = sink.put(&response);
                }
                let body = if changed { to_bytes(&response) } else { body };
                Whole { body, usage, canonical, passed_through: !changed }
            }
            Way::Completions(encoder) => {
                let completion = encode(&body)?;
                Whole {
                    usage: completion.usage,
                    body: to_bytes(&encoder.whole(&completion)),
                    canonical: Some(body),
                    passed_through: false,
                }
            }
            Way::Messages(_) => {
                let completion = encode(&body)?;
                Whole {
                    usage: completion.usage,
                    body: to_bytes(&messages::encode_whole(&completion)),
                    canonical: Some(body),
                    passed_through: false,
                }
            }
            Way::Responses(boxed) => {
                let completion = encode(&body)?;
                let response = responses::encode_whole(boxed.0.echo(), &completion);
                if let Some(sink) = &boxed.1 {
                    self.stored = sink.put(&response);
                }
                Whole {
                    usage: completion.usage,
                    body: to_bytes(&response),
                    canonical: Some(body),
                    passed_through: false,
                }
            }
        })
    }

    /// A plugin's own answer (a cache hit, say), written in the canonical chat form, in the
    /// client's API; any other body is sent as the plugin wrote it.
    pub fn local(&mut self, mut local: LocalResponse) -> LocalResponse {
        if matches!(self.way, Way::Canonical) || !(200..300).contains(&local.status) {
            return local;
        }
        let sse = local
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("text/event-stream"))
            || local.body.starts_with(b"data:");
        if sse {
            let mut splitter = Splitter::default();
            splitter.push(&local.body);
            let mut events = Vec::new();
            while let Some(event) = splitter.next_event() {
                events.push(event);
            }
            let canonical = events.iter().find(|e| !e.data.is_empty()).is_some_and(|e| {
                &e.data[..] == b"[DONE]"
                    || serde_json::from_slice::<ChoicesOnly>(&e.data).is_ok_and(|c| c.choices.is_some())
            });
            if !canonical {
                return local;
            }
            let mut out = VecDeque::new();
            for event in events {
                self.emit(event, &mut out);
            }
            local.body = out.into_iter().flat_map(|b| b.to_vec()).collect();
        } else {
            let Ok(whole) = serde_json::from_slice::<ChoicesOnly>(&local.body) else { return local };
            if whole.choices.is_none() {
                return local;
            }
            match self.whole("plugin", Bytes::from(std::mem::take(&mut local.body)), false) {
                Ok(whole) => local.body = whole.body.to_vec(),
                Err(_) => return local,
            }
        }
        local
    }
}

/// Why a plugin's replacement of a whole answer (`on-response`) is not an answer in the canonical
/// form of `request`'s API: a `chat.completion` with choices, or for embeddings a `data` list.
pub fn invalid_replacement(request: &ClientRequest, body: &[u8]) -> Option<String> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return Some(format!("it is not JSON ({e})")),
    };
    if !value.is_object() {
        return Some("it is not a JSON object".to_owned());
    }
    if matches!(request, ClientRequest::Canonical(crate::api::ModelRequest::Embeddings(_))) {
        return (!value.get("data").is_some_and(Value::is_array))
            .then(|| "an embeddings answer needs a `data` array".to_owned());
    }
    match serde_json::from_value::<Completion>(value) {
        Ok(completion) if completion.choices.is_empty() => Some("a chat.completion needs `choices`".to_owned()),
        Ok(_) => None,
        Err(e) => Some(format!("it is not a chat.completion ({e})")),
    }
}

/// A replacement with the `usage` of the answer it replaces (`original`, canonical): the tokens
/// the upstream spent, which no plugin rewrites.
pub fn with_usage_of(replacement: &[u8], original: &[u8]) -> Bytes {
    let (Ok(mut value), Ok(original)) =
        (serde_json::from_slice::<Value>(replacement), serde_json::from_slice::<Value>(original))
    else {
        return Bytes::copy_from_slice(replacement);
    };
    if let Some(object) = value.as_object_mut() {
        match original.get("usage") {
            Some(usage) => object.insert("usage".to_owned(), usage.clone()),
            None => object.remove("usage"),
        };
    }
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// A natively relayed Response object says `previous_response_id: null` (the gateway sent the
/// conversation in full instead); the client's id is put back. Whether anything changed.
fn restore_previous(response: &mut Value, previous: Option<&str>) -> bool {
    match (previous, response.get_mut("previous_response_id")) {
        (Some(id), Some(slot)) if slot.is_null() => {
            *slot = Value::String(id.to_owned());
            true
        }
        (Some(id), None) => {
            response["previous_response_id"] = Value::String(id.to_owned());
            true
        }
        _ => false,
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ChoicesOnly {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// Reads an event in OpenAI's shape (a natively relayed legacy completion's): content, usage,
/// `[DONE]`, an error.
fn canonical_peek(data: &[u8]) -> Peek {
    #[derive(Deserialize)]
    struct CanonicalPeek {
        #[serde(default)]
        choices: Option<Vec<IgnoredAny>>,
        #[serde(default)]
        usage: Option<Usage>,
        #[serde(default)]
        error: Option<IgnoredAny>,
    }
    if data == b"[DONE]" {
        return Peek { done: true, ..Peek::default() };
    }
    // Not JSON: not ours to judge; relayed.
    let Ok(peek) = serde_json::from_slice::<CanonicalPeek>(data) else { return Peek::default() };
    let has_choices = peek.choices.as_ref().is_some_and(|c| !c.is_empty());
    Peek {
        content: has_choices,
        usage: peek.usage,
        done: false,
        error: peek.error.is_some(),
        usage_only: peek.usage.is_some() && !has_choices && peek.error.is_none(),
    }
}
