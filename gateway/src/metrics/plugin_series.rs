//! The book of the metric series plugins create: which plugin versions use each series, and how
//! many bytes of `/metrics` each plugin's series take, so that no plugin can grow the gateway's
//! memory (or a scrape) through names and labels, and a version swapped out on reload takes the
//! series only it used with it. Those are *retired* when the version goes, stay for a grace period
//! (`state.plugin_metrics_grace`, so that scrapes still see their final counts), then are removed;
//! until then they count against the plugin's limits, and a live series that needs their room
//! evicts them at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The longest metric name a plugin may use, in bytes.
pub const MAX_NAME: usize = 128;
/// The longest label name.
pub const MAX_LABEL_NAME: usize = 64;
/// The longest label value.
pub const MAX_LABEL_VALUE: usize = 256;
/// Labels per series, besides `plugin` and `metric`.
pub const MAX_LABELS: usize = 16;
/// Series per plugin, all its versions together.
pub const MAX_SERIES: usize = 1000;
/// Bytes of `/metrics` text per plugin, all its series together (a histogram counts once per
/// line it renders).
pub const MAX_BYTES: usize = 1 << 20;

/// Lines one series renders: a histogram's buckets, `+Inf`, sum and count.
const HISTOGRAM_LINES: usize = 21;
/// A line's bytes besides its labels: the family name, the value, quotes and separators.
const LINE_OVERHEAD: usize = 64;

/// The kinds of plugin metric, each its own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeriesKind {
    Counter,
    Gauge,
    Histogram,
}

/// Why an update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A name, label name or value over its limit, or too many labels.
    TooLong,
    /// The same label name twice (it would make `/metrics` unreadable).
    DuplicateLabel,
    /// The plugin has [`MAX_SERIES`] series already.
    Series,
    /// The plugin's series take [`MAX_BYTES`] already.
    Bytes,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::TooLong => "too_long",
            Refused::DuplicateLabel => "duplicate_label",
            Refused::Series => "series_limit",
            Refused::Bytes => "bytes_limit",
        }
    }
}

/// The label set of a plugin's series: `plugin`, `metric`, then its own.
pub type SeriesLabels = Vec<(String, String)>;

/// One plugin's series and the versions that used each.
#[derive(Debug, Default)]
struct Ledger {
    bytes: usize,
    series: HashMap<(SeriesKind, SeriesLabels), Users>,
}

/// The versions that use a series; none once it is retired.
#[derive(Debug, Default)]
struct Users {
    versions: Vec<u64>,
    retired: Option<Instant>,
}

/// A series to take out of its family.
pub type Gone = (SeriesKind, SeriesLabels);

/// Every plugin's [`Ledger`].
#[derive(Debug, Default)]
pub struct Book {
    plugins: Mutex<HashMap<Arc<str>, Ledger>>,
}

impl Book {
    /// Checks a plugin's update and, for a new series, counts it against the plugin's limits;
    /// returns the label set to update.
    #[cfg(test)]
    pub fn admit(
        &self,
        plugin: &Arc<str>,
        version: u64,
        kind: SeriesKind,
        name: String,
        labels: Vec<(String, String)>,
    ) -> Result<SeriesLabels, Refused> {
        self.admit_evicting(plugin, version, kind, name, labels, &mut Vec::new())
    }

