//! The plugins' key-value store, namespaced by plugin name, with a TTL per entry. Embedded: one
//! moka cache for all plugins, bounded in bytes (least recently used entries go first). Redis
//! (`kv/redis.rs`): one Redis key per entry, shared by every replica.

mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::Unavailable;
use super::redis::Shared;

/// The store plugins see, in one of its two backends.
#[derive(Debug, Clone)]
pub enum Kv {
    Embedded(Local),
    /// Redis, and the embedded store that serves while Redis does not answer.
    Redis {
        shared: Arc<Shared>,
        fallback: Local,
    },
}

impl Kv {
    pub async fn get(&self, ns: &Arc<str>, key: String, wait: Duration) -> Result<Option<Vec<u8>>, Unavailable> {
        match self {
            Kv::Embedded(local) => Ok(local.get(ns, key)),
            Kv::Redis { shared, fallback } => match redis::get(shared, ns, &key, wait).await {
                Some(value) => Ok(value),
                None => shared.degrade("kv.get", || fallback.get(ns, key)),
            },
        }
    }

    /// Sets; with Redis, waits for it, so that the next request on any replica sees the value.
    pub async fn set(
        &self,
        ns: &Arc<str>,
        key: String,
        value: Vec<u8>,
        ttl_ms: u32,
        wait: Duration,
    ) -> Result<(), Unavailable> {
        match self {
            Kv::Embedded(local) => {
                local.set(ns, key, value, ttl_ms);
                Ok(())
            }
            Kv::Redis { shared, fallback } => match redis::set(shared, ns, &key, &value, ttl_ms, wait).await {
                Some(()) => Ok(()),
                None => shared.degrade("kv.set", || fallback.set(ns, key, value, ttl_ms)),
            },
        }
    }

    pub async fn delete(&self, ns: &Arc<str>, key: String, wait: Duration) -> Result<(), Unavailable> {
        match self {
            Kv::Embedded(local) => {
                local.delete(ns, key);
                Ok(())
            }
            Kv::Redis { shared, fallback } => match redis::delete(shared, ns, &key, wait).await {
                Some(()) => Ok(()),
                None => shared.degrade("kv.delete", || fallback.delete(ns, key)),
            },
        }
    }

    pub async fn add(
        &self,
        ns: &Arc<str>,
        key: String,
        delta: i64,
        ttl_ms: u32,
        wait: Duration,
    ) -> Result<i64, Unavailable> {
        match self {
            Kv::Embedded(local) => Ok(local.add(ns, key, delta, ttl_ms)),
            Kv::Redis { shared, fallback } => match redis::add(shared, ns, &key, delta, ttl_ms, wait).await {
                Some(n) => Ok(n),
                None => shared.degrade("kv.add", || fallback.add(ns, key, delta, ttl_ms)),
            },
        }
    }

    /// [`Kv::get`] of every key, in order; with Redis, one round trip for them all. If Redis does
    /// not answer for every key, all of them come from the fallback, so one call never mixes the
    /// two stores.
    pub async fn get_many(
        &self,
        ns: &Arc<str>,
        keys: Vec<String>,
        wait: Duration,
    ) -> Result<Vec<Option<Vec<u8>>>, Unavailable> {
        match self {
            Kv::Embedded(local) => Ok(keys.into_iter().map(|key| local.get(ns, key)).collect()),
            Kv::Redis { shared, fallback } => match redis::get_many(shared, ns, &keys, wait).await {
                Some(values) => Ok(values),
                None => shared.degrade("kv.get-many", || keys.into_iter().map(|key| fallback.get(ns, key)).collect()),
            },
        }
    }

    /// [`Kv::add`] of every `(key, delta, ttl_ms)`, in order; with Redis, one round trip for them
    /// all. Not a transaction: on Redis each add is atomic on its own, and a call that Redis did
    /// not answer may have applied some of them there before the fallback applies them all.
    pub async fn add_many(
        &self,
        ns: &Arc<str>,
        adds: Vec<(String, i64, u32)>,
        wait: Duration,
    ) -> Result<Vec<i64>, Unavailable> {
        let local_adds = |local: &Local, adds: Vec<(String, i64, u32)>| -> Vec<i64> {
            adds.into_iter().map(|(key, delta, ttl_ms)| local.add(ns, key, delta, ttl_ms)).collect()
        };
        match self {
            Kv::Embedded(local) => Ok(local_adds(local, adds)),
            Kv::Redis { shared, fallback } => match redis::add_many(shared, ns, &adds, wait).await {
                Some(values) => Ok(values),
                None => shared.degrade("kv.add-many", || local_adds(fallback, adds)),
            },
        }
    }
}

