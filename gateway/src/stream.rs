//! Stage: stream. Relays an upstream's SSE stream to the client event by event, byte for byte, while
//! reading each event just enough to learn usage, time to first token and what the client has been
//! sent. Providers with their own stream format (Bedrock's event stream, Gemini's SSE, Anthropic's
//! events toward a chat client) go through a [`Translator`] first, which yields OpenAI chunks; from
//! there on every provider's stream is handled alike. What the client receives of each event is the
//! [`Edge`]'s business (`surface.rs`): OpenAI chunks relayed or encoded into the client's API, or
//! another API's own events relayed natively (Messages to Anthropic, Responses to an upstream that
//! speaks it, legacy Completions to an OpenAI-compatible one), which the edge reads in their own
//! dialect. So the rules below hold for every surface, each in its own API's words.
//!
//! - Usage: the gateway always asks upstreams for the final usage chunk; when the client did not ask
//!   for it, that chunk (`"choices": []` with `usage`) is removed here (an edge that encodes another
//!   API takes it whatever the client asked: that API reports usage in its own final events).
//! - Complete: a stream is whole once it sent `[DONE]`, or once every choice sent its
//!   `finish_reason` (some servers never send `[DONE]`, and a connection cut after the finish
//!   loses nothing); it then ends with `[DONE]`, or the client's API's terminal events. A native
//!   stream is whole once its API's terminal event came (`[DONE]`, `message_stop`,
//!   `response.completed` / `response.incomplete`), which is relayed as it is.
//! - Before content: events without content (the role chunk, `message_start`, `response.created`)
//!   are held back until the first content, so that an attempt that fails before it — breaks,
//!   stalls, sends nothing within the model's `first_token`, reports an error — is given up unseen
//!   and the next target tried, as before the first byte (within `retry.max_attempts`). The next
//!   target gets an edge of its own: it may speak the client's API where the last did not. When no
//!   target is left, a native stream's held events go out before its failure (that API's clients
//!   expect its opening, and its numbering); held canonical chunks are dropped.
//! - After content: with `failover.mid_stream = "continue"` a stream that breaks or stalls is
//!   continued on the next target after what the client has (`stream/failover.rs`), asked in the
//!   canonical form and spliced as canonical chunks into the same edge, so a Messages or Responses
//!   client reads one answer too. A stream relayed natively in another API's events (Anthropic's,
//!   the Responses API's, legacy completions) cannot be continued: the gateway does not know what
//!   the client has in canonical terms, and could not append a canonical continuation to those
//!   events. Such a stream, and one that cannot be continued or whose continuation fails, ends with
//!   an error event in the client's API (`Edge::fail`, or the upstream's own error events), never a
//!   clean end.
//! - Bounded: one event may hold at most [`MAX_EVENT_BYTES`]; past it the stream ends with an
//!   error event and the upstream is dropped.
//! - Policed: when the chain has `on-stream-event` plugins (`plugins/police.rs`), every event for
//!   the client waits in a queue and each chunk goes through them in order before the edge sees
//!   it; the upstream is not read while a plugin call is in flight, so what waits is bounded by
//!   what one read brings. The stream's failure and its end wait behind the queue, so what the
//!   plugins pass is sent (and captured for `on-complete`) before accounting finishes; a plugin's
//!   `end` drops the upstream and ends the stream with its error. Such a stream is asked of every
//!   upstream in the canonical form (`call.rs`), so the plugins read every event.
//! - Cancellation: when the client goes away hyper drops this body, which drops the upstream
//!   response and so closes that connection; the accounting guard records the abort. Giving an
//!   attempt up drops its response the same way.

pub mod failover;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;
use weir_config::{Failover, MidStream};

use crate::accounting::{Accounting, Outcome};
use crate::api::Usage;
pub use crate::api::sse::MAX_EVENT_BYTES;
use crate::api::sse::{Event, Splitter};
use crate::error::{Error, Kind, STREAM_FAILED};
use crate::plugins::police::Policing;
use crate::providers::Translator;
use crate::state::responses::Stored;
use crate::surface::{self, Edge};
use failover::{Continuation, Peek, Splice, Spliced, Transcript};

