//! `hello-policy`: an example Weir policy plugin that uses every hook and host import that admits,
//! limits and accounts a request (rewriting content is `team-prompt`'s example).
//!
//! For each request it
//! - refuses end users named in `blocked_users` (403),
//! - reserves one request of the API key's `requests_per_minute` budget (429 with `retry-after`
//!   when it is spent),
//! - tags the response with `x-hello-policy: seen` and counts requests per model and day,
//! - logs upstream failures,
//! - and when the request is over, settles the reservation, prices the tokens and writes a ledger
//!   entry and metrics.
//!
//! Its config table arrives in `init` as JSON, e.g.
//! `{"blocked_users": ["mallory"], "requests_per_minute": 100}`.
//!
//! A plugin keeps no state between requests beyond its config: the gateway may run many instances
//! of it, recycle them, and replace them on a config reload. Whatever must outlive one request
//! lives in the host, in `kv`, `quota`, `ledger` and `metrics`.

use std::collections::BTreeSet;

use serde::Deserialize;
use weir_sdk::{
    Completion, Decision, HookSet, Plugin, PluginInfo, Rejection, Request, RequestInfo, ResponseAction, Usage, catalog,
    kv, ledger, log, metrics, quota,
};

/// The window of `requests_per_minute`.
const MINUTE_MS: u32 = 60_000;
/// One day, the bucket of the per-model request counters.
const DAY_MS: u64 = 86_400_000;
/// How long a per-model counter lives: its own day and the next, so yesterday's stays readable.
const COUNTER_TTL_MS: u32 = 2 * 86_400_000;
/// The per-request local that carries the quota reservation from `on_request` to `on_complete`.
const RESERVATION: &str = "reservation";
/// One request in this many gets a debug line about its model's targets.
const SAMPLE_ONE_IN: u64 = 100;

/// The plugin's config table, as the gateway passes it to `init`.
///
/// Unknown fields are refused so that a misspelt option fails the config load instead of being
/// silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// End users (the OpenAI `user` field) whose requests are refused.
    #[serde(default)]
    blocked_users: Vec<String>,
    /// How many requests each API key may make per minute.
    requests_per_minute: u64,
}

/// The plugin, built from its config once per instance.
struct HelloPolicy {
    /// A `BTreeSet` rather than a `HashSet`: std's hash maps seed themselves from `wasi:random`,
    /// which the Weir world does not grant, so a component using them fails to load.
    blocked_users: BTreeSet<String>,
    /// The per-minute request budget of each API key.
    requests_per_minute: u64,
}

impl Plugin for HelloPolicy {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        // An `Err` here stops the gateway from loading the config, with this message; the SDK's
        // reader names the field at fault (`requests_per_minute: invalid type: ...`).
        let config: Config = weir_sdk::config(config).map_err(|e| format!("hello-policy config: {e}"))?;
        if config.requests_per_minute == 0 {
            return Err("hello-policy config: requests_per_minute must be at least 1".into());
        }
        let plugin = HelloPolicy {
            blocked_users: config.blocked_users.into_iter().collect(),
            requests_per_minute: config.requests_per_minute,
        };
        // The host calls only the hooks named here. This plugin reads no request headers and not
        // the raw body: everything it needs is in `Request::info`, which the host has parsed.
        let hooks = HookSet::ON_REQUEST | HookSet::ON_RESPONSE_HEADERS | HookSet::ON_COMPLETE;
        Ok((plugin, PluginInfo::hooks(hooks)))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();

        // Blocked end users first: refusing them spends nothing of their key's budget.
        if let Some(user) = &info.end_user
            && self.blocked_users.contains(user)
        {
            return Decision::Reject(Rejection {
                status: 403,
                code: "user_blocked".into(),
                message: format!("user {user} may not use this gateway"),
                retry_after_ms: None,
            });
        }

        // Reserve one request of the key's budget before the request goes upstream. The quota key
        // is namespaced per plugin by the host, so "rpm:" cannot collide with another plugin's.
        // A plugin with several limits reserves them together with `quota::reserve_all` (all or
        // none, one round trip when the state is shared in Redis).
        let limit = quota::Limit { amount: self.requests_per_minute, window_ms: MINUTE_MS };
        match quota::reserve(&format!("rpm:{}", info.key_name), 1, limit) {
            Ok(grant) => {
                // Locals are bytes; the reservation id travels to `on_complete` as 8 of them.
                req.set_local(RESERVATION, &grant.reservation.to_le_bytes());
                // Gauges are f64; a per-minute budget is far below 2^53, so the cast is exact.
                let remaining = grant.remaining as f64;
                metrics::gauge_set("rpm_remaining", &[("key".into(), info.key_name.clone())], remaining);
            }
            Err(denial) => {
                return Decision::Reject(Rejection {
                    status: 429,
                    code: "rate_limit_exceeded".into(),
                    message: format!(
                        "key {} is over its limit of {} requests per minute",
                        info.key_name, self.requests_per_minute
                    ),
                    // The host turns this into a `retry-after` header.
                    retry_after_ms: Some(denial.retry_after_ms),
                });
            }
        }

