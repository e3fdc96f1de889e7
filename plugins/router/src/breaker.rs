//! Circuit breaking per target, with its state in the host's key-value store so every instance
//! (and, with shared state, every replica) sees the same:
//!
//! - closed: requests flow; consecutive failures (no response, 429, 5xx) are counted;
//! - open: after `failures` in a row the target is skipped for a cooldown. The first cooldown is
//!   short (`min_cooldown`); each time the circuit opens again without a success in between it
//!   doubles, up to `max_cooldown`: a target that is down for long is left alone for longer,
//!   one that was down for a moment is back within seconds;
//! - half-open: after the cooldown one request at a time (the probe) may use it. Its success closes
//!   the circuit, its failure opens it for the next, doubled, cooldown. A probe that never reached
//!   the target (another plugin answered, the request was refused) gives the turn to the next one
//!   at once.
//!
//! Any success closes the circuit, the probe's or not: real traffic that gets through (a forced
//! target, a request already in flight) puts a recovered target back at once. Failures of requests
//! that are not the probe do not extend an open circuit: they were sent before it opened.
//!
//! The logic runs over the [`Store`] trait, so its unit tests run natively on an in-memory store.
//! Each step reads what it needs in one call (on Redis, one round trip): the circuits of all of a
//! request's candidates at once, and a finished attempt's circuit and failure count together;
//! writes happen only when something changes.

use weir_sdk::{MAX_MANY, kv, log, metrics};

/// How long one probe has the half-open target to itself if its request never reports back.
const PROBE_MS: u32 = 10_000;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct Breaker {
    pub failures: u32,
    pub min_cooldown_ms: u64,
    pub max_cooldown_ms: u64,
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

/// What an attempt changed, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The circuit opened for this long, after this many consecutive failures (0: a failed probe).
    Opened {
        cooldown_ms: u64,
        failures: i64,
    },
    Closed,
}

/// Where the breaker keeps its state: the host's key-value store in the plugin.
pub trait Store {
    /// The value of every key, in order, in one call.
    fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>>;
    fn set(&self, key: &str, value: &[u8], ttl_ms: u32);
    /// Adds `delta` and returns the new value; a new key lives `ttl_ms` (0: for ever).
    fn add(&self, key: &str, delta: i64, ttl_ms: u32) -> i64;
    fn delete(&self, key: &str);
}

/// The host's key-value store.
pub struct Host;

impl Store for Host {
    fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        keys.chunks(MAX_MANY).flat_map(kv::get_many).collect()
    }

    fn set(&self, key: &str, value: &[u8], ttl_ms: u32) {
        kv::set(key, value, ttl_ms);
    }

    fn add(&self, key: &str, delta: i64, ttl_ms: u32) -> i64 {
        kv::add(key, delta, ttl_ms)
    }

    fn delete(&self, key: &str) {
        kv::delete(key);
    }
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

/// An open circuit: until when, and how many times it opened without a success in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Opening {
    until: u64,
    trips: u32,
}

/// The opening an `open|…` value records.
fn opening(value: Option<Vec<u8>>) -> Option<Opening> {
    let value = value?;
    let text = std::str::from_utf8(&value).ok()?;
    let (until, trips) = text.split_once(',').unwrap_or((text, "0"));
    Some(Opening { until: until.parse().ok()?, trips: trips.parse().unwrap_or(0) })
}

impl Breaker {
    /// The cooldown after the circuit opened `trips` times before without a success in between.
    pub fn cooldown(&self, trips: u32) -> u64 {
        self.min_cooldown_ms.saturating_mul(1 << trips.min(32)).min(self.max_cooldown_ms)
    }

    /// Each target's state for a new request at `now`, their circuits read in one call. Claims
    /// the probe of a target whose cooldown is over.
    pub fn states(&self, store: &impl Store, targets: &[String], now: u64) -> Vec<State> {
        let keys: Vec<String> = targets.iter().map(|t| open_key(t)).collect();
        let openings = store.get_many(&keys);
        targets
            .iter()
            .zip(openings)
            .map(|(target, value)| match opening(value) {
                None => State::Closed,
                Some(o) if now < o.until => State::Open { until: o.until },
                Some(o) => {
                    if store.add(&probe_key(target), 1, PROBE_MS) == 1 {
                        State::Probe
                    } else {
                        // Someone else is probing; until it reports, treat the target as cooling down.
                        State::Open { until: o.until.max(now + 1000) }
                    }
                }
            })
            .collect()
    }

