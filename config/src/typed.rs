//! The validated configuration. Every value here has been checked: names are unique, references
//! resolve, durations are positive, and secrets are wrapped so they cannot reach a log by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The public model name that matches any model no other entry names; its targets pass the
/// requested name through unless they set `model`.
pub const WILDCARD_MODEL: &str = "*";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    /// The retry settings of models that do not set their own.
    pub retry: Retry,
    /// The mid-stream failover settings of models that do not set their own.
    pub failover: Failover,
    pub log: Logging,
    /// Upstreams in file order; [`Target::upstream`] indexes this list.
    pub upstreams: Vec<Upstream>,
    /// Public models in file order, at most one of them [`WILDCARD_MODEL`].
    pub models: Vec<Model>,
    /// API keys; empty means no authentication, which validation allows only on loopback.
    pub keys: Vec<ApiKey>,
    /// Plugins in file order; chains index this list.
    pub plugins: Vec<PluginConfig>,
    /// The default chain: indexes into `plugins`, in call order.
    pub chain: Vec<usize>,
    /// Prices by target (`upstream/model`) or public model name.
    pub prices: BTreeMap<String, Price>,
    pub state: State,
    /// Key names allowed to call `/admin/*`.
    pub admin_keys: Vec<String>,
    /// Where sampled predictions are written.
    pub capture: Capture,
    /// The file this config was read from, when it was (hot reload watches it).
    pub source: Option<PathBuf>,
}

/// `[capture]`: the sampled predictions of models that set `capture` (data capture, for drift
/// against a training baseline), as JSON lines. Holds user data: off unless a model opts in.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// The file written; it is rotated to `path.1`, `path.2`, … at `max_file_bytes`.
    pub path: PathBuf,
    pub max_file_bytes: u64,
    /// Files kept, the current one included; the oldest is deleted.
    pub max_files: u32,
    /// A request or answer larger than this is recorded without its payload (`truncated`).
    pub max_payload_bytes: u64,
    /// Teams whose requests are never captured.
    pub exclude_teams: Vec<String>,
}

/// One plugin of a chain.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub name: String,
    pub source: PluginSource,
    /// What a fault (trap, deadline, memory cap) does to the request.
    pub on_error: OnError,
    /// The longest one hook call may run.
    pub deadline: Duration,
    /// The most linear memory one instance may use, in bytes.
    pub memory: u64,
    pub instances: InstanceMode,
    /// A warm instance is replaced after this many calls.
    pub recycle_after: u64,
    /// When a plugin that keeps faulting is skipped for a while.
    pub quarantine: Quarantine,
    /// The plugin's `config` table as JSON text, handed to its `init`.
    pub config_json: String,
}

/// A circuit breaker for a plugin's code: after `faults` faults within `window` its hooks are
/// skipped for `cooldown` (as its `on_error` says: passed over when open, the request failed when
/// closed); a fault in the `window` after a cooldown starts the next one at once, twice as long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quarantine {
    /// Faults within `window` that quarantine the plugin; 0 never does.
    pub faults: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Embedded in the binary: `builtin:NAME`.
    Builtin(String),
    /// A `.wasm` component file, resolved against the config file's folder.
    File(PathBuf),
}

/// What a plugin fault does to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Carry on as if the plugin had said `continue`.
    Open,
    /// Fail the request with a 500 naming the plugin.
    Closed,
}

/// How instances are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceMode {
    /// Warm instances reused across requests (thrown away after a fault).
    Pooled,
    /// A fresh instance per request, for untrusted plugins.
    Fresh,
}

/// A price in millionths of a US dollar per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    /// Predictions, in picodollars (10⁻¹² USD): per request, per 1,000 instances, and per second
    /// of the attempt that answered.
    pub per_request: u64,
    pub per_1k_instances: u64,
    pub per_compute_second: u64,
}

