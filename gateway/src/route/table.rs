//! The routing table: public model names (and an optional `*` wildcard) → ordered targets (an
//! upstream and the model name it knows), each with live statistics. Plugins read it (to check a
//! route decision, to see target health); the attempt loop in `route.rs` walks it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use weir_config::{Config, Failover, MidStream, Retry, WILDCARD_MODEL};

use crate::error::{Error, Kind};
use crate::providers::UpstreamClient;

/// Where a public model is served.
#[derive(Debug)]
pub struct ModelRoute {
    /// The label for metrics and logs: the public name, or `*` for the wildcard.
    pub label: Arc<str>,
    pub targets: Vec<Arc<RouteTarget>>,
    /// How its attempt loop retries.
    pub retry: Retry,
    /// The model's own limit on a stream's time to first token, over its upstreams'.
    pub first_token: Option<Duration>,
    /// What a stream that breaks after content reached the client does.
    pub failover: Failover,
}

impl ModelRoute {
    /// A route to one target alone (a mirrored copy's), labelled `label`, tried once.
    pub fn single(label: Arc<str>, target: Arc<RouteTarget>) -> Self {
        Self {
            label,
            targets: vec![target],
            retry: Retry::ONCE,
            first_token: None,
            failover: Failover { mid_stream: MidStream::Off, max_attempts: 1, max_delay: Duration::ZERO },
        }
    }

    /// The same model with its targets in the order to try after `failed` broke off a stream: the
    /// one after it first, `failed` itself last, or left out when `skip_failed`; at most
    /// `max_attempts` attempts. `None` when no target is left.
    pub fn resumed_after(&self, failed: &str, skip_failed: bool, max_attempts: u32) -> Option<Self> {
        let mut targets = self.targets.clone();
        if let Some(i) = targets.iter().position(|t| &*t.label == failed) {
            targets.rotate_left(i + 1);
            if skip_failed {
                targets.pop();
            }
        }
        if targets.is_empty() {
            return None;
        }
        Some(Self {
            label: self.label.clone(),
            targets,
            retry: Retry { max_attempts, ..self.retry },
            first_token: self.first_token,
            failover: self.failover,
        })
    }

    /// The limit on time to first token for a stream sent to `target`.
    pub fn first_token(&self, target: &RouteTarget) -> Option<Duration> {
        self.first_token.or(target.upstream.timeouts.first_token)
    }
}

#[derive(Debug)]
pub struct RouteTarget {
    pub upstream: Arc<UpstreamClient>,
    /// The upstream's model name; `None` passes the requested name through.
    pub model: Option<String>,
    /// `upstream/model` (`upstream/*` for pass-through), for metrics, logs and plugins.
    pub label: Arc<str>,
    /// Tokens one request may hold there, when the config says.
    pub context_window: Option<u32>,
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

    pub(crate) fn record(&self, latency: Duration, failed: bool) {
        Self::ewma(&self.latency_ms, latency.as_secs_f64() * 1e3);
        // A stored 0.0 reads as "no data yet" in `ewma`; keep a failure-free average just above it.
        Self::ewma(&self.error_rate, if failed { 1.0 } else { f64::MIN_POSITIVE });
    }

