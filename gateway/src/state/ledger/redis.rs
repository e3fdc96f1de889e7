//! Spending totals in Redis, fed from each replica's ledger file. The file is the record and the
//! spool: a flusher task reads it from where Redis says this replica got to and adds each record,
//! in file order, to per-day totals (`{prefix}{ledger}:spend:<plugin>:<k|t>:<name>`, a hash of UTC
//! day → picodollars), all by one script per batch. The script also stores the byte offset it got
//! to (`{prefix}{ledger}:offsets`, by replica id), and skips records at or below it, so a batch
//! sent twice (a timeout, a restart) counts once. Nothing is ever lost: a record is on disk before
//! anything else happens, and whatever Redis has not acknowledged is sent again.
//!
//! The replica id is kept beside the ledger (`<ledger>.replica`) and renewed with a new ledger
//! file, so a restarted replica carries on from its offset. A Redis that lost its data (restarted
//! without persistence) answers offset 0, and every replica sends its whole file again: the
//! totals rebuild themselves.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tokio::sync::{Notify, watch};

use super::{DAY_MS, Entry, Spender};
use crate::state::redis::Shared;

/// Records per script call, and the bytes read from the file for one batch.
const BATCH: usize = 256;
const BATCH_BYTES: usize = 256 << 10;
/// Totals are kept this long after their last update (400 days: a monthly budget needs 31).
const TOTALS_TTL_S: u64 = 400 * 86_400;

/// KEYS: offsets, then two spending keys per record (key, team). ARGV: replica, TTL (s), then per
/// record: end offset, day, cost.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local done = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local applied = 0
local n = (#ARGV - 2) / 3
for i = 0, n - 1 do
  local off = tonumber(ARGV[3 + 3 * i])
  if off > done then
    for j = 0, 1 do
      local k = KEYS[2 + 2 * i + j]
      redis.call('HINCRBY', k, ARGV[4 + 3 * i], ARGV[5 + 3 * i])
      redis.call('EXPIRE', k, ARGV[2])
    end
    done = off
    applied = applied + 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', done))
return applied
",
    )
});

/// The link between one ledger file and Redis.
#[derive(Debug)]
pub struct Spool {
    pub(super) shared: Arc<Shared>,
    replica: String,
    /// The offset up to which Redis has the records.
    flushed: watch::Sender<u64>,
    /// The offset up to which the file has records (the last append's end).
    written: AtomicU64,
    wake: Notify,
}

impl Spool {
    pub(super) fn start(path: &Path, shared: Arc<Shared>) -> std::io::Result<Arc<Self>> {
        let replica = replica_id(path)?;
        let (flushed, _) = watch::channel(0);
        let written = std::fs::metadata(path).map_or(0, |m| m.len());
        let spool = Arc::new(Self { shared, replica, flushed, written: AtomicU64::new(written), wake: Notify::new() });
        tokio::spawn(flush(spool.clone(), path.to_owned()));
        Ok(spool)
    }

    /// A record ending at `end` is on disk: wakes the flusher and waits up to `wait` for Redis.
    pub(super) async fn written(&self, end: u64, wait: Duration) {
        self.written.fetch_max(end, Ordering::Relaxed);
        self.wake.notify_one();
        if !self.shared.is_up() {
            return;
        }
        let mut flushed = self.flushed.subscribe();
        let _ = tokio::time::timeout(wait.min(self.shared.config().timeout), flushed.wait_for(|&f| f >= end)).await;
    }

    fn key(&self, plugin: &str, who: Spender, name: &str) -> String {
        self.shared.spend_key(plugin, who, name)
    }

