//! Admission-time reservations against limits: one token bucket per (plugin, key), refilled
//! continuously at `amount / window`. A request reserves its worst case before it goes upstream and
//! settles with what it actually used, so concurrent requests cannot together exceed a limit: the
//! only overshoot possible is a request using more than it reserved (it is charged the excess on
//! settlement, which pushes the bucket into debt and delays the next admissions).
//!
//! Embedded (`Local`, below): the buckets of this process. Redis (`quota/redis.rs`): the same
//! buckets as Redis hashes, reserved and settled by Lua scripts on Redis's clock, so the limit is
//! one for every replica, with reservations held until settled or until `hold_ttl`.
//!
//! Written by hand because governor's GCRA cannot give capacity back, and settling is the point.

mod redis;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Unavailable;
use super::ledger::Spender;
use super::redis::Shared;

/// A granted reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub reservation: u64,
    pub remaining: u64,
    pub reset_ms: u32,
}

/// A refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    pub retry_after_ms: u32,
    pub remaining: u64,
}

/// One of several reservations asked for together.
#[derive(Debug, Clone)]
pub struct Ask {
    pub key: String,
    pub amount: u64,
    pub limit: u64,
    pub window_ms: u32,
    /// Granted only if what the bucket has left after it covers this spending.
    pub covers: Option<Covers>,
}

/// Spending, as the ledger totals it, that a reservation must leave room for.
#[derive(Debug, Clone)]
pub struct Covers {
    pub who: Spender,
    pub name: String,
    pub since_ms: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_ms: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64() * 1e3;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last = now;
    }

    fn ms_until(&self, tokens: f64) -> u32 {
        let missing = tokens - self.tokens;
        if missing <= 0.0 { 0 } else { (missing / self.per_ms).ceil().min(f64::from(u32::MAX)) as u32 }
    }
}

type Key = (Arc<str>, String);

#[derive(Debug)]
struct Reservation {
    key: Key,
    amount: u64,
    at: Instant,
}

/// The quotas plugins see, in one of their two backends.
#[derive(Debug)]
pub enum Quota {
    Embedded(Local),
    /// Redis, and the embedded buckets that serve while Redis does not answer.
    Redis(redis::Buckets),
}

impl Quota {
    pub fn redis(shared: Arc<Shared>) -> Self {
        Quota::Redis(redis::Buckets::new(shared))
    }

    pub async fn reserve(
        &self,
        ns: &Arc<str>,
        key: String,
        amount: u64,
        limit: u64,
        window_ms: u32,
        wait: Duration,
    ) -> Result<Result<Grant, Denial>, Unavailable> {
        match self {
            Quota::Embedded(local) => Ok(local.reserve(ns, key, amount, limit, window_ms)),
            Quota::Redis(buckets) => match buckets.reserve(ns, &key, amount, limit, window_ms, wait).await {
                Some(answer) => Ok(answer),
                None => buckets
                    .shared
                    .degrade("quota.reserve", || buckets.fallback.reserve(ns, key, amount, limit, window_ms)),
            },
        }
    }

    /// Reserves every ask or none. `spent_here` answers `covers` from this replica's ledger, for
    /// the embedded backend and the fallback.
    pub async fn reserve_all(
        &self,
        ns: &Arc<str>,
        asks: Vec<Ask>,
        spent_here: &(dyn Fn(&Covers) -> u64 + Sync),
        wait: Duration,
    ) -> Result<Result<Vec<Grant>, (u32, Denial)>, Unavailable> {
        match self {
            Quota::Embedded(local) => Ok(local.reserve_all(ns, &asks, spent_here)),
            Quota::Redis(buckets) => match buckets.reserve_all(ns, &asks, wait).await {
                Some(answer) => Ok(answer),
                None => {
                    buckets.shared.degrade("quota.reserve_all", || buckets.fallback.reserve_all(ns, &asks, spent_here))
                }
            },
        }
    }

    /// Settles without waiting: see `quota/redis.rs` for a settlement Redis never got.
    pub fn settle(&self, reservation: u64, actual: u64) {
        match self {
            Quota::Embedded(local) => local.settle(reservation, actual),
            Quota::Redis(buckets) => {
                if !buckets.settle(reservation, actual) {
                    // Not a Redis reservation: one the fallback granted while Redis was away.
                    buckets.fallback.settle(reservation, actual);
                }
            }
        }
    }
}

/// All limits of all plugins, in this process.
#[derive(Debug, Default)]
pub struct Local {
    buckets: Mutex<HashMap<Key, Bucket>>,
    reservations: Mutex<HashMap<u64, Reservation>>,
    next: AtomicU64,
}

/// Past this many entries, idle buckets and forgotten reservations are swept.
const SWEEP_AT: usize = 100_000;

impl Local {
    pub fn reserve(
        &self,
        ns: &Arc<str>,
        key: String,
        amount: u64,
        limit: u64,
        window_ms: u32,
    ) -> Result<Grant, Denial> {
        let ask = Ask { key, amount, limit, window_ms, covers: None };
        self.reserve_all(ns, std::slice::from_ref(&ask), &|_| 0).map(|mut g| g.remove(0)).map_err(|(_, d)| d)
    }

