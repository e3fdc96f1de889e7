//! Prometheus metrics, rendered at `/metrics`. Names follow the OpenTelemetry GenAI conventions where
//! they exist (`gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`);
//! the rest are `weir_*`. Label values are bounded: public model names come from the config (a wildcard
//! request is labelled `*`), targets are `upstream/model` pairs from the config.

use std::sync::Arc;

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub target: Arc<str>,
    /// `connect`, `timeout`, `status_429`, `status_5xx`, `status_4xx`, `auth`, `protocol` or `stream`.
    pub class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route: `chat`, `embeddings`, `completions`, `messages`, `responses`, `models`, `health`,
    /// `metrics`, `admin` or `other`.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: Arc<str>,
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
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub retries: Family<ModelTargetLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub in_flight: Gauge,
    pub plugin_calls: HistogramFamily<PluginHookLabels>,
    pub plugin_faults: Family<PluginFaultLabels, Counter>,
    pub plugin_logs_dropped: Family<PluginLabel, Counter>,
    /// Counters and gauges plugins define: labels `plugin`, `metric`, then the plugin's own.
    plugin_counters: Family<Vec<(String, String)>, Counter>,
    plugin_gauges: Family<Vec<(String, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>,
    plugin_histograms: HistogramFamily<Vec<(String, String)>>,
}

/// Buckets of plugins' own histograms: 1 to 131,072, doubling (milliseconds, mostly).
fn plugin_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 18))
}

fn plugin_call_histogram() -> Histogram {
    // One microsecond to ten milliseconds: a warm call is well under the first bucket's tenfold.
    Histogram::new([1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2])
}

fn plugin_series(plugin: &str, metric: String, labels: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut all = Vec::with_capacity(labels.len() + 2);
    all.push(("plugin".to_owned(), plugin.to_owned()));
    all.push(("metric".to_owned(), metric));
    all.extend(labels.into_iter().filter(|(k, _)| k != "plugin" && k != "metric" && valid_label(k)));
    all
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistogramFamily::<LatencyLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let ttft = HistogramFamily::<ModelTargetLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let tokens = Family::<TokenLabels, Counter>::default();
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let retries = Family::<ModelTargetLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let in_flight = Gauge::default();
        let plugin_calls =
            HistogramFamily::<PluginHookLabels>::new_with_constructor(plugin_call_histogram as fn() -> Histogram);
        let plugin_faults = Family::<PluginFaultLabels, Counter>::default();
        let plugin_logs_dropped = Family::<PluginLabel, Counter>::default();
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
            "weir_upstream_errors",
            "Failed upstream attempts by target and class",
            upstream_errors.clone(),
        );
        registry.register(
            "weir_upstream_retries",
            "Attempts beyond the first, by public model and the target retried",
            retries.clone(),
        );
        registry.register("weir_http_requests", "Every HTTP request, by route and status", http_requests.clone());
        registry.register("weir_in_flight_requests", "Requests being served now", in_flight.clone());
        Self {
            registry,
            requests,
            duration,
            ttft,
            tokens,
            upstream_errors,
            retries,
            http_requests,
            in_flight,
            plugin_calls,
            plugin_faults,
            plugin_logs_dropped,
            plugin_counters,
            plugin_gauges,
            plugin_histograms,
        }
    }

    /// One plugin hook call (`hook` is the hook's label, `on_request` …).
    pub fn plugin_call(&self, plugin: &Arc<str>, hook: &'static str, took: std::time::Duration) {
        self.plugin_calls.get_or_create(&PluginHookLabels { plugin: plugin.clone(), hook }).observe(took.as_secs_f64());
    }

    /// One plugin fault (`kind` is the fault's label, `trap` …).
    pub fn plugin_fault(&self, plugin: &Arc<str>, hook: &'static str, kind: &'static str) {
        self.plugin_faults.get_or_create(&PluginFaultLabels { plugin: plugin.clone(), hook, kind }).inc();
    }

    pub fn plugin_counter(&self, plugin: &str, metric: String, labels: Vec<(String, String)>) -> Counter {
        self.plugin_counters.get_or_create(&plugin_series(plugin, metric, labels)).clone()
    }

    pub fn plugin_gauge(
        &self,
        plugin: &str,
        metric: String,
        labels: Vec<(String, String)>,
    ) -> Gauge<f64, std::sync::atomic::AtomicU64> {
        self.plugin_gauges.get_or_create(&plugin_series(plugin, metric, labels)).clone()
    }

    pub fn plugin_observe(&self, plugin: &str, metric: String, labels: Vec<(String, String)>, value: f64) {
        self.plugin_histograms.get_or_create(&plugin_series(plugin, metric, labels)).observe(value);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
