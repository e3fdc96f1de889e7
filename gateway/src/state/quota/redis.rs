//! Quota buckets on Redis, shared by every replica. A bucket is a hash `{tokens, ts}` at
//! `{prefix}quota:{<plugin>|<key>}`; the reservations it holds are a sorted set beside it
//! (`…:holds`, one member per reservation, scored by when it is given back if never settled). Both
//! share a Cluster hash tag. `reserve` and `settle` are each one Lua script, so they are atomic
//! across replicas, and they read Redis's own clock (`TIME`), so replicas' clocks do not matter.
//!
//! `reserve_all` takes all of a request's reservations in one script, all or none, and checks a
//! budget's spending totals (`ledger/redis.rs`) in the same script, so a hook needs one round trip.
//!
//! A settlement is sent without waiting. If it never reaches Redis (Redis went away, or the replica
//! died mid-request), the hold expires after `hold_ttl` and the next reservation on that bucket
//! gives the whole amount back: a lost settlement returns the reservation rather than leaking it,
//! at the price of not charging tokens used beyond the reservation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::Script;

use super::{Ask, Denial, Grant, Local};
use crate::state::redis::Shared;

/// Reservation ids from Redis have this bit set; the fallback's never do.
const REDIS_BIT: u64 = 1 << 63;

/// Refill, give back expired holds, then grant or deny. Returns `{granted, remaining or
/// retry-after, …}` as integers.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COMMON}
local amount = tonumber(ARGV[1])
local tokens = load_bucket()
local granted = amount <= tokens
if granted then tokens = tokens - amount end
store_bucket(tokens)
if not granted then
  local retry = amount > cap and window or ms_until(tokens, amount)
  return {{0, math.min(retry, 4294967295), math.max(math.floor(tokens), 0)}}
end
redis.call('ZADD', KEYS[2], now + hold_ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], keep + hold_ttl)
return {{1, math.max(math.floor(tokens), 0), math.min(ms_until(tokens, cap), 4294967295)}}
"
    ))
});

/// Removes the hold and gives back `reserved − actual`; if the hold had already expired (and so
/// been given back whole), charges `actual` instead.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COMMON}
local removed = redis.call('ZREM', KEYS[2], ARGV[4])
local delta = -tonumber(ARGV[6])
if removed == 1 then delta = delta + tonumber(ARGV[1]) end
if delta == 0 then return 0 end
if delta > 0 and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
store_bucket(math.min(load_bucket() + delta, cap))
return 1
"
    ))
});

/// Reserves every ask or none. ARGV: hold TTL, then per ask: amount, capacity, window, member,
/// covers (0/1), since-day; KEYS per ask: bucket, holds, and the spending totals when it covers
/// them. Buckets are loaded once each (two asks may share one), deducted in order, and all written
/// back: deducted if every ask fits, as loaded (refilled, expired holds given back) if one does not.
/// Returns `{1, remaining, reset, …}` per ask, or `{0, index, retry-after, remaining}`.
static RESERVE_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local hold_ttl = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms_until(per_ms, tokens, want)
  local missing = want - tokens
  if missing <= 0 then return 0 end
  return math.ceil(missing / per_ms)
