//! The usage ledger: one JSON object per line, appended with a single `write` per record, so a
//! record that `append` returned for is in the operating system's hands and survives a crash of the
//! gateway (`kill -9` included). `[state] ledger_fsync` covers the machine-crash case: a background
//! thread `fsync`s every so often (`"1s"` by default: a power cut loses at most the last second), or
//! `"always"` `fsync`s each record before `append` returns.
//!
//! Budgets need spending totals that survive restarts, so the ledger also keeps, per plugin, the
//! cost of each key and team by UTC day: built from the file on first use, then kept up to date
//! by every append. With the Redis backend each replica still writes its own file first (it is
//! the record, and the spool), and `ledger/redis.rs` adds every record to totals in Redis that all
//! replicas read; `weir spend` merges the replicas' files.

mod redis;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use weir_config::LedgerFsync;

use super::Unavailable;
use super::redis::Shared;

/// One usage and cost record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Entry {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub request_id: String,
    pub key_name: String,
    pub team: String,
    pub model: String,
    pub target: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    /// Cost in picodollars (10⁻¹² USD): tokens × price in micro-dollars per million tokens.
    pub cost_pico_usd: u64,
    /// The plugin that wrote it.
    pub plugin: String,
}

/// Whose spending a total is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spender {
    Key,
    Team,
}

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// Cost by (plugin, spender kind, name) and UTC day number.
type SpendIndex = HashMap<(String, Spender, String), BTreeMap<u64, u64>>;

/// The ledger file, opened on the first append so that a gateway without accounting plugins never
/// creates one.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    fsync: LedgerFsync,
    file: Mutex<Option<Arc<Mutex<Open>>>>,
    /// Built from the file on the first `spent`; `None` until then.
    spend: Mutex<Option<SpendIndex>>,
    /// With the Redis backend: what carries records into Redis's totals.
    spool: Option<Arc<redis::Spool>>,
}

/// The open file and its length, which is where the next record starts.
#[derive(Debug)]
struct Open {
    file: File,
    len: u64,
}

impl Ledger {
    pub fn new(path: &Path, fsync: LedgerFsync) -> Self {
        Self { path: path.to_owned(), fsync, file: Mutex::new(None), spend: Mutex::new(None), spool: None }
    }

    /// A ledger whose records are also added to the spending totals in Redis (and that reads
    /// totals from there). Starts the task that does it.
    pub fn with_redis(path: &Path, fsync: LedgerFsync, shared: Arc<Shared>) -> std::io::Result<Self> {
        let spool = redis::Spool::start(path, shared)?;
        Ok(Self { spool: Some(spool), ..Self::new(path, fsync) })
    }

    /// Appends a record: on this replica's disk when this returns (and, with `ledger_fsync =
    /// "always"`, synced). With Redis, it also waits up to `wait` for the record to reach Redis's
    /// totals; one that does not is spooled, and added when Redis answers again.
    pub async fn append(&self, entry: &Entry, wait: std::time::Duration) -> std::io::Result<()> {
        let (end, file) = self.append_local(entry)?;
        if self.fsync == LedgerFsync::Always {
            tokio::task::spawn_blocking(move || file.lock().unwrap_or_else(|e| e.into_inner()).file.sync_data())
                .await
                .map_err(std::io::Error::other)??;
        }
        if let Some(spool) = &self.spool {
            spool.written(end, wait).await;
        }
        Ok(())
    }

    /// What `key_or_team` spent since `since_ms`: from Redis's totals (every replica's records)
    /// with the Redis backend, else from this file's.
    pub async fn spent(
        &self,
        plugin: &str,
        who: Spender,
        name: &str,
        since_ms: u64,
        wait: std::time::Duration,
    ) -> Result<u64, Unavailable> {
        let Some(spool) = &self.spool else { return Ok(self.spent_here(plugin, who, name, since_ms)) };
        match spool.spent(plugin, who, name, since_ms, wait).await {
            Some(total) => Ok(total),
            None => spool.shared.degrade("ledger.spent", || self.spent_here(plugin, who, name, since_ms)),
        }
    }

    /// Builds the spending index from the file now, if it was not built yet.
    pub fn warm(&self) {
        let mut index = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        if index.is_none() {
            *index = Some(self.load_index());
        }
    }

    /// The cost of `plugin`'s records in this file for the key or team `name` from the UTC day of
    /// `since_ms` on.
    pub fn spent_here(&self, plugin: &str, who: Spender, name: &str, since_ms: u64) -> u64 {
        let mut index = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let index = index.get_or_insert_with(|| self.load_index());
        let Some(days) = index.get(&(plugin.to_owned(), who, name.to_owned())) else { return 0 };
        days.range(since_ms / DAY_MS..).fold(0u64, |sum, (_, cost)| sum.saturating_add(*cost))
    }

