//! Stage: route. Public model names → targets (an upstream and the model name it knows), and the
//! attempt loop: the first target, then — on a retryable failure, before any byte reached the client —
//! the next, bounded by `retry.max_attempts`, with exponential backoff and jitter.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;
use weir_config::{Config, Retry, WILDCARD_MODEL};

use crate::error::{Error, Kind};
use crate::metrics::{Metrics, TtftLabels, UpstreamErrorLabels};
use crate::plugins::Chain;
use crate::plugins::view::RequestView;
use crate::providers::UpstreamClient;

/// What [`Router::send`] tells its caller about each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEvent {
    /// The attempt is about to be sent.
    Started,
    /// It ended: the upstream's status, or `None` when no response arrived.
    Finished { status: Option<u16>, latency: Duration },
}

/// Where a public model is served.
#[derive(Debug)]
pub struct ModelRoute {
    /// The label for metrics and logs: the public name, or `*` for the wildcard.
    pub label: Arc<str>,
    pub targets: Vec<Arc<RouteTarget>>,
}

#[derive(Debug)]
pub struct RouteTarget {
    pub upstream: Arc<UpstreamClient>,
    /// The upstream's model name; `None` passes the requested name through.
    pub model: Option<String>,
    /// `upstream/model` (`upstream/*` for pass-through), for metrics, logs and plugins.
    pub label: Arc<str>,
    pub stats: TargetStats,
}

impl RouteTarget {
    /// The model name to send upstream for a request that asked for `requested`.
    pub fn upstream_model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(requested)
    }
}

/// Live statistics of a target, for plugins that route by health, latency or load.
#[derive(Debug, Default)]
pub struct TargetStats {
    in_flight: AtomicU32,
    /// f64 bits: exponentially weighted latency to response headers, in milliseconds.
    latency_ms: AtomicU64,
    /// f64 bits: exponentially weighted share of failed attempts.
    error_rate: AtomicU64,
}

/// A copy of [`TargetStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsSnapshot {
    /// Until the router's circuit breaker exists, a target is unhealthy while more than half of
    /// its recent attempts fail.
    pub healthy: bool,
    pub in_flight: u32,
    pub latency_ms: f32,
    pub error_rate: f32,
}

/// Weight of the newest observation in the moving averages.
const EWMA_ALPHA: f64 = 0.2;

impl TargetStats {
    fn ewma(cell: &AtomicU64, value: f64) {
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if bits == 0 { value } else { old + EWMA_ALPHA * (value - old) };
            Some(new.to_bits())
        });
    }

    fn record(&self, latency: Duration, failed: bool) {
        Self::ewma(&self.latency_ms, latency.as_secs_f64() * 1e3);
        // A stored 0.0 reads as "no data yet" in `ewma`; keep a failure-free average just above it.
        Self::ewma(&self.error_rate, if failed { 1.0 } else { f64::MIN_POSITIVE });
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let error_rate = f64::from_bits(self.error_rate.load(Ordering::Relaxed));
        StatsSnapshot {
            healthy: error_rate <= 0.5,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            latency_ms: f64::from_bits(self.latency_ms.load(Ordering::Relaxed)) as f32,
            error_rate: error_rate as f32,
        }
    }
}

/// Counts a request in flight to a target while it lives.
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The routing table, built once from the config.
#[derive(Debug)]
pub struct Router {
    models: HashMap<String, Arc<ModelRoute>>,
    wildcard: Option<Arc<ModelRoute>>,
    /// Every target by its label; models that share a target share its statistics.
    targets: HashMap<Arc<str>, Arc<RouteTarget>>,
    /// Public names in config order, for `/v1/models`.
    names: Vec<String>,
    retry: Retry,
}

impl Router {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let upstreams =
            config.upstreams.iter().map(|u| UpstreamClient::new(u).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        let mut models = HashMap::new();
        let mut targets: HashMap<Arc<str>, Arc<RouteTarget>> = HashMap::new();
        let mut wildcard = None;
        let mut names = Vec::new();
        for m in &config.models {
            let route_targets = m
                .targets
                .iter()
                .map(|t| {
                    let upstream = upstreams[t.upstream].clone();
                    let label: Arc<str> =
                        format!("{}/{}", upstream.name, t.model.as_deref().unwrap_or(WILDCARD_MODEL)).into();
                    targets
                        .entry(label.clone())
                        .or_insert_with(|| {
                            Arc::new(RouteTarget {
                                upstream,
                                model: t.model.clone(),
                                label,
                                stats: TargetStats::default(),
                            })
                        })
                        .clone()
                })
                .collect();
            let route = Arc::new(ModelRoute { label: m.name.as_str().into(), targets: route_targets });
            if m.is_wildcard() {
                wildcard = Some(route);
            } else {
                names.push(m.name.clone());
                models.insert(m.name.clone(), route);
            }
        }
        Ok(Self { models, wildcard, targets, names, retry: config.retry })
    }