end
local buckets, order, asks = {}, {}, {}
local k = 1
for i = 0, (#ARGV - 1) / 6 - 1 do
  local a = {
    amount = tonumber(ARGV[2 + 6 * i]), cap = tonumber(ARGV[3 + 6 * i]),
    window = math.max(tonumber(ARGV[4 + 6 * i]), 1), member = ARGV[5 + 6 * i],
    since = tonumber(ARGV[7 + 6 * i]), bucket = KEYS[k], holds = KEYS[k + 1],
  }
  k = k + 2
  if ARGV[6 + 6 * i] == '1' then a.spend = KEYS[k]; k = k + 1 end
  a.per_ms = a.cap / a.window
  local b = buckets[a.bucket]
  if b == nil then
    local h = redis.call('HMGET', a.bucket, 'tokens', 'ts')
    local tokens, ts = tonumber(h[1]), tonumber(h[2])
    if tokens == nil then
      tokens = a.cap
    else
      local expired = redis.call('ZRANGEBYSCORE', a.holds, '-inf', now)
      for _, m in ipairs(expired) do tokens = tokens + tonumber(string.match(m, '(%d+)$')) end
      if #expired > 0 then redis.call('ZREMRANGEBYSCORE', a.holds, '-inf', now) end
      if now > ts then tokens = tokens + (now - ts) * a.per_ms end
    end
    tokens = math.min(tokens, a.cap)
    b = { tokens = tokens, start = tokens, cap = a.cap, per_ms = a.per_ms }
    buckets[a.bucket] = b
    table.insert(order, a.bucket)
  end
  table.insert(asks, a)
end
local function store(key, b, tokens)
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens), 'ts', now)
  b.keep = math.min(ms_until(b.per_ms, tokens, b.cap), 4294967295) + 1000
  redis.call('PEXPIRE', key, b.keep)
end
for i, a in ipairs(asks) do
  local b = buckets[a.bucket]
  local spent = 0
  if a.spend then
    local days = redis.call('HGETALL', a.spend)
    for j = 1, #days, 2 do
      if tonumber(days[j]) >= a.since then spent = spent + tonumber(days[j + 1]) end
    end
  end
  if a.amount > b.tokens or b.tokens - a.amount < spent then
    for _, key in ipairs(order) do store(key, buckets[key], buckets[key].start) end
    local retry = a.window
    if a.amount <= a.cap then retry = ms_until(a.per_ms, b.tokens, a.amount + spent) end
    return {0, i - 1, math.min(retry, 4294967295), math.max(math.floor(b.tokens), 0)}
  end
  b.tokens = b.tokens - a.amount
  a.remaining = b.tokens
end
for _, key in ipairs(order) do store(key, buckets[key], buckets[key].tokens) end
local out = {1}
for _, a in ipairs(asks) do
  local b = buckets[a.bucket]
  redis.call('ZADD', a.holds, now + hold_ttl, a.member)
  redis.call('PEXPIRE', a.holds, b.keep + hold_ttl)
  table.insert(out, math.max(math.floor(a.remaining), 0))
  table.insert(out, math.min(ms_until(b.per_ms, a.remaining, b.cap), 4294967295))
end
return out
",
    )
});

/// Shared by both scripts. KEYS: bucket, holds. ARGV: amount (reserved), capacity, window (ms),
/// hold member, hold TTL (ms), [actual]. A missing bucket is a full one; an idle bucket expires
/// once it would have refilled, since a full bucket and a missing one are the same.
const COMMON: &str = r"
local cap = tonumber(ARGV[2])
local window = math.max(tonumber(ARGV[3]), 1)
local hold_ttl = tonumber(ARGV[5])
local per_ms = cap / window
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = 1000
local function ms_until(tokens, want)
  local missing = want - tokens
  if missing <= 0 then return 0 end
  return math.ceil(missing / per_ms)
end
local function load_bucket()
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens, ts = tonumber(b[1]), tonumber(b[2])
  if tokens == nil then return cap end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, m in ipairs(expired) do
    tokens = tokens + tonumber(string.match(m, '(%d+)$'))
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
  if now > ts then tokens = tokens + (now - ts) * per_ms end
  return math.min(tokens, cap)
end
local function store_bucket(tokens)
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', now)
  keep = math.min(ms_until(tokens, cap), 4294967295) + 1000
  redis.call('PEXPIRE', KEYS[1], keep)
end
";

/// What this replica remembers of a reservation Redis granted, to settle it.
#[derive(Debug)]
struct Hold {
    bucket: String,
    member: String,
    amount: u64,
    limit: u64,
    window_ms: u32,
}

/// The Redis buckets, with the embedded ones as the fallback.
#[derive(Debug)]
pub struct Buckets {
    pub(super) shared: Arc<Shared>,
    pub(super) fallback: Local,
    holds: Mutex<HashMap<u64, Hold>>,
    next: AtomicU64,
}

