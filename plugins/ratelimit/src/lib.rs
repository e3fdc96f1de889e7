//! `ratelimit`: requests per minute, tokens per minute, concurrent requests and (for prediction
//! traffic) instances per minute, counted per key, team, model and end user in any combination.
//!
//! At admission every rule that applies reserves from the host's `quota` buckets: one request, the
//! worst case of tokens (the prompt estimate plus `max_tokens`, or a configured default), and one
//! concurrency slot, all in one `quota.reserve-all` (one round trip with shared state). If any
//! refuses, none is reserved and the client gets a 429 with `retry-after`. On completion the token reservation is settled with the tokens
//! actually used and the slot is released. Every answer carries OpenAI's `x-ratelimit-*` headers
//! for the tightest request and token limits that applied.
//!
//! Buckets hold `limit` and refill continuously at `limit` per minute (concurrency slots are
//! buckets that practically never refill, and are given back on completion). See the README for
//! the overshoot bounds.

mod rules;

use rules::{Config, Subject, reset_format, token_reservation};
use serde::{Deserialize, Serialize};
use weir_sdk::{ApiKind, Completion, Decision, HookSet, Plugin, PluginInfo, Rejection, Request, quota};

/// A minute, the window of the per-minute limits.
const MINUTE_MS: u32 = 60_000;
/// The window of a concurrency bucket: long enough that it refills by less than a slot a day for
/// limits under 50, so slots come back only when requests end — and a slot lost to a plugin fault
/// still comes back eventually.
const SLOT_WINDOW_MS: u32 = u32::MAX;
/// The per-request local with what `on_request` reserved.
const HELD: &str = "held";

/// What one request holds, from admission to completion.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Held {
    /// Request reservations (settled with 1: they only need cleaning up).
    requests: Vec<u64>,
    /// Token reservations and the amount each reserved.
    tokens: Vec<(u64, u64)>,
    /// Concurrency slots (settled with 0: given back).
    slots: Vec<u64>,
    /// Instance reservations of a prediction and the amount each reserved.
    #[serde(default)]
    instances: Vec<(u64, u64)>,
}

impl Held {
    fn release(&self, answered: bool, tokens_used: impl Fn(u64) -> u64) {
        for &r in &self.requests {
            quota::settle(r, 1);
        }
        for &(r, reserved) in &self.tokens {
            quota::settle(r, tokens_used(reserved));
        }
        for &r in &self.slots {
            quota::settle(r, 0);
        }
        // The instances asked for were predicted when an upstream answered, else none were.
        for &(r, reserved) in &self.instances {
            quota::settle(r, if answered { reserved } else { 0 });
        }
    }
}

/// The tightest limit seen of one kind, for the response headers.
#[derive(Debug, Clone, Copy)]
struct Tightest {
    limit: u64,
    remaining: u64,
    reset_ms: u32,
}

impl Tightest {
    fn keep(slot: &mut Option<Tightest>, candidate: Tightest) {
        if slot.is_none_or(|t| candidate.remaining < t.remaining) {
            *slot = Some(candidate);
        }
    }

    fn headers(slot: Option<Tightest>, kind: &str, req: &Request) {
        if let Some(t) = slot {
            req.add_response_header(&format!("x-ratelimit-limit-{kind}"), &t.limit.to_string());
            req.add_response_header(&format!("x-ratelimit-remaining-{kind}"), &t.remaining.to_string());
            req.add_response_header(&format!("x-ratelimit-reset-{kind}"), &reset_format(t.reset_ms));
        }
    }
}

/// A refusal found while reserving.
struct Refusal {
    what: &'static str,
    limit: u64,
    asked: u64,
    retry_after_ms: u32,
    rule: String,
}

struct RateLimit {
    config: Config,
}