    /// The public model names, for `/v1/models`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// A target by its label (`upstream/model`).
    pub fn target(&self, label: &str) -> Option<&Arc<RouteTarget>> {
        self.targets.get(label)
    }

    /// The target labels of a public model, in order.
    pub fn targets_of(&self, model: &str) -> Vec<String> {
        self.models.get(model).map(|r| r.targets.iter().map(|t| t.label.to_string()).collect()).unwrap_or_default()
    }

    pub fn resolve(&self, model: &str) -> Result<Arc<ModelRoute>, Error> {
        self.models.get(model).or(self.wildcard.as_ref()).cloned().ok_or_else(|| {
            Error::new(Kind::NotFound, format!("The model `{model}` does not exist or you do not have access to it."))
                .param("model")
                .code("model_not_found")
        })
    }

    /// Where a plugin's `route` decision points: a public model's targets (one name that is a
    /// model), or the named targets in order, keeping the request's model label for metrics.
    pub fn rerouted(&self, label: &Arc<str>, to: &[String]) -> Option<Arc<ModelRoute>> {
        if let [one] = to
            && let Some(route) = self.models.get(one)
        {
            return Some(route.clone());
        }
        let targets = to.iter().map(|t| self.targets.get(t.as_str()).cloned()).collect::<Option<Vec<_>>>()?;
        (!targets.is_empty()).then(|| Arc::new(ModelRoute { label: label.clone(), targets }))
    }

    /// Sends the request built by `build` to the route's targets in turn until one answers with a
    /// success status, a non-retryable error occurs, the attempts run out, or `deadline` passes.
    /// `on_attempt` learns which target is being tried and how it went (for accounting); the plugins' chain, if
    /// given, sees each upstream status first (`on-response-headers`) and may name a target to retry on.
    /// Returns the response and the target that produced it.
    pub async fn send(
        &self,
        route: &ModelRoute,
        metrics: &Metrics,
        deadline: Instant,
        mut on_attempt: impl FnMut(&RouteTarget, AttemptEvent),
        hooks: Option<(&Chain, &Arc<RequestView>)>,
        build: impl Fn(&RouteTarget) -> Result<Request<Bytes>, Error>,
    ) -> Result<(Response<Incoming>, Arc<RouteTarget>), Error> {
        let attempts = self.retry.max_attempts.max(1) as usize;
        let mut attempt = 0;
        let mut next: Option<Arc<RouteTarget>> = None;
        loop {
            let target = next.take().unwrap_or_else(|| route.targets[attempt % route.targets.len()].clone());
            on_attempt(&target, AttemptEvent::Started);
            let wait = target.upstream.timeouts.first_byte.min(deadline.saturating_duration_since(Instant::now()));
            let in_flight = InFlight::new(&target.stats.in_flight);
            let sent_at = Instant::now();
            let result = target.upstream.send(build(&target)?, wait).await;
            drop(in_flight);
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            on_attempt(&target, AttemptEvent::Finished { status, latency: sent_at.elapsed() });
            let error = match result {
                Ok(response) => {
                    let status = response.status();
                    target
                        .stats
                        .record(sent_at.elapsed(), status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS);
                    let retry_on = match hooks {
                        Some((chain, view)) => chain.on_response_headers(view, status.as_u16()).await?,
                        None => None,
                    };
                    match retry_on.map(|label| (self.targets.get(label.as_str()).cloned(), label)) {
                        Some((Some(other), _)) => {
                            next = Some(other);
                            Error::new(
                                Kind::UpstreamFailed,
                                format!("A policy plugin asked to retry after status {status}."),
                            )
                            .code("plugin_retry")
                            .status(status)
                            .retryable(true)
                        }
                        Some((None, label)) => {
                            tracing::warn!(target = %label, "a plugin asked to retry on an unknown target; ignored");
                            if status.is_success() {
                                return Ok((response, target));
                            }
                            target.upstream.error_from(response, Duration::from_secs(5).min(wait)).await
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
            let backoff = self.backoff(attempt);
            if !error.retryable || attempt >= attempts || Instant::now() + backoff >= deadline {
                return Err(error);
            }
            let upcoming = next.clone().unwrap_or_else(|| route.targets[attempt % route.targets.len()].clone());
            tracing::warn!(failed = %target.label, next = %upcoming.label, attempt, error = %error, "retrying on the next target");
            metrics
                .retries
                .get_or_create(&TtftLabels { model: route.label.clone(), target: upcoming.label.clone() })
                .inc();
            tokio::time::sleep(backoff).await;
        }
    }

    /// The wait before attempt `n` (1-based count of failures so far): base × 2ⁿ⁻¹, capped, and
    /// jittered into its upper half so that many clients do not retry in step.
    fn backoff(&self, n: usize) -> Duration {
        let exp = self.retry.backoff_base.saturating_mul(1 << (n - 1).min(16));
        let capped = exp.min(self.retry.backoff_max);
        let half = capped / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
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