/// Where host state lives.
#[derive(Debug, Clone)]
pub struct State {
    /// Where plugins' key-value entries, quotas and spending totals live.
    pub backend: Backend,
    /// The append-only usage ledger (JSON lines), this replica's own in either backend.
    pub ledger: PathBuf,
    /// When ledger records reach the disk, beyond the page cache.
    pub ledger_fsync: LedgerFsync,
    /// Compiled plugins, cached by content hash; absolute, as wasmtime requires. By default in the user's cache
    /// directory (`~/.cache/weir/plugins` on Linux).
    pub plugin_cache: PathBuf,
    /// The most bytes the plugins' key-value store holds before evicting (the embedded store, and
    /// the fallback of the Redis one).
    pub kv_max_bytes: u64,
    /// How long the metric series of a plugin version swapped out on reload stay in `/metrics`
    /// (so that scrapes still see their last values) before they are removed.
    pub plugin_metrics_grace: Duration,
    /// The stored responses of the Responses API (an append-only JSON-lines file).
    pub responses: PathBuf,
    /// The most bytes of stored responses kept (the oldest are evicted first).
    pub responses_max_bytes: u64,
    /// How long a stored response lives.
    pub responses_ttl: Duration,
}

/// The host state's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In this process: limits, caches and circuit states are this replica's own.
    Embedded,
    /// Shared by every replica that names the same Redis and key prefix.
    Redis(Redis),
}

/// `[state.redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    pub topology: RedisTopology,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra root certificates (PEM) for TLS connections.
    pub tls_ca: Option<PathBuf>,
    /// Put before every key, so that several gateways can share one Redis.
    pub key_prefix: String,
    /// The longest a host call waits for Redis (and never past its plugin's deadline).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub on_unavailable: OnUnavailable,
    pub ready_requires_redis: bool,
    /// How long a quota reservation is held in Redis without being settled before it is given back
    /// (a replica that died mid-request never settles).
    pub hold_ttl: Duration,
}

/// Where the Redis servers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    Standalone { url: String },
    Cluster { nodes: Vec<String> },
    Sentinel { master: String, nodes: Vec<String> },
}

/// What the host does when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Serve the call from this replica's embedded state: limits become per replica until Redis
    /// answers again.
    Embedded,
    /// Fail the call: the plugin faults and its `on_error` decides the request.
    Fail,
}

/// The ledger's `fsync` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFsync {
    /// After every record, before the plugin's `append` returns.
    Always,
    /// Every this often, from a background thread.
    Every(Duration),
}

/// The listening side.
#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a client may take to send its request headers; a new connection must also send
    /// its first request within this (a connection that sends nothing is closed).
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight (HTTP/1.1 keep-alive and
    /// HTTP/2 alike) before it is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once. At the limit the longest-idle connection is closed to make
    /// room; when none is idle, new connections are refused.
    pub max_connections: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits anyway.
    pub shutdown_grace: Duration,
}

/// PEM files for HTTPS, resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// From sending the request to the upstream's response headers.
    pub first_byte: Duration,
    /// The whole exchange, streams included.
    pub total: Duration,
    /// The longest silence between two chunks of a streamed body.
    pub idle: Duration,
    /// Streams: from sending the request to the first content that can reach the client; past it
    /// the attempt is abandoned and the next target tried. `None`: no limit but `first_byte` and `idle`.
    pub first_token: Option<Duration>,
}

/// Retries before the first content reaches the client: on the same target, then the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Upstream attempts per request, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles each attempt after.
    pub backoff_base: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// Further attempts on the same target after a transient failure (a 5xx, a connection reset)
    /// before falling back to the next.
    pub same_target: u32,
    /// The longest `Retry-After` honoured by waiting and retrying the same target; a longer one (or
    /// one past the request's deadline) falls back to the next target at once.
    pub retry_after_max: Duration,
}

impl Retry {
    /// One attempt, no retry (a mirrored copy's).
    pub const ONCE: Retry = Retry {
        max_attempts: 1,
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        same_target: 0,
        retry_after_max: Duration::ZERO,
    };
}

/// What happens when a stream breaks or stalls after content reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    pub mid_stream: MidStream,
    /// Upstream attempts one stream may spend on continuations, in all.
    pub max_attempts: u32,
    /// The longest a continuation may keep the client waiting for new content.
    pub max_delay: Duration,
}