impl Plugin for RateLimit {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let config = Config::parse(config)?;
        Ok((RateLimit { config }, PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE)))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        let subject =
            Subject { key: &info.key_name, team: &info.team, model: &info.model, user: info.end_user.as_deref() };
        // Every API but embeddings and predictions generates text: chat, completions, Messages,
        // Responses. A prediction has no tokens (its estimate is 0); it is counted in instances.
        let tokens = match info.api {
            ApiKind::Embeddings | ApiKind::Predict => u64::from(info.prompt_tokens_estimate),
            _ => token_reservation(info.prompt_tokens_estimate, info.max_tokens, self.config.default_max_tokens),
        };
        // Every limit that applies, reserved together: one host call (one round trip with shared
        // state), all or nothing, so a refused request holds nothing.
        let mut asks = Vec::new();
        let mut what = Vec::new();
        for (i, rule) in self.config.limits.iter().enumerate().filter(|(_, r)| r.applies_to(&subject)) {
            let scope = rule.scope(i, &subject);
            let checks = [
                ("requests per minute", "rpm", rule.requests_per_minute, 1, MINUTE_MS),
                ("tokens per minute", "tpm", rule.tokens_per_minute, tokens, MINUTE_MS),
                ("concurrent requests", "slots", rule.concurrent.map(u64::from), 1, SLOT_WINDOW_MS),
                (
                    "instances per minute",
                    "ipm",
                    rule.instances_per_minute.filter(|_| info.api == ApiKind::Predict),
                    u64::from(info.instances),
                    MINUTE_MS,
                ),
            ];
            for (name, suffix, limit, asked, window_ms) in checks {
                let Some(limit) = limit else { continue };
                asks.push(quota::Ask {
                    key: format!("{scope}|{suffix}"),
                    amount: asked,
                    limit: quota::Limit { amount: limit, window_ms },
                    covers: None,
                });
                what.push((name, suffix, limit, asked, i));
            }
        }
        if asks.is_empty() {
            return Decision::Continue;
        }
        let mut tightest: [Option<Tightest>; 3] = [None; 3];
        let keep = |suffix: &str, seen: Tightest, tightest: &mut [Option<Tightest>; 3]| match suffix {
            "rpm" => Tightest::keep(&mut tightest[0], seen),
            "tpm" => Tightest::keep(&mut tightest[1], seen),
            "ipm" => Tightest::keep(&mut tightest[2], seen),
            _ => {}
        };
        let headers = |tightest: &[Option<Tightest>; 3]| {
            for (slot, kind) in tightest.iter().zip(["requests", "tokens", "instances"]) {
                Tightest::headers(*slot, kind, req);
            }
        };
        let refusal = match quota::reserve_all(&asks) {
            Ok(grants) => {
                let mut held = Held::default();
                for (grant, &(_, suffix, limit, asked, _)) in grants.iter().zip(&what) {
                    let seen = Tightest { limit, remaining: grant.remaining, reset_ms: grant.reset_ms };
                    keep(suffix, seen, &mut tightest);
                    match suffix {
                        "rpm" => held.requests.push(grant.reservation),
                        "tpm" => held.tokens.push((grant.reservation, asked)),
                        "ipm" => held.instances.push((grant.reservation, asked)),
                        _ => held.slots.push(grant.reservation),
                    }
                }
                headers(&tightest);
                if let Ok(bytes) = serde_json::to_vec(&held) {
                    req.set_local(HELD, &bytes);
                }
                return Decision::Continue;
            }
            Err(refusal) => refusal,
        };
        let Some(&(name, suffix, limit, asked, rule)) = what.get(refusal.index as usize) else {
            return Decision::Continue;
        };
        let denial = refusal.denial;
        let seen = Tightest { limit, remaining: denial.remaining, reset_ms: denial.retry_after_ms };
        keep(suffix, seen, &mut tightest);
        headers(&tightest);
        // A concurrency slot frees up when some request ends; a second is a fair wait.
        let retry_after_ms = if suffix == "slots" { 1000 } else { denial.retry_after_ms };
        let r = Refusal { what: name, limit, asked, retry_after_ms, rule: self.config.limits[rule].describe(&subject) };
        let message = if r.asked > r.limit {
            format!(
                "Request too large: {} ({}) is limited to {} {}, and this request needs {}.",
                r.rule, r.what, r.limit, r.what, r.asked
            )
        } else {
            format!(
                "Rate limit reached for {} on {}: limit {}. Please try again in {}.",
                r.rule,
                r.what,
                r.limit,
                reset_format(r.retry_after_ms)
            )
        };
        Decision::Reject(Rejection {
            status: 429,
            code: "rate_limit_exceeded".into(),
            message,
            retry_after_ms: Some(r.retry_after_ms),
        })
    }

    fn on_complete(&self, req: &Request, outcome: Completion) {
        // A mirrored copy reserved nothing: the client's own request did.
        if outcome.mirrored {
            return;
        }
        let Some(held) = req.get_local(HELD).and_then(|b| serde_json::from_slice::<Held>(&b).ok()) else { return };
        let answered = outcome.attempts.iter().any(|a| (200..300).contains(&a.status));
        held.release(answered, |reserved| match outcome.usage {
            Some(u) => u64::from(u.prompt_tokens) + u64::from(u.completion_tokens),
            // No upstream answered: nothing was used.
            None if !answered => 0,
            // An answer without usage (a stream cut short): charge what was reserved.
            None => reserved,
        });
    }
}

weir_sdk::export_plugin!(RateLimit);
