//! Stage: accounting. Exactly once per model request — success, error, or a client that went away —
//! the usage, latency and outcome are recorded in metrics and in one log line.
//!
//! [`Accounting`] is a guard: a stage that finishes the request calls [`Accounting::finish`]; if the
//! request is dropped instead (the client disconnected, so hyper dropped the response future or body),
//! `Drop` records a `client_abort` with whatever usage was seen. Either path runs once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Usage;
use crate::auth::Principal;
use crate::metrics::{LatencyLabels, Metrics, RequestLabels, TokenLabels, TtftLabels};
use crate::plugins::view::RequestView;
use crate::plugins::{Chain, Completion, PluginUsage};

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An error response, or a stream that ended with an error event.
    Error,
    /// The client disconnected first.
    ClientAbort,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::ClientAbort => "client_abort",
        }
    }
}

/// The record of one model request, finished exactly once.
#[derive(Debug)]
pub struct Accounting {
    metrics: Arc<Metrics>,
    pub request_id: Arc<str>,
    pub principal: Arc<Principal>,
    pub operation: &'static str,
    /// The public model label (`*` for a wildcard request).
    pub model: Arc<str>,
    /// The target that served (or last failed) the request, `upstream/model`.
    pub target: Arc<str>,
    pub started: Instant,
    pub ttft: Option<Duration>,
    pub usage: Option<Usage>,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// Why it failed, for plugins' `on-complete` (an error kind label).
    pub error_class: Option<&'static str>,
    /// The chain whose `on-complete` runs when the request is recorded, with its view.
    pub plugins: Option<(Arc<Chain>, Arc<RequestView>)>,
    finished: bool,
}

impl Accounting {
    pub fn start(
        metrics: Arc<Metrics>,
        request_id: Arc<str>,
        principal: Arc<Principal>,
        operation: &'static str,
        model: Arc<str>,
        started: Instant,
    ) -> Self {
        metrics.in_flight.inc();
        Self {
            metrics,
            request_id,
            principal,
            operation,
            model,
            target: Arc::from(""),
            started,
            ttft: None,
            usage: None,
            status: 0,
            error_class: None,
            plugins: None,
            finished: false,
        }
    }

    /// Records the request. Consumes the guard, so it cannot run twice.
    pub fn finish(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let m = &self.metrics;
        m.in_flight.dec();
        m.requests
            .get_or_create(&RequestLabels {
                operation: self.operation,
                model: self.model.clone(),
                target: self.target.clone(),
                status: self.status,
                outcome: outcome.label(),
            })
            .inc();
        m.duration
            .get_or_create(&LatencyLabels {
                operation: self.operation,
                model: self.model.clone(),
                target: self.target.clone(),
                status: self.status,
            })
            .observe(elapsed.as_secs_f64());
        if let Some(ttft) = self.ttft {
            m.ttft
                .get_or_create(&TtftLabels { model: self.model.clone(), target: self.target.clone() })
                .observe(ttft.as_secs_f64());
        }
        let usage = self.usage.unwrap_or_default();
        for (token_type, n) in [
            ("input", usage.prompt_tokens),
            ("output", usage.completion_tokens),
            ("cached_input", usage.cached_tokens()),
            ("reasoning", usage.reasoning_tokens()),
        ] {
            if n > 0 {
                m.tokens
                    .get_or_create(&TokenLabels { model: self.model.clone(), target: self.target.clone(), token_type })
                    .inc_by(n);
            }
        }
        tracing::info!(
            request_id = &*self.request_id,
            key = %self.principal.key_name,
            team = %self.principal.team,
            operation = self.operation,
            model = %self.model,
            target = %self.target,
            status = self.status,
            outcome = outcome.label(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            usage_known = self.usage.is_some(),
            ttft_ms = self.ttft.map(|d| d.as_secs_f64() * 1e3),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "request finished"
        );
        if let Some((chain, view)) = self.plugins.take() {
            let completion = Completion {
                status: self.status,
                target: self.target.to_string(),
                usage: self.usage.map(|u| PluginUsage {
                    prompt_tokens: clamp(u.prompt_tokens),
                    completion_tokens: clamp(u.completion_tokens),
                    cached_tokens: clamp(u.cached_tokens()),
                    reasoning_tokens: clamp(u.reasoning_tokens()),
                }),
                ttft_ms: self.ttft.map(|d| clamp(d.as_millis() as u64)),
                total_ms: clamp(elapsed.as_millis() as u64),
                error_class: match outcome {
                    Outcome::ClientAbort => Some("client_abort".to_owned()),
                    Outcome::Error => Some(self.error_class.unwrap_or("upstream_stream_error").to_owned()),
                    Outcome::Ok => None,
                },
            };
            // `on-complete` runs after the response, as its own task: accounting may be running in
            // a `Drop` (a client that went away), where nothing can be awaited.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { chain.on_complete(&view, &completion).await });
            }
        }
    }
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Drop for Accounting {
    fn drop(&mut self) {
        self.record(Outcome::ClientAbort);
    }
}
