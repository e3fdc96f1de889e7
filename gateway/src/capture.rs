//! Data capture for prediction traffic, the platforms' "model monitoring" hook: a sampled share of
//! a model's answered predictions (`capture = N` percent on its `[[models]]` entry), written as JSON
//! lines with the request id, model, target, variant, latency and both payloads, so that a team can
//! compute drift against a training baseline offline. It holds user data: nothing is written unless
//! a model opts in, and never for a team in `[capture] exclude_teams`.
//!
//! Bounded everywhere: a record's payload over `max_payload_bytes` is left out (`truncated`), the
//! queue to the writer holds [`QUEUE`] records and drops (and counts) what does not fit rather than
//! slow a request down, and the file is rotated at `max_file_bytes` to `path.1`, `path.2`, … with
//! at most `max_files` kept. The writer is one thread of its own, with plain blocking appends: a
//! record is one `write` of one line, so a crash loses at most the records still queued.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::metrics::{CaptureLabels, Metrics};

/// Records waiting for the writer at most.
pub const QUEUE: usize = 1024;

/// The capture writer of a process.
#[derive(Debug)]
pub struct Capture {
    settings: weir_config::Capture,
    tx: SyncSender<Vec<u8>>,
    metrics: Arc<Metrics>,
}

/// One captured prediction.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub ts_ms: u64,
    pub request_id: &'a str,
    pub model: &'a str,
    pub target: &'a str,
    /// What served it: the variant or deployed model the upstream named.
    pub deployed: Option<&'a str>,
    pub team: &'a str,
    pub latency_ms: u64,
    pub status: u16,
    pub instances: usize,
    /// A shadow copy's answer (the client got the baseline's).
    pub mirrored: bool,
    pub request: Payload,
    pub response: Payload,
    /// A payload was over `max_payload_bytes` and is left out.
    pub truncated: bool,
}

/// A payload as recorded: JSON as JSON, other text as text, anything else in base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Payload {
    Json(Value),
    Text { content_type: String, text: String },
    Base64 { content_type: String, base64: String },
    Omitted { content_type: String, bytes: usize },
}

impl Payload {
    /// `body` of `content_type` as a record holds it, or only its size when over `limit`.
    pub fn of(body: &[u8], content_type: &str, limit: u64) -> Self {
        let content_type = content_type.to_owned();
        if body.len() as u64 > limit {
            return Payload::Omitted { content_type, bytes: body.len() };
        }
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            return Payload::Json(value);
        }
        match std::str::from_utf8(body) {
            Ok(text) => Payload::Text { content_type, text: text.to_owned() },
            Err(_) => Payload::Base64 { content_type, base64: base64::engine::general_purpose::STANDARD.encode(body) },
        }
    }

    pub fn omitted(&self) -> bool {
        matches!(self, Payload::Omitted { .. })
    }
}

impl Capture {
    /// Starts the writer thread for `settings`.
    pub fn start(settings: weir_config::Capture, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer::open(&settings)?;
        let dropped = metrics.clone();
        std::thread::Builder::new().name("weir-capture".into()).spawn(move || writer.run(rx, &dropped))?;
        Ok(Self { settings, tx, metrics })
    }

    pub fn settings(&self) -> &weir_config::Capture {
        &self.settings
    }

    /// Whether a prediction of `team` is to be captured at `percent`.
    pub fn sampled(&self, percent: f64, team: &str) -> bool {
        percent > 0.0
            && !self.settings.exclude_teams.iter().any(|t| t == team)
            && (percent >= 100.0 || rand::random::<f64>() * 100.0 < percent)
    }

    /// Queues `record` for the writer; a full queue drops it (counted), never waits.
    pub fn offer(&self, record: &Record<'_>) {
        let labels = CaptureLabels { model: Arc::from(record.model), outcome: "captured" };
        let Ok(mut line) = serde_json::to_vec(record) else { return };
        line.push(b'\n');
        let outcome = match self.tx.try_send(line) {
            Ok(()) => "captured",
            Err(TrySendError::Full(_)) => "dropped_queue_full",
            Err(TrySendError::Disconnected(_)) => "dropped_writer_stopped",
        };
        self.metrics.captured.get_or_create(&CaptureLabels { outcome, ..labels }).inc();
    }

