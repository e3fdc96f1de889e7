//! Stage *stream*, when it must start again: a relay (`stream.rs`) that gives an attempt up comes
//! back to its model call for the next target. Before any content reached the client that is a
//! plain retry of the request; after, it is a continuation: each target is sent the conversation
//! with the text so far as an assistant prefill in the way its upstream continues one (`prefill`),
//! and a target that refuses the prefill is asked once more without it (the relay then uses its
//! answer only if it repeats what the client has). The attempt loop is the same `route::send`.
//!
//! Whatever API the client speaks, a continuation is asked of every target in the canonical chat
//! form and its answer read as canonical chunks, which the relay splices and the client's edge
//! (`surface.rs`) encodes as it did the first attempt's. A plain retry is sent as the first attempt
//! was: natively where the target speaks the client's API, with an edge of its own.

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use hyper::body::Incoming;
use weir_config::Prefill;

use super::ModelCall;
use crate::accounting::Accounting;
use crate::api::{ClientRequest, ModelRequest};
use crate::error::{Error, Kind};
use crate::metrics::{ContinuationLabels, ModelTargetLabels, UpstreamErrorLabels};
use crate::route::{self, ModelRoute, RouteTarget};
use crate::stream::failover::{self, Continuation};
use crate::stream::{Ask, Opened, Reopening, Upstreams};
use crate::surface::Edge;

/// What the targets are asked while a stream is being continued.
#[derive(Debug)]
pub(super) struct Resumption {
    continuation: Continuation,
    /// Targets that refused the prefill: asked without it.
    refused: Vec<Arc<str>>,
}

impl Resumption {
    /// How `target` continues this answer, if it is asked to continue rather than start over.
    fn prefill(&self, target: &RouteTarget) -> Option<Prefill> {
        let how = target.upstream.prefill;
        let refused = self.refused.contains(&target.label);
        (how != Prefill::None && !refused && !self.continuation.prefill.is_empty()).then_some(how)
    }

    /// The request `target` is sent instead of the client's: the conversation in its canonical
    /// form, prefilled with the text so far where the target takes a prefill.
    pub(super) fn request_for(&self, request: &ClientRequest, target: &RouteTarget) -> Result<ModelRequest, Error> {
        let ModelRequest::Chat(chat) = request.canonical()? else {
            return Err(Error::internal("only chat answers are continued"));
        };
        let how = self.prefill(target).unwrap_or(Prefill::None);
        Ok(ModelRequest::Chat(failover::prefilled(chat, &self.continuation, how)))
    }
}

impl ModelCall {
    /// The relay's view of an upstream that answered: its body, translator, edge and timers.
    pub(super) fn opened(&self, upstream: Response<Incoming>, target: &RouteTarget, by: Option<Instant>) -> Opened {
        let first_token = self.route.first_token(target).map(|limit| self.last_sent + limit);
        let content_by = match (first_token, by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let model = target.upstream_model(self.request.model());
        // A continuation was asked in the canonical form (see the module header), and so was a
        // stream the plugins police.
        let native = self.resumption.is_none()
            && !self.polices_stream()
            && target.upstream.native(self.request.surface(), model);
        Opened {
            body: upstream.into_body(),
            translator: target.upstream.translator(model, native),
            edge: Edge::new(&self.request, native, self.sink()),
            upstream: target.upstream.name.clone(),
            idle: target.upstream.timeouts.idle,
            content_by,
            prefilled: self.resumption.as_ref().is_some_and(|r| r.prefill(target).is_some()),
        }
    }

    fn last_route_target(&self) -> Option<Arc<RouteTarget>> {
        self.last_target.as_ref().and_then(|label| self.app.routes.target(label))
    }

    /// Opens the stream on the route's next target, as `ask` says; `Err(None)` when there is no
    /// target to try.
    async fn resume(&mut self, ask: Ask) -> Result<Opened, Option<Error>> {
        let failed: Arc<str> = self.last_target.clone().unwrap_or_else(|| Arc::from(""));
        let continuing = ask.continuation.is_some();
        self.resumption =
            ask.continuation.map(|continuation| Box::new(Resumption { continuation, refused: Vec::new() }));
        let (app, started) = (self.app.clone(), self.attempts);
        let route = self.route.resumed_after(&failed, ask.skip_failed, ask.max_attempts).ok_or(None)?;
        if let Some(first) = route.targets.first() {
            let labels = ModelTargetLabels { model: self.route.label.clone(), target: first.label.clone() };
            app.metrics.retries.get_or_create(&labels).inc();
        }
        let mut result = route::send(&route, &app.metrics, ask.deadline, self).await;
        // A target that refuses the prefill (a 4xx to it) is asked once more there, without it.
        if let Err(error) = &result
            && continuing
            && error.kind == Kind::UpstreamRejected
            && !error.is_context_exceeded()
            && let Some(target) = self.last_route_target()
            && let Some(resumption) = &mut self.resumption
            && resumption.prefill(&target).is_some()
            && ask.max_attempts > self.attempts - started
        {
            tracing::info!(target = %target.label, error = %error, "the fallback refused the prefill; asking it anew");
            resumption.refused.push(target.label.clone());
            let again = ModelRoute::single(self.route.label.clone(), target);
            result = route::send(&again, &app.metrics, ask.deadline, self).await;
        }
        let (response, target) = result.map_err(Some)?;
        if continuing {
            let how = if self.resumption.as_ref().is_some_and(|r| r.prefill(&target).is_some()) {
                "prefill"
            } else {
                "restart"
            };
            let labels = ContinuationLabels { model: self.route.label.clone(), target: target.label.clone(), how };
            app.metrics.stream_continuations.get_or_create(&labels).inc();
        }
        let by = continuing.then_some(ask.deadline);
        Ok(self.opened(response, &target, by))
    }
}

impl Upstreams for ModelCall {
    fn accounting(&mut self) -> &mut Accounting {
        &mut self.acct
    }

    fn attempts(&self) -> u32 {
        self.attempts
    }

    fn failed(&mut self, error: &Error) {
        let Some(target) = self.last_route_target() else { return };
        target.stats.failed();
        let class = route::error_class(error);
        self.app
            .metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels { target: target.label.clone(), class })
            .inc();
    }

    fn reopen(self: Box<Self>, ask: Ask) -> Reopening {
        Box::pin(async move {
            let mut call = self;
            let result = call.resume(ask).await;
            (call as Box<dyn Upstreams>, result)
        })
    }
}
