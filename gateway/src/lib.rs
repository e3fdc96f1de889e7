//! Weir's data plane as a library. Build on [`embed::Weir`] (the [`embed`] module, which sits
//! above the rest of the crate, so the root does not re-export it): a gateway in your own
//! process, built from a config file or TOML text, answering `http::Request`s with no socket,
//! serving listeners, reloading and shutting down gracefully. The `weir` binary is a thin CLI over
//! the same type. The other modules are public for the gateway's own tests and benches; they are
//! not a stable API.

pub mod accounting;
pub mod api;
pub mod auth;
pub mod body;
pub mod call;
pub mod capture;
pub mod embed;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod providers;
pub mod reload;
pub mod route;
pub mod server;
pub mod spend;
pub mod state;
pub mod stream;
pub mod surface;
pub mod worker;

pub use body::{Body, RequestBody};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use weir_config::{Config, Env};

use crate::auth::Auth;
use crate::capture::Capture;
use crate::metrics::Metrics;
use crate::plugins::{Plugins, Services, WasmEngine};
use crate::route::table::RouteTable;
use crate::state::kv::{self, Kv};
use crate::state::ledger::Ledger;
use crate::state::quota::{self, Quota};
use crate::state::redis::Shared;
use crate::state::responses::{FileStore, ResponseStore};

/// The configuration `weir serve` uses without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/examples/default.toml");

/// Why a configuration could not become a running [`App`], at start or on a reload (when the previous
/// app keeps serving). Each names the part at fault and, where it can, what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config file could not be read, or is not a valid configuration.
    #[error(transparent)]
    Config(#[from] weir_config::ConfigError),
    /// A reload was asked of a gateway whose configuration did not come from a file.
    #[error("the configuration was not read from a file; nothing to reload")]
    NoConfigFile,
    /// An upstream's client could not be built (its TLS set-up, headers or endpoint).
    #[error("upstreams: {0}")]
    Upstream(crate::error::Error),
    /// A local worker (`kind = "worker"` with a `model`) could not start.
    #[error("upstream {upstream}: {reason}")]
    Worker { upstream: String, reason: String },
    /// The wasmtime engine could not be created.
    #[error("cannot start the plugin engine: {0:#}")]
    Engine(wasmtime::Error),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] plugins::PluginLoadError),
    /// A blocking start-up task (the ledger's index) did not complete.
    #[error("{what}: {error}")]
    Task { what: &'static str, error: tokio::task::JoinError },
    /// The Redis settings could not become a client.
    #[error(transparent)]
    Redis(#[from] state::redis::SetupError),
    /// The ledger's replica id could not be read or written.
    #[error("ledger {path}: {error}")]
    Ledger { path: PathBuf, error: std::io::Error },
    /// The capture file could not be opened.
    #[error("capture {path}: {error}")]
    Capture { path: PathBuf, error: std::io::Error },
}

/// Everything built from one configuration and shared by all connections; replaced whole on a
/// reload, while requests in flight keep the one they started with.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub auth: Auth,
    pub routes: Arc<RouteTable>,
    pub metrics: Arc<Metrics>,
    pub plugins: Plugins,
    /// The Responses API's stored responses.
    pub responses: Arc<ResponseStore>,
    /// Where sampled predictions are written, when a model captures them.
    pub capture: Option<Arc<Capture>>,
}

impl App {
    /// Builds an app, compiling and initialising its plugins and starting its local workers.
    pub async fn new(mut config: Config, process: &Process) -> Result<Self, LoadError> {
        process.start_local_workers(&mut config).await?;
        process.metrics.set_plugin_metrics_grace(config.state.plugin_metrics_grace);
        let routes = Arc::new(RouteTable::new(&config).map_err(LoadError::Upstream)?);
        let plugins = if config.plugins.is_empty() {
            Plugins::default()
        } else {
            let stores = process.stores(&config)?;
            let ledger = process.ledger(&config, stores)?;
            // Budgets read spending totals from the ledger inside hook calls, which have deadlines
            // of milliseconds: read the file here, once, off the request path.
            let warming = ledger.clone();
            tokio::task::spawn_blocking(move || warming.warm())
                .await
                .map_err(|error| LoadError::Task { what: "reading the ledger", error })?;
            let services = Arc::new(Services {
                kv: stores.kv.clone(),
                quota: stores.quota.clone(),
                ledger,
                metrics: process.metrics.clone(),
                routes: routes.clone(),
                prices: config.prices.clone(),
            });
            let wasm = process.wasm(&config.state.plugin_cache)?;
            Plugins::load(&config, &wasm, &services).await?
        };
        let responses = process.responses(&config).await?;
        let capture = process.capture(&config)?;
        Ok(Self {
            auth: Auth::new(&config.keys),
            routes,
            metrics: process.metrics.clone(),
            plugins,
            responses,
            capture,
            config,
        })
    }
}

