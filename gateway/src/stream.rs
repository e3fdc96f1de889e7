//! Stage: stream. Relays an upstream's SSE stream to the client event by event, byte for byte, while
//! reading each event just enough to learn usage and time to first token. Providers with their own
//! stream format (Bedrock's event stream, Gemini's SSE) go through a [`Translator`] first, which
//! yields OpenAI chunks; from there on every provider's stream is handled alike. What the client
//! receives of each event, and how each is read, is the [`Edge`]'s business (`surface.rs`): OpenAI
//! chunks relayed or encoded into the client's API, or another API's own events relayed natively —
//! so the rules below hold for every surface, each in its own API's words.
//!
//! - Usage: the gateway always asks upstreams for the final usage chunk; when the client did not ask
//!   for it, that chunk (`"choices": []` with `usage`) is removed here.
//! - Failure: an upstream that breaks, goes silent past the idle timeout, runs past the deadline, or
//!   ends without its API's terminal event (`[DONE]`, `message_stop`, `response.completed`) gets an
//!   error event at the end of the stream (`Edge::fail`), never a clean end.
//! - Cancellation: when the client goes away hyper drops this body, which drops the upstream
//!   response and so closes that connection; the accounting guard records the abort.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::accounting::{Accounting, Outcome};
use crate::api::sse::{Event, Splitter};
use crate::error::{Error, Kind};
use crate::providers::Translator;
use crate::surface::Edge;

/// Settings of one relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// Forward the usage-only chunk to the client.
    pub client_wants_usage: bool,
    /// Longest silence between two upstream chunks.
    pub idle: Duration,
    /// When the whole request must be over.
    pub deadline: Instant,
}

/// The response body of a streamed chat completion.
#[derive(Debug)]
pub struct SseRelay {
    upstream: Incoming,
    splitter: Splitter,
    /// `None` relays the upstream's own SSE (OpenAI-compatible upstreams).
    translator: Option<Translator>,
    translated: Vec<Event>,
    /// What the client receives of each event, in its API.
    edge: Edge,
    out: VecDeque<Bytes>,
    options: RelayOptions,
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    accounting: Option<Accounting>,
    saw_done: bool,
    /// An `error` event came from the upstream itself.
    upstream_error: bool,
    upstream_name: String,
}

impl SseRelay {
    pub fn new(
        upstream: Incoming,
        translator: Option<Translator>,
        edge: Edge,
        options: RelayOptions,
        accounting: Accounting,
        upstream_name: String,
    ) -> Self {
        Self {
            upstream,
            splitter: Splitter::default(),
            translator,
            translated: Vec::new(),
            edge,
            out: VecDeque::new(),
            idle: Box::pin(tokio::time::sleep(options.idle)),
            deadline: Box::pin(tokio::time::sleep_until(options.deadline.into())),
            options,
            accounting: Some(accounting),
            saw_done: false,
            upstream_error: false,
            upstream_name,
        }
    }

    /// Reads one event and queues what the client should receive of it.
    fn on_event(&mut self, event: Event) {
        let peek = self.edge.peek(&event);
        if let Some(acct) = &mut self.accounting {
            // Plugins that read the response see every event in OpenAI's shape, the usage chunk too.
            self.edge.capture(&event, acct);
            if peek.content {
                acct.chunk();
            }
            if let Some(usage) = peek.usage {
                acct.usage(usage);
            }
        }
        self.saw_done |= peek.done;
        self.upstream_error |= peek.error;
        if peek.usage_only && !self.options.client_wants_usage {
            return;
        }
        self.edge.emit(event, &mut self.out);
    }

    /// Ends the stream with an error event and records the failure.
    fn fail(&mut self, error: &Error) {
        tracing::warn!(upstream = %self.upstream_name, error = %error, "stream failed after its first byte");
        self.edge.fail(error, &mut self.out);
        self.finish(Outcome::Error);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(acct) = self.accounting.take() {
            acct.finish(outcome);
        }
    }

    fn stream_error(&self, message: String) -> Error {
        Error::new(Kind::UpstreamFailed, message).code("upstream_stream_error")
    }
}

impl HttpBody for SseRelay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.accounting.is_none() {
                return Poll::Ready(None);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                let e = Error::new(Kind::UpstreamTimeout, "The request ran past the gateway's total timeout.")
                    .code("upstream_timeout");
                this.fail(&e);
                continue;
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let next_idle = tokio::time::Instant::now() + this.options.idle;
                        this.idle.as_mut().reset(next_idle);
                        if let Some(translator) = &mut this.translator {
                            translator.push(&data, &mut this.translated);
                            for event in std::mem::take(&mut this.translated) {
                                this.on_event(event);
                            }
                        } else {
                            this.splitter.push(&data);
                            while let Some(event) = this.splitter.next_event() {
                                this.on_event(event);
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let msg = format!(
                        "The connection to the upstream '{}' broke in the middle of the stream.",
                        this.upstream_name
                    );
                    let err = this.stream_error(msg).source(e);
                    this.fail(&err);
                }
                Poll::Ready(None) => {
                    if let Some(translator) = &mut this.translator {
                        translator.finish(&mut this.translated);
                        for event in std::mem::take(&mut this.translated) {
                            this.on_event(event);
                        }
                    }
                    if this.saw_done && this.splitter.pending() == 0 {
                        let outcome = if this.upstream_error { Outcome::Error } else { Outcome::Ok };
                        this.finish(outcome);
                    } else if this.upstream_error {
                        // The upstream already told the client what went wrong, in its own words.
                        this.finish(Outcome::Error);
                    } else {
                        let msg =
                            format!("The upstream '{}' ended the stream before it was complete.", this.upstream_name);
                        let err = this.stream_error(msg);
                        this.fail(&err);
                    }
                }
                Poll::Pending => {
                    ready!(this.idle.as_mut().poll(cx));
                    let e = Error::new(
                        Kind::UpstreamTimeout,
                        format!("The upstream '{}' sent nothing for {:?}.", this.upstream_name, this.options.idle),
                    )
                    .code("upstream_idle_timeout");
                    this.fail(&e);
                }
            }
        }
    }
}
