//! Stage: accounting. Exactly once per model request — success, error, or a client that went away —
//! the usage, latency and outcome are recorded in metrics and in one log line.
//!
//! [`Accounting`] is a guard that the stages fill through its methods as the request goes: the
//! attempts, the status sent, usage, time to first token, the response for plugins. A stage that
//! ends the request calls [`Accounting::finish`] (or [`Accounting::fail`]); if the request is
//! dropped instead (the client disconnected, so hyper dropped the response future or body), `Drop`
//! records a `client_abort` with whatever usage was seen. Whichever comes first runs, once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{Operation, Surface, Usage};
use crate::auth::Principal;
use crate::error::Error;
use crate::metrics::{LatencyLabels, Metrics, ModelTargetLabels, RequestLabels, TokenLabels};
use crate::plugins::view::RequestView;
use crate::plugins::{Attempt, Chain, Completion, PluginUsage};

/// The largest response kept for plugins that read it in `on-complete`.
pub const MAX_CAPTURE: usize = 8 << 20;

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
    request_id: Arc<str>,
    principal: Arc<Principal>,
    operation: &'static str,
    /// The client API (`chat_completions`, `messages`, …).
    surface: &'static str,
    /// The public model label (`*` for a wildcard request).
    model: Arc<str>,
    /// The target that served (or last failed) the request, `upstream/model`.
    target: Arc<str>,
    started: Instant,
    ttft: Option<Duration>,
    usage: Option<Usage>,
    /// The HTTP status sent to the client.
    status: u16,
    /// Why it failed, for plugins' `on-complete` (an error kind label).
    error_class: Option<&'static str>,
    /// The chain whose `on-complete` runs when the request is recorded, with its view.
    plugins: Option<(Arc<Chain>, Arc<RequestView>)>,
    /// Every upstream attempt, for plugins (kept only when there are plugins).
    attempts: Vec<Attempt>,
    /// The response as it went by, for plugins that read it (`None`: not wanted, or too large).
    capture: Option<Vec<u8>>,
    /// This is a mirrored copy of a client's request, not the client's own.
    mirrored: bool,
    /// Streamed chunks with choices relayed so far: a stream cut short by its client has no usage
    /// report, and plugins then get an estimate with one completion token per chunk.
    chunks: u64,
    /// A prediction's instances, once answered, and what served it (a variant, a deployed model).
    predicted: Option<(u64, Option<String>)>,
    finished: bool,
}

/// A finished request's `on-complete` call, ready to run.
struct PendingCompletion {
    chain: Arc<Chain>,
    view: Arc<RequestView>,
    completion: Completion,
}

impl Accounting {
    pub fn start(
        metrics: Arc<Metrics>,
        request_id: Arc<str>,
        principal: Arc<Principal>,
        operation: Operation,
        surface: Surface,
        model: Arc<str>,
        started: Instant,
    ) -> Self {
        metrics.in_flight.inc();
        Self {
            metrics,
            request_id,
            principal,
            operation: operation.label(),
            surface: surface.label(),
            model,
            target: Arc::from(""),
            started,
            ttft: None,
            usage: None,
            status: 0,
            error_class: None,
            plugins: None,
            attempts: Vec::new(),
            capture: None,
            mirrored: false,
            chunks: 0,
            predicted: None,
            finished: false,
        }
    }

    /// Runs `chain`'s `on-complete` with `view` when the request is recorded, keeping the response
    /// for it if one of its plugins reads it.
    pub fn with_plugins(&mut self, chain: Arc<Chain>, view: Arc<RequestView>) {
        self.capture = chain.needs_response().then(Vec::new);
        self.plugins = Some((chain, view));
    }

