//! Weir's data plane as a library: the `weir` binary is a thin CLI over it, and the integration tests
//! start it in-process on port 0.

pub mod accounting;
pub mod api;
pub mod auth;
pub mod body;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod providers;
pub mod route;
pub mod server;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use weir_config::Config;

use crate::auth::Auth;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::route::Router;

/// The configuration `weir serve` uses without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/examples/default.toml");

/// Everything a request needs, built once from a validated config and shared by all connections.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub auth: Auth,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers stop sending.
    draining: AtomicBool,
}

impl App {
    pub fn new(config: Config) -> Result<Self, Error> {
        Ok(Self {
            auth: Auth::new(&config.keys),
            router: Router::new(&config)?,
            metrics: Arc::new(Metrics::new()),
            draining: AtomicBool::new(false),
            config,
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
