//! `router`: public model names → the order in which to try their targets.
//!
//! Per model a strategy (priority, weighted, least latency, lowest cost, least busy) orders the
//! targets — those configured here, or the model's targets from the gateway's `[[models]]` — and
//! the plugin answers with the whole order (`route-chain`), so the gateway falls back along it on
//! retryable errors. Targets whose circuit is open (they kept failing) are skipped until their
//! cooldown ends and a probe succeeds; targets whose context window is too small for the request
//! are skipped when a larger one exists. Keys allowed to may force a target with a header.

mod breaker;
mod order;

use std::collections::{BTreeMap, BTreeSet};

use breaker::{Breaker, Host, State};
use order::{Candidate, Strategy, fit_context, order};
use serde::Deserialize;
use weir_sdk::{Completion, Decision, HookSet, Plugin, PluginInfo, Rejection, Request, catalog};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Per public model name.
    #[serde(default)]
    models: BTreeMap<String, ModelConfig>,
    /// For models not listed: their configured targets in this strategy, breaker applied.
    #[serde(default)]
    default_strategy: Strategy,
    #[serde(default)]
    breaker: BreakerConfig,
    /// The header that forces a target (`upstream/model`).
    #[serde(default = "default_override_header")]
    override_header: String,
    /// Key names that may use the override header; `"*"` allows every key.
    #[serde(default)]
    override_keys: BTreeSet<String>,
}

/// The per-request key naming the target this request probes.
const PROBE: &str = "probe";

fn default_override_header() -> String {
    "x-weir-target".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerConfig {
    /// Consecutive failures that open a target's circuit.
    #[serde(default = "default_failures")]
    failures: u32,
    /// The longest an open circuit skips its target.
    #[serde(default = "default_cooldown")]
    cooldown_seconds: f64,
    /// The first cooldown; it doubles each time the circuit opens again without a success.
    #[serde(default = "default_min_cooldown")]
    min_cooldown_seconds: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            cooldown_seconds: default_cooldown(),
            min_cooldown_seconds: default_min_cooldown(),
        }
    }
}

fn default_min_cooldown() -> f64 {
    1.0
}

fn default_failures() -> u32 {
    5
}

fn default_cooldown() -> f64 {
    30.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelConfig {
    #[serde(default)]
    strategy: Strategy,
    /// The targets, in priority order; empty: the model's targets from `[[models]]`.
    #[serde(default)]
    targets: Vec<TargetConfig>,
}

/// A target as written: `"upstream/model"` or `{ target = "…", weight = 3, context_window = 8192 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TargetConfig {
    Name(String),
    Full {
        target: String,
        #[serde(default = "one")]
        weight: u32,
        context_window: Option<u32>,
    },
}

fn one() -> u32 {
    1
}

impl TargetConfig {
    fn candidate(&self) -> Candidate {
        let (target, weight, context_window) = match self {
            TargetConfig::Name(t) => (t.clone(), 1, None),
            TargetConfig::Full { target, weight, context_window } => (target.clone(), *weight, *context_window),
        };
        Candidate { target, weight, latency_ms: 0.0, in_flight: 0, cost: None, context_window }
    }
}

struct Router {
    config: Config,
    breaker: Breaker,
}

impl Router {
    fn refuse(status: u16, code: &str, message: String, retry_after_ms: Option<u32>) -> Decision {
        Decision::Reject(Rejection { status, code: code.into(), message, retry_after_ms })
    }
}