/// The most bytes of events without content held back before the first content (a role chunk is
/// about 200).
const MAX_HELD_BYTES: usize = 64 * 1024;

/// Settings of one relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Forward the usage-only chunk to the client.
    pub client_wants_usage: bool,
    /// When the whole request must be over.
    pub deadline: Instant,
    /// The choices the client asked for (`n`).
    pub choices: usize,
    /// Upstream attempts in all before content reaches the client (`retry.max_attempts`).
    pub max_attempts: u32,
    pub failover: Failover,
    /// The prompt's tokens as the host estimated them: the usage of an attempt given up unreported.
    pub prompt_estimate: u64,
}

/// An upstream's streamed answer, ready to relay.
#[derive(Debug)]
pub struct Opened {
    pub body: Incoming,
    /// `None` relays the upstream's own SSE (OpenAI-compatible upstreams).
    pub translator: Option<Translator>,
    /// The upstream's name, for messages and logs.
    pub upstream: String,
    /// Longest silence between two chunks.
    pub idle: Duration,
    /// By when this attempt must have given the client new content: the model's `first_token`,
    /// or how long a continuation may keep the client waiting.
    pub content_by: Option<Instant>,
    /// A continuation sent with the text so far as a prefill (else it starts the answer over).
    pub prefilled: bool,
    /// What the client gets of this attempt's events, in its API (a continuation keeps the edge
    /// of the attempt it continues).
    pub edge: Edge,
}

/// What the relay asks of its source when it gives an attempt up.
#[derive(Debug)]
pub struct Ask {
    /// Continue after this; `None` asks again from the start.
    pub continuation: Option<Continuation>,
    /// The attempt timed out (or misbehaved): try another target if there is one.
    pub skip_failed: bool,
    pub deadline: Instant,
    pub max_attempts: u32,
}

/// A source reopening the stream elsewhere; it hands itself back with the outcome (`Err(None)`: no
/// target was left to try).
pub type Reopening = Pin<Box<dyn Future<Output = (Box<dyn Upstreams>, Result<Opened, Option<Error>>)> + Send>>;

/// Where a relay's upstreams come from, and the request's accounting: the model call
/// (`call/resume.rs`), which knows the route and how to build a request for each target.
pub trait Upstreams: Send {
    fn accounting(&mut self) -> &mut Accounting;

    /// Upstream attempts made so far for this request.
    fn attempts(&self) -> u32;

    /// The current attempt's stream failed with `error`: counted against its target.
    fn failed(&mut self, error: &Error);

    /// Opens the stream again on the route's next target.
    fn reopen(self: Box<Self>, ask: Ask) -> Reopening;
}

/// The response body of a streamed chat completion, across every attempt it takes.
pub struct SseRelay {
    /// `None` while a reopening holds it, and once the relay is done.
    source: Option<Box<dyn Upstreams>>,
    reopening: Option<Reopening>,
    current: Option<Current>,
    /// What the client gets of each event, in its API.
    edge: Edge,
    out: VecDeque<Bytes>,
    /// Events without content waiting for the first content (see the module header).
    held: Vec<Event>,
    transcript: Transcript,
    /// Fits a continuation after what the client has.
    splice: Option<Splice>,
    /// The continuation the reopening is for.
    continuing: Option<Continuation>,
    /// What ended the attempt that is being continued or retried.
    broke: Option<Error>,
    /// The usage of attempts given up after they produced content.
    spent: Usage,
    /// Upstream attempts spent on continuations.
    continuation_attempts: u32,
    /// The source's attempts when the reopening started.
    attempts_at_reopen: u32,
    options: RelayOptions,
    deadline: Pin<Box<Sleep>>,
    done: bool,
    /// A finished Responses answer's write to the store: the bytes that follow wait for it.
    stored: Option<Stored>,
    /// Plugins' `on-stream-event`, when the chain has any: every event for the client waits in
    /// `queue` and goes through them in order (`policing` while a call is in flight, which holds
    /// `police`); the upstream is not read meanwhile.
    police: Option<Policing>,
    policing: Option<Policed>,
    queue: VecDeque<Queued>,
    /// The stream is over, once the queue has gone out: how it ended.
    ending: Option<Outcome>,
}