    /// An attempt that failed after its response headers (a stream that broke off).
    pub(crate) fn failed(&self) {
        Self::ewma(&self.error_rate, 1.0);
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
pub(crate) struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    pub(crate) fn new(stats: &'a TargetStats) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(&stats.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The routing table, built once from the config: what plugins read (targets, their statistics,
/// the public names) and what the attempt loop walks.
#[derive(Debug)]
pub struct RouteTable {
    models: HashMap<String, Arc<ModelRoute>>,
    wildcard: Option<Arc<ModelRoute>>,
    /// Every target by its label; models that share a target share its statistics.
    targets: HashMap<Arc<str>, Arc<RouteTarget>>,
    /// Public names in config order, for `/v1/models`.
    names: Vec<String>,
    /// Every upstream by name, for targets plugins name that no model lists.
    upstreams: HashMap<String, Arc<UpstreamClient>>,
    /// Targets `upstream/model` that no model lists, which plugins declared routable through
    /// `catalog.check-target` (at most [`MAX_DECLARED`]).
    declared: RwLock<HashMap<Arc<str>, Arc<RouteTarget>>>,
}

/// Targets plugins may add to a table besides those the config lists.
const MAX_DECLARED: usize = 1024;

impl RouteTable {
    pub fn new(config: &Config) -> Result<Self, Error> {
        let upstreams =
            config.upstreams.iter().map(|u| UpstreamClient::new(u).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        let mut models = HashMap::new();
        let mut targets: HashMap<Arc<str>, Arc<RouteTarget>> = HashMap::new();
        let mut wildcard = None;
        let mut names = Vec::new();
        // Validation made sure a target's window, wherever it is given, is the same.
        let windows: HashMap<(usize, &str), u32> = config
            .models
            .iter()
            .flat_map(|m| &m.targets)
            .filter_map(|t| Some(((t.upstream, t.model.as_deref()?), t.context_window?)))
            .collect();
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
                            let context_window =
                                t.model.as_deref().and_then(|model| windows.get(&(t.upstream, model)).copied());
                            Arc::new(RouteTarget {
                                upstream,
                                model: t.model.clone(),
                                label,
                                context_window,
                                stats: TargetStats::default(),
                            })
                        })
                        .clone()
                })
                .collect();
            let route = Arc::new(ModelRoute {
                label: m.name.as_str().into(),
                targets: route_targets,
                retry: m.retry,
                first_token: m.first_token,
                failover: m.failover,
            });
            if m.is_wildcard() {
                wildcard = Some(route);
            } else {
                names.push(m.name.clone());
                models.insert(m.name.clone(), route);
            }
        }
        let upstreams = upstreams.into_iter().map(|u| (u.name.clone(), u)).collect();
        Ok(Self { models, wildcard, targets, names, upstreams, declared: RwLock::default() })
    }

    /// The public model names, for `/v1/models`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// A target by its label (`upstream/model`): one the config lists, or one a plugin declared.
    pub fn target(&self, label: &str) -> Option<Arc<RouteTarget>> {
        if let Some(target) = self.targets.get(label) {
            return Some(target.clone());
        }
        self.declared.read().unwrap_or_else(|e| e.into_inner()).get(label).cloned()
    }

    /// Whether requests can be sent to `name`, a public model name or a target `upstream/model`;
    /// a target of a configured upstream that no model lists is added (its statistics start
    /// empty). The error says why not, for a plugin's `init` to report.
    pub fn check_target(&self, name: &str) -> Result<(), String> {
        if self.models.contains_key(name) || self.target(name).is_some() {
            return Ok(());
        }
        let Some((upstream_name, model)) = name.split_once('/') else {
            let models = self.names.join(", ");
            return Err(format!(
                "{name:?} is neither a public model name (models: [{models}]) nor a target `upstream/model`"
            ));
        };
        let Some(upstream) = self.upstreams.get(upstream_name) else {
            let mut upstreams: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
            upstreams.sort_unstable();
            return Err(format!("{name:?} names no configured upstream (upstreams: [{}])", upstreams.join(", ")));
        };
        crate::api::check_model_name(model).map_err(|_| format!("{name:?} does not end in a valid model name"))?;
        let mut declared = self.declared.write().unwrap_or_else(|e| e.into_inner());
        if declared.len() >= MAX_DECLARED && !declared.contains_key(name) {
            return Err(format!("more than {MAX_DECLARED} targets outside the config were declared"));
        }
        let label: Arc<str> = name.into();
        declared.entry(label.clone()).or_insert_with(|| {
            Arc::new(RouteTarget {
                upstream: upstream.clone(),
                model: Some(model.to_owned()),
                label,
                // A target outside the config has no known window: it is never left out as too small.
                context_window: None,
                stats: TargetStats::default(),
            })
        });
        Ok(())
    }

    /// The target labels of a public model, in order.
    pub fn targets_of(&self, model: &str) -> Vec<String> {
        self.models.get(model).map(|r| r.targets.iter().map(|t| t.label.to_string()).collect()).unwrap_or_default()
    }

    /// The route of a requested model name; a name that is not a plausible one is refused first
    /// (a wildcard route passes names on to upstream URLs).
    pub fn resolve(&self, model: &str) -> Result<Arc<ModelRoute>, Error> {
        crate::api::check_model_name(model)?;
        self.models.get(model).or(self.wildcard.as_ref()).cloned().ok_or_else(|| {
            Error::new(Kind::NotFound, format!("The model `{model}` does not exist or you do not have access to it."))
                .param("model")
                .code("model_not_found")
        })
    }

    /// Where a plugin's `route` decision points: a public model's targets (one name that is a
    /// model), or the named targets in order, keeping the request's model label for metrics.
    pub fn rerouted(&self, from: &ModelRoute, to: &[String]) -> Option<Arc<ModelRoute>> {
        if let [one] = to
            && let Some(route) = self.models.get(one)
        {
            return Some(route.clone());
        }
        let targets = to.iter().map(|t| self.target(t)).collect::<Option<Vec<_>>>()?;
        (!targets.is_empty()).then(|| {
            Arc::new(ModelRoute {
                label: from.label.clone(),
                targets,
                retry: from.retry,
                first_token: from.first_token,
                failover: from.failover,
            })
        })
    }
}
