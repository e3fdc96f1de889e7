//! Stage: route. The attempt loop: the route's first target, then — on a retryable failure, before
//! any byte reached the client — the next, bounded by `retry.max_attempts` and the request's
//! deadline, with exponential backoff and jitter. What a request is and who watches its attempts
//! (accounting, plugins' `on-response-headers`) comes in through [`Exchange`], so this loop knows
//! nothing of plugins; the table it walks is in `route/table.rs`.

pub mod table;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;
pub use table::{ModelRoute, RouteTable, RouteTarget, StatsSnapshot, TargetStats};

use crate::error::{Error, Kind};
use crate::metrics::{Metrics, ModelTargetLabels, UpstreamErrorLabels};
use table::InFlight;

/// What the attempt loop tells its caller about each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEvent {
    /// The attempt is about to be sent.
    Started,
    /// It ended: the upstream's status, or `None` when no response arrived.
    Finished { status: Option<u16>, latency: Duration },
}

/// What the attempt loop asks of the request it sends.
pub trait Exchange {
    /// The upstream request for one target.
    fn build(&self, target: &RouteTarget) -> Result<Request<Bytes>, Error>;

    /// Hears about each attempt as it starts and ends.
    fn attempted(&mut self, target: &RouteTarget, event: AttemptEvent);

    /// An upstream answered with `status`: may name another target to retry on instead
    /// (plugins' `on-response-headers`), or fail the request.
    fn on_response_headers(
        &mut self,
        status: StatusCode,
    ) -> impl Future<Output = Result<Option<Arc<RouteTarget>>, Error>> + Send;
}

/// Sends `exchange` to the route's targets in turn until one answers with a success status, a
/// non-retryable error occurs, the attempts run out, or `deadline` passes. Returns the response and
/// the target that produced it.
pub async fn send(
    route: &ModelRoute,
    metrics: &Metrics,
    deadline: Instant,
    exchange: &mut impl Exchange,
) -> Result<(Response<Incoming>, Arc<RouteTarget>), Error> {
    let attempts = route.retry.max_attempts.max(1) as usize;
    let mut attempt = 0;
    let mut next: Option<Arc<RouteTarget>> = None;
    loop {
        let target = next.take().unwrap_or_else(|| route.targets[attempt % route.targets.len()].clone());
        exchange.attempted(&target, AttemptEvent::Started);
        let wait = target.upstream.timeouts.first_byte.min(deadline.saturating_duration_since(Instant::now()));
        let in_flight = InFlight::new(&target.stats);
        let sent_at = Instant::now();
        let result = target.upstream.send(exchange.build(&target)?, wait).await;
        drop(in_flight);
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        exchange.attempted(&target, AttemptEvent::Finished { status, latency: sent_at.elapsed() });
        let error = match result {
            Ok(response) => {
                let status = response.status();
                target
                    .stats
                    .record(sent_at.elapsed(), status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS);
                match exchange.on_response_headers(status).await? {
                    Some(other) => {
                        next = Some(other);
                        Error::new(
                            Kind::UpstreamFailed,
                            format!("A policy plugin asked to retry after status {status}."),
                        )
                        .code("plugin_retry")
                        .status(status)
                        .retryable(true)
                    }
                    None if status.is_success() => return Ok((response, target)),
                    None => target.upstream.error_from(response, Duration::from_secs(5).min(wait)).await,
                }
            }
            Err(e) => {
                target.stats.record(sent_at.elapsed(), true);
                e
            }
        };
        metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels { target: target.label.clone(), class: error_class(&error) })
            .inc();
        attempt += 1;
        let backoff = backoff(route, attempt);
        if !error.retryable || attempt >= attempts || Instant::now() + backoff >= deadline {
            return Err(error);
        }
        let upcoming = next.clone().unwrap_or_else(|| route.targets[attempt % route.targets.len()].clone());
        tracing::warn!(failed = %target.label, next = %upcoming.label, attempt, error = %error, "retrying on the next target");
        metrics
            .retries
            .get_or_create(&ModelTargetLabels { model: route.label.clone(), target: upcoming.label.clone() })
            .inc();
        tokio::time::sleep(backoff).await;
    }
}

/// The wait before attempt `n` (1-based count of failures so far): base × 2ⁿ⁻¹, capped, and
/// jittered into its upper half so that many clients do not retry in step.
fn backoff(route: &ModelRoute, n: usize) -> Duration {
    let exp = route.retry.backoff_base.saturating_mul(1 << (n - 1).min(16));
    let capped = exp.min(route.retry.backoff_max);
    let half = capped / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// The `class` label of an upstream failure.
pub fn error_class(error: &Error) -> &'static str {
    match error.kind {
        Kind::UpstreamUnavailable => "connect",
        Kind::UpstreamTimeout => "timeout",
        Kind::RateLimited => "status_429",
        Kind::UpstreamAuth => "auth",
        Kind::UpstreamRejected => "status_4xx",
        Kind::UpstreamFailed if error.status.is_some_and(|s| s.is_server_error()) => "status_5xx",
        _ => "protocol",
    }
}
