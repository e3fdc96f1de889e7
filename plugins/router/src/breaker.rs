//! Circuit breaking per target, with its state in the host's key-value store so every instance
//! (and, with shared state, every replica) sees the same:
//!
//! - closed: requests flow; consecutive failures (no response, 429, 5xx) are counted;
//! - open: after `failures` in a row, for `cooldown` the target is skipped;
//! - half-open: after the cooldown, one request at a time (a probe) may use it: a success closes
//!   the circuit, a failure opens it for another cooldown.

use weir_sdk::{kv, log, metrics};

/// How long one probe has the half-open target to itself before another may try.
const PROBE_MS: u32 = 10_000;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    pub failures: u32,
    pub cooldown_ms: u64,
}

/// Whether a target may be tried now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// Cooling down until this time (ms since the epoch).
    Open {
        until: u64,
    },
    /// Cooled down, and this request is the probe.
    Probe,
}

fn open_key(target: &str) -> String {
    format!("open|{target}")
}

fn fails_key(target: &str) -> String {
    format!("fails|{target}")
}

fn probe_key(target: &str) -> String {
    format!("probe|{target}")
}

fn open_until(target: &str) -> Option<u64> {
    kv::get(&open_key(target)).and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
}

impl Breaker {
    /// The target's state for a new request at `now`. Claims the probe when the cooldown is over.
    pub fn state(&self, target: &str, now: u64) -> State {
        match open_until(target) {
            None => State::Closed,
            Some(until) if now < until => State::Open { until },
            Some(until) => {
                if kv::add(&probe_key(target), 1, PROBE_MS) == 1 {
                    State::Probe
                } else {
                    // Someone else is probing; until it reports, treat the target as cooling down.
                    State::Open { until: until.max(now + 1000) }
                }
            }
        }
    }

    /// Records how one attempt at `target` went.
    pub fn record(&self, target: &str, success: bool, now: u64) {
        if success {
            if kv::get(&fails_key(target)).is_some() {
                kv::delete(&fails_key(target));
            }
            if open_until(target).is_some() {
                kv::delete(&open_key(target));
                kv::delete(&probe_key(target));
                log::log(log::Level::Info, &format!("circuit closed: {target} answered again"));
                metrics::gauge_set("circuit_open", &[("target".into(), target.into())], 0.0);
            }
            return;
        }
        let failures = kv::add(&fails_key(target), 1, 0);
        let half_open = open_until(target).is_some_and(|until| now >= until);
        if failures >= i64::from(self.failures) || half_open {
            let until = now + self.cooldown_ms;
            kv::set(&open_key(target), until.to_string().as_bytes(), 0);
            kv::delete(&probe_key(target));
            kv::delete(&fails_key(target));
            log::log(
                log::Level::Warn,
                &format!(
                    "circuit open: {target} failed {failures} time(s) in a row; skipped for {} ms",
                    self.cooldown_ms
                ),
            );
            metrics::counter_add("circuit_opened", &[("target".into(), target.into())], 1);
            metrics::gauge_set("circuit_open", &[("target".into(), target.into())], 1.0);
        }
    }
}
