//! The usage ledger: one JSON object per line, appended with a single `write` per record, so a
//! record that `append` returned for is in the operating system's hands and survives a crash of the
//! gateway. A background thread `fsync`s once a second for the machine-crash case.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

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
    pub cost_micros: u64,
    /// The plugin that wrote it.
    pub plugin: String,
}

/// The ledger file, opened on the first append so that a gateway without accounting plugins never
/// creates one.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: Mutex<Option<Arc<Mutex<File>>>>,
}

impl Ledger {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned(), file: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn file(&self) -> std::io::Result<Arc<Mutex<File>>> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = &*slot {
            return Ok(file.clone());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = Arc::new(Mutex::new(OpenOptions::new().create(true).append(true).open(&self.path)?));
        let weak = Arc::downgrade(&file);
        std::thread::Builder::new().name("weir-ledger-sync".into()).spawn(move || {
            while let Some(file) = weak.upgrade() {
                let _ = file.lock().map(|f| f.sync_data());
                drop(file);
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
        *slot = Some(file.clone());
        Ok(file)
    }

    pub fn append(&self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let file = self.file()?;
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)
    }

    /// Every record in a ledger file, for reports and tests.
    pub fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}
