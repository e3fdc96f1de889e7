//! Stage: route. The attempt loop: the route's first target, then — on a retryable failure, before
//! any byte reached the client — the same target again (a `Retry-After` that fits, a transient
//! failure `retry.same_target` times) or the next (a target that timed out is not tried again; a
//! request too long for a model goes to a larger one), bounded by `retry.max_attempts` and the
//! request's deadline, with exponential backoff and jitter. What a request is and who watches its attempts
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

use weir_config::Retry;

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

    /// Whether the answer is streamed (then `first_token` bounds the wait for response headers).
    fn streams(&self) -> bool;

    /// Hears about each attempt as it starts and ends.
    fn attempted(&mut self, target: &RouteTarget, event: AttemptEvent);

    /// An upstream answered with `status`: may name another target to retry on instead
    /// (plugins' `on-response-headers`), or fail the request.
    fn on_response_headers(
        &mut self,
        status: StatusCode,
    ) -> impl Future<Output = Result<Option<Arc<RouteTarget>>, Error>> + Send;
}

/// Sends `exchange` to the route's targets until one answers with a success status, a
/// non-retryable error occurs, the attempts run out, or `deadline` passes. Returns the response and
/// the target that produced it. Where each retry goes is [`Plan::next`]'s decision.
pub async fn send(
    route: &ModelRoute,
    metrics: &Metrics,
    deadline: Instant,
    exchange: &mut impl Exchange,
) -> Result<(Response<Incoming>, Arc<RouteTarget>), Error> {
    let attempts = route.retry.max_attempts.max(1) as usize;
    let facts: Vec<TargetFacts<'_>> = route.targets.iter().map(|t| TargetFacts::of(t)).collect();
    let mut plan = Plan::new(&facts, route.retry);
    // Index into `route.targets`; `None` for a target a plugin named that the route does not list.
    let mut current = Some(0);
    let mut target = route.targets[0].clone();
    let mut attempt = 0;
    loop {
        exchange.attempted(&target, AttemptEvent::Started);
        let mut wait = target.upstream.timeouts.first_byte;
        if exchange.streams()
            && let Some(first_token) = route.first_token(&target)
        {
            wait = wait.min(first_token);
        }
        let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        let in_flight = InFlight::new(&target.stats);
        let sent_at = Instant::now();
        let result = target.upstream.send(exchange.build(&target)?, wait).await;
        drop(in_flight);
        let status = result.as_ref().ok().map(|r| r.status().as_u16());
        exchange.attempted(&target, AttemptEvent::Finished { status, latency: sent_at.elapsed() });
        let mut named = None;
        let error = match result {
            Ok(response) => {
                let status = response.status();
                target
                    .stats
                    .record(sent_at.elapsed(), status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS);
                match exchange.on_response_headers(status).await? {
                    Some(other) => {
                        named = Some(other);
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
        if attempt >= attempts {
            return Err(error);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (next, upcoming, pause) = match named {
            Some(other) => (None, other, backoff(route, attempt)),
            None => match plan.next(current, Failure::of(&error), left, backoff(route, attempt)) {
                Some((index, pause)) => (Some(index), route.targets[index].clone(), pause),
                None => return Err(error),
            },
        };
        if pause >= left {
            return Err(error);
        }
        let how =
            if upcoming.label == target.label { "retrying the same target" } else { "retrying on the next target" };
        tracing::warn!(failed = %target.label, next = %upcoming.label, attempt, wait_ms = pause.as_millis() as u64, error = %error, "{how}");
        metrics
            .retries
            .get_or_create(&ModelTargetLabels { model: route.label.clone(), target: upcoming.label.clone() })
            .inc();
        tokio::time::sleep(pause).await;
        current = next;
        target = upcoming;
    }
}

/// What the attempt loop weighs about a target when choosing where to retry.
#[derive(Debug, Clone, Copy)]
struct TargetFacts<'a> {
    /// The model it serves (the label for a pass-through target): a model that refused a request
    /// as too long would refuse it again anywhere.
    model: &'a str,
    context_window: Option<u32>,
}

impl<'a> TargetFacts<'a> {
    fn of(target: &'a RouteTarget) -> Self {
        Self { model: target.model.as_deref().unwrap_or(&target.label), context_window: target.context_window }
    }
}

/// How an attempt failed, as far as where to go next is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// Throttled, with how long the upstream asked to wait.
    Wait(Duration),
    /// Likely to pass if tried again: a 5xx, a connection closed before the answer.
    Transient,
    /// Worth another target: throttling without a wait, a connect failure, a plugin's retry.
    Elsewhere,
    /// No answer in time: the target is not tried again for this request.
    TimedOut,
    /// The request is longer than the model's context window.
    TooLong,
    /// Not worth another attempt anywhere.
    Final,
}

impl Failure {
    fn of(error: &Error) -> Self {
        if error.is_context_exceeded() {
            return Failure::TooLong;
        }
        if !error.retryable {
            return Failure::Final;
        }
        match error.kind {
            Kind::RateLimited => error.retry_wait().map_or(Failure::Elsewhere, Failure::Wait),
            Kind::UpstreamTimeout => Failure::TimedOut,
            Kind::UpstreamFailed if error.code.as_deref() != Some("plugin_retry") => Failure::Transient,
            _ => Failure::Elsewhere,
        }
    }
}

/// Where the attempt loop goes after each failure: the state it keeps across one request's attempts.
#[derive(Debug)]
struct Plan<'a> {
    targets: &'a [TargetFacts<'a>],
    retry: Retry,
    /// Same-target retries spent, per target.
    same: Vec<u32>,
    /// Targets not to try again (they timed out).
    excluded: Vec<bool>,
    /// Models that refused the request as too long, and the largest window known to have refused it.
    too_long_for: Vec<&'a str>,
    largest_refusing_window: Option<u32>,
}

impl<'a> Plan<'a> {
    fn new(targets: &'a [TargetFacts<'a>], retry: Retry) -> Self {
        Self {
            targets,
            retry,
            same: vec![0; targets.len()],
            excluded: vec![false; targets.len()],
            too_long_for: Vec::new(),
            largest_refusing_window: None,
        }
    }

    /// The target to try next after `current` failed (`None`: a target outside the route), and the
    /// pause before: a `Retry-After` that fits is waited out on the same target; a transient failure
    /// is retried on the same target `retry.same_target` times; a timed-out target is not tried
    /// again; a request too long for a model goes only to other models whose window is not known to
    /// be too small; everything else moves on to the next target, round the route, with `backoff`.
    /// `None`: give up. `left` is the time to the request's deadline.
    fn next(
        &mut self,
        current: Option<usize>,
        failure: Failure,
        left: Duration,
        backoff: Duration,
    ) -> Option<(usize, Duration)> {
        match (failure, current) {
            (Failure::Final, _) => None,
            (Failure::Wait(wait), Some(i)) if wait <= self.retry.retry_after_max && wait < left => Some((i, wait)),
            (Failure::Transient, Some(i)) if self.same[i] < self.retry.same_target => {
                self.same[i] += 1;
                Some((i, backoff))
            }
            (Failure::TimedOut, Some(i)) => {
                self.excluded[i] = true;
                self.elsewhere(current, backoff)
            }
            (Failure::TooLong, _) => {
                if let Some(i) = current {
                    let refused = self.targets[i];
                    self.too_long_for.push(refused.model);
                    self.largest_refusing_window = self.largest_refusing_window.max(refused.context_window);
                }
                // Nothing to back off from: the upstream is fine, the request was too long for it.
                self.elsewhere(current, Duration::ZERO)
            }
            _ => self.elsewhere(current, backoff),
        }
    }

    /// The first target after `current`, round the route (`current` itself last), that may take
    /// the request.
    fn elsewhere(&self, current: Option<usize>, pause: Duration) -> Option<(usize, Duration)> {
        let n = self.targets.len();
        let order: Box<dyn Iterator<Item = usize>> = match current {
            Some(i) => Box::new((1..=n).map(move |k| (i + k) % n)),
            None => Box::new(0..n),
        };
        order.into_iter().find(|&i| self.may_take(i)).map(|i| (i, pause))
    }

    fn may_take(&self, i: usize) -> bool {
        let t = self.targets[i];
        if self.excluded[i] || self.too_long_for.contains(&t.model) {
            return false;
        }
        match (t.context_window, self.largest_refusing_window) {
            (Some(window), Some(refused)) => window > refused,
            _ => true,
        }
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
        Kind::UpstreamFailed if error.code.as_deref() == Some(crate::providers::CONNECTION_CLOSED) => "reset",
        Kind::UpstreamFailed if error.code.as_deref() == Some(crate::error::STREAM_FAILED) => "stream",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Retry = Retry {
        max_attempts: 10,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
        same_target: 1,
        retry_after_max: Duration::from_secs(5),
    };
    const PAUSE: Duration = Duration::from_millis(10);
    const LEFT: Duration = Duration::from_secs(60);

    fn facts(windows: &[(&'static str, Option<u32>)]) -> Vec<TargetFacts<'static>> {
        windows.iter().map(|&(model, context_window)| TargetFacts { model, context_window }).collect()
    }

    #[test]
    fn a_retry_after_that_fits_is_waited_out_on_the_same_target() {
        let targets = facts(&[("a", None), ("b", None)]);
        let mut plan = Plan::new(&targets, RETRY);
        let wait = Duration::from_secs(2);
        assert_eq!(plan.next(Some(0), Failure::Wait(wait), LEFT, PAUSE), Some((0, wait)));
        // Longer than `retry_after_max`, or than what is left of the deadline: the next target now.
        assert_eq!(plan.next(Some(0), Failure::Wait(Duration::from_secs(6)), LEFT, PAUSE), Some((1, PAUSE)));
        assert_eq!(plan.next(Some(0), Failure::Wait(wait), Duration::from_secs(1), PAUSE), Some((1, PAUSE)));
    }

    #[test]
    fn a_transient_failure_is_retried_on_the_same_target_as_often_as_configured() {
        let targets = facts(&[("a", None), ("b", None)]);
        let mut plan = Plan::new(&targets, Retry { same_target: 2, ..RETRY });
        assert_eq!(plan.next(Some(0), Failure::Transient, LEFT, PAUSE), Some((0, PAUSE)));
        assert_eq!(plan.next(Some(0), Failure::Transient, LEFT, PAUSE), Some((0, PAUSE)));
        assert_eq!(plan.next(Some(0), Failure::Transient, LEFT, PAUSE), Some((1, PAUSE)));
        // b's own allowance is untouched; past it the route wraps round to a.
        assert_eq!(plan.next(Some(1), Failure::Transient, LEFT, PAUSE), Some((1, PAUSE)));
        assert_eq!(plan.next(Some(1), Failure::Transient, LEFT, PAUSE), Some((1, PAUSE)));
        assert_eq!(plan.next(Some(1), Failure::Transient, LEFT, PAUSE), Some((0, PAUSE)));
        let mut plan = Plan::new(&targets, Retry { same_target: 0, ..RETRY });
        assert_eq!(plan.next(Some(0), Failure::Transient, LEFT, PAUSE), Some((1, PAUSE)));
    }

    #[test]
    fn a_target_that_timed_out_is_not_tried_again() {
        let targets = facts(&[("a", None), ("b", None)]);
        let mut plan = Plan::new(&targets, RETRY);
        assert_eq!(plan.next(Some(0), Failure::TimedOut, LEFT, PAUSE), Some((1, PAUSE)));
        assert_eq!(plan.next(Some(1), Failure::Elsewhere, LEFT, PAUSE), Some((1, PAUSE)), "a is out");
        assert_eq!(plan.next(Some(1), Failure::TimedOut, LEFT, PAUSE), None);
        let single = facts(&[("a", None)]);
        assert_eq!(Plan::new(&single, RETRY).next(Some(0), Failure::TimedOut, LEFT, PAUSE), None);
        assert_eq!(Plan::new(&single, RETRY).next(Some(0), Failure::Final, LEFT, PAUSE), None);
    }

    #[test]
    fn a_request_too_long_goes_only_to_larger_windows_and_never_the_same_model() {
        let targets = facts(&[
            ("small", Some(8_000)),
            ("same-size", Some(8_000)),
            ("small", Some(8_000)),
            ("unknown", None),
            ("large", Some(128_000)),
        ]);
        let mut plan = Plan::new(&targets, RETRY);
        assert_eq!(plan.next(Some(0), Failure::TooLong, LEFT, PAUSE), Some((3, Duration::ZERO)));
        assert_eq!(plan.next(Some(3), Failure::TooLong, LEFT, PAUSE), Some((4, Duration::ZERO)));
        assert_eq!(plan.next(Some(4), Failure::TooLong, LEFT, PAUSE), None, "no target can take it");
        // A 5xx on the large target afterwards never wraps back to the small ones.
        let mut plan = Plan::new(&targets, Retry { same_target: 0, ..RETRY });
        assert_eq!(plan.next(Some(0), Failure::TooLong, LEFT, PAUSE), Some((3, Duration::ZERO)));
        assert_eq!(plan.next(Some(3), Failure::Transient, LEFT, PAUSE), Some((4, PAUSE)));
        assert_eq!(plan.next(Some(4), Failure::Transient, LEFT, PAUSE), Some((3, PAUSE)));
    }

    #[test]
    fn errors_are_read_as_the_failures_they_are() {
        let wait = Duration::from_millis(1500);
        let throttled = Error::new(Kind::RateLimited, "slow down").retryable(true);
        assert_eq!(Failure::of(&throttled), Failure::Elsewhere);
        assert_eq!(Failure::of(&throttled.retry_after_ms(Some(wait))), Failure::Wait(wait));
        let closed =
            Error::new(Kind::UpstreamFailed, "reset").code(crate::providers::CONNECTION_CLOSED).retryable(true);
        assert_eq!(Failure::of(&closed), Failure::Transient);
        assert_eq!(Failure::of(&Error::new(Kind::UpstreamTimeout, "slow").retryable(true)), Failure::TimedOut);
        let too_long = Error::new(Kind::UpstreamRejected, "long").code(crate::error::CONTEXT_LENGTH_EXCEEDED);
        assert_eq!(Failure::of(&too_long), Failure::TooLong);
        assert_eq!(Failure::of(&Error::new(Kind::UpstreamRejected, "bad")), Failure::Final);
    }
}
