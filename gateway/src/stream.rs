//! Stage: stream. Relays an upstream's SSE stream to the client event by event, byte for byte, while
//! reading each event just enough to learn usage and time to first token. Providers with their own
//! stream format (Bedrock's event stream, Gemini's SSE) go through a [`Translator`] first, which
//! yields OpenAI chunks; from there on every provider's stream is handled alike.
//!
//! - Usage: the gateway always asks upstreams for the final usage chunk; when the client did not ask
//!   for it, that chunk (`"choices": []` with `usage`) is removed here.
//! - Failure: an upstream that breaks, goes silent past the idle timeout, runs past the deadline, or
//!   ends without `[DONE]` gets an OpenAI error event at the end of the stream, never a clean `[DONE]`.
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
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::time::Sleep;

use crate::accounting::{Accounting, Outcome};
use crate::api::Usage;
use crate::api::sse::{Event, Splitter};
use crate::error::{Error, Kind};
use crate::providers::Translator;

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
        options: RelayOptions,
        accounting: Accounting,
        upstream_name: String,
    ) -> Self {
        Self {
            upstream,
            splitter: Splitter::default(),
            translator,
            translated: Vec::new(),
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
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default)]
            choices: Option<Vec<IgnoredAny>>,
            #[serde(default)]
            usage: Option<Usage>,
            #[serde(default)]
            error: Option<IgnoredAny>,
        }
        // Plugins that read the response see every event in OpenAI's shape, the usage chunk too.
        if let Some(acct) = &mut self.accounting {
            acct.capture(&event.raw);
        }
        if event.data.is_empty() {
            self.out.push_back(event.raw);
            return;
        }
        if &event.data[..] == b"[DONE]" {
            self.saw_done = true;
            self.out.push_back(event.raw);
            return;
        }
        let Ok(peek) = serde_json::from_slice::<Peek>(&event.data) else {
            // Not JSON: not ours to judge; relay it.
            self.out.push_back(event.raw);
            return;
        };
        let has_choices = peek.choices.as_ref().is_some_and(|c| !c.is_empty());
        if let Some(acct) = &mut self.accounting {
            if has_choices {
                acct.chunk();
            }
            if let Some(usage) = peek.usage {
                acct.usage(usage);
            }
        }
        if peek.error.is_some() {
            self.upstream_error = true;
        }
        let usage_only = peek.usage.is_some() && !has_choices && peek.error.is_none();
        if usage_only && !self.options.client_wants_usage {
            return;
        }
        self.out.push_back(event.raw);
    }

    /// Ends the stream with an error event and records the failure.
    fn fail(&mut self, error: &Error) {
        tracing::warn!(upstream = %self.upstream_name, error = %error, "stream failed after its first byte");
        self.out.push_back(error.sse_event());
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
