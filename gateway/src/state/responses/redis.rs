//! Stored responses on Redis: `{prefix}responses:<team length>:<team>:<id>`, one Redis string per
//! response (its [`StoredResponse`] as JSON) with a `PX` TTL of `responses_ttl`, so a response
//! stored through one replica is read, continued and deleted through any other. The team is in the
//! key, length-prefixed so that no (team, id) spells another's key, and checked again in the value:
//! another team's id is a miss on every replica. Each call is one round trip (`GET`, `SET … PX`,
//! `DEL`).
//!
//! A value is at most [`MAX_VALUE`] (8 MiB, or a quarter of `responses_max_bytes` if that is
//! smaller): every state call shares one multiplexed connection, and a larger value would hold the
//! others up. A larger response is kept in this replica's file only, as the embedded store would.
//!
//! `put` does not block: it sends the `SET` off the caller's task (within `connect_timeout`) and
//! keeps the response in memory until Redis acknowledged it, so this replica reads its own write at
//! once; the answer's last bytes wait for the acknowledgement up to `[state.redis] timeout`, so a
//! client that reads the whole answer and continues through another replica finds it there. A
//! `SET` Redis does not take (down, refused, too slow) is not lost, whatever `on_unavailable`
//! says: the response goes into this replica's `FileStore`, the spool, and is
//! carried into Redis when Redis answers again (also after a restart: the file is replayed). Reads
//! go through both: Redis first, then the spool (responses not carried over yet, or too large).
//! While Redis is down, `get` and `delete` answer from the spool what it holds; for anything else
//! they answer as `on_unavailable` says: "embedded", this replica's answer (not found); "fail",
//! [`Unavailable`] (a 503 the client may retry), since the response may well exist in Redis.
//! One case is left to the TTL: a `SET` that Redis applied after it was given up on (too slow) is
//! in Redis and in the spool; deleted during the same outage, the spool's copy goes and Redis's
//! stays until it expires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{FileStore, Stored, StoredResponse, now_ms};
use crate::state::Unavailable;
use crate::state::redis::Shared;

/// The largest response kept in Redis (see the module's comment).
const MAX_VALUE: usize = 8 << 20;
/// How often the spool is offered to Redis besides when Redis comes back (a `SET` Redis refused
/// without going down, an out-of-memory error say, is tried again).
const CARRY_EVERY: Duration = Duration::from_secs(30);

type Key = (String, String);

/// The Redis backend of the stored responses.
#[derive(Debug)]
pub struct RedisStore {
    shared: Arc<Shared>,
    /// This replica's file: responses Redis did not take, until they are carried over.
    spool: Arc<FileStore>,
    /// Responses whose `SET` is in flight, by (team, id).
    pending: Mutex<HashMap<Key, Arc<StoredResponse>>>,
    ttl_ms: u64,
    max_value: usize,
}

/// The Redis key of `team`'s response `id`.
fn key(prefix: &str, team: &str, id: &str) -> String {
    format!("{prefix}responses:{}:{team}:{id}", team.len())
}

/// The largest value sent to Redis, for a store of `max_bytes`: [`MAX_VALUE`], or what the
/// embedded store keeps if that is less, so that no backend keeps what the other would not.
fn max_value(max_bytes: usize) -> usize {
    MAX_VALUE.min(super::max_entry(max_bytes))
}