    /// Reads the whole file into a spending index. A line that does not parse (the torn last line
    /// of a crash) is skipped with a warning rather than losing every budget.
    fn load_index(&self) -> SpendIndex {
        let mut index = SpendIndex::new();
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return index,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the ledger; spending starts from zero");
                return index;
            }
        };
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Entry>(&line) {
                Ok(entry) => Self::index(&mut index, &entry),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), line = n + 1, error = %e, "skipped a ledger line")
                }
            }
        }
        index
    }

    fn index(index: &mut SpendIndex, entry: &Entry) {
        let day = entry.ts_ms / DAY_MS;
        for (who, name) in [(Spender::Key, &entry.key_name), (Spender::Team, &entry.team)] {
            let total = index.entry((entry.plugin.clone(), who, name.clone())).or_default().entry(day).or_default();
            *total = total.saturating_add(entry.cost_pico_usd);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self) -> std::io::Result<Arc<Mutex<Open>>> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = &*slot {
            return Ok(file.clone());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).read(true).open(&self.path)?;
        // A crash mid-write can leave a torn last line; start on a fresh line so that the next
        // record is not glued to it (readers skip the torn one).
        let mut len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                len += 1;
            }
        }
        let file = Arc::new(Mutex::new(Open { file, len }));
        if let LedgerFsync::Every(period) = self.fsync {
            let weak = Arc::downgrade(&file);
            std::thread::Builder::new().name("weir-ledger-sync".into()).spawn(move || {
                while let Some(file) = weak.upgrade() {
                    let _ = file.lock().map(|f| f.file.sync_data());
                    drop(file);
                    std::thread::sleep(period);
                }
            })?;
        }
        *slot = Some(file.clone());
        Ok(file)
    }

    /// Writes a record to the file in one `write`; returns the offset just past it.
    fn append_local(&self, entry: &Entry) -> std::io::Result<(u64, Arc<Mutex<Open>>)> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let file = self.file()?;
        let mut open = file.lock().unwrap_or_else(|e| e.into_inner());
        open.file.write_all(&line)?;
        open.len += line.len() as u64;
        let end = open.len;
        drop(open);
        if let Some(index) = &mut *self.spend.lock().unwrap_or_else(|e| e.into_inner()) {
            Self::index(index, entry);
        }
        Ok((end, file))
    }

    /// Every record in a ledger file, for reports and tests. Lines that do not parse (a torn
    /// last line after a crash) are skipped with a warning.
    pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
        let text = std::fs::read_to_string(path)?;
        Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .filter_map(|(n, l)| {
                serde_json::from_str(l)
                    .inspect_err(
                        |e| tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipped a ledger line"),
                    )
                    .ok()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts_ms: u64, key: &str, team: &str, cost: u64, plugin: &str) -> Entry {
        Entry {
            ts_ms,
            request_id: "r".into(),
            key_name: key.into(),
            team: team.into(),
            model: "m".into(),
            target: "u/m".into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            cost_pico_usd: cost,
            plugin: plugin.into(),
        }
    }

    #[test]
    fn spending_is_summed_by_day_per_plugin_and_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("weir-ledger-test-{}", std::process::id()));
        let path = dir.join("ledger.jsonl");
        let _ = std::fs::remove_file(&path);
        let ledger = Ledger::new(&path, LedgerFsync::Always);
        let day = 20_000 * DAY_MS;
        ledger.append_local(&entry(day - 1, "a", "t", 5, "cost")).unwrap();
        assert_eq!(ledger.spent_here("cost", Spender::Key, "a", day), 0, "yesterday is not today");
        ledger.append_local(&entry(day + 10, "a", "t", 7, "cost")).unwrap();
        ledger.append_local(&entry(day + 20, "b", "t", 11, "cost")).unwrap();
        ledger.append_local(&entry(day + 30, "a", "t", 1000, "other-plugin")).unwrap();
        assert_eq!(ledger.spent_here("cost", Spender::Key, "a", day + 5), 7, "rounded down to the day");
        assert_eq!(ledger.spent_here("cost", Spender::Team, "t", day), 18);
        assert_eq!(ledger.spent_here("cost", Spender::Team, "t", day - DAY_MS), 23);
        // A torn last line, as a crash mid-write would leave, is skipped on the next start.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts_ms\":1").unwrap();
        let reopened = Ledger::new(&path, LedgerFsync::Always);
        assert_eq!(reopened.spent_here("cost", Spender::Team, "t", day), 18);
        reopened.append_local(&entry(day + 40, "c", "t", 3, "cost")).unwrap();
        assert_eq!(
            Ledger::new(&path, LedgerFsync::Always).spent_here("cost", Spender::Team, "t", day),
            21,
            "a record after a torn line is kept"
        );
        assert_eq!(reopened.spent_here("other-plugin", Spender::Key, "a", 0), 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
