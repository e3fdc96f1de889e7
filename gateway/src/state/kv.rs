//! The plugins' key-value store: one moka cache for all plugins, keys namespaced by plugin name,
//! bounded in bytes (least recently used entries go first) with a TTL per entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

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

/// The store. Cloning shares it.
#[derive(Clone)]
pub struct Kv {
    cache: Cache<(Arc<str>, String), Entry>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("entries", &self.cache.entry_count()).finish()
    }
}

fn ttl(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
}

impl Kv {
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
        let kv = Kv::new(1 << 20);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        kv.set(&a, "k".into(), b"one".to_vec(), 0);
        assert_eq!(kv.get(&a, "k".into()).as_deref(), Some(&b"one"[..]));
        assert_eq!(kv.get(&b, "k".into()), None, "another plugin cannot see it");
        assert_eq!(kv.add(&b, "n".into(), 2, 0), 2);
        assert_eq!(kv.add(&b, "n".into(), -5, 0), -3);
        kv.delete(&a, "k".into());
        assert_eq!(kv.get(&a, "k".into()), None);
    }

    #[test]
    fn entries_expire() {
        let kv = Kv::new(1 << 20);
        let ns: Arc<str> = "p".into();
        kv.set(&ns, "k".into(), b"v".to_vec(), 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(kv.get(&ns, "k".into()), None);
    }
}