    /// Records how one attempt at `target` went; `probe` says it was this request's probe.
    pub fn record(&self, store: &impl Store, target: &str, success: bool, probe: bool, now: u64) -> Change {
        let mut read = store.get_many(&[open_key(target), fails_key(target)]).into_iter();
        let (open, failing) = (opening(read.next().flatten()), read.next().flatten().is_some());
        if success {
            if failing {
                store.delete(&fails_key(target));
            }
            if open.is_some() {
                store.delete(&open_key(target));
                store.delete(&probe_key(target));
                return Change::Closed;
            }
            return Change::None;
        }
        let (trips, failures) = match open {
            // The probe failed: open again, for longer.
            Some(o) if probe => (o.trips + 1, 0),
            // Sent before the circuit opened (or forced there): no news about the target now.
            Some(_) => return Change::None,
            None => {
                let failures = store.add(&fails_key(target), 1, 0);
                if failures < i64::from(self.failures) {
                    return Change::None;
                }
                store.delete(&fails_key(target));
                (0, failures)
            }
        };
        let cooldown_ms = self.cooldown(trips);
        store.set(&open_key(target), format!("{},{trips}", now + cooldown_ms).as_bytes(), 0);
        store.delete(&probe_key(target));
        Change::Opened { cooldown_ms, failures }
    }

    /// The probe of `target` never reached it: the next request may probe.
    pub fn release_probe(&self, store: &impl Store, target: &str) {
        store.delete(&probe_key(target));
    }
}