/// A call of the stream plugins in flight, handing their state back with what to send.
type Policed = Pin<Box<dyn Future<Output = (Policing, Result<Vec<Event>, Error>)> + Send>>;

/// What waits for the stream plugins, in order.
#[derive(Debug)]
enum Queued {
    /// An event for the client: a chunk goes through the plugins; `[DONE]` first has them send
    /// what they hold.
    Event(Event),
    /// An upstream's own error event, sent as it is.
    Raw(Event),
    /// The stream ends with this error.
    Fail(Error),
}

impl std::fmt::Debug for SseRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseRelay")
            .field("transcript", &self.transcript)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The attempt being relayed.
struct Current {
    body: Incoming,
    splitter: Splitter,
    translator: Option<Translator>,
    upstream: String,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    content_by: Option<Pin<Box<Sleep>>>,
    prefilled: bool,
    /// Chunks with content it produced, sent or not: its usage, if it is given up unreported.
    chunks: u64,
    usage: Option<Usage>,
    /// A native stream's error events, kept until its API's terminal event (the Responses API
    /// sends `error`, then `response.failed`).
    errors: Vec<Event>,
}

impl Current {
    fn open(opened: Opened) -> (Self, Edge) {
        let Opened { body, translator, upstream, idle, content_by, prefilled, edge } = opened;
        let current = Current {
            body,
            splitter: Splitter::default(),
            translator,
            upstream,
            idle_for: idle,
            idle: Box::pin(tokio::time::sleep(idle)),
            content_by: content_by.map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
            prefilled,
            chunks: 0,
            usage: None,
            errors: Vec::new(),
        };
        (current, edge)
    }
}

/// Why an attempt is being given up.
enum Broke {
    /// The connection broke.
    Cut(hyper::Error),
    /// It ended before the answer was whole.
    Short,
    /// It sent nothing for the idle timeout.
    Idle,
    /// No content reached the client in time (first token, or a continuation's delay).
    Slow,
    /// An event over the size limit.
    TooLarge,
    /// The upstream's own error events (`retryable` by their type), relayed if nothing better
    /// comes.
    Upstream { events: Vec<Event>, retryable: bool },
    /// A continuation that began differently from what the client has.
    Mismatch,
}

/// What `on_event` leaves for the loop.
enum Flow {
    Go,
    /// The attempt is over (complete, or given up).
    Stop,
}

impl SseRelay {
    pub fn new(opened: Opened, source: Box<dyn Upstreams>, options: RelayOptions) -> Self {
        let (current, edge) = Current::open(opened);
        Self {
            source: Some(source),
            reopening: None,
            current: Some(current),
            edge,
            out: VecDeque::new(),
            held: Vec::new(),
            transcript: Transcript::default(),
            splice: None,
            continuing: None,
            broke: None,
            spent: Usage::default(),
            continuation_attempts: 0,
            attempts_at_reopen: 0,
            deadline: Box::pin(tokio::time::sleep_until(options.deadline.into())),
            options,
            done: false,
            stored: None,
            police: None,
            policing: None,
            queue: VecDeque::new(),
            ending: None,
        }
    }

    /// Sends every event through the stream plugins of `police` first.
    pub fn policed_by(mut self, police: Option<Policing>) -> Self {
        self.police = police;
        self
    }

    fn is_policed(&self) -> bool {
        self.police.is_some() || self.policing.is_some()
    }

