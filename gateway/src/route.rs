//! Stage: route. Public model names → targets (an upstream and the model name it knows), and the
//! attempt loop: the first target, then — on a retryable failure, before any byte reached the client —
//! the next, bounded by `retry.max_attempts`, with exponential backoff and jitter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use rand::Rng;
use weir_config::{Config, Retry, WILDCARD_MODEL};

use crate::error::{Error, Kind};
use crate::metrics::{Metrics, TtftLabels, UpstreamErrorLabels};
use crate::providers::UpstreamClient;

/// Where a public model is served.
#[derive(Debug)]
pub struct ModelRoute {
    /// The label for metrics and logs: the public name, or `*` for the wildcard.
    pub label: Arc<str>,
    pub targets: Vec<RouteTarget>,
}

#[derive(Debug)]
pub struct RouteTarget {
    pub upstream: Arc<UpstreamClient>,
    /// The upstream's model name; `None` passes the requested name through.
    pub model: Option<String>,
    /// `upstream/model` (`upstream/*` for pass-through), for metrics and logs.
    pub label: Arc<str>,
}

impl RouteTarget {
    /// The model name to send upstream for a request that asked for `requested`.
    pub fn upstream_model<'a>(&'a self, requested: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(requested)
    }
}

/// The routing table, built once from the config.
#[derive(Debug)]
pub struct Router {
    models: HashMap<String, Arc<ModelRoute>>,
    wildcard: Option<Arc<ModelRoute>>,
    /// Public names in config order, for `/v1/models`.
    names: Vec<String>,
    retry: Retry,
}

impl Router {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let upstreams =
            config.upstreams.iter().map(|u| UpstreamClient::new(u).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        let mut models = HashMap::new();
        let mut wildcard = None;
        let mut names = Vec::new();
        for m in &config.models {
            let targets = m
                .targets
                .iter()
                .map(|t| {
                    let upstream = upstreams[t.upstream].clone();
                    let label = format!("{}/{}", upstream.name, t.model.as_deref().unwrap_or(WILDCARD_MODEL));
                    RouteTarget { upstream, model: t.model.clone(), label: label.into() }
                })
                .collect();
            let route = Arc::new(ModelRoute { label: m.name.as_str().into(), targets });
            if m.is_wildcard() {
                wildcard = Some(route);
            } else {
                names.push(m.name.clone());
                models.insert(m.name.clone(), route);
            }
        }
        Ok(Self { models, wildcard, names, retry: config.retry })
    }

    /// The public model names, for `/v1/models`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn resolve(&self, model: &str) -> Result<Arc<ModelRoute>, Error> {
        self.models.get(model).or(self.wildcard.as_ref()).cloned().ok_or_else(|| {
            Error::new(Kind::NotFound, format!("The model `{model}` does not exist or you do not have access to it."))
                .param("model")
                .code("model_not_found")
        })
    }

    /// Sends the request built by `build` to the route's targets in turn until one answers with a
    /// success status, a non-retryable error occurs, the attempts run out, or `deadline` passes.
    /// `on_attempt` learns which target is being tried (for accounting). Returns the response and
    /// the target that produced it.
    pub async fn send<'r>(
        &self,
        route: &'r ModelRoute,
        metrics: &Metrics,
        deadline: Instant,
        mut on_attempt: impl FnMut(&RouteTarget),
        build: impl Fn(&RouteTarget) -> Result<Request<Full<Bytes>>, Error>,
    ) -> Result<(Response<Incoming>, &'r RouteTarget), Error> {
        let attempts = self.retry.max_attempts.max(1) as usize;
        let mut attempt = 0;
        loop {
            let target = &route.targets[attempt % route.targets.len()];
            on_attempt(target);
            let wait = target.upstream.timeouts.first_byte.min(deadline.saturating_duration_since(Instant::now()));
            let error = match target.upstream.send(build(target)?, wait).await {
                Ok(response) if response.status().is_success() => return Ok((response, target)),
                Ok(response) => target.upstream.error_from(response, Duration::from_secs(5).min(wait)).await,
                Err(e) => e,
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
            let next = &route.targets[attempt % route.targets.len()];
            tracing::warn!(failed = %target.label, next = %next.label, attempt, error = %error, "retrying on the next target");
            metrics.retries.get_or_create(&TtftLabels { model: route.label.clone(), target: next.label.clone() }).inc();
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