    /// Reserves every ask or none, under one lock; `spent` answers the asks' `covers`.
    pub fn reserve_all(
        &self,
        ns: &Arc<str>,
        asks: &[Ask],
        spent: &(dyn Fn(&Covers) -> u64 + Sync),
    ) -> Result<Vec<Grant>, (u32, Denial)> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < b.capacity
            });
        }
        let mut granted: Vec<(Key, u64, Grant)> = Vec::with_capacity(asks.len());
        for (i, ask) in asks.iter().enumerate() {
            let capacity = ask.limit as f64;
            let per_ms = capacity / f64::from(ask.window_ms.max(1));
            let key = (ns.clone(), ask.key.clone());
            let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: capacity, capacity, per_ms, last: now });
            bucket.refill(now);
            if bucket.capacity != capacity || bucket.per_ms != per_ms {
                // The limit was reconfigured: keep what was used, apply the new size and rate.
                bucket.tokens = bucket.tokens.min(capacity);
                bucket.capacity = capacity;
                bucket.per_ms = per_ms;
            }
            let wanted = ask.amount as f64;
            let covered = ask.covers.as_ref().map_or(0.0, |c| spent(c) as f64);
            if wanted > bucket.tokens || bucket.tokens - wanted < covered {
                let retry_after_ms = if wanted > capacity { ask.window_ms } else { bucket.ms_until(wanted + covered) };
                let denial = Denial { retry_after_ms, remaining: bucket.tokens.max(0.0) as u64 };
                // All or nothing: what this call took so far goes back.
                for (key, amount, _) in granted {
                    if let Some(b) = buckets.get_mut(&key) {
                        b.tokens = (b.tokens + amount as f64).min(b.capacity);
                    }
                }
                return Err((i as u32, denial));
            }
            bucket.tokens -= wanted;
            let grant = Grant {
                reservation: self.next.fetch_add(1, Ordering::Relaxed) + 1,
                remaining: bucket.tokens.max(0.0) as u64,
                reset_ms: bucket.ms_until(capacity),
            };
            granted.push((key, ask.amount, grant));
        }
        drop(buckets);
        let mut reservations = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        if reservations.len() >= SWEEP_AT {
            reservations.retain(|_, r| now.duration_since(r.at).as_secs() < 3600);
        }
        Ok(granted
            .into_iter()
            .map(|(key, amount, grant)| {
                reservations.insert(grant.reservation, Reservation { key, amount, at: now });
                grant
            })
            .collect())
    }

    /// Gives back what was reserved but not used, or charges what was used beyond it. Unknown or
    /// already settled reservations are ignored, so settling twice cannot refund twice.
    pub fn settle(&self, reservation: u64, actual: u64) {
        let Some(r) = self.reservations.lock().unwrap_or_else(|e| e.into_inner()).remove(&reservation) else {
            return;
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(&r.key) {
            bucket.refill(Instant::now());
            bucket.tokens = (bucket.tokens + r.amount as f64 - actual as f64).min(bucket.capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_limit_then_denies_with_a_retry_time() {
        let q = Local::default();
        let ns: Arc<str> = "p".into();
        for _ in 0..3 {
            q.reserve(&ns, "k".into(), 10, 30, 60_000).unwrap();
        }
        let denied = q.reserve(&ns, "k".into(), 10, 30, 60_000).unwrap_err();
        assert_eq!(denied.remaining, 0);
        assert!((19_000..=20_001).contains(&denied.retry_after_ms), "{denied:?}");
        let too_big = q.reserve(&ns, "k".into(), 31, 30, 60_000).unwrap_err();
        assert_eq!(too_big.retry_after_ms, 60_000, "more than the limit can never be granted");
    }

    #[test]
    fn reserving_several_at_once_takes_all_or_nothing_and_respects_spending() {
        let q = Local::default();
        let ns: Arc<str> = "p".into();
        let ask = |key: &str, amount, limit, covers| Ask { key: key.into(), amount, limit, window_ms: 60_000, covers };
        let spending = Some(Covers { who: Spender::Key, name: "k".into(), since_ms: 0 });
        let grants = q.reserve_all(&ns, &[ask("a", 3, 10, None), ask("b", 5, 10, spending.clone())], &|_| 5).unwrap();
        assert_eq!((grants[0].remaining, grants[1].remaining), (7, 5));
        // b has 5 left, which must cover 5 spent: one more token does not fit, and a's 3 come back.
        let (index, denial) =
            q.reserve_all(&ns, &[ask("a", 3, 10, None), ask("b", 1, 10, spending)], &|_| 5).unwrap_err();
        assert_eq!((index, denial.remaining), (1, 5));
        assert_eq!(q.reserve(&ns, "a".into(), 7, 10, 60_000).unwrap().remaining, 0, "a got its 3 back");
    }

    #[test]
    fn settling_gives_back_the_unused_part_once() {
        let q = Local::default();
        let ns: Arc<str> = "p".into();
        let g = q.reserve(&ns, "k".into(), 100, 100, 3_600_000).unwrap();
        assert!(q.reserve(&ns, "k".into(), 1, 100, 3_600_000).is_err());
        q.settle(g.reservation, 40);
        q.settle(g.reservation, 0);
        let g2 = q.reserve(&ns, "k".into(), 60, 100, 3_600_000).unwrap();
        assert!(g2.remaining <= 1, "exactly 60 came back: {g2:?}");
    }
}