#[derive(Clone)]
struct Entry {
    value: Value,
    ttl: Option<Duration>,
}

#[derive(Clone)]
enum Value {
    Bytes(Arc<[u8]>),
    Counter(i64),
}

struct PerEntryTtl;

impl moka::Expiry<(Arc<str>, String), Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &(Arc<str>, String), value: &Entry, _created_at: Instant) -> Option<Duration> {
        value.ttl
    }

    fn expire_after_update(
        &self,
        _key: &(Arc<str>, String),
        value: &Entry,
        _updated_at: Instant,
        duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A counter keeps the expiry it was created with; a `set` restarts its own.
        match value.value {
            Value::Counter(_) => duration_until_expiry,
            Value::Bytes(_) => value.ttl,
        }
    }
}

/// The embedded store. Cloning shares it.
#[derive(Clone)]
pub struct Local {
    cache: Cache<(Arc<str>, String), Entry>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("entries", &self.cache.entry_count()).finish()
    }
}

fn ttl(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

impl Local {
    /// A store holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &(Arc<str>, String), v: &Entry| {
                let size = k.1.len()
                    + match &v.value {
                        Value::Bytes(b) => b.len(),
                        Value::Counter(_) => 8,
                    }
                    + 64;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self { cache }
    }

    pub fn get(&self, ns: &Arc<str>, key: String) -> Option<Vec<u8>> {
        match self.cache.get(&(ns.clone(), key))?.value {
            Value::Bytes(b) => Some(b.to_vec()),
            Value::Counter(n) => Some(n.to_string().into_bytes()),
        }
    }

    pub fn set(&self, ns: &Arc<str>, key: String, value: Vec<u8>, ttl_ms: u32) {
        self.cache.insert((ns.clone(), key), Entry { value: Value::Bytes(value.into()), ttl: ttl(ttl_ms) });
    }

    pub fn delete(&self, ns: &Arc<str>, key: String) {
        self.cache.invalidate(&(ns.clone(), key));
    }

    /// Adds atomically; a missing key (or one holding bytes) counts as zero.
    pub fn add(&self, ns: &Arc<str>, key: String, delta: i64, ttl_ms: u32) -> i64 {
        let entry = self.cache.entry((ns.clone(), key)).and_upsert_with(|existing| {
            let current = match existing.map(|e| e.into_value().value) {
                Some(Value::Counter(n)) => n,
                _ => 0,
            };
            Entry { value: Value::Counter(current.saturating_add(delta)), ttl: ttl(ttl_ms) }
        });
        match entry.into_value().value {
            Value::Counter(n) => n,
            Value::Bytes(_) => delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_keep_plugins_apart_and_counters_add() {
        let kv = Local::new(1 << 20);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        kv.set(&a, "k".into(), b"one".to_vec(), 0);
        assert_eq!(kv.get(&a, "k".into()).as_deref(), Some(&b"one"[..]));
        assert_eq!(kv.get(&b, "k".into()), None, "another plugin cannot see it");
        assert_eq!(kv.add(&b, "n".into(), 2, 0), 2);
        assert_eq!(kv.add(&b, "n".into(), -5, 0), -3);
        kv.delete(&a, "k".into());
        assert_eq!(kv.get(&a, "k".into()), None);
    }

    #[tokio::test]
    async fn many_at_once_answer_in_order_as_one_at_a_time_would() {
        let kv = Kv::Embedded(Local::new(1 << 20));
        let ns: Arc<str> = "p".into();
        let wait = Duration::from_secs(1);
        kv.set(&ns, "b".into(), b"bee".to_vec(), 0, wait).await.expect("set");
        let added = kv.add_many(&ns, vec![("n".into(), 2, 0), ("m".into(), 5, 0), ("n".into(), 3, 0)], wait).await;
        assert_eq!(added.expect("add-many"), [2, 5, 5], "in order, the repeated key twice");
        let keys = ["a", "b", "n", "m"].map(str::to_owned).to_vec();
        let got = kv.get_many(&ns, keys, wait).await.expect("get-many");
        assert_eq!(got, [None, Some(b"bee".to_vec()), Some(b"5".to_vec()), Some(b"5".to_vec())]);
        assert_eq!(kv.get_many(&ns, Vec::new(), wait).await.expect("none"), Vec::<Option<Vec<u8>>>::new());
    }

    #[test]
    fn entries_expire() {
        let kv = Local::new(1 << 20);
        let ns: Arc<str> = "p".into();
        kv.set(&ns, "k".into(), b"v".to_vec(), 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(kv.get(&ns, "k".into()), None);
    }
}