    /// The payload limit of a record.
    pub fn max_payload(&self) -> u64 {
        self.settings.max_payload_bytes
    }
}

/// The file being appended to, and what rotation needs.
struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_file_bytes: u64,
    max_files: u32,
}

impl Writer {
    fn open(settings: &weir_config::Capture) -> std::io::Result<Self> {
        if let Some(dir) = settings.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&settings.path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: settings.path.clone(),
            file,
            size,
            max_file_bytes: settings.max_file_bytes,
            max_files: settings.max_files,
        })
    }

    fn run(mut self, rx: Receiver<Vec<u8>>, metrics: &Metrics) {
        for line in rx {
            if let Err(e) = self.write(&line) {
                tracing::warn!(error = %e, path = %self.path.display(), "a captured prediction could not be written");
                metrics
                    .captured
                    .get_or_create(&CaptureLabels { model: Arc::from(""), outcome: "dropped_write_error" })
                    .inc();
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `path` → `path.1` → `path.2` …, the oldest beyond `max_files` deleted, and a new `path`.
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| -> PathBuf {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.max_files.saturating_sub(1);
        if keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(keep));
            for n in (1..keep).rev() {
                rename_if_present(&numbered(n), &numbered(n + 1))?;
            }
            rename_if_present(&self.path, &numbered(1))?;
        }
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn rename_if_present(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's own under the system's temporary one.
    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-capture-{name}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn settings(dir: &Path, max_file_bytes: u64, max_files: u32) -> weir_config::Capture {
        weir_config::Capture {
            path: dir.join("capture.jsonl"),
            max_file_bytes,
            max_files,
            max_payload_bytes: 64,
            exclude_teams: vec!["health".into()],
        }
    }

    #[test]
    fn files_rotate_and_the_oldest_go() {
        let dir = tempdir("rotate");
        let mut writer = Writer::open(&settings(&dir, 100, 3)).unwrap();
        for i in 0..10 {
            writer.write(format!("{{\"n\":{i:040}}}\n").as_bytes()).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        // Two 50-byte lines per file: the newest two files and the current one are kept.
        assert_eq!(read("capture.jsonl").lines().count(), 2);
        assert_eq!(read("capture.jsonl.1").lines().count(), 2);
        assert_eq!(read("capture.jsonl.2").lines().count(), 2);
        assert!(!dir.join("capture.jsonl.3").exists());
        assert!(read("capture.jsonl").contains(&format!("{:040}", 9)), "the newest lines are in the current file");
    }

    #[test]
    fn payloads_are_json_text_or_base64_and_bounded() {
        assert!(matches!(Payload::of(br#"{"a":1}"#, "application/json", 64), Payload::Json(_)));
        assert!(matches!(Payload::of(b"1,2\n", "text/csv", 64), Payload::Text { .. }));
        assert!(matches!(Payload::of(&[0x89, 0xff], "image/png", 64), Payload::Base64 { .. }));
        assert!(Payload::of(&[b'1'; 65], "text/csv", 64).omitted());
    }

    #[test]
    fn sampling_honours_the_share_and_the_excluded_teams() {
        let dir = tempdir("sampling");
        let capture = Capture::start(settings(&dir, 1 << 20, 2), Arc::new(Metrics::new())).unwrap();
        assert!(capture.sampled(100.0, "web"));
        assert!(!capture.sampled(0.0, "web"));
        assert!(!capture.sampled(100.0, "health"), "an excluded team is never captured");
        let share = (0..10_000).filter(|_| capture.sampled(25.0, "web")).count();
        assert!((2200..=2800).contains(&share), "{share}");
    }
}