/// What outlives a reload: metrics, the plugin engine, and the state plugins keep (limits, the
/// key-value store, the ledger), so a swap neither resets counters nor forgets quotas.
#[derive(Debug, Default)]
pub struct Process {
    pub metrics: Arc<Metrics>,
    /// Built from the first configuration with plugins; its backend stays until a restart.
    stores: OnceLock<Stores>,
    wasm: OnceLock<Arc<WasmEngine>>,
    ledgers: Mutex<HashMap<PathBuf, Arc<Ledger>>>,
    /// Stored responses by file, so a reload keeps them.
    responses: Mutex<HashMap<PathBuf, Arc<ResponseStore>>>,
    /// Capture writers by file, so a reload keeps them (and the settings they started with).
    captures: Mutex<HashMap<PathBuf, Arc<Capture>>>,
    /// Workers started in this process (`kind = "worker"` with a `model`), by model and device, with
    /// their loopback base URL; a reload that keeps a model keeps its worker.
    local_workers: tokio::sync::Mutex<HashMap<weir_config::LocalWorker, String>>,
}

/// The key-value store and the quotas, in the backend the first configuration chose.
#[derive(Debug)]
struct Stores {
    backend: weir_config::Backend,
    kv: Kv,
    quota: Arc<Quota>,
    shared: Option<Arc<Shared>>,
}

impl Process {
    /// Starts (or reuses) the in-process worker of every upstream that names a model, and points
    /// the upstream at it.
    async fn start_local_workers(&self, config: &mut Config) -> Result<(), LoadError> {
        let mut started = self.local_workers.lock().await;
        for upstream in &mut config.upstreams {
            let Some(local) = &upstream.local_worker else { continue };
            let endpoint = match started.get(local) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let endpoint = worker::start_local(&local.model, &local.device)
                        .await
                        .map_err(|reason| LoadError::Worker { upstream: upstream.name.clone(), reason })?;
                    started.insert(local.clone(), endpoint.clone());
                    endpoint
                }
            };
            upstream.endpoint = endpoint;
        }
        Ok(())
    }

    /// The plugin engine, created with the first configuration that has plugins.
    pub fn wasm(&self, cache_dir: &Path) -> Result<Arc<WasmEngine>, LoadError> {
        if let Some(engine) = self.wasm.get() {
            return Ok(engine.clone());
        }
        let engine = WasmEngine::new(cache_dir).map_err(LoadError::Engine)?;
        Ok(self.wasm.get_or_init(|| engine).clone())
    }

    /// The stores, built on first use. A reload that names another backend keeps this one: moving
    /// limits and caches between backends under traffic is a restart's job.
    fn stores(&self, config: &Config) -> Result<&Stores, LoadError> {
        if let Some(stores) = self.stores.get() {
            if stores.backend != config.state.backend {
                tracing::warn!("[state] backend or [state.redis] changed; the change takes effect on a restart");
            }
            return Ok(stores);
        }
        let local = kv::Local::new(config.state.kv_max_bytes);
        let stores = match &config.state.backend {
            weir_config::Backend::Embedded => Stores {
                backend: config.state.backend.clone(),
                kv: Kv::Embedded(local),
                quota: Arc::new(Quota::Embedded(quota::Local::default())),
                shared: None,
            },
            weir_config::Backend::Redis(redis) => {
                let shared = Shared::start(redis, self.metrics.clone())?;
                Stores {
                    backend: config.state.backend.clone(),
                    kv: Kv::Redis { shared: shared.clone(), fallback: local },
                    quota: Arc::new(Quota::redis(shared.clone())),
                    shared: Some(shared),
                }
            }
        };
        Ok(self.stores.get_or_init(|| stores))
    }

    /// The shared state's link, when the backend is Redis (for `/readyz`).
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.stores.get()?.shared.as_ref()
    }

    /// The store of Responses API answers at `state.responses`, opened (and replayed) once: that
    /// file, or Redis with that file as its spool when the backend is Redis.
    async fn responses(&self, config: &Config) -> Result<Arc<ResponseStore>, LoadError> {
        let state = &config.state;
        if let Some(store) = self.responses.lock().unwrap_or_else(|e| e.into_inner()).get(&state.responses) {
            return Ok(store.clone());
        }
        let (path, max, ttl) = (state.responses.clone(), state.responses_max_bytes, state.responses_ttl);
        // Replaying the file is disk work: off the async workers.
        let file = tokio::task::spawn_blocking(move || FileStore::open(&path, max, ttl))
            .await
            .map_err(|error| LoadError::Task { what: "reading the stored responses", error })?;
        let store = Arc::new(match &self.stores(config)?.shared {
            Some(shared) => ResponseStore::redis(shared.clone(), file),
            None => ResponseStore::Embedded(file),
        });
        let mut stores = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        Ok(stores.entry(state.responses.clone()).or_insert(store).clone())
    }

    /// The capture writer of `[capture] path`, started once, when some model captures predictions.
    fn capture(&self, config: &Config) -> Result<Option<Arc<Capture>>, LoadError> {
        if !config.models.iter().any(|m| m.capture_percent > 0.0) {
            return Ok(None);
        }
        let settings = &config.capture;
        let mut captures = self.captures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(capture) = captures.get(&settings.path) {
            if capture.settings() != settings {
                tracing::warn!("[capture] settings changed for the same path; they take effect on a restart");
            }
            return Ok(Some(capture.clone()));
        }
        let capture = Capture::start(settings.clone(), self.metrics.clone())
            .map_err(|error| LoadError::Capture { path: settings.path.clone(), error })?;
        Ok(Some(captures.entry(settings.path.clone()).or_insert_with(|| Arc::new(capture)).clone()))
    }

    fn ledger(&self, config: &Config, stores: &Stores) -> Result<Arc<Ledger>, LoadError> {
        let path = &config.state.ledger;
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ledger) = ledgers.get(path) {
            return Ok(ledger.clone());
        }
        let fsync = config.state.ledger_fsync;
        let ledger = match &stores.shared {
            None => Ledger::new(path, fsync),
            Some(shared) => Ledger::with_redis(path, fsync, shared.clone())
                .map_err(|error| LoadError::Ledger { path: path.clone(), error })?,
        };
        Ok(ledgers.entry(path.clone()).or_insert_with(|| Arc::new(ledger)).clone())
    }
}