    /// The next queued item for the stream plugins, now that none is in flight.
    fn dispatch(&mut self, queued: Queued) {
        let Some(mut police) = self.police.take() else { return };
        match queued {
            Queued::Event(event) if &event.data[..] == b"[DONE]" => {
                self.policing = Some(Box::pin(async move {
                    let sent = police.finish().await.map(|mut events| {
                        events.push(event);
                        events
                    });
                    (police, sent)
                }));
            }
            Queued::Event(event) if event.data.first() == Some(&b'{') => {
                self.policing = Some(Box::pin(async move {
                    let sent = police.chunk(event).await;
                    (police, sent)
                }));
            }
            // A comment, a keep-alive: nothing the plugins read.
            Queued::Event(event) => {
                self.police = Some(police);
                self.emit(event);
            }
            Queued::Raw(event) => {
                self.police = Some(police);
                self.edge.emit(event, &mut self.out);
            }
            Queued::Fail(error) => {
                self.police = Some(police);
                self.edge.fail(&error, &mut self.out);
            }
        }
    }

    /// The stream plugins answered: their events go out, or the error a plugin ended it with.
    fn policed(&mut self, police: Policing, sent: Result<Vec<Event>, Error>) {
        self.police = Some(police);
        match sent {
            Ok(events) => {
                for event in events {
                    self.emit(event);
                }
            }
            Err(error) => {
                tracing::info!(error = %error, "a plugin ended the stream");
                self.queue.clear();
                if let Some(current) = self.current.take() {
                    drop(current);
                }
                self.edge.fail(&error, &mut self.out);
                self.ending = None;
                self.finish(Outcome::Error);
            }
        }
    }

    fn start(&mut self, opened: Opened) {
        let (current, edge) = Current::open(opened);
        if let Some(continuation) = self.continuing.take() {
            // The client reads the first attempt's edge; the continuation's canonical chunks are
            // spliced into it.
            self.splice = Some(Splice::new(&continuation, current.prefilled, self.spent));
            // What was spent so far, should the continuation never report its usage.
            let spent = self.spent;
            if let Some(acct) = self.accounting() {
                acct.usage(spent);
            }
        } else {
            // A retry before any content: the client has had nothing but comments of the attempt
            // given up, so this one's edge takes over (it may relay natively where that one
            // translated, or the other way round), and what that one held back is dropped.
            self.edge = edge;
            self.held.clear();
        }
        self.current = Some(current);
    }

    fn accounting(&mut self) -> Option<&mut Accounting> {
        self.source.as_mut().map(|s| s.accounting())
    }

    fn upstream_name(&self) -> &str {
        self.current.as_ref().map_or("", |c| c.upstream.as_str())
    }

    /// Keeps `event`'s canonical form for plugins that read the response.
    fn capture(&mut self, event: &Event) {
        if let Some(source) = &mut self.source {
            self.edge.capture(event, source.accounting());
        }
    }

    /// Sends `event` to the client in its API (and to plugins that read the response), through
    /// the stream plugins if there are any.
    fn send(&mut self, event: Event) {
        if self.is_policed() {
            self.queue.push_back(Queued::Event(event));
        } else {
            self.emit(event);
        }
    }

    fn emit(&mut self, event: Event) {
        self.capture(&event);
        self.edge.emit(event, &mut self.out);
    }

    /// Whether the canonical usage chunk goes on to the edge.
    fn wants_usage(&self) -> bool {
        self.options.client_wants_usage || self.edge.needs_usage_chunk()
    }

    /// Reads one event of the current attempt.
    fn on_event(&mut self, event: Event) -> Flow {
        if event.data.is_empty() {
            // A comment or keep-alive: no content, nothing to hold back.
            self.send(event);
            return Flow::Go;
        }
        match self.edge.peek(&event) {
            Some(peek) => self.on_native(event, peek),
            None => self.on_chunk(event),
        }
    }