/// Logs a change and keeps the circuit metrics (`circuit_opened`, `circuit_open`).
pub fn announce(target: &str, change: Change) {
    let labels = [("target".to_owned(), target.to_owned())];
    match change {
        Change::None => {}
        Change::Closed => {
            log::log(log::Level::Info, &format!("circuit closed: {target} answered again"));
            metrics::gauge_set("circuit_open", &labels, 0.0);
        }
        Change::Opened { cooldown_ms, failures } => {
            let why = if failures == 0 {
                "its probe failed".to_owned()
            } else {
                format!("it failed {failures} time(s) in a row")
            };
            log::log(log::Level::Warn, &format!("circuit open: {target}: {why}; skipped for {cooldown_ms} ms"));
            metrics::counter_add("circuit_opened", &labels, 1);
            metrics::gauge_set("circuit_open", &labels, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// The key-value store without TTLs (no test here runs long enough for one to matter).
    /// Counts its calls: each is a round trip when the host's store is Redis.
    #[derive(Default)]
    struct Memory(RefCell<HashMap<String, Vec<u8>>>, std::cell::Cell<usize>);

    impl Memory {
        fn call(&self) {
            self.1.set(self.1.get() + 1);
        }

        /// The calls since the last time this was asked.
        fn calls(&self) -> usize {
            self.1.replace(0)
        }

        fn state(&self, target: &str, now: u64) -> State {
            B.states(self, &[target.to_owned()], now)[0]
        }
    }

    impl Store for Memory {
        fn get_many(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
            self.call();
            keys.iter().map(|k| self.0.borrow().get(k).cloned()).collect()
        }

        fn set(&self, key: &str, value: &[u8], _: u32) {
            self.call();
            self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
        }

        fn add(&self, key: &str, delta: i64, _: u32) -> i64 {
            self.call();
            let mut map = self.0.borrow_mut();
            let old = map.get(key).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok()).unwrap_or(0);
            map.insert(key.to_owned(), (old + delta).to_string().into_bytes());
            old + delta
        }

        fn delete(&self, key: &str) {
            self.call();
            self.0.borrow_mut().remove(key);
        }
    }

    const B: Breaker = Breaker { failures: 2, min_cooldown_ms: 1_000, max_cooldown_ms: 30_000 };
    const T: &str = "a/x";

    #[test]
    fn cooldowns_double_up_to_the_cap() {
        let got: Vec<u64> = (0..7).map(|trips| B.cooldown(trips)).collect();
        assert_eq!(got, [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        assert_eq!(B.cooldown(u32::MAX), 30_000);
    }

    #[test]
    fn a_failed_probe_opens_for_the_next_cooldown_not_the_longest() {
        let s = Memory::default();
        assert_eq!(B.record(&s, T, false, false, 0), Change::None);
        assert_eq!(B.record(&s, T, false, false, 0), Change::Opened { cooldown_ms: 1_000, failures: 2 });
        assert_eq!(s.state(T, 500), State::Open { until: 1_000 });
        assert_eq!(s.state(T, 1_000), State::Probe);
        assert_eq!(s.state(T, 1_000), State::Open { until: 2_000 }, "one probe at a time");
        assert_eq!(B.record(&s, T, false, true, 1_100), Change::Opened { cooldown_ms: 2_000, failures: 0 });
        assert_eq!(s.state(T, 3_099), State::Open { until: 3_100 });
        // The target recovered: the next probe, two seconds on, closes the circuit.
        assert_eq!(s.state(T, 3_100), State::Probe);
        assert_eq!(B.record(&s, T, true, true, 3_150), Change::Closed);
        assert_eq!(s.state(T, 3_200), State::Closed);
        // Closed means the next opening starts short again.
        B.record(&s, T, false, false, 4_000);
        assert_eq!(B.record(&s, T, false, false, 4_000), Change::Opened { cooldown_ms: 1_000, failures: 2 });
    }

    #[test]
    fn stale_failures_do_not_extend_an_open_circuit_and_any_success_closes_it() {
        let s = Memory::default();
        B.record(&s, T, false, false, 0);
        B.record(&s, T, false, false, 0);
        // A request sent before the circuit opened fails after its cooldown ended.
        assert_eq!(B.record(&s, T, false, false, 1_500), Change::None);
        assert_eq!(s.state(T, 1_500), State::Probe, "still half-open, probing");
        // A forced request (or one already in flight) gets through: the circuit closes.
        assert_eq!(B.record(&s, T, true, false, 1_600), Change::Closed);
        assert_eq!(s.state(T, 1_600), State::Closed);
    }

    #[test]
    fn each_step_reads_the_store_once_and_writes_only_what_changed() {
        let s = Memory::default();
        let targets: Vec<String> = ["a/x", "b/y", "c/z"].map(str::to_owned).to_vec();
        assert_eq!(B.states(&s, &targets, 0), [State::Closed; 3]);
        assert_eq!(s.calls(), 1, "every candidate's circuit in one read");
        assert_eq!(B.record(&s, "b/y", true, false, 0), Change::None);
        assert_eq!(s.calls(), 1, "a healthy target's success: one read, nothing written");
        B.record(&s, "b/y", false, false, 0);
        assert_eq!(s.calls(), 2, "a first failure: one read, one count");
        assert_eq!(B.record(&s, "b/y", false, false, 0), Change::Opened { cooldown_ms: 1_000, failures: 2 });
        s.calls();
        let states = B.states(&s, &targets, 500);
        assert_eq!(states, [State::Closed, State::Open { until: 1_000 }, State::Closed]);
        assert_eq!(s.calls(), 1, "an open circuit among them costs no extra call");
        assert_eq!(B.states(&s, &targets, 1_000)[1], State::Probe);
        assert_eq!(s.calls(), 2, "a cooled-down one: the read, and claiming the probe");
    }

    #[test]
    fn a_probe_that_never_reached_the_target_hands_the_turn_on() {
        let s = Memory::default();
        B.record(&s, T, false, false, 0);
        B.record(&s, T, false, false, 0);
        assert_eq!(s.state(T, 1_000), State::Probe);
        B.release_probe(&s, T);
        assert_eq!(s.state(T, 1_001), State::Probe);
    }
}