/// The running gateway: the current [`App`], swapped atomically on reload.
pub struct Gateway {
    current: ArcSwap<App>,
    pub process: Arc<Process>,
    env: Box<dyn Env + Send + Sync>,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers stop sending.
    draining: AtomicBool,
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("current", &self.current).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the first app (plugins compile here, before anything is served).
    pub async fn new(config: Config, env: Box<dyn Env + Send + Sync>) -> Result<Arc<Self>, LoadError> {
        let process = Arc::new(Process::default());
        let app = App::new(config, &process).await?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(app),
            process,
            env,
            draining: AtomicBool::new(false),
            reloading: tokio::sync::Mutex::new(()),
        }))
    }

    /// The app new requests use.
    pub fn current(&self) -> Arc<App> {
        self.current.load_full()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Builds a new app from `config` off the request path and swaps it in. On failure the old one
    /// keeps serving and the reason is returned.
    pub async fn reload_with(self: &Arc<Self>, config: Config) -> Result<(), LoadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let app = App::new(config, &self.process).await?;
        self.current.store(Arc::new(app));
        Ok(())
    }

    /// Re-reads the config file the current app came from and reloads it.
    pub async fn reload(self: &Arc<Self>) -> Result<(), LoadError> {
        let Some(path) = self.current().config.source.clone() else {
            return Err(LoadError::NoConfigFile);
        };
        let config = weir_config::load_file(&path, &*self.env)?;
        self.reload_with(config).await
    }

    /// Files whose change should trigger a reload: the config and every plugin file it loads.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let app = self.current();
        let plugin_files = app.config.plugins.iter().filter_map(|p| match &p.source {
            weir_config::PluginSource::File(path) => Some(path.clone()),
            weir_config::PluginSource::Builtin(_) => None,
        });
        app.config.source.iter().cloned().chain(plugin_files).collect()
    }
}
