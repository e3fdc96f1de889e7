//! Stored responses of the Responses API (`store: true`, the default): what `GET
//! /v1/responses/{id}` returns and what `previous_response_id` continues, each scoped to the team
//! of the key that created it — another team's id reads as missing.
//!
//! [`ResponseStore`] is the interface; the embedded backend is [`FileStore`]: every stored
//! response in memory (bounded in bytes, oldest evicted first, each with a TTL) and in an
//! append-only JSON-lines file in the state folder, replayed at start and compacted when it holds
//! more dead lines than live ones. A file rather than an embedded database because a stored
//! response is written once and read whole: one sequential `write` per response (in the operating
//! system's hands when `put` returns, so a crash of the gateway loses nothing; `fsync` once a
//! second for a crash of the machine), a torn last line skipped on replay, no page layout to tune —
//! and the bound in bytes is the bound on the memory it takes.
//!
//! With `[state] backend = "redis"` the responses live in Redis (`responses/redis.rs`), shared by
//! every replica, and this replica's `FileStore` is their spool: what Redis did not take is kept
//! there and carried into Redis when it answers again.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Unavailable;
use super::redis::Shared;

mod redis;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// `resp_…`
    pub id: String,
    /// The team of the key that created it; only that team reads it.
    pub team: String,
    /// The response object as `GET /v1/responses/{id}` returns it.
    pub response: Value,
    /// Every input item the model saw, earlier turns included, so that a response continuing this
    /// one needs one lookup, not a walk along the chain.
    pub input: Vec<Value>,
    /// Where this response's own input starts in `input` (what `input_items` lists).
    pub own_from: usize,
    /// The output items as input for the next turn (ids removed; see `api::responses`).
    pub next_input: Vec<Value>,
}

impl StoredResponse {
    /// The conversation a response continuing this one starts from.
    pub fn conversation(&self) -> Vec<Value> {
        self.input.iter().chain(&self.next_input).cloned().collect()
    }
}

/// Resolves when Redis has a response [`ResponseStore::put`] sent it, or this replica's file does,
/// or `[state.redis] timeout` has passed.
pub struct Stored(Pin<Box<dyn Future<Output = ()> + Send>>);

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stored")
    }
}

impl Future for Stored {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// Where stored responses live.
#[derive(Debug)]
pub enum ResponseStore {
    /// In this process, persisted to a file in the state folder.
    Embedded(Arc<FileStore>),
    /// In Redis, shared by every replica; this replica's file is the spool for what Redis did not
    /// take.
    Redis(Arc<redis::RedisStore>),
}

impl ResponseStore {
    /// The Redis backend on `shared`, with `spool` (this replica's file) beside it.
    pub fn redis(shared: Arc<Shared>, spool: Arc<FileStore>) -> Self {
        ResponseStore::Redis(redis::RedisStore::start(shared, spool))
    }

    /// The response `id` if `team` stored it and it has not expired. [`Unavailable`]: Redis did not
    /// answer, this replica does not hold it, and `on_unavailable = "fail"`.
    pub async fn get(&self, team: &str, id: &str) -> Result<Option<Arc<StoredResponse>>, Unavailable> {
        match self {
            ResponseStore::Embedded(store) => Ok(store.get(team, id)),
            ResponseStore::Redis(store) => store.get(team, id).await,
        }
    }

    /// Stores a response (replacing one with the same id and team). Returns at once: an embedded
    /// store has written it when this returns; Redis may still be writing, and the answer's last
    /// bytes should wait for [`Stored`] (at most `[state.redis] timeout`), so that a client's next
    /// request finds it on any replica. Meanwhile this replica reads it from memory, and keeps it in
    /// its file if Redis does not take it.
    pub fn put(&self, response: StoredResponse) -> Option<Stored> {
        match self {
            ResponseStore::Embedded(store) => {
                store.put(response);
                None
            }
            ResponseStore::Redis(store) => Some(store.put(response)),
        }
    }

    /// Deletes `id` if `team` stored it; whether there was one. [`Unavailable`] as for `get`.
    pub async fn delete(&self, team: &str, id: &str) -> Result<bool, Unavailable> {
        match self {
            ResponseStore::Embedded(store) => Ok(store.delete(team, id)),
            ResponseStore::Redis(store) => store.delete(team, id).await,
        }
    }
}

/// One line of the file.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Put { expires_ms: u64, record: StoredResponse },
    Del { team: String, id: String },
}

#[derive(Debug)]
struct Entry {
    record: Arc<StoredResponse>,
    expires_ms: u64,
    /// Its line's length: what it counts against the bound.
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// By (team, id): a team's id never finds another team's entry.
    entries: HashMap<(String, String), Entry>,
    /// Insertion order, oldest first, for eviction (stale keys are skipped).
    order: VecDeque<(String, String)>,
    live_bytes: usize,
    file_bytes: usize,
    file: Option<File>,
}

/// The embedded store: memory bounded by `max_bytes`, a TTL per entry, an append-only file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    max_bytes: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