    /// Reads one canonical chunk (or `[DONE]`).
    fn on_chunk(&mut self, event: Event) -> Flow {
        if &event.data[..] == b"[DONE]" {
            if self.splice.as_ref().is_some_and(Splice::repeating) {
                self.give_up(Broke::Mismatch);
            } else {
                self.complete(crate::providers::done_event());
            }
            return Flow::Stop;
        }
        let Some(peek) = Peek::parse(&event.data) else {
            // Not a chunk the gateway knows: not ours to judge; relay it as content.
            self.flush_held();
            self.send(event);
            return Flow::Go;
        };
        if peek.error.is_some() {
            let retryable = peek.error_retryable();
            self.give_up(Broke::Upstream { events: vec![event], retryable });
            return Flow::Stop;
        }
        if let Some(current) = &mut self.current {
            current.chunks += u64::from(peek.has_choice_content());
            current.usage = peek.usage.or(current.usage);
        }
        let (event, peek) = match &mut self.splice {
            None => (event, peek),
            Some(splice) => match splice.chunk(&event.data, &peek) {
                Spliced::Send(spliced) => {
                    let peek = Peek::parse(&spliced.data).unwrap_or_default();
                    (spliced, peek)
                }
                Spliced::Drop => return Flow::Go,
                Spliced::Mismatch => {
                    self.give_up(Broke::Mismatch);
                    return Flow::Stop;
                }
            },
        };
        self.deliver(event, &peek);
        Flow::Go
    }

    /// Passes a chunk on: usage accounted (and stripped if unwanted), content held back until the
    /// first content, the transcript kept.
    fn deliver(&mut self, event: Event, peek: &Peek) {
        if let Some(usage) = peek.usage
            && let Some(acct) = self.accounting()
        {
            acct.usage(usage);
        }
        if peek.usage_only() && !self.wants_usage() {
            self.capture(&event);
            return;
        }
        if !peek.has_content() {
            self.hold(event);
            return;
        }
        self.flush_held();
        if peek.has_choice_content()
            && let Some(acct) = self.accounting()
        {
            acct.chunk();
        }
        self.transcript.record(peek, &event.data);
        if let Some(current) = &mut self.current {
            current.content_by = None;
        }
        self.send(event);
    }

    /// Reads one event of a stream relayed in the client's API (the edge's reading of it): the
    /// same rules as for chunks, in that API's terms, but no continuation (see the module header).
    fn on_native(&mut self, event: Event, peek: surface::Peek) -> Flow {
        let Some(current) = &mut self.current else { return Flow::Stop };
        if peek.error || !current.errors.is_empty() {
            // An error, and what follows it up to the API's terminal event, ends the attempt.
            let ends = peek.done || !peek.error;
            if peek.error || peek.done {
                current.errors.push(event);
            }
            if ends {
                let events = std::mem::take(&mut current.errors);
                let retryable = events.first().is_some_and(|e| native_error_retryable(&e.data));
                self.give_up(Broke::Upstream { events, retryable });
                return Flow::Stop;
            }
            return Flow::Go;
        }
        current.chunks += u64::from(peek.content);
        current.usage = peek.usage.or(current.usage);
        if let Some(usage) = peek.usage
            && let Some(acct) = self.accounting()
        {
            acct.usage(usage);
        }
        if peek.done {
            self.complete(event);
            return Flow::Stop;
        }
        if peek.usage_only && !self.wants_usage() {
            self.capture(&event);
            return Flow::Go;
        }
        if !peek.content {
            self.hold(event);
            return Flow::Go;
        }
        self.flush_held();
        if let Some(acct) = self.accounting() {
            acct.chunk();
        }
        self.transcript.record_native();
        if let Some(current) = &mut self.current {
            current.content_by = None;
        }
        self.send(event);
        Flow::Go
    }

    /// An event without content: held back until the first content, sent once there was some.
    fn hold(&mut self, event: Event) {
        let held: usize = self.held.iter().map(|e| e.raw.len()).sum::<usize>() + event.raw.len();
        if self.transcript.delivered() || held > MAX_HELD_BYTES {
            // An upstream that sends nothing but empty chunks does not get them all buffered.
            self.flush_held();
            self.send(event);
        } else {
            self.held.push(event);
        }
    }