impl RedisStore {
    /// The store, and the task that carries the spool into Redis whenever Redis comes (back) up —
    /// at the start too, so responses stored before the backend was Redis become shared.
    pub(super) fn start(shared: Arc<Shared>, spool: Arc<FileStore>) -> Arc<Self> {
        let ttl = spool.ttl;
        let store = Arc::new(Self {
            max_value: max_value(spool.max_bytes),
            shared,
            spool,
            pending: Mutex::new(HashMap::new()),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2).max(1),
        });
        tokio::spawn(carry(Arc::downgrade(&store)));
        store
    }

    fn key(&self, team: &str, id: &str) -> String {
        key(&self.shared.config().key_prefix, team, id)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<StoredResponse>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn get(&self, team: &str, id: &str) -> Result<Option<Arc<StoredResponse>>, Unavailable> {
        if let Some(record) = self.pending().get(&(team.to_owned(), id.to_owned())) {
            return Ok(Some(record.clone()));
        }
        let key = self.key(team, id);
        let wait = self.shared.config().timeout;
        let answer: Option<Option<Vec<u8>>> = self
            .shared
            .call(wait, |mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await;
        match answer {
            Some(value) => {
                Ok(value.and_then(|v| parse(&v, team, id)).map(Arc::new).or_else(|| self.spool.get(team, id)))
            }
            None => match self.spool.get(team, id) {
                Some(record) => Ok(Some(record)),
                None => self.shared.degrade("responses.get", || None),
            },
        }
    }

    pub(super) fn put(self: &Arc<Self>, record: StoredResponse) -> Stored {
        let (done, stored) = tokio::sync::oneshot::channel();
        self.send(record, done);
        let wait = self.shared.config().timeout;
        Stored(Box::pin(async move {
            let _ = tokio::time::timeout(wait, stored).await;
        }))
    }

    /// Sends `record` to Redis (or keeps it in the spool), then drops `done`, which tells the
    /// waiting answer that it is stored.
    fn send(self: &Arc<Self>, record: StoredResponse, done: tokio::sync::oneshot::Sender<()>) {
        let value = match serde_json::to_vec(&record) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(id = %record.id, %error, "cannot serialise a stored response");
                return;
            }
        };
        if value.len() > self.max_value {
            tracing::warn!(
                id = %record.id,
                bytes = value.len(),
                max = self.max_value,
                "a response too large for Redis is kept in this replica's store only"
            );
            self.spool.put(record);
            return;
        }
        let pending = (record.team.clone(), record.id.clone());
        let record = Arc::new(record);
        self.pending().insert(pending.clone(), record.clone());
        let (key, ttl_ms, store) = (self.key(&record.team, &record.id), self.ttl_ms, self.clone());
        let set = move |mut conn: crate::state::redis::Conn| async move {
            redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ttl_ms).query_async::<()>(&mut conn).await
        };
        self.shared.spawn(set, move |answer| {
            // Gone from `pending`: deleted while the `SET` was in flight.
            let deleted = store.pending().remove(&pending).is_none();
            match (answer, deleted) {
                (Some(()), false) | (None, true) => {}
                (Some(()), true) => store.forget(&record.team, &record.id),
                (None, false) => {
                    store.shared.spooled("responses.put");
                    store.spool.put(Arc::unwrap_or_clone(record));
                }
            }
            drop(done);
        });
    }

    pub(super) async fn delete(&self, team: &str, id: &str) -> Result<bool, Unavailable> {
        // Out of memory and the spool first: a `SET` still in flight, or a carry-over under way,
        // sees it gone and deletes it from Redis after itself.
        let in_flight = self.pending().remove(&(team.to_owned(), id.to_owned())).is_some();
        let spooled = self.spool.delete(team, id);
        let key = self.key(team, id);
        let wait = self.shared.config().timeout;
        let deleted: Option<i64> = self
            .shared
            .call(wait, |mut conn| async move { redis::cmd("DEL").arg(key).query_async(&mut conn).await })
            .await;
        match deleted {
            Some(n) => Ok(n > 0 || in_flight || spooled),
            None if in_flight || spooled => Ok(true),
            None => self.shared.degrade("responses.delete", || false),
        }
    }

    /// Deletes from Redis a response deleted here while it was on its way there.
    fn forget(&self, team: &str, id: &str) {
        let key = self.key(team, id);
        self.shared.send_later("responses.delete", move |mut conn| async move {
            redis::cmd("DEL").arg(key).query_async::<()>(&mut conn).await
        });
    }

    /// Sends the spool's responses to Redis, each with what is left of its TTL, and drops from the
    /// spool what Redis took. Stops at the first that Redis does not take.
    async fn carry_over(&self) {
        let mut carried = 0usize;
        // A line holds the value and a few dozen bytes around it.
        for (record, expires_ms) in self.spool.live(self.max_value + 128) {
            let Some(left_ms) = expires_ms.checked_sub(now_ms()).filter(|ms| *ms > 0) else { continue };
            let Ok(value) = serde_json::to_vec(&*record) else { continue };
            if value.len() > self.max_value || !self.spool.contains(&record.team, &record.id) {
                continue;
            }
            let key = self.key(&record.team, &record.id);
            let timeout = self.shared.config().connect_timeout;
            let sent: Option<()> = self
                .shared
                .call(timeout, |mut conn| async move {
                    redis::cmd("SET").arg(key).arg(value).arg("PX").arg(left_ms).query_async(&mut conn).await
                })
                .await;
            if sent.is_none() {
                break;
            }
            if self.spool.delete(&record.team, &record.id) {
                carried += 1;
            } else {
                // Deleted while it was being sent.
                self.forget(&record.team, &record.id);
            }
        }
        if carried > 0 {
            tracing::info!(carried, "stored responses kept on this replica while Redis was away are in Redis now");
        }
    }
}

/// A value read from Redis, if it is `team`'s response `id`.
fn parse(value: &[u8], team: &str, id: &str) -> Option<StoredResponse> {
    match serde_json::from_slice::<StoredResponse>(value) {
        Ok(record) if record.team == team && record.id == id => Some(record),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%id, %error, "a stored response in Redis does not read; treated as missing");
            None
        }
    }
}

/// Carries the spool into Redis each time Redis comes up, and every [`CARRY_EVERY`] while it is.
async fn carry(store: Weak<RedisStore>) {
    let Some(mut up) = store.upgrade().map(|s| s.shared.watch()) else { return };
    loop {
        tokio::select! {
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(CARRY_EVERY) => {}
        }
        let Some(store) = store.upgrade() else { return };
        if store.shared.is_up() {
            store.carry_over().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_team_so_that_no_team_reaches_anothers_response() {
        assert_eq!(key("weir:", "red", "resp_1"), "weir:responses:3:red:resp_1");
        // Without the length, team "a" with id "b:c" and team "a:b" with id "c" would share a key.
        assert_ne!(key("p:", "a", "b:c"), key("p:", "a:b", "c"));
        assert_ne!(key("p:", "a", "1:b:c"), key("p:", "a:1:b", "c"));
    }

    #[test]
    fn a_value_read_is_only_the_asking_teams() {
        let record = StoredResponse {
            id: "resp_1".into(),
            team: "red".into(),
            response: serde_json::json!({"id": "resp_1"}),
            input: Vec::new(),
            own_from: 0,
            next_input: Vec::new(),
        };
        let value = serde_json::to_vec(&record).unwrap();
        assert_eq!(parse(&value, "red", "resp_1"), Some(record));
        assert_eq!(parse(&value, "blue", "resp_1"), None, "another team's value is a miss");
        assert_eq!(parse(&value, "red", "resp_2"), None);
        assert_eq!(parse(b"{not json", "red", "resp_1"), None);
    }

    #[test]
    fn values_are_bounded_by_8_mib_or_the_embedded_stores_own_bound() {
        assert_eq!(max_value(256 << 20), 8 << 20, "the default responses_max_bytes");
        assert_eq!(max_value(1 << 20), 256 << 10, "a quarter of a small store");
    }
}
