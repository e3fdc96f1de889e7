//! The key-value store on Redis: `{prefix}kv:{plugin}:{key}`, one Redis string per entry with a
//! `PX` TTL. Counters are Redis integers, so a `get` of one reads its decimal digits, as the
//! embedded store answers. `add` is one script: increment, and set the TTL only on creation.
//! Every call waits for Redis's answer, so a value one replica wrote (a circuit opened, a
//! rollback) is what the next request on any replica reads. `get-many` and `add-many` send their
//! commands at once on the one multiplexed connection and wait for all the answers together: one
//! round trip, and with Redis Cluster one per node, in parallel, since the keys need not share a
//! slot (which `MGET` or one script over all the keys would require).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::state::redis::Shared;

fn key(shared: &Shared, ns: &str, key: &str) -> String {
    shared.key(format_args!("kv:{ns}:{key}"))
}

/// `INCRBY`, treating a key that holds bytes as zero (as the embedded store does), with the TTL
/// applied only when the counter is created.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local existed = redis.call('EXISTS', KEYS[1])
local ok, n = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if not ok then
  redis.call('SET', KEYS[1], ARGV[1])
  n = tonumber(ARGV[1])
  existed = 0
end
if existed == 0 and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
",
    )
});

/// `None`: Redis did not answer.
pub(super) async fn get(shared: &Shared, ns: &str, k: &str, wait: Duration) -> Option<Option<Vec<u8>>> {
    let key = key(shared, ns, k);
    shared.call(wait, |mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }).await
}

pub(super) async fn set(shared: &Shared, ns: &str, k: &str, value: &[u8], ttl_ms: u32, wait: Duration) -> Option<()> {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key(shared, ns, k)).arg(value);
    if ttl_ms > 0 {
        cmd.arg("PX").arg(ttl_ms);
    }
    shared.call(wait, |mut conn| async move { cmd.query_async(&mut conn).await }).await
}

pub(super) async fn delete(shared: &Shared, ns: &str, k: &str, wait: Duration) -> Option<()> {
    let key = key(shared, ns, k);
    shared.call(wait, |mut conn| async move { redis::cmd("DEL").arg(key).query_async(&mut conn).await }).await
}

pub(super) async fn get_many(
    shared: &Shared,
    ns: &str,
    keys: &[String],
    wait: Duration,
) -> Option<Vec<Option<Vec<u8>>>> {
    let keys: Vec<String> = keys.iter().map(|k| key(shared, ns, k)).collect();
    shared
        .call(wait, |conn| async move {
            let gets = keys.into_iter().map(|key| {
                let mut conn = conn.clone();
                async move { redis::cmd("GET").arg(key).query_async::<Option<Vec<u8>>>(&mut conn).await }
            });
            futures_util::future::try_join_all(gets).await
        })
        .await
}

pub(super) async fn add_many(
    shared: &Shared,
    ns: &str,
    adds: &[(String, i64, u32)],
    wait: Duration,
) -> Option<Vec<i64>> {
    let adds: Vec<(String, i64, u32)> = adds.iter().map(|(k, d, t)| (key(shared, ns, k), *d, *t)).collect();
    shared
        .call(wait, |conn| async move {
            let calls = adds.into_iter().map(|(key, delta, ttl_ms)| {
                let mut conn = conn.clone();
                async move { ADD.key(key).arg(delta).arg(ttl_ms).invoke_async::<i64>(&mut conn).await }
            });
            futures_util::future::try_join_all(calls).await
        })
        .await
}

pub(super) async fn add(shared: &Shared, ns: &str, k: &str, delta: i64, ttl_ms: u32, wait: Duration) -> Option<i64> {
    let key = key(shared, ns, k);
    shared.call(wait, |mut conn| async move { ADD.key(key).arg(delta).arg(ttl_ms).invoke_async(&mut conn).await }).await
}