    /// `None`: Redis did not answer.
    pub(super) async fn spent(
        &self,
        plugin: &str,
        who: Spender,
        name: &str,
        since_ms: u64,
        wait: Duration,
    ) -> Option<u64> {
        let key = self.key(plugin, who, name);
        let days: Vec<(u64, u64)> = self
            .shared
            .call(wait, |mut conn| async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await })
            .await?;
        let first = since_ms / DAY_MS;
        Some(days.iter().filter(|(day, _)| *day >= first).fold(0u64, |sum, (_, cost)| sum.saturating_add(*cost)))
    }

    /// Sends one batch of records, those that follow `from`; returns where it got to, or `None` if
    /// Redis did not take it.
    async fn send(&self, records: &[(u64, Entry)]) -> Option<u64> {
        let mut invocation = ADD.prepare_invoke();
        invocation.key(self.shared.key(format_args!("{{ledger}}:offsets")));
        invocation.arg(&self.replica).arg(TOTALS_TTL_S);
        for (end, entry) in records {
            invocation.key(self.key(&entry.plugin, Spender::Key, &entry.key_name));
            invocation.key(self.key(&entry.plugin, Spender::Team, &entry.team));
            invocation.arg(*end).arg(entry.ts_ms / DAY_MS).arg(entry.cost_pico_usd);
        }
        let last = records.last()?.0;
        let timeout = self.shared.config().connect_timeout;
        self.shared.call(timeout, |mut conn| async move { invocation.invoke_async::<u64>(&mut conn).await }).await?;
        Some(last)
    }
}

/// The replica id of the ledger at `path`: read from `<path>.replica`, or made anew (with a new or
/// empty ledger file, so that a fresh file never inherits an old file's offset).
fn replica_id(path: &Path) -> std::io::Result<String> {
    let id_path = PathBuf::from(format!("{}.replica", path.display()));
    let ledger_len = std::fs::metadata(path).map_or(0, |m| m.len());
    if ledger_len > 0
        && let Ok(id) = std::fs::read_to_string(&id_path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_owned());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    std::fs::write(&id_path, format!("{id}\n"))?;
    Ok(id)
}

/// Reads the complete records after `from` (up to a batch); returns them with their end offsets,
/// and the offset past the last complete line read (lines that do not parse, a crash's torn line,
/// are stepped over).
fn read_after(path: &Path, from: u64) -> std::io::Result<(Vec<(u64, Entry)>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), from)),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity(BATCH_BYTES.min(64 << 10));
    file.take(BATCH_BYTES as u64).read_to_end(&mut buf)?;
    let mut records = Vec::new();
    let mut at = from;
    for line in buf.split_inclusive(|&b| b == b'\n') {
        if line.last() != Some(&b'\n') || records.len() == BATCH {
            break;
        }
        at += line.len() as u64;
        let text = &line[..line.len() - 1];
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(entry) = serde_json::from_slice::<Entry>(text) {
            records.push((at, entry));
        }
    }
    Ok((records, at))
}

/// Carries the file into Redis: after each append, after Redis comes back, and every second.
async fn flush(spool: Arc<Spool>, path: PathBuf) {
    let mut up = spool.shared.watch();
    // Where Redis says this replica got to; asked again after every reconnection.
    let mut known: Option<u64> = None;
    loop {
        tokio::select! {
            () = spool.wake.notified() => {}
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                known = None;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        while spool.shared.is_up() {
            let from = match known {
                Some(offset) => offset,
                None => {
                    let offsets = spool.shared.key(format_args!("{{ledger}}:offsets"));
                    let replica = spool.replica.clone();
                    let timeout = spool.shared.config().connect_timeout;
                    let asked: Option<Option<u64>> = spool
                        .shared
                        .call(timeout, |mut conn| async move {
                            redis::cmd("HGET").arg(offsets).arg(replica).query_async(&mut conn).await
                        })
                        .await;
                    let Some(offset) = asked else { break };
                    let offset = offset.unwrap_or(0);
                    known = Some(offset);
                    offset
                }
            };
            let reading = path.clone();
            let (records, next) = match tokio::task::spawn_blocking(move || read_after(&reading, from)).await {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => {
                    tracing::error!(path = %path.display(), %error, "cannot read the ledger to send it to Redis");
                    break;
                }
                Err(_) => break,
            };
            if records.is_empty() {
                known = Some(next);
                spool.flushed.send_replace(next);
                if next == from {
                    break;
                }
                continue;
            }
            match spool.send(&records).await {
                Some(_) => {
                    known = Some(next);
                    spool.flushed.send_replace(next);
                }
                None => break,
            }
        }
        let spooled = spool.written.load(Ordering::Relaxed).saturating_sub(*spool.flushed.borrow());
        spool.shared.metrics().ledger_spooled_bytes.set(i64::try_from(spooled).unwrap_or(i64::MAX));
    }
}
