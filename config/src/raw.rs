//! The file as written: serde structs that mirror the TOML, reject unknown fields, and are checked by
//! `validate` before anything else sees them. Durations stay strings here so that a bad one is reported
//! with its path and a hint rather than as a serde type error.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub failover: RawFailover,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    /// The default plugin chain by name; all `[[plugins]]` in file order when absent.
    pub chain: Option<Vec<String>>,
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub capture: RawCapture,
}

/// `[capture]`: where sampled predictions are written (models opt in with `capture`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCapture {
    pub path: Option<String>,
    pub max_file_bytes: Option<String>,
    pub max_files: Option<i64>,
    pub max_payload_bytes: Option<String>,
    #[serde(default)]
    pub exclude_teams: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugin {
    pub name: String,
    pub source: String,
    pub on_error: Option<String>,
    pub deadline: Option<String>,
    pub memory: Option<String>,
    pub instances: Option<String>,
    pub recycle_after: Option<i64>,
    #[serde(default)]
    pub quarantine: RawQuarantine,
    #[serde(default)]
    pub config: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuarantine {
    pub faults: Option<i64>,
    pub window: Option<String>,
    pub cooldown: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    /// USD per million prompt tokens; 0 when not set (a model priced per prediction).
    #[serde(default)]
    pub input: f64,
    /// USD per million completion tokens.
    #[serde(default)]
    pub output: f64,
    pub cached_input: Option<f64>,
    /// Predictions: USD per request, per 1,000 instances, per second of the serving attempt.
    pub per_request: Option<f64>,
    pub per_1k_instances: Option<f64>,
    pub per_compute_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    /// `embedded` (the default) or `redis`.
    pub backend: Option<String>,
    pub ledger: Option<String>,
    /// `always`, or how often the ledger file is `fsync`ed (a duration).
    pub ledger_fsync: Option<String>,
    pub plugin_cache: Option<String>,
    pub kv_max_bytes: Option<i64>,
    pub plugin_metrics_grace: Option<String>,
    /// The stored responses of the Responses API (JSON lines).
    pub responses: Option<String>,
    pub responses_max_bytes: Option<String>,
    pub responses_ttl: Option<String>,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    /// `standalone` (the default), `cluster` or `sentinel`.
    pub mode: Option<String>,
    /// `redis://` or `rediss://` (TLS): the server (standalone).
    pub url: Option<String>,
    /// Cluster seed nodes, or the sentinels, as URLs.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The master's name, for `sentinel`.
    pub sentinel_master: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A PEM file of extra root certificates for `rediss://`.
    pub tls_ca: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    /// `embedded` (fall back to this replica's own state) or `fail`.
    pub on_unavailable: Option<String>,
    /// `/readyz` fails while Redis is unavailable.
    pub ready_requires_redis: Option<bool>,
    pub hold_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    /// Key names allowed to call `/admin/*`; without keys configured, loopback callers may.
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub tls: Option<RawTls>,
    pub max_body_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub total: Option<String>,
    pub idle: Option<String>,
    pub first_token: Option<String>,
}

/// A model's own timeouts: only the one that is about the model rather than its upstreams.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModelTimeouts {
    pub first_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub max_attempts: Option<i64>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub same_target: Option<i64>,
    pub retry_after_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFailover {
    pub mid_stream: Option<String>,
    pub max_attempts: Option<i64>,
    pub max_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Required for `openai` and `azure-openai`, and for a `worker` that does not name a `model`
    /// for the gateway to start itself; the cloud kinds derive theirs from region/location.
    pub endpoint: Option<String>,
    pub api_key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// How this upstream continues an assistant message (mid-stream failover).
    pub prefill: Option<String>,
    /// `kind = "worker"` only: a model the gateway serves in-process (a directory, `python:PKG/DIR`
    /// or `builtin:NAME`).
    pub model: Option<String>,
    /// `kind = "worker"` with `model` only: `auto`, `cpu` or `cuda:N`.
    pub device: Option<String>,
    // bedrock
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub profile: Option<String>,
    // vertex (and bedrock: `credentials_file`)
    pub project: Option<String>,
    pub location: Option<String>,
    pub credentials_file: Option<String>,
    // azure-openai
    pub api_version: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// `openai` and the `/openai/v1` surface of `azure-openai`: relay `/v1/responses` natively.
    pub native_responses: Option<bool>,
    /// `anthropic`: the `anthropic-version` sent when the client sent none.
    pub anthropic_version: Option<String>,
}

fn default_kind() -> String {
    "openai".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    pub name: String,
    pub targets: Vec<RawTarget>,
    /// This model's own plugin chain, replacing the default one.
    pub plugins: Option<Vec<String>>,
    /// Overrides of `[retry]`, field by field.
    pub retry: Option<RawRetry>,
    pub timeouts: Option<RawModelTimeouts>,
    /// Overrides of `[failover]`, field by field.
    pub failover: Option<RawFailover>,
    /// The percentage of this model's predictions written to `[capture]`.
    pub capture: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    pub upstream: String,
    pub model: Option<String>,
    /// Tokens the target's model takes in one request (prompt and completion).
    pub context_window: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub name: String,
    pub team: String,
    pub key: Option<String>,
    pub key_sha256: Option<String>,
}