    /// [`Book::admit`], adding to `evicted` the retired series that made room for a new one.
    pub fn admit_evicting(
        &self,
        plugin: &Arc<str>,
        version: u64,
        kind: SeriesKind,
        name: String,
        labels: Vec<(String, String)>,
        evicted: &mut Vec<Gone>,
    ) -> Result<SeriesLabels, Refused> {
        let labels = series_labels(plugin, name, labels)?;
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let ledger = plugins.entry(plugin.clone()).or_default();
        let key = (kind, labels);
        if let Some(users) = ledger.series.get_mut(&key) {
            if !users.versions.contains(&version) {
                users.versions.push(version);
            }
            users.retired = None;
            return Ok(key.1);
        }
        let cost = cost(kind, &key.1);
        if ledger.series.len() >= MAX_SERIES || ledger.bytes + cost > MAX_BYTES {
            // Retired series give way to live ones.
            ledger.purge(|_| true, evicted);
        }
        if ledger.series.len() >= MAX_SERIES {
            return Err(Refused::Series);
        }
        if ledger.bytes + cost > MAX_BYTES {
            return Err(Refused::Bytes);
        }
        ledger.bytes += cost;
        let labels = key.1.clone();
        ledger.series.insert(key, Users { versions: vec![version], retired: None });
        Ok(labels)
    }

    /// Forgets `version` of `plugin`: the series no other version uses are retired.
    pub fn release(&self, plugin: &str, version: u64) {
        let now = Instant::now();
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ledger) = plugins.get_mut(plugin) else { return };
        for users in ledger.series.values_mut() {
            users.versions.retain(|v| *v != version);
            if users.versions.is_empty() && users.retired.is_none() {
                users.retired = Some(now);
            }
        }
    }

    /// Removes the series retired at or before `before`; returns them for the caller to take out
    /// of their families.
    pub fn purge_retired(&self, before: Instant) -> Vec<Gone> {
        let mut gone = Vec::new();
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        for ledger in plugins.values_mut() {
            ledger.purge(|retired| retired <= before, &mut gone);
        }
        plugins.retain(|_, ledger| !ledger.series.is_empty());
        gone
    }

    /// Series and bytes a plugin holds now.
    pub fn usage(&self, plugin: &str) -> (usize, usize) {
        let plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        plugins.get(plugin).map_or((0, 0), |l| (l.series.len(), l.bytes))
    }
}

impl Ledger {
    /// Removes the retired series `which` selects (by when they were retired) into `gone`.
    fn purge(&mut self, which: impl Fn(Instant) -> bool, gone: &mut Vec<Gone>) {
        let mut freed = 0;
        self.series.retain(|key, users| {
            let remove = users.retired.is_some_and(&which);
            if remove {
                freed += cost(key.0, &key.1);
                gone.push(key.clone());
            }
            !remove
        });
        self.bytes = self.bytes.saturating_sub(freed);
    }
}

/// The bytes a series takes in `/metrics`.
fn cost(kind: SeriesKind, labels: &SeriesLabels) -> usize {
    let label_bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let lines = if kind == SeriesKind::Histogram { HISTOGRAM_LINES } else { 1 };
    lines * (label_bytes + LINE_OVERHEAD)
}

