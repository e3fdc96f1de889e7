//! Weir's data plane as a library: the `weir` binary is a thin CLI over it, and the integration tests
//! start it in-process on port 0.

pub mod accounting;
pub mod api;
pub mod auth;
pub mod body;
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use weir_config::{Config, Env};

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::plugins::{Plugins, Runtime, Services};
use crate::route::Router;
use crate::state::kv::Kv;
use crate::state::ledger::Ledger;
use crate::state::quota::Quota;

/// The configuration `weir serve` uses without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/examples/default.toml");

/// Everything built from one configuration and shared by all connections; replaced whole on a
/// reload, while requests in flight keep the one they started with.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub auth: Auth,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub plugins: Plugins,
}

impl App {
    /// Builds an app, compiling and initialising its plugins.
    pub async fn new(config: Config, process: &Process) -> Result<Self, String> {
        let router = Arc::new(Router::new(&config).map_err(|e| e.to_string())?);
        let plugins = if config.plugins.is_empty() {
            Plugins::default()
        } else {
            let ledger = process.ledger(&config.state.ledger);
            // Budgets read spending totals from the ledger inside hook calls, which have deadlines
            // of milliseconds: read the file here, once, off the request path.
            let warming = ledger.clone();
            tokio::task::spawn_blocking(move || warming.warm()).await.map_err(|e| format!("ledger: {e}"))?;
            let services = Arc::new(Services {
                kv: process.kv(&config).clone(),
                quota: process.quota.clone(),
                ledger,
                metrics: process.metrics.clone(),
                router: router.clone(),
                prices: config.prices.clone(),
            });
            let runtime = process.runtime(&config.state.plugin_cache)?;
            Plugins::load(&config, &runtime, &services).await?
        };
        Ok(Self { auth: Auth::new(&config.keys), router, metrics: process.metrics.clone(), plugins, config })
    }
}

/// What outlives a reload: metrics, the plugin engine, and the state plugins keep (limits, the
/// key-value store, the ledger), so a swap neither resets counters nor forgets quotas.
#[derive(Debug, Default)]
pub struct Process {
    pub metrics: Arc<Metrics>,
    pub quota: Arc<Quota>,
    kv: OnceLock<Kv>,
    runtime: OnceLock<Arc<Runtime>>,
    ledgers: Mutex<HashMap<PathBuf, Arc<Ledger>>>,
}

impl Process {
    /// The plugin engine, created with the first configuration that has plugins.
    pub fn runtime(&self, cache_dir: &Path) -> Result<Arc<Runtime>, String> {
        if let Some(r) = self.runtime.get() {
            return Ok(r.clone());
        }
        let runtime = Runtime::new(cache_dir).map_err(|e| format!("cannot start the plugin engine: {e:#}"))?;
        Ok(self.runtime.get_or_init(|| runtime).clone())
    }

    fn kv(&self, config: &Config) -> &Kv {
        self.kv.get_or_init(|| Kv::new(config.state.kv_max_bytes))
    }

    fn ledger(&self, path: &Path) -> Arc<Ledger> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        ledgers.entry(path.to_owned()).or_insert_with(|| Arc::new(Ledger::new(path))).clone()
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
    pub async fn new(config: Config, env: Box<dyn Env + Send + Sync>) -> Result<Arc<Self>, String> {
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
    pub async fn reload_with(self: &Arc<Self>, config: Config) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let app = App::new(config, &self.process).await?;
        self.current.store(Arc::new(app));
        Ok(())
    }

    /// Re-reads the config file the current app came from and reloads it.
    pub async fn reload(self: &Arc<Self>) -> Result<(), String> {
        let Some(path) = self.current().config.source.clone() else {
            return Err("the configuration was not read from a file; nothing to reload".into());
        };
        let config = weir_config::load_file(&path, &*self.env).map_err(|e| e.to_string())?;
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