/// `failover.mid_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidStream {
    /// The stream ends with an error event.
    Off,
    /// The answer is continued on the next target after what the client already has.
    Continue,
}

/// How an upstream continues a partial assistant answer (`prefill`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefill {
    /// It cannot: a continuation starts the answer over there and is used only if it begins with
    /// exactly what the client already has.
    None,
    /// A conversation ending with an assistant message is continued from it (Anthropic and
    /// Bedrock Converse prefill, a Gemini `model` turn).
    Assistant,
    /// vLLM's `continue_final_message: true` (with `add_generation_prompt: false`).
    ContinueFinalMessage,
    /// `"prefix": true` on the final assistant message (DeepSeek, Mistral).
    Prefix,
}

impl Prefill {
    /// The names accepted in `prefill = "…"`.
    pub const NAMES: &[&str] = &["none", "assistant", "continue-final-message", "prefix"];
}

/// Logging.
#[derive(Debug, Clone)]
pub struct Logging {
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info` or `weir=debug,info`.
    pub level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// One upstream server.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub kind: UpstreamKind,
    /// Base URL without a trailing slash, e.g. `https://api.openai.com/v1`; paths such as
    /// `/chat/completions` are appended.
    pub endpoint: String,
    pub api_key: Option<Secret>,
    /// Extra headers sent with every request (values may be secrets).
    pub headers: Vec<(String, Secret)>,
    pub timeouts: Timeouts,
    /// How it continues a partial answer (`none` for OpenAI-compatible kinds, `assistant` for
    /// Bedrock and Gemini unless set).
    pub prefill: Prefill,
    /// A `worker` the gateway starts in-process on a loopback port; `endpoint` is set once it listens.
    pub local_worker: Option<LocalWorker>,
    /// What only this kind of upstream needs (region, project, deployments, credentials).
    pub provider: Provider,
    /// Relay the Responses API to this upstream as it is (`openai`, and `azure-openai`'s
    /// `/openai/v1` surface); otherwise it is translated to chat completions.
    pub native_responses: bool,
}

/// A model served by a `weir worker` inside the gateway's own process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalWorker {
    /// A model directory, `python:PACKAGE/SUBDIR` (a model shipped in a Python package), or
    /// `builtin:NAME` (a model in the source tree's `gateway/models/`).
    pub model: String,
    /// `auto`, `cpu` or `cuda:N`.
    pub device: String,
}

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// OpenAI's API, and every server that speaks it (vLLM, Ollama, LM Studio, llama.cpp, …).
    OpenAi,
    /// Weir's own local model worker (`weir worker`): OpenAI's API plus a `/load` report.
    Worker,
    /// Azure OpenAI: deployment URLs with `api-version`, or the `/openai/v1` surface.
    AzureOpenAi,
    /// Amazon Bedrock's Converse API (SigV4 or a Bedrock API key).
    Bedrock,
    /// Gemini on Vertex AI (OAuth).
    Vertex,
    /// The Gemini API (`x-goog-api-key`).
    Gemini,
    /// The Anthropic API (`x-api-key`, `anthropic-version`): Messages relayed natively.
    Anthropic,
    /// Amazon SageMaker real-time endpoints (`InvokeEndpoint`, SigV4): prediction traffic.
    SageMaker,
    /// Azure Machine Learning managed online endpoints (`/score`, a key or Entra ID): prediction
    /// traffic.
    AzureMl,
}

impl UpstreamKind {
    /// The names accepted in `kind = "…"`.
    pub const NAMES: &[&str] =
        &["openai", "worker", "azure-openai", "bedrock", "vertex", "gemini", "anthropic", "sagemaker", "azureml"];

    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Worker => "worker",
            UpstreamKind::AzureOpenAi => "azure-openai",
            UpstreamKind::Bedrock => "bedrock",
            UpstreamKind::Vertex => "vertex",
            UpstreamKind::Gemini => "gemini",
            UpstreamKind::Anthropic => "anthropic",
            UpstreamKind::SageMaker => "sagemaker",
            UpstreamKind::AzureMl => "azureml",
        }
    }
}