/// `plugin`, `metric`, then the plugin's own labels, with invalid label names left out as before
/// (and `plugin`/`metric`, which are the host's); refused when anything is over its limit or a
/// label name repeats.
fn series_labels(plugin: &str, metric: String, labels: Vec<(String, String)>) -> Result<SeriesLabels, Refused> {
    if metric.len() > MAX_NAME || labels.len() > MAX_LABELS {
        return Err(Refused::TooLong);
    }
    let mut all = Vec::with_capacity(labels.len() + 2);
    all.push(("plugin".to_owned(), plugin.to_owned()));
    all.push(("metric".to_owned(), metric));
    for (name, value) in labels {
        if name.len() > MAX_LABEL_NAME || value.len() > MAX_LABEL_VALUE {
            return Err(Refused::TooLong);
        }
        if name == "plugin" || name == "metric" || !valid_label(&name) {
            continue;
        }
        if all.iter().any(|(existing, _)| *existing == name) {
            return Err(Refused::DuplicateLabel);
        }
        all.push((name, value));
    }
    Ok(all)
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn oversized_and_duplicate_labels_are_refused() {
        let book = Book::default();
        let p: Arc<str> = "p".into();
        let huge = "x".repeat(1 << 20);
        let admit = |name: &str, l: &[(&str, &str)]| book.admit(&p, 1, SeriesKind::Counter, name.to_owned(), labels(l));
        assert_eq!(admit("m", &[("id", &huge)]), Err(Refused::TooLong));
        assert_eq!(admit(&huge, &[]), Err(Refused::TooLong));
        assert_eq!(admit("m", &[(&"k".repeat(65), "v")]), Err(Refused::TooLong));
        assert_eq!(admit("m", &[("a", "1"), ("a", "2")]), Err(Refused::DuplicateLabel));
        let ok = admit("m", &[("a", "1"), ("bad-name", "x"), ("plugin", "spoof")]).expect("admitted");
        assert_eq!(ok, labels(&[("plugin", "p"), ("metric", "m"), ("a", "1")]));
        assert_eq!(book.usage("p").0, 1);
    }

    #[test]
    fn series_and_bytes_are_capped_per_plugin_across_versions() {
        let book = Book::default();
        let p: Arc<str> = "p".into();
        let value = "v".repeat(MAX_LABEL_VALUE);
        let mut admitted = 0;
        for i in 0..MAX_SERIES {
            let version = (i % 2) as u64;
            match book.admit(
                &p,
                version,
                SeriesKind::Histogram,
                "h".into(),
                labels(&[("i", &format!("{i}{value}")[..MAX_LABEL_VALUE])]),
            ) {
                Ok(_) => admitted += 1,
                Err(refused) => {
                    assert_eq!(refused, Refused::Bytes);
                    break;
                }
            }
        }
        let (series, bytes) = book.usage("p");
        assert_eq!(series, admitted);
        assert!(bytes <= MAX_BYTES && admitted < MAX_SERIES, "{admitted} series, {bytes} bytes");
        // Another plugin has its own budget.
        let q: Arc<str> = "q".into();
        assert!(book.admit(&q, 1, SeriesKind::Counter, "c".into(), Vec::new()).is_ok());
    }

    #[test]
    fn releasing_a_version_retires_only_the_series_no_other_version_uses() {
        let book = Book::default();
        let p: Arc<str> = "p".into();
        let shared = labels(&[("tag", "both")]);
        book.admit(&p, 1, SeriesKind::Counter, "c".into(), shared.clone()).expect("v1");
        book.admit(&p, 1, SeriesKind::Counter, "c".into(), labels(&[("tag", "old")])).expect("v1 only");
        book.admit(&p, 2, SeriesKind::Counter, "c".into(), shared).expect("v2");
        let before_release = Instant::now();
        book.release("p", 1);
        assert!(book.purge_retired(before_release).is_empty(), "within the grace, they stay");
        let gone = book.purge_retired(Instant::now());
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(gone[0].1[2], ("tag".to_owned(), "old".to_owned()));
        assert_eq!(book.usage("p").0, 1);
        book.release("p", 2);
        assert_eq!(book.purge_retired(Instant::now()).len(), 1);
        assert_eq!(book.usage("p"), (0, 0));
    }

    #[test]
    fn retired_series_make_room_for_live_ones() {
        let book = Book::default();
        let p: Arc<str> = "p".into();
        for i in 0..MAX_SERIES {
            book.admit(&p, 1, SeriesKind::Counter, "c".into(), labels(&[("i", &i.to_string())])).expect("room");
        }
        assert_eq!(book.admit(&p, 2, SeriesKind::Counter, "c".into(), labels(&[("i", "new")])), Err(Refused::Series));
        book.release("p", 1);
        let mut evicted = Vec::new();
        let admitted =
            book.admit_evicting(&p, 2, SeriesKind::Counter, "c".into(), labels(&[("i", "new")]), &mut evicted);
        assert!(admitted.is_ok());
        assert_eq!(evicted.len(), MAX_SERIES);
        assert_eq!(book.usage("p").0, 1);
    }
}