        // Applied to the client's response once this hook returns.
        req.add_response_header("x-hello-policy", "seen");

        // Count requests per model and day. Plugins get no WASI clock: time comes from the host's
        // catalog.
        let day = catalog::now_ms() / DAY_MS;
        let today = kv::add(&format!("requests:{}:{day}", info.model), 1, COUNTER_TTL_MS);

        // Sample rather than log every request: `digest` hashes the body and the catalog calls
        // copy strings, which is cheap but not free on the request path. Randomness, like time,
        // comes from the host.
        if catalog::random_u64().is_multiple_of(SAMPLE_ONE_IN) {
            log_targets(req, &info, today);
        }

        Decision::Continue
    }

    fn on_response_headers(&self, req: &Request, status: u16) -> ResponseAction {
        if !(200..300).contains(&status) {
            log::log(log::Level::Info, &format!("request {}: upstream answered {status}", req.info().request_id));
        }
        // Returning `ResponseAction::Retry("upstream/model".into())` would drop this response and
        // try another target instead.
        ResponseAction::Continue
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        let info = req.info();

        // Settle the reservation with what was used: the one request. A request that was refused
        // in `on_request` reserved nothing and has nothing to settle.
        if let Some(reservation) = req.get_local(RESERVATION).and_then(|bytes| bytes.try_into().ok()) {
            quota::settle(u64::from_le_bytes(reservation), 1);
        }

        let status_class = format!("{}xx", outcome.status / 100);
        metrics::counter_add("requests", &[("model".into(), info.model.clone()), ("status".into(), status_class)], 1);

        // Without usage (the upstream failed, or the client left early) there is nothing to price.
        let Some(usage) = outcome.usage else { return };
        // A target's own price wins over its public model's.
        let price = catalog::price(&outcome.target).or_else(|| catalog::price(&info.model));
        let cost_pico_usd = price.map_or(0, |price| cost_pico_usd(usage, price));
        metrics::counter_add("cost_pico_usd", &[("team".into(), info.team.clone())], cost_pico_usd);

        // Durable once `append` returns, so billing survives a crash of the gateway.
        ledger::append(&ledger::Entry {
            request_id: info.request_id,
            key_name: info.key_name,
            team: info.team,
            model: info.model,
            target: outcome.target,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage.cached_tokens,
            cost_pico_usd,
        });
    }
}

/// The cost of `usage` in picodollars. Prices are micro-dollars per million tokens, so a token
/// costs exactly `price` picodollars; cached prompt tokens are charged at the cached rate and the
/// rest of the prompt at the input rate.
fn cost_pico_usd(usage: Usage, price: catalog::ModelPrice) -> u64 {
    let cached = u64::from(usage.cached_tokens.min(usage.prompt_tokens));
    let uncached = u64::from(usage.prompt_tokens) - cached;
    let completion = u64::from(usage.completion_tokens);
    (uncached.saturating_mul(price.input))
        .saturating_add(cached.saturating_mul(price.cached_input))
        .saturating_add(completion.saturating_mul(price.output))
}

/// Logs, at debug level, the request's digest and the health of each target of its model.
fn log_targets(req: &Request, info: &RequestInfo, today: i64) {
    // The digest identifies identical requests (the same model and body), e.g. to spot retries.
    let mut line = format!("request {} ({}), {today} today for {}:", req.digest(), info.request_id, info.model);
    for target in catalog::targets(&info.model) {
        match catalog::target_stats(&target) {
            Some(stats) => line.push_str(&format!(
                " {target} [healthy={} in_flight={} latency={:.0}ms errors={:.1}%]",
                stats.healthy,
                stats.in_flight,
                stats.latency_ms,
                stats.error_rate * 100.0
            )),
            None => line.push_str(&format!(" {target} [no stats]")),
        }
    }
    log::log(log::Level::Debug, &line);
}

weir_sdk::export_plugin!(HelloPolicy);