/// The settings only one kind of upstream has.
#[derive(Debug, Clone)]
pub enum Provider {
    /// `openai`, `worker` and `gemini` need nothing beyond `endpoint` and `api_key`.
    Plain,
    Azure(Azure),
    Aws(Aws),
    Vertex(Vertex),
    Anthropic(Anthropic),
}

/// `kind = "anthropic"`.
#[derive(Debug, Clone)]
pub struct Anthropic {
    /// The `anthropic-version` sent when the client sent none.
    pub version: String,
}

/// `kind = "azure-openai"`.
#[derive(Debug, Clone)]
pub struct Azure {
    /// `Some`: the deployment URLs `/openai/deployments/{d}/…?api-version=…`; `None`: the `/openai/v1`
    /// surface, where the model travels in the body.
    pub api_version: Option<String>,
    /// Target model → deployment name; a model not listed is its own deployment name.
    pub deployments: BTreeMap<String, String>,
    pub auth: AzureAuth,
}

/// How Weir authenticates to Azure OpenAI.
#[derive(Debug, Clone)]
pub enum AzureAuth {
    /// The resource's key, in the `api-key` header.
    ApiKey(Secret),
    /// A Microsoft Entra ID bearer token from the client-credentials flow.
    Entra { token_endpoint: String, client_id: String, client_secret: Secret },
}

/// `kind = "bedrock"` and `kind = "sagemaker"`: an AWS region and how to sign for it.
#[derive(Debug, Clone)]
pub struct Aws {
    pub region: String,
    pub credentials: AwsCredentials,
}

/// How Weir authenticates to Bedrock.
#[derive(Debug, Clone)]
pub enum AwsCredentials {
    /// Access keys, signed with SigV4 (a session token for temporary credentials).
    Static { access_key_id: String, secret_access_key: Secret, session_token: Option<Secret> },
    /// A Bedrock API key, sent as a bearer token.
    ApiKey(Secret),
    /// The standard AWS credential chain: environment, shared config and credentials files (SSO
    /// included), web identity, ECS container and EC2 instance roles.
    Chain {
        /// The profile to use instead of `AWS_PROFILE` / `default`.
        profile: Option<String>,
        /// A shared credentials file to read instead of `~/.aws/credentials` and `~/.aws/config`.
        credentials_file: Option<PathBuf>,
    },
}

/// `kind = "vertex"`.
#[derive(Debug, Clone)]
pub struct Vertex {
    pub project: String,
    pub location: String,
    /// A service-account key file; `None` uses application-default credentials.
    pub credentials_file: Option<PathBuf>,
}

/// A public model name and where it is served.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    /// Tried in order: the first, then the next on a retryable failure.
    pub targets: Vec<Target>,
    /// This model's own plugin chain (indexes into `Config::plugins`), replacing the default.
    pub plugins: Option<Vec<usize>>,
    /// `[retry]` with this model's overrides.
    pub retry: Retry,
    /// This model's `timeouts.first_token`, overriding its upstreams'.
    pub first_token: Option<Duration>,
    /// `[failover]` with this model's overrides.
    pub failover: Failover,
    /// The share of this model's predictions captured, in percent (0: none).
    pub capture_percent: f64,
}

impl Model {
    /// Whether this is the catch-all entry.
    pub fn is_wildcard(&self) -> bool {
        self.name == WILDCARD_MODEL
    }
}

/// One place a model is served.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// The model name sent upstream; `None` passes the requested name through (wildcard only).
    pub model: Option<String>,
    /// Tokens one request may hold there (prompt and completion), when known: a request the
    /// upstream refuses as too long goes only to targets with a larger window.
    pub context_window: Option<u32>,
}

/// An API key, stored only as its SHA-256.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub team: String,
    pub sha256: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey").field("name", &self.name).field("team", &self.team).finish_non_exhaustive()
    }
}

/// A value that must never be logged; `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}
