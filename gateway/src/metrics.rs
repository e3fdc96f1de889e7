//! Prometheus metrics, rendered at `/metrics`. Names follow the OpenTelemetry GenAI conventions where
//! they exist (`gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`);
//! the rest are `weir_*`. Label values are bounded: public model names come from the config (a wildcard
//! request is labelled `*`), targets are `upstream/model` pairs from the config.

mod plugin_series;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plugin_series::SeriesKind;
pub use plugin_series::{MAX_BYTES as MAX_PLUGIN_METRIC_BYTES, MAX_LABEL_VALUE, MAX_SERIES as MAX_PLUGIN_SERIES};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a finished model request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat` or `embeddings`.
    pub operation: &'static str,
    /// The client API: `chat_completions`, `embeddings`, `completions`, `messages` or `responses`.
    pub surface: &'static str,
    pub model: Arc<str>,
    pub target: Arc<str>,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// `ok`, `error` (including a stream that failed after its first byte) or `client_abort`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub operation: &'static str,
    pub surface: &'static str,
    pub model: Arc<str>,
    pub target: Arc<str>,
    pub status: u16,
}

/// A public model and one of its targets (time to first token, retries).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelTargetLabels {
    pub model: Arc<str>,
    pub target: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: Arc<str>,
    pub target: Arc<str>,
    pub surface: &'static str,
    /// `input`, `output`, `cached_input` or `reasoning`.
    pub token_type: &'static str,
}

/// A prediction offered to data capture, by public model and what became of it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    pub model: Arc<str>,
    /// `captured`, `dropped_queue_full`, `dropped_writer_stopped` or `dropped_write_error`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub target: Arc<str>,
    /// `connect`, `reset`, `timeout`, `status_429`, `status_5xx`, `status_4xx`, `auth`, `protocol`
    /// or `stream`.
    pub class: &'static str,
}

/// A stream continued on another target after it broke off mid-answer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContinuationLabels {
    pub model: Arc<str>,
    /// The target that took the stream over.
    pub target: Arc<str>,
    /// `prefill` (it continued the text so far) or `restart` (it started over, and its answer was
    /// used from where the client's left off).
    pub how: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route: `chat`, `embeddings`, `completions`, `messages`, `responses`, `models`, `health`,
    /// `metrics`, `admin` or `other`.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionClosedLabels {
    /// `idle_timeout` (no request within `server.idle_timeout`, or none at all within
    /// `server.header_read_timeout` of connecting), `evicted` (the longest-idle one, closed at
    /// `server.max_connections` to make room) or `refused` (at the limit with none idle).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginRefusedLabels {
    pub plugin: Arc<str>,
    /// `too_long`, `duplicate_label`, `series_limit` or `bytes_limit`.
    pub reason: &'static str,
}

/// One loaded version of a plugin, as its metrics are booked.
#[derive(Debug, Clone)]
pub struct PluginVersion {
    pub name: Arc<str>,
    /// Unique per loaded version.
    pub version: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginHookLabels {
    pub plugin: Arc<str>,
    pub hook: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginFaultLabels {
    pub plugin: Arc<str>,
    pub hook: &'static str,
    /// `trap`, `deadline`, `memory`, `instantiate` or `bad_decision`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The host call: `kv.get`, `quota.reserve`, `ledger.spent` …
    pub op: &'static str,
    /// `embedded` (served by this replica's own state instead) or `failed`.
    pub outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily<LatencyLabels>,
    pub ttft: HistogramFamily<ModelTargetLabels>,
    pub tokens: Family<TokenLabels, Counter>,
    /// Instances predicted (prediction traffic), by public model and target.
    pub predicted_instances: Family<ModelTargetLabels, Counter>,
    /// Predictions offered to data capture.
    pub captured: Family<CaptureLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub retries: Family<ModelTargetLabels, Counter>,
    pub stream_continuations: Family<ContinuationLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub in_flight: Gauge,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Client connections the gateway closed on its own, by reason.
    pub connections_closed: Family<ConnectionClosedLabels, Counter>,
    pub plugin_calls: HistogramFamily<PluginHookLabels>,
    pub plugin_faults: Family<PluginFaultLabels, Counter>,
    pub plugin_logs_dropped: Family<PluginLabel, Counter>,
    /// 1 while a plugin is quarantined after repeated faults.
    pub plugin_quarantined: Family<PluginLabel, Gauge>,
    pub plugin_quarantines: Family<PluginLabel, Counter>,
    /// Hook calls skipped because the plugin was quarantined.
    pub plugin_skipped: Family<PluginHookLabels, Counter>,
    /// Counters and gauges plugins define: labels `plugin`, `metric`, then the plugin's own.
    plugin_counters: Family<Vec<(String, String)>, Counter>,
    plugin_gauges: Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    plugin_histograms: HistogramFamily<Vec<(String, String)>>,
    /// Which plugin versions use which of those series, and their size.
    plugin_book: plugin_series::Book,
    plugin_metrics_grace_ms: AtomicU64,
    pub plugin_metrics_refused: Family<PluginRefusedLabels, Counter>,
    /// 1 while the shared state (Redis) answers; 0 while it does not, and with the embedded backend.
    pub state_up: Gauge,
    /// Host calls that Redis did not answer in time, by what became of them.
    pub state_unavailable: Family<StateLabels, Counter>,
    /// Ledger bytes written locally but not yet in Redis's spending totals.
    pub ledger_spooled_bytes: Gauge,
}

/// Buckets of plugins' own histograms: 1 to 131,072, doubling (milliseconds, mostly).
fn plugin_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 18))
}

fn plugin_call_histogram() -> Histogram {
    // One microsecond to ten milliseconds: a warm call is well under the first bucket's tenfold.
    Histogram::new([1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2])
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::<LatencyLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let ttft = HistogramFamily::<ModelTargetLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let tokens = Family::<TokenLabels, Counter>::default();
        let predicted_instances = Family::<ModelTargetLabels, Counter>::default();
        let captured = Family::<CaptureLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let retries = Family::<ModelTargetLabels, Counter>::default();
        let stream_continuations = Family::<ContinuationLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let in_flight = Gauge::default();
        let connections_open = Gauge::default();
        let connections_closed = Family::<ConnectionClosedLabels, Counter>::default();
        let plugin_calls =
            HistogramFamily::<PluginHookLabels>::new_with_constructor(plugin_call_histogram as fn() -> Histogram);
        let plugin_faults = Family::<PluginFaultLabels, Counter>::default();
        let plugin_logs_dropped = Family::<PluginLabel, Counter>::default();
        let plugin_quarantined = Family::<PluginLabel, Gauge>::default();
        let plugin_quarantines = Family::<PluginLabel, Counter>::default();
        let plugin_skipped = Family::<PluginHookLabels, Counter>::default();
        registry.register(
            "weir_plugin_quarantined",
            "1 while a plugin is quarantined after repeated faults (its hooks skipped per its on_error)",
            plugin_quarantined.clone(),
        );
        registry.register("weir_plugin_quarantines", "Times a plugin was quarantined", plugin_quarantines.clone());
        registry.register(
            "weir_plugin_skipped",
            "Hook calls skipped because the plugin was quarantined",
            plugin_skipped.clone(),
        );
        let plugin_counters = Family::<Vec<(String, String)>, Counter>::default();
        let plugin_gauges = Family::<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let plugin_histograms =
            HistogramFamily::<Vec<(String, String)>>::new_with_constructor(plugin_histogram as fn() -> Histogram);
        registry.register(
            "weir_plugin_call_seconds",
            "Time of plugin hook calls, by plugin and hook",
            plugin_calls.clone(),
        );
        registry.register(
            "weir_plugin_faults",
            "Plugin faults (trap, deadline, memory, …) by plugin, hook and kind",
            plugin_faults.clone(),
        );
        registry.register(
            "weir_plugin_logs_dropped",
            "Plugin log lines dropped by the rate limit",
            plugin_logs_dropped.clone(),
        );
        let plugin_metrics_refused = Family::<PluginRefusedLabels, Counter>::default();
        registry.register(
            "weir_plugin_metrics_refused",
            "Plugin metric updates refused: a name or label over its limit, a repeated label, or the plugin's series or bytes limit",
            plugin_metrics_refused.clone(),
        );
        registry.register("weir_plugin_counter", "Counters defined by plugins", plugin_counters.clone());
        registry.register("weir_plugin_gauge", "Gauges defined by plugins", plugin_gauges.clone());
        registry.register("weir_plugin_histogram", "Histograms defined by plugins", plugin_histograms.clone());
        registry.register(
            "weir_requests",
            "Model requests by public model, target, status and outcome",
            requests.clone(),
        );
        registry.register(
            "gen_ai_server_request_duration_seconds",
            "Time from request received to last byte sent, by public model, target and status",
            duration.clone(),
        );
        registry.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from request received to the first streamed content chunk",
            ttft.clone(),
        );
        registry.register("weir_tokens", "Tokens by public model, target and type", tokens.clone());
        registry.register(
            "weir_predicted_instances",
            "Instances predicted by public model and target (answered predictions)",
            predicted_instances.clone(),
        );
        registry.register(
            "weir_captured_predictions",
            "Predictions sampled for data capture, by public model and outcome (captured or why dropped)",
            captured.clone(),
        );
        registry.register(
            "weir_upstream_errors",
            "Failed upstream attempts by target and class",
            upstream_errors.clone(),
        );
        registry.register(
            "weir_upstream_retries",
            "Attempts beyond the first, by public model and the target retried",
            retries.clone(),
        );
        registry.register(
            "weir_stream_continuations",
            "Streams continued on another target after they broke off mid-answer, by model, target and how",
            stream_continuations.clone(),
        );
        registry.register("weir_http_requests", "Every HTTP request, by route and status", http_requests.clone());
        registry.register("weir_in_flight_requests", "Requests being served now", in_flight.clone());
        registry.register("weir_connections_open", "Client connections open now", connections_open.clone());
        registry.register(
            "weir_connections_closed",
            "Client connections closed by the gateway: idle_timeout, evicted (at server.max_connections) or refused",
            connections_closed.clone(),
        );
        let state_up = Gauge::default();
        let state_unavailable = Family::<StateLabels, Counter>::default();
        let ledger_spooled_bytes = Gauge::default();
        let shared = registry.sub_registry_with_prefix("weir_state");
        shared.register("redis_up", "Whether the shared state (Redis) answers: 1 yes, 0 no", state_up.clone());
        shared.register(
            "unavailable",
            "State calls Redis did not answer in time, by call and outcome (embedded: served by this replica's own state; failed: the call failed; spooled: kept on this replica's disk until Redis answers)",
            state_unavailable.clone(),
        );
        shared.register(
            "ledger_spooled_bytes",
            "Ledger bytes on this replica's disk not yet added to Redis's spending totals",
            ledger_spooled_bytes.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            predicted_instances,
            captured,
            upstream_errors,
            retries,
            stream_continuations,
            http_requests,
            in_flight,
            connections_open,
            connections_closed,
            plugin_calls,
            plugin_faults,
            plugin_logs_dropped,
            plugin_quarantined,
            plugin_quarantines,
            plugin_skipped,
            plugin_counters,
            plugin_gauges,
            plugin_histograms,
            plugin_book: plugin_series::Book::default(),
            plugin_metrics_grace_ms: AtomicU64::new(120_000),
            plugin_metrics_refused,
            state_up,
            state_unavailable,
            ledger_spooled_bytes,
        }
    }

    /// One plugin hook call (`hook` is the hook's label, `on_request` …).
    pub fn plugin_call(&self, plugin: &Arc<str>, hook: &'static str, took: std::time::Duration) {
        self.plugin_calls.get_or_create(&PluginHookLabels { plugin: plugin.clone(), hook }).observe(took.as_secs_f64());
    }

    /// One hook call skipped for a quarantine.
    pub fn plugin_skipped(&self, plugin: &Arc<str>, hook: &'static str) {
        self.plugin_skipped.get_or_create(&PluginHookLabels { plugin: plugin.clone(), hook }).inc();
    }

    /// One plugin fault (`kind` is the fault's label, `trap` …).
    pub fn plugin_fault(&self, plugin: &Arc<str>, hook: &'static str, kind: &'static str) {
        self.plugin_faults.get_or_create(&PluginFaultLabels { plugin: plugin.clone(), hook, kind }).inc();
    }

    /// Adds to a plugin's counter, if the plugin's limits allow the series (see `plugin_series.rs`).
    pub fn plugin_counter_add(
        &self,
        plugin: &PluginVersion,
        metric: String,
        labels: Vec<(String, String)>,
        delta: u64,
    ) {
        if let Some(series) = self.plugin_series(plugin, SeriesKind::Counter, metric, labels) {
            self.plugin_counters.get_or_create(&series).inc_by(delta);
        }
    }

    /// Sets a plugin's gauge, within its limits.
    pub fn plugin_gauge_set(&self, plugin: &PluginVersion, metric: String, labels: Vec<(String, String)>, value: f64) {
        if let Some(series) = self.plugin_series(plugin, SeriesKind::Gauge, metric, labels) {
            self.plugin_gauges.get_or_create(&series).set(value);
        }
    }

    /// Records an observation in a plugin's histogram, within its limits.
    pub fn plugin_observe(&self, plugin: &PluginVersion, metric: String, labels: Vec<(String, String)>, value: f64) {
        if let Some(series) = self.plugin_series(plugin, SeriesKind::Histogram, metric, labels) {
            self.plugin_histograms.get_or_create(&series).observe(value);
        }
    }

    fn plugin_series(
        &self,
        plugin: &PluginVersion,
        kind: SeriesKind,
        metric: String,
        labels: Vec<(String, String)>,
    ) -> Option<plugin_series::SeriesLabels> {
        let mut evicted = Vec::new();
        let admitted =
            self.plugin_book.admit_evicting(&plugin.name, plugin.version, kind, metric, labels, &mut evicted);
        self.remove_plugin_series(evicted);
        match admitted {
            Ok(series) => Some(series),
            Err(refused) => {
                self.plugin_metrics_refused
                    .get_or_create(&PluginRefusedLabels { plugin: plugin.name.clone(), reason: refused.label() })
                    .inc();
                None
            }
        }
    }

    /// Retires the series that only this version of the plugin used: called when a version is
    /// swapped out and its last request is over. They stay for `state.plugin_metrics_grace`.
    pub fn release_plugin_version(&self, plugin: &str, version: u64) {
        self.plugin_book.release(plugin, version);
    }

    fn remove_plugin_series(&self, gone: Vec<plugin_series::Gone>) {
        for (kind, series) in gone {
            match kind {
                SeriesKind::Counter => self.plugin_counters.remove(&series),
                SeriesKind::Gauge => self.plugin_gauges.remove(&series),
                SeriesKind::Histogram => self.plugin_histograms.remove(&series),
            };
        }
    }

    /// The series and bytes of `/metrics` a plugin holds now.
    pub fn plugin_series_usage(&self, plugin: &str) -> (usize, usize) {
        self.plugin_book.usage(plugin)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        // Series of versions swapped out longer ago than the grace go first.
        let grace = Duration::from_millis(self.plugin_metrics_grace_ms.load(Ordering::Relaxed));
        if let Some(before) = Instant::now().checked_sub(grace) {
            self.remove_plugin_series(self.plugin_book.purge_retired(before));
        }
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// How long a swapped-out plugin version's own series stay (`state.plugin_metrics_grace`).
    pub fn set_plugin_metrics_grace(&self, grace: Duration) {
        self.plugin_metrics_grace_ms.store(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