/// The largest single response kept: a quarter of the store, so that one answer cannot evict all.
fn max_entry(max_bytes: usize) -> usize {
    max_bytes / 4
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl FileStore {
    /// Opens (or creates, on first write) the store at `path`, replaying and compacting what it holds.
    pub fn open(path: &Path, max_bytes: u64, ttl: Duration) -> Arc<Self> {
        let store = Self {
            path: path.to_owned(),
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            ttl,
            inner: Mutex::new(Inner::default()),
        };
        store.replay();
        let store = Arc::new(store);
        let weak = Arc::downgrade(&store);
        // A machine crash can lose what the OS has not written yet; a second's worth at most.
        let _ = std::thread::Builder::new().name("weir-responses-sync".into()).spawn(move || {
            while let Some(store) = weak.upgrade() {
                if let Some(file) = &store.lock().file {
                    let _ = file.sync_data();
                }
                drop(store);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replay(&self) {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the stored responses; starting empty");
                return;
            }
        };
        let now = now_ms();
        let mut inner = self.lock();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Put { expires_ms, record }) if expires_ms > now => {
                    self.insert(&mut inner, Arc::new(record), expires_ms, line.len() + 1);
                }
                Ok(Line::Put { .. }) => {}
                Ok(Line::Del { team, id }) => Self::remove(&mut inner, &(team, id)),
                Err(e) if !line.trim().is_empty() => {
                    tracing::warn!(path = %self.path.display(), line = n + 1, error = %e, "skipped a stored-response line");
                }
                Err(_) => {}
            }
        }
        // What was replayed is written back alone: expired, deleted and torn lines go.
        if let Err(e) = self.compact(&mut inner) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not compact the stored responses");
        }
    }

    fn contains(&self, team: &str, id: &str) -> bool {
        self.get(team, id).is_some()
    }

    /// The live entries whose lines are at most `max_line` bytes, with their expiry.
    fn live(&self, max_line: usize) -> Vec<(Arc<StoredResponse>, u64)> {
        let now = now_ms();
        let inner = self.lock();
        inner
            .entries
            .values()
            .filter(|e| e.expires_ms > now && e.bytes <= max_line)
            .map(|e| (e.record.clone(), e.expires_ms))
            .collect()
    }

    fn get(&self, team: &str, id: &str) -> Option<Arc<StoredResponse>> {
        let inner = self.lock();
        let entry = inner.entries.get(&(team.to_owned(), id.to_owned()))?;
        (entry.expires_ms > now_ms()).then(|| entry.record.clone())
    }

    fn put(&self, record: StoredResponse) {
        let expires_ms = now_ms() + u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX / 2);
        let line = Line::Put { expires_ms, record };
        let Ok(mut text) = serde_json::to_string(&line) else { return };
        text.push('\n');
        let Line::Put { record, .. } = line else { return };
        if text.len() > max_entry(self.max_bytes) {
            tracing::warn!(id = %record.id, bytes = text.len(), "a response too large for the store was not stored");
            return;
        }
        let mut inner = self.lock();
        if let Err(e) = self.append(&mut inner, text.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "could not write a stored response");
        }
        self.insert(&mut inner, Arc::new(record), expires_ms, text.len());
        if inner.file_bytes > 2 * inner.live_bytes + (1 << 20)
            && let Err(e) = self.compact(&mut inner)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not compact the stored responses");
        }
    }

    fn delete(&self, team: &str, id: &str) -> bool {
        let key = (team.to_owned(), id.to_owned());
        let mut inner = self.lock();
        let present = inner.entries.get(&key).is_some_and(|e| e.expires_ms > now_ms());
        if inner.entries.contains_key(&key) {
            let line = Line::Del { team: key.0.clone(), id: key.1.clone() };
            if let Ok(mut text) = serde_json::to_string(&line) {
                text.push('\n');
                if let Err(e) = self.append(&mut inner, text.as_bytes()) {
                    tracing::error!(path = %self.path.display(), error = %e, "could not record a deleted response");
                }
            }
            Self::remove(&mut inner, &key);
        }
        present
    }

    /// Adds an entry, then evicts the expired and the oldest until the store fits its bound.
    fn insert(&self, inner: &mut Inner, record: Arc<StoredResponse>, expires_ms: u64, bytes: usize) {
        let key = (record.team.clone(), record.id.clone());
        Self::remove(inner, &key);
        inner.live_bytes += bytes;
        inner.order.push_back(key.clone());
        inner.entries.insert(key, Entry { record, expires_ms, bytes });
        let now = now_ms();
        while inner.live_bytes > self.max_bytes
            || inner.order.front().is_some_and(|k| inner.entries.get(k).is_none_or(|e| e.expires_ms <= now))
        {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some(entry) = inner.entries.remove(&oldest) {
                inner.live_bytes -= entry.bytes;
            }
        }
    }

    fn remove(inner: &mut Inner, key: &(String, String)) {
        if let Some(entry) = inner.entries.remove(key) {
            inner.live_bytes -= entry.bytes;
            // Its key stays in `order` until it reaches the front; eviction skips missing keys.
        }
        if inner.order.len() > 2 * inner.entries.len() + 64 {
            let entries = &inner.entries;
            let order: VecDeque<_> =
                std::mem::take(&mut inner.order).into_iter().filter(|k| entries.contains_key(k)).collect();
            inner.order = order;
        }
    }

    fn append(&self, inner: &mut Inner, bytes: &[u8]) -> std::io::Result<()> {
        if inner.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            inner.file_bytes = file.metadata().map_or(0, |m| m.len() as usize);
            inner.file = Some(file);
        }
        if let Some(file) = &mut inner.file {
            // One `write` per line, so that concurrent appends never interleave within a line.
            file.write_all(bytes)?;
        }
        inner.file_bytes += bytes.len();
        Ok(())
    }

    /// Rewrites the file with the live entries only (to a temporary file, then renamed over it).
    fn compact(&self, inner: &mut Inner) -> std::io::Result<()> {
        let now = now_ms();
        let tmp = self.path.with_extension("compacting");
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut written = 0;
        for key in &inner.order {
            let Some(entry) = inner.entries.get(key).filter(|e| e.expires_ms > now) else { continue };
            let line = Line::Put { expires_ms: entry.expires_ms, record: (*entry.record).clone() };
            let mut text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            text.push('\n');
            written += text.len();
            out.write_all(text.as_bytes())?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        inner.file = None;
        inner.file_bytes = written;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(id: &str, team: &str, text: &str) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            team: team.into(),
            response: json!({"id": id, "output_text": text}),
            input: vec![json!({"role": "user", "content": text})],
            own_from: 0,
            next_input: vec![json!({"role": "assistant", "content": "ok"})],
        }
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-responses-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("responses.jsonl")
    }

    #[test]
    fn teams_see_only_their_own_and_deletes_stick_across_restarts() {
        let path = dir("teams");
        let store = FileStore::open(&path, 1 << 20, Duration::from_secs(60));
        store.put(record("resp_1", "a", "one"));
        store.put(record("resp_2", "a", "two"));
        assert_eq!(store.get("a", "resp_1").unwrap().response["output_text"], "one");
        assert!(store.get("b", "resp_1").is_none(), "another team's response reads as missing");
        assert!(!store.delete("b", "resp_1"), "nor can it be deleted by them");
        assert!(store.delete("a", "resp_2"));
        drop(store);
        let reopened = FileStore::open(&path, 1 << 20, Duration::from_secs(60));
        assert_eq!(reopened.get("a", "resp_1").unwrap().conversation().len(), 2);
        assert!(reopened.get("a", "resp_2").is_none(), "a delete survives a restart");
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 1, "replay compacts the file to the live entries");
    }

    #[test]
    fn the_oldest_go_first_when_the_store_is_full_and_expired_ones_are_gone() {
        let path = dir("bound");
        let one_line =
            serde_json::to_string(&Line::Put { expires_ms: u64::MAX / 2, record: record("resp_0", "t", "x") })
                .unwrap()
                .len();
        let store = FileStore::open(&path, (one_line as u64 + 1) * 4 + 10, Duration::from_secs(60));
        for i in 0..6 {
            store.put(record(&format!("resp_{i}"), "t", "x"));
        }
        assert!(store.get("t", "resp_0").is_none() && store.get("t", "resp_1").is_none());
        assert!(store.get("t", "resp_5").is_some() && store.get("t", "resp_2").is_some());
        let expired = FileStore::open(&dir("ttl"), 1 << 20, Duration::from_millis(0));
        expired.put(record("resp_x", "t", "x"));
        assert!(expired.get("t", "resp_x").is_none());
    }

    #[test]
    fn the_spool_lists_each_live_entry_once_within_the_size_asked() {
        let store = FileStore::open(&dir("live"), 1 << 20, Duration::from_secs(60));
        store.put(record("resp_1", "a", "one"));
        store.put(record("resp_1", "a", "one again"));
        store.put(record("resp_2", "a", &"x".repeat(1000)));
        store.put(record("resp_3", "b", "three"));
        assert!(store.delete("b", "resp_3"));
        let small: Vec<_> = store.live(500).iter().map(|(r, _)| r.response["output_text"].clone()).collect();
        assert_eq!(small, ["one again"], "replaced once, the large one and the deleted one left out");
        assert_eq!(store.live(1 << 20).len(), 2);
        assert!(store.contains("a", "resp_2") && !store.contains("b", "resp_2"));
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let path = dir("torn");
        let store = FileStore::open(&path, 1 << 20, Duration::from_secs(60));
        store.put(record("resp_1", "a", "one"));
        drop(store);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"op":"put","expires_ms":9999999999999,"record":{"id":"resp_2""#).unwrap();
        drop(file);
        let store = FileStore::open(&path, 1 << 20, Duration::from_secs(60));
        assert!(store.get("a", "resp_1").is_some());
        assert!(store.get("a", "resp_2").is_none());
    }
}