    /// Marks this as a mirrored copy of a client's request.
    pub fn mirrored(&mut self) {
        self.mirrored = true;
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// An attempt on `target` (`upstream/model`) begins: it is the target the request is charged to.
    pub fn attempt_started(&mut self, target: &Arc<str>) {
        self.target = target.clone();
    }

    /// An attempt ended with the upstream's status (`None`: no response), kept for plugins.
    pub fn attempt_finished(&mut self, status: Option<u16>, latency: Duration) {
        if self.plugins.is_some() {
            self.attempts.push(Attempt {
                target: self.target.to_string(),
                status: status.unwrap_or(0),
                latency_ms: u32::try_from(latency.as_millis()).unwrap_or(u32::MAX),
            });
        }
    }

    /// The status the client is sent.
    pub fn responded(&mut self, status: u16) {
        self.status = status;
    }

    /// The usage the upstream reported.
    pub fn usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// A streamed chunk with content went to the client; the first one is the time to first token.
    pub fn chunk(&mut self) {
        self.chunks += 1;
        if self.ttft.is_none() {
            self.ttft = Some(self.started.elapsed());
        }
    }

    /// Records the request as failed with `error`, whose status the client gets; plugins'
    /// `on-complete` runs as its own task. Later calls, and `Drop`, do nothing.
    pub fn fail(&mut self, error: &Error) {
        self.status = error.http_status().as_u16();
        self.error_class = Some(error.kind.label());
        if let Some(pending) = self.record(Outcome::Error) {
            pending.spawn();
        }
    }

    /// A prediction of `instances` was answered, by `deployed` when the upstream named it.
    pub fn predicted(&mut self, instances: usize, deployed: Option<&str>) {
        self.predicted = Some((instances as u64, deployed.map(str::to_owned)));
    }

    /// Whether a plugin reads the response, so that it is worth keeping a copy.
    pub fn captures(&self) -> bool {
        self.capture.is_some()
    }

    /// Keeps a copy of response bytes for plugins that read the response, up to [`MAX_CAPTURE`].
    pub fn capture(&mut self, bytes: &[u8]) {
        if let Some(buffer) = &mut self.capture {
            if buffer.len() + bytes.len() > MAX_CAPTURE {
                self.capture = None;
            } else {
                buffer.extend_from_slice(bytes);
            }
        }
    }

    /// Records the request; plugins' `on-complete` runs afterwards as its own task. Consumes the
    /// guard, so it cannot run twice.
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    /// [`Accounting::finish`] for a guard that lives inside something else (a stream's model
    /// call): later calls, and `Drop`, do nothing.
    pub fn end(&mut self, outcome: Outcome) {
        if let Some(pending) = self.record(outcome) {
            pending.spawn();
        }
    }

    /// Records the request and runs plugins' `on-complete` before returning, so that headers
    /// they add still reach a response that has not been sent yet (a whole JSON body).
    pub async fn finish_now(mut self, outcome: Outcome) {
        if let Some(pending) = self.record(outcome) {
            pending.chain.on_complete(&pending.view, &pending.completion).await;
        }
    }

    fn record(&mut self, outcome: Outcome) -> Option<PendingCompletion> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        let elapsed = self.started.elapsed();
        let m = &self.metrics;
        m.in_flight.dec();
        m.requests
            .get_or_create(&RequestLabels {
                operation: self.operation,
                surface: self.surface,
                model: self.model.clone(),
                target: self.target.clone(),
                status: self.status,
                outcome: outcome.label(),
            })
            .inc();
        m.duration
            .get_or_create(&LatencyLabels {
                operation: self.operation,
                surface: self.surface,
                model: self.model.clone(),
                target: self.target.clone(),
                status: self.status,
            })
            .observe(elapsed.as_secs_f64());
        if let Some(ttft) = self.ttft {
            m.ttft
                .get_or_create(&ModelTargetLabels { model: self.model.clone(), target: self.target.clone() })
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
                    .get_or_create(&TokenLabels {
                        model: self.model.clone(),
                        target: self.target.clone(),
                        surface: self.surface,
                        token_type,
                    })
                    .inc_by(n);
            }
        }
        let (instances, deployed) = match &self.predicted {
            Some((n, deployed)) if outcome == Outcome::Ok => {
                m.predicted_instances
                    .get_or_create(&ModelTargetLabels { model: self.model.clone(), target: self.target.clone() })
                    .inc_by(*n);
                (Some(*n), deployed.as_deref())
            }
            _ => (None, None),
        };
        tracing::info!(
            request_id = &*self.request_id,
            key = %self.principal.key_name,
            team = %self.principal.team,
            operation = self.operation,
            surface = self.surface,
            model = %self.model,
            target = %self.target,
            status = self.status,
            outcome = outcome.label(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            usage_known = self.usage.is_some(),
            ttft_ms = self.ttft.map(|d| d.as_secs_f64() * 1e3),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            mirrored = self.mirrored,
            instances,
            deployed,
            "request finished"
        );
        let (chain, view) = self.plugins.take()?;
        if let Some(captured) = self.capture.take()
            && outcome == Outcome::Ok
        {
            view.set_response(captured.into());
        }
        let completion = Completion {
            status: self.status,
            target: self.target.to_string(),
            usage: match self.usage {
                Some(u) => Some(PluginUsage {
                    prompt_tokens: clamp(u.prompt_tokens),
                    completion_tokens: clamp(u.completion_tokens),
                    cached_tokens: clamp(u.cached_tokens()),
                    reasoning_tokens: clamp(u.reasoning_tokens()),
                }),
                // The client left mid-stream, before the upstream's usage report: the upstream
                // still billed what it generated. Estimate it rather than record nothing — the
                // prompt as the host estimated it, one token per chunk relayed (OpenAI streams
                // send one token per chunk).
                None if outcome == Outcome::ClientAbort && self.chunks > 0 => Some(PluginUsage {
                    prompt_tokens: view.prompt_tokens_estimate(),
                    completion_tokens: clamp(self.chunks),
                    cached_tokens: 0,
                    reasoning_tokens: 0,
                }),
                None => None,
            },
            ttft_ms: self.ttft.map(|d| clamp(d.as_millis() as u64)),
            total_ms: clamp(elapsed.as_millis() as u64),
            error_class: match outcome {
                Outcome::ClientAbort => Some("client_abort".to_owned()),
                Outcome::Error => Some(self.error_class.unwrap_or("upstream_stream_error").to_owned()),
                Outcome::Ok => None,
            },
            attempts: std::mem::take(&mut self.attempts),
            mirrored: self.mirrored,
        };
        Some(PendingCompletion { chain, view, completion })
    }
}

impl PendingCompletion {
    /// `on-complete` as its own task: accounting may be running in a `Drop` (a client that went
    /// away), where nothing can be awaited.
    fn spawn(self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { self.chain.on_complete(&self.view, &self.completion).await });
        }
    }
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Drop for Accounting {
    fn drop(&mut self) {
        if let Some(pending) = self.record(Outcome::ClientAbort) {
            pending.spawn();
        }
    }
}