    fn flush_held(&mut self) {
        for event in std::mem::take(&mut self.held) {
            self.send(event);
        }
    }

    /// The answer is whole: `terminal` (`[DONE]`, which the edge turns into the client's API's
    /// terminal events, or a native stream's own terminal event) sent, accounted as ok.
    fn complete(&mut self, terminal: Event) {
        self.flush_held();
        self.send(terminal);
        if let Some(current) = self.current.take() {
            drain(current.body);
        }
        self.end(Outcome::Ok);
    }

    fn end(&mut self, outcome: Outcome) {
        self.current = None;
        if self.is_policed() && !(self.queue.is_empty() && self.policing.is_none()) {
            // What the stream plugins have yet to pass goes out (and is captured) first.
            self.ending = Some(outcome);
            return;
        }
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(mut source) = self.source.take() {
            source.accounting().end(outcome);
        }
        self.current = None;
        self.done = true;
    }

    /// Before a failure ends the stream: events held back that are the client's API's own (a
    /// native stream's `message_start`, `response.created`) go out first, so that the failure follows
    /// the opening that API's clients expect, numbered after it; canonical ones (a role chunk) are
    /// dropped.
    fn release_held(&mut self) {
        if self.edge.is_native() {
            self.flush_held();
        } else {
            self.held.clear();
        }
    }

    /// Ends the stream with an error event for `error` in the client's API, accounted as an error.
    fn fail(&mut self, error: Error) {
        tracing::warn!(upstream = %self.upstream_name(), error = %error, "stream failed after its first byte");
        self.release_held();
        if self.is_policed() {
            self.queue.push_back(Queued::Fail(error));
        } else {
            self.edge.fail(&error, &mut self.out);
        }
        self.end(Outcome::Error);
    }

    /// Ends the stream with the upstream's own error `events` (in the client's API, by the edge),
    /// accounted as an error.
    fn fail_upstream(&mut self, events: Vec<Event>, error: &Error) {
        tracing::warn!(upstream = %self.upstream_name(), error = %error, "stream failed after its first byte");
        self.release_held();
        for event in events {
            if self.is_policed() {
                self.queue.push_back(Queued::Raw(event));
            } else {
                self.edge.emit(event, &mut self.out);
            }
        }
        self.end(Outcome::Error);
    }

    /// The current attempt is over without a whole answer: complete it if it was whole after all,
    /// else try again before content reached the client, continue it after, or end with an error.
    fn give_up(&mut self, why: Broke) {
        let name = self.upstream_name().to_owned();
        if self.transcript.finished(self.options.choices) {
            // Cut after its finish: the client has the whole answer.
            self.complete(crate::providers::done_event());
            return;
        }
        // A native stream that reported an error and then broke off or stalled before its
        // terminal event: its error is what the client should read.
        let why = match self.current.as_mut().map(|c| std::mem::take(&mut c.errors)) {
            Some(events) if !events.is_empty() && !matches!(why, Broke::Upstream { .. }) => {
                let retryable = native_error_retryable(&events[0].data);
                Broke::Upstream { events, retryable }
            }
            _ => why,
        };
        let error = self.error(&name, &why);
        let skip_failed = matches!(why, Broke::Idle | Broke::Slow | Broke::TooLarge);
        let retryable = !matches!(why, Broke::Mismatch | Broke::Upstream { retryable: false, .. });
        let prefilled = self.current.as_ref().is_some_and(|c| c.prefilled);
        let attempt = self.current.take();
        if let Some(source) = &mut self.source {
            source.failed(&error);
        }
        let now = Instant::now();
        let attempts = self.source.as_ref().map_or(u32::MAX, |s| s.attempts());
        if retryable && !self.transcript.delivered() {
            if attempts < self.options.max_attempts && now < self.options.deadline {
                tracing::warn!(upstream = %name, error = %error, "stream failed before its first content; retrying");
                self.reopen(
                    Ask {
                        continuation: None,
                        skip_failed,
                        deadline: self.options.deadline,
                        max_attempts: self.options.max_attempts - attempts,
                    },
                    error,
                );
                return;
            }
        } else if retryable && self.options.failover.mid_stream == MidStream::Continue {
            let budget = self.options.failover.max_attempts.saturating_sub(self.continuation_attempts);
            match self.transcript.continuation() {
                Ok(continuation) if budget > 0 && now < self.options.deadline => {
                    if let Some(attempt) = &attempt {
                        let estimate = Usage {
                            prompt_tokens: self.options.prompt_estimate,
                            completion_tokens: attempt.chunks,
                            ..Usage::default()
                        };
                        self.spent = failover::add(self.spent, attempt.usage.unwrap_or(estimate));
                    }
                    tracing::warn!(upstream = %name, error = %error, prefilled, "stream broke mid-answer; continuing it on the next target");
                    let deadline = self.options.deadline.min(now + self.options.failover.max_delay);
                    self.continuing = Some(continuation.clone());
                    self.reopen(
                        Ask { continuation: Some(continuation), skip_failed, deadline, max_attempts: budget },
                        error,
                    );
                    return;
                }
                Ok(_) => tracing::debug!(upstream = %name, "no continuation left for this stream"),
                Err(why) => tracing::info!(upstream = %name, why, "a stream that broke mid-answer cannot be continued"),
            }
        }
        match why {
            // The upstream already told the client what went wrong, in its own words.
            Broke::Upstream { events, .. } => self.fail_upstream(events, &error),
            _ => self.fail(error),
        }
    }