/// Past this many unsettled holds, ones older than the hold TTL are forgotten (Redis has given
/// them back by then).
const SWEEP_AT: usize = 100_000;

impl Buckets {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared, fallback: Local::default(), holds: Mutex::new(HashMap::new()), next: AtomicU64::new(1) }
    }

    fn keys(&self, ns: &str, key: &str) -> (String, String) {
        let bucket = self.shared.key(format_args!("quota:{{{ns}|{key}}}"));
        let holds = format!("{bucket}:holds");
        (bucket, holds)
    }

    /// `None`: Redis did not answer.
    pub(super) async fn reserve(
        &self,
        ns: &str,
        key: &str,
        amount: u64,
        limit: u64,
        window_ms: u32,
        wait: Duration,
    ) -> Option<Result<Grant, Denial>> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) | REDIS_BIT;
        let (bucket, holds) = self.keys(ns, key);
        // The member ends with the amount, so that an expired hold can be given back by the
        // script alone.
        let member = format!("{:x}:{:x}:{amount}", self.shared.replica, id & !REDIS_BIT);
        let hold_ttl = self.shared.config().hold_ttl.as_millis() as u64;
        let (b, h, m) = (bucket.clone(), holds, member.clone());
        let reply: Vec<u64> = self
            .shared
            .call(wait, |mut conn| async move {
                RESERVE
                    .key(b)
                    .key(h)
                    .arg(amount)
                    .arg(limit)
                    .arg(window_ms)
                    .arg(m)
                    .arg(hold_ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Some(match reply.as_slice() {
            [1, remaining, reset] => {
                let mut all = self.holds.lock().unwrap_or_else(|e| e.into_inner());
                Self::sweep(&mut all);
                all.insert(id, Hold { bucket, member, amount, limit, window_ms });
                Ok(Grant { reservation: id, remaining: *remaining, reset_ms: clamp(*reset) })
            }
            [0, retry_after, remaining] => Err(Denial { retry_after_ms: clamp(*retry_after), remaining: *remaining }),
            _ => {
                tracing::error!(?reply, "unexpected answer from the reserve script");
                return None;
            }
        })
    }

    /// Reserves every ask or none, in one script (one round trip). On a cluster, whose scripts
    /// cannot span slots, the asks go one by one instead (what was granted is given back on a
    /// refusal): exact per bucket, one round trip per ask. `None`: Redis did not answer.
    pub(super) async fn reserve_all(
        &self,
        ns: &str,
        asks: &[Ask],
        wait: Duration,
    ) -> Option<Result<Vec<Grant>, (u32, Denial)>> {
        if self.shared.is_cluster() {
            return self.reserve_each(ns, asks, wait).await;
        }
        let hold_ttl = self.shared.config().hold_ttl.as_millis() as u64;
        let mut invocation = RESERVE_ALL.prepare_invoke();
        invocation.arg(hold_ttl);
        let mut holds = Vec::with_capacity(asks.len());
        for ask in asks {
            let id = self.next.fetch_add(1, Ordering::Relaxed) | REDIS_BIT;
            let (bucket, holds_key) = self.keys(ns, &ask.key);
            let member = format!("{:x}:{:x}:{}", self.shared.replica, id & !REDIS_BIT, ask.amount);
            invocation.key(&bucket).key(holds_key);
            if let Some(covers) = &ask.covers {
                invocation.key(self.shared.spend_key(ns, covers.who, &covers.name));
            }
            let since_day = ask.covers.as_ref().map_or(0, |c| c.since_ms / crate::state::ledger::DAY_MS);
            invocation
                .arg(ask.amount)
                .arg(ask.limit)
                .arg(ask.window_ms)
                .arg(&member)
                .arg(u8::from(ask.covers.is_some()))
                .arg(since_day);
            holds.push((id, Hold { bucket, member, amount: ask.amount, limit: ask.limit, window_ms: ask.window_ms }));
        }
        let reply: Vec<u64> =
            self.shared.call(wait, |mut conn| async move { invocation.invoke_async(&mut conn).await }).await?;
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        match reply.split_first() {
            Some((1, rest)) if rest.len() == 2 * asks.len() => {
                let mut all = self.holds.lock().unwrap_or_else(|e| e.into_inner());
                Self::sweep(&mut all);
                let grants = holds
                    .into_iter()
                    .zip(rest.chunks(2))
                    .map(|((id, hold), answer)| {
                        all.insert(id, hold);
                        Grant { reservation: id, remaining: answer[0], reset_ms: clamp(answer[1]) }
                    })
                    .collect();
                Some(Ok(grants))
            }
            Some((0, [index, retry_after, remaining])) => {
                Some(Err((clamp(*index), Denial { retry_after_ms: clamp(*retry_after), remaining: *remaining })))
            }
            _ => {
                tracing::error!(?reply, "unexpected answer from the reserve-all script");
                None
            }
        }
    }

    /// `reserve_all` on a cluster: one ask at a time.
    async fn reserve_each(&self, ns: &str, asks: &[Ask], wait: Duration) -> Option<Result<Vec<Grant>, (u32, Denial)>> {
        let started = std::time::Instant::now();
        let mut grants: Vec<Grant> = Vec::with_capacity(asks.len());
        let give_back = |grants: &[Grant]| {
            for g in grants {
                self.settle(g.reservation, 0);
            }
        };
        for (i, ask) in asks.iter().enumerate() {
            let left = wait.saturating_sub(started.elapsed());
            let spent = match &ask.covers {
                Some(c) => {
                    let key = self.shared.spend_key(ns, c.who, &c.name);
                    let days: Option<Vec<(u64, u64)>> =
                        self.shared
                            .call(left, |mut conn| async move {
                                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
                            })
                            .await;
                    let Some(days) = days else {
                        give_back(&grants);
                        return None;
                    };
                    let first = c.since_ms / crate::state::ledger::DAY_MS;
                    days.iter().filter(|(d, _)| *d >= first).fold(0u64, |s, (_, c)| s.saturating_add(*c))
                }
                None => 0,
            };
            let left = wait.saturating_sub(started.elapsed());
            let Some(answer) = self.reserve(ns, &ask.key, ask.amount, ask.limit, ask.window_ms, left).await else {
                give_back(&grants);
                return None;
            };
            match answer {
                Ok(grant) if grant.remaining >= spent => grants.push(grant),
                other => {
                    let denial = match other {
                        Ok(grant) => {
                            self.settle(grant.reservation, 0);
                            Denial { retry_after_ms: ask.window_ms, remaining: grant.remaining + ask.amount }
                        }
                        Err(denial) => denial,
                    };
                    give_back(&grants);
                    return Some(Err((i as u32, denial)));
                }
            }
        }
        Some(Ok(grants))
    }

    fn sweep(all: &mut HashMap<u64, Hold>) {
        if all.len() >= SWEEP_AT {
            // Ids grow with time: the lowest are the oldest.
            let mut ids: Vec<u64> = all.keys().copied().collect();
            ids.sort_unstable();
            for old in &ids[..ids.len() / 2] {
                all.remove(old);
            }
        }
    }

    /// Settles a Redis reservation (without waiting for Redis); `false` if `reservation` is not
    /// one.
    pub(super) fn settle(&self, reservation: u64, actual: u64) -> bool {
        if reservation & REDIS_BIT == 0 {
            return false;
        }
        let Some(hold) = self.holds.lock().unwrap_or_else(|e| e.into_inner()).remove(&reservation) else {
            return true;
        };
        let holds = format!("{}:holds", hold.bucket);
        let hold_ttl = self.shared.config().hold_ttl.as_millis() as u64;
        self.shared.send_later("quota.settle", move |mut conn| async move {
            SETTLE
                .key(hold.bucket)
                .key(holds)
                .arg(hold.amount)
                .arg(hold.limit)
                .arg(hold.window_ms)
                .arg(hold.member)
                .arg(hold_ttl)
                .arg(actual)
                .invoke_async(&mut conn)
                .await
        });
        true
    }
}