impl Plugin for Router {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let config: Config = weir_sdk::config(config).map_err(|e| format!("router config: {e}"))?;
        if config.breaker.failures == 0 {
            return Err("router config: breaker.failures must be at least 1".into());
        }
        if !(config.breaker.cooldown_seconds.is_finite() && config.breaker.cooldown_seconds > 0.0) {
            return Err("router config: breaker.cooldown_seconds must be positive".into());
        }
        let min = config.breaker.min_cooldown_seconds;
        if !(min.is_finite() && min > 0.0 && min <= config.breaker.cooldown_seconds) {
            return Err(
                "router config: breaker.min_cooldown_seconds must be positive and at most cooldown_seconds".into()
            );
        }
        for (name, model) in &config.models {
            if let Some(bad) = model.targets.iter().map(TargetConfig::candidate).find(|c| !c.target.contains('/')) {
                return Err(format!(
                    "router config: models.{name}: {:?} is not a target (`upstream/model`)",
                    bad.target
                ));
            }
            if model.strategy == Strategy::Weighted
                && model.targets.iter().map(|t| t.candidate().weight).sum::<u32>() == 0
            {
                return Err(format!("router config: models.{name}: every weight is 0"));
            }
        }
        let breaker = Breaker {
            failures: config.breaker.failures,
            min_cooldown_ms: (min * 1000.0) as u64,
            max_cooldown_ms: (config.breaker.cooldown_seconds * 1000.0) as u64,
        };
        let info = PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE)
            .reading_headers([config.override_header.clone()]);
        Ok((Router { config, breaker }, info))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        if let Some(forced) = req.header(&self.config.override_header) {
            let allowed = self.config.override_keys.contains("*") || self.config.override_keys.contains(&info.key_name);
            if !allowed {
                let message = format!(
                    "The key {:?} may not choose its target with {}.",
                    info.key_name, self.config.override_header
                );
                return Router::refuse(403, "target_override_not_allowed", message, None);
            }
            if catalog::target_stats(&forced).is_none() {
                let message =
                    format!("{} names {forced:?}, which is not a configured target.", self.config.override_header);
                return Router::refuse(400, "unknown_target", message, None);
            }
            return Decision::Route(forced);
        }

        let (strategy, candidates) = match self.config.models.get(&info.model) {
            Some(m) if !m.targets.is_empty() => (m.strategy, m.targets.iter().map(TargetConfig::candidate).collect()),
            Some(m) => (m.strategy, configured(&info.model)),
            None => (self.config.default_strategy, configured(&info.model)),
        };
        if candidates.is_empty() {
            // A wildcard pass-through: nothing to choose between.
            return Decision::Continue;
        }
        let completion = u64::from(info.max_tokens.unwrap_or(0));
        let needed = u64::from(info.prompt_tokens_estimate) + completion;
        let now = catalog::now_ms();
        let mut cooling = None::<u64>;
        let mut probe = None;
        let candidates = fit_context(candidates, needed);
        let targets: Vec<String> = candidates.iter().map(|c| c.target.clone()).collect();
        let states = self.breaker.states(&Host, &targets, now);
        let mut available = Vec::with_capacity(candidates.len());
        for (mut c, state) in candidates.into_iter().zip(states) {
            match state {
                State::Open { until } => {
                    cooling = Some(cooling.map_or(until, |u| u.min(until)));
                    continue;
                }
                State::Probe => {
                    // One probe per request: a second claimed target gives its turn back.
                    if let Some(other) = probe.replace(c.target.clone()) {
                        self.breaker.release_probe(&Host, &other);
                    }
                }
                State::Closed => {}
            }
            if let Some(stats) = catalog::target_stats(&c.target) {
                c.latency_ms = stats.latency_ms;
                c.in_flight = stats.in_flight;
            }
            if strategy == Strategy::LowestCost {
                c.cost = catalog::price(&c.target)
                    .map(|p| u64::from(info.prompt_tokens_estimate) * p.input + completion.max(1) * p.output);
            }
            available.push(c);
        }
        if available.is_empty() {
            let wait = cooling.unwrap_or(now).saturating_sub(now);
            let message = format!(
                "Every target of the model {:?} is cooling down after repeated failures; retry in {} s.",
                info.model,
                wait.div_ceil(1000)
            );
            return Router::refuse(503, "no_healthy_target", message, Some(u32::try_from(wait).unwrap_or(u32::MAX)));
        }
        let mut ordered: Vec<String> =
            order(strategy, available, catalog::random_u64()).into_iter().map(|c| c.target).collect();
        // A probe goes first: it is how a cooled-down target proves itself.
        if let Some(probe) = probe
            && let Some(i) = ordered.iter().position(|t| *t == probe)
        {
            let first = ordered.remove(i);
            ordered.insert(0, first);
            req.set_local(PROBE, probe.as_bytes());
        }
        Decision::RouteChain(ordered)
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        let now = catalog::now_ms();
        let probe = req.get_local(PROBE).and_then(|b| String::from_utf8(b).ok());
        let mut probed = false;
        for attempt in &outcome.attempts {
            let success = match attempt.status {
                0 | 429 | 500..=599 => false,
                200..=299 => true,
                // Other statuses are the request's fault, not the target's.
                _ => continue,
            };
            // The first attempt at the probed target is the probe; retries there are traffic.
            let is_probe = !probed && probe.as_deref() == Some(attempt.target.as_str());
            probed |= is_probe;
            breaker::announce(&attempt.target, self.breaker.record(&Host, &attempt.target, success, is_probe, now));
        }
        if let Some(probe) = probe.filter(|_| !probed) {
            self.breaker.release_probe(&Host, &probe);
        }
    }
}

/// The model's targets as the gateway's config lists them.
fn configured(model: &str) -> Vec<Candidate> {
    catalog::targets(model)
        .into_iter()
        .map(|target| Candidate { target, weight: 1, latency_ms: 0.0, in_flight: 0, cost: None, context_window: None })
        .collect()
}

weir_sdk::export_plugin!(Router);