    fn reopen(&mut self, ask: Ask, broke: Error) {
        let Some(source) = self.source.take() else { return };
        self.broke = Some(broke);
        self.attempts_at_reopen = source.attempts();
        self.reopening = Some(source.reopen(ask));
    }

    /// A reopening came back.
    fn reopened(&mut self, source: Box<dyn Upstreams>, result: Result<Opened, Option<Error>>) {
        let continued = self.continuing.is_some();
        if continued {
            self.continuation_attempts += source.attempts().saturating_sub(self.attempts_at_reopen);
        }
        self.source = Some(source);
        match result {
            Ok(opened) => self.start(opened),
            Err(e) => {
                let broke = self.broke.take().unwrap_or_else(|| self.stream_error("The stream failed.".into()));
                self.continuing = None;
                if let Some(e) = &e {
                    tracing::warn!(error = %e, "no other target could take the stream over");
                }
                let error = match e {
                    // The client reads our words, not a fallback's refusal of a prefill.
                    Some(_) | None if continued => Error::new(
                        Kind::UpstreamFailed,
                        format!("{} It could not be continued on another target.", broke.message),
                    )
                    .code(STREAM_FAILED),
                    // As for a request that failed before its first byte: the last failure.
                    Some(e) => e,
                    None => broke,
                };
                self.fail(error);
            }
        }
    }

    fn error(&self, name: &str, why: &Broke) -> Error {
        match why {
            Broke::Cut(e) => self
                .stream_error(format!("The connection to the upstream '{name}' broke in the middle of the stream."))
                .source(e.to_string()),
            Broke::Short => self.stream_error(format!("The upstream '{name}' ended the stream before it was complete.")),
            Broke::Idle => Error::new(
                Kind::UpstreamTimeout,
                format!(
                    "The upstream '{name}' sent nothing for {:?}.",
                    self.current.as_ref().map_or(Duration::ZERO, |c| c.idle_for)
                ),
            )
            .code("upstream_idle_timeout"),
            Broke::Slow => Error::new(Kind::UpstreamTimeout, format!("The upstream '{name}' sent no content in time."))
                .code("upstream_first_token_timeout"),
            Broke::TooLarge => crate::providers::event_too_large(name),
            Broke::Upstream { .. } => self.stream_error(format!("The upstream '{name}' failed in the middle of the stream.")),
            Broke::Mismatch => Error::new(
                Kind::UpstreamFailed,
                format!(
                    "The upstream '{name}' broke off the stream, and the fallback's answer does not begin with what was already sent, so it cannot be continued."
                ),
            )
            .code(STREAM_FAILED),
        }
    }

    fn stream_error(&self, message: String) -> Error {
        Error::new(Kind::UpstreamFailed, message).code(STREAM_FAILED)
    }

    /// Feeds bytes of the current attempt; returns whether the attempt goes on.
    fn feed(&mut self, data: &[u8]) -> Flow {
        let Some(current) = &mut self.current else { return Flow::Stop };
        let mut events = Vec::new();
        if let Some(translator) = &mut current.translator {
            translator.push(data, &mut events);
        } else {
            current.splitter.push(data);
            while let Some(event) = current.splitter.next_event() {
                events.push(event);
            }
        }
        let oversized = current.splitter.oversized();
        for event in events {
            if let Flow::Stop = self.on_event(event) {
                return Flow::Stop;
            }
        }
        if oversized {
            self.give_up(Broke::TooLarge);
            return Flow::Stop;
        }
        Flow::Go
    }

    /// The current attempt's body ended cleanly.
    fn ended(&mut self) {
        let Some(current) = &mut self.current else { return };
        let mut events = Vec::new();
        if let Some(translator) = &mut current.translator {
            translator.finish(&mut events);
        }
        for event in events {
            if let Flow::Stop = self.on_event(event) {
                return;
            }
        }
        if self.transcript.finished(self.options.choices) {
            self.complete(crate::providers::done_event());
        } else {
            self.give_up(Broke::Short);
        }
    }
}

/// Whether a native stream's error event is worth another attempt: anything but a rejected request
/// (Anthropic's and the Responses API's `error` events carry an `error.type` as OpenAI's do).
fn native_error_retryable(data: &[u8]) -> bool {
    Peek::parse(data).is_none_or(|p| p.error.is_none() || p.error_retryable())
}

/// Reads what is left of a finished upstream body (after `[DONE]`, its end), off the client's
/// path, so that its connection goes back to the pool instead of being closed; bounded in time and
/// bytes.
fn drain(body: Incoming) {
    const TAIL: usize = 64 * 1024;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let tail = http_body_util::Limited::new(body, TAIL);
        let _ = tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::collect(tail)).await;
    });
}

impl HttpBody for SseRelay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(stored) = this.edge.take_stored() {
                this.stored = Some(stored);
            }
            if let Some(stored) = &mut this.stored {
                ready!(Pin::new(stored).poll(cx));
                this.stored = None;
            }
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if let Some(policing) = &mut this.policing {
                let (police, sent) = ready!(policing.as_mut().poll(cx));
                this.policing = None;
                this.policed(police, sent);
                continue;
            }
            if this.police.is_some()
                && let Some(queued) = this.queue.pop_front()
            {
                this.dispatch(queued);
                continue;
            }
            if let Some(outcome) = this.ending.take() {
                this.finish(outcome);
                continue;
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(reopening) = &mut this.reopening {
                let (source, result) = ready!(reopening.as_mut().poll(cx));
                this.reopening = None;
                this.reopened(source, result);
                continue;
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                let e = Error::new(Kind::UpstreamTimeout, "The request ran past the gateway's total timeout.")
                    .code("upstream_timeout");
                this.fail(e);
                continue;
            }
            let Some(current) = &mut this.current else {
                this.done = true;
                continue;
            };
            if let Some(by) = &mut current.content_by
                && by.as_mut().poll(cx).is_ready()
            {
                this.give_up(Broke::Slow);
                continue;
            }
            match Pin::new(&mut current.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let next_idle = tokio::time::Instant::now() + current.idle_for;
                        current.idle.as_mut().reset(next_idle);
                        this.feed(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => this.give_up(Broke::Cut(e)),
                Poll::Ready(None) => this.ended(),
                Poll::Pending => {
                    ready!(current.idle.as_mut().poll(cx));
                    this.give_up(Broke::Idle);
                }
            }
        }
    }
}
