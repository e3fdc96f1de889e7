//! The shared state's connection to Redis and its health: one multiplexed, auto-reconnecting
//! connection per process (redis-rs' `ConnectionManager`, or its cluster connection; concurrent
//! calls are pipelined on it, so there is no pool to wait for), the up/down state every call
//! consults first, and the degradation policy (`on_unavailable`).
//!
//! A call that fails or outlives its `wait` marks Redis down at once; from then on calls do not
//! touch Redis at all (so no request waits on a dead server) until the probe, which pings every
//! [`PROBE_DOWN`], sees it answer again. Recovery is automatic: the next call after that goes to
//! Redis, and the ledgers flush what they spooled meanwhile.
//!
//! Keys are `{key_prefix}` + a kind + the plugin's namespace and key. Keys that a script touches
//! together share a Redis Cluster hash tag (`{…}`), so every script runs on one node.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::watch;
use weir_config::{OnUnavailable, Redis as RedisConfig, RedisTopology};

use super::Unavailable;
use super::ledger::Spender;
use crate::metrics::{Metrics, StateLabels};

/// How often a down Redis is pinged.
const PROBE_DOWN: Duration = Duration::from_millis(200);
/// How often an up Redis is pinged (a failed call also wakes the probe at once).
const PROBE_UP: Duration = Duration::from_secs(1);

/// A connection to a standalone server (or a Sentinel-discovered master) or to a cluster. Both are
/// cheap to clone: clones share the one multiplexed connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The process's link to Redis, shared by the key-value store, the quotas and the ledgers.
pub struct Shared {
    config: RedisConfig,
    conn: ArcSwapOption<Conn>,
    up: AtomicBool,
    /// `up`, for those who wait for a change (the probe after a failure, the ledger flushers).
    up_tx: watch::Sender<bool>,
    /// Wakes the probe when a call failed.
    failed: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    /// Identifies this process's quota holds in Redis (random per start).
    pub replica: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("topology", &self.config.topology)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Why the Redis settings could not become a client.
#[derive(Debug, thiserror::Error)]
#[error("[state.redis]: {0}")]
pub struct SetupError(String);

impl Shared {
    /// Builds the client and starts the probe. Nothing is awaited: a Redis that is down when the
    /// gateway starts is a degraded start, not a failed one.
    pub fn start(config: &RedisConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, SetupError> {
        let tls = check(config)?;
        let (up_tx, _) = watch::channel(false);
        let shared = Arc::new(Self {
            config: config.clone(),
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            up_tx,
            failed: tokio::sync::Notify::new(),
            metrics,
            replica: rand::random(),
        });
        // A standalone server's connection is made lazily and remade by the manager itself;
        // cluster and sentinel connections are made (and remade) by the probe.
        if let RedisTopology::Standalone { url } = &config.topology {
            let client = client(config, url, tls.clone())?;
            let manager = ConnectionManager::new_lazy_with_config(client, manager_config(config))
                .map_err(|e| SetupError(format!("{e}")))?;
            shared.conn.store(Some(Arc::new(Conn::Single(manager))));
        }
        tokio::spawn(probe(shared.clone(), tls));
        Ok(shared)
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Changes of `is_up`.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.up_tx.subscribe()
    }

    /// `key_prefix` + `rest`.
    pub fn key(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}{rest}", self.config.key_prefix)
    }

    /// The per-day spending totals of a key or team, for one plugin. Every ledger key shares the
    /// hash tag `{ledger}`, so the ledger's script can update several in one call on a cluster.
    pub fn spend_key(&self, plugin: &str, who: Spender, name: &str) -> String {
        let who = match who {
            Spender::Key => "k",
            Spender::Team => "t",
        };
        self.key(format_args!("{{ledger}}:spend:{plugin}:{who}:{name}"))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.config.topology, RedisTopology::Cluster { .. })
    }

    /// Runs `call` against Redis within `wait` (at most the configured timeout). `None` when Redis
    /// is down, fails or is too slow; the caller then applies [`Shared::degrade`].
    pub async fn call<T, F>(&self, wait: Duration, call: impl FnOnce(Conn) -> F) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let conn = self.conn.load_full()?;
        // Cut short by the plugin's own deadline, a slow answer says nothing about Redis.
        let cut_short = wait < self.config.timeout;
        let wait = wait.min(self.config.timeout);
        if wait.is_zero() {
            return None;
        }
        match tokio::time::timeout(wait, call(Conn::clone(&conn))).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed_with(&error);
                None
            }
            Err(_) if cut_short => None,
            Err(_) => {
                self.mark_down(&format!("no answer within {wait:?}"));
                None
            }
        }
    }

    /// What a call Redis did not answer becomes: `fallback()` (this replica's embedded state) or
    /// [`Unavailable`], as `on_unavailable` says. Counted either way.
    pub fn degrade<T>(&self, op: &'static str, fallback: impl FnOnce() -> T) -> Result<T, Unavailable> {
        let outcome = match self.config.on_unavailable {
            OnUnavailable::Embedded => "embedded",
            OnUnavailable::Fail => "failed",
        };
        self.metrics.state_unavailable.get_or_create(&StateLabels { op, outcome }).inc();
        match self.config.on_unavailable {
            OnUnavailable::Embedded => Ok(fallback()),
            OnUnavailable::Fail => Err(Unavailable { op }),
        }
    }

    /// Sends a command whose answer nobody waits for (a `set`, a `delete`, a settlement), off the
    /// caller's task. Lost when Redis is down: what that costs is documented where each is sent.
    pub fn send_later<F>(self: &Arc<Self>, op: &'static str, call: impl FnOnce(Conn) -> F + Send + 'static)
    where
        F: Future<Output = RedisResult<()>> + Send + 'static,
    {
        if !self.is_up() {
            let _ = self.degrade(op, || ());
            return;
        }
        self.spawn(call, |_| ());
    }

    /// Runs `call` off the caller's task, within `connect_timeout` (nobody waits for its answer),
    /// then hands `then` its answer: `None` when Redis is down, failed or did not answer in time.
    pub fn spawn<T, F>(
        self: &Arc<Self>,
        call: impl FnOnce(Conn) -> F + Send + 'static,
        then: impl FnOnce(Option<T>) + Send + 'static,
    ) where
        T: Send + 'static,
        F: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let conn = match self.conn.load_full() {
            Some(conn) if self.is_up() => conn,
            _ => return then(None),
        };
        let shared = self.clone();
        // The multiplexed connection pipelines these with everything else in flight.
        tokio::spawn(async move {
            let timeout = shared.config.connect_timeout;
            let answer = match tokio::time::timeout(timeout, call(Conn::clone(&conn))).await {
                Ok(Ok(value)) => Some(value),
                Ok(Err(error)) => {
                    shared.failed_with(&error);
                    None
                }
                Err(_) => {
                    shared.mark_down(&format!("no answer within {timeout:?}"));
                    None
                }
            };
            then(answer);
        });
    }

    /// Counts a write Redis did not take that this replica keeps on its disk and sends again when
    /// Redis answers: under either `on_unavailable`, since nothing is served from it in its stead.
    pub fn spooled(&self, op: &'static str) {
        self.metrics.state_unavailable.get_or_create(&StateLabels { op, outcome: "spooled" }).inc();
    }

    /// A connection problem marks Redis down; an error Redis answered with (a script's) is this
    /// call's alone.
    fn failed_with(&self, error: &redis::RedisError) {
        if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() || error.is_timeout() {
            self.mark_down(&format!("{error}"));
        } else {
            tracing::error!(%error, "Redis refused a state call");
        }
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(reason = why, policy = ?self.config.on_unavailable, "shared state (Redis) unavailable; degrading until it answers again");
            self.metrics.state_up.set(0);
            self.up_tx.send_replace(false);
        }
        self.failed.notify_one();
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("shared state (Redis) answering");
            self.metrics.state_up.set(1);
            self.up_tx.send_replace(true);
        }
    }

    /// Whether `/readyz` should say ready, and what to add to its body.
    pub fn readiness(&self) -> (bool, &'static str) {
        if self.is_up() {
            (true, "shared state: redis up\n")
        } else if self.config.ready_requires_redis {
            (false, "shared state: redis unavailable\n")
        } else if self.config.on_unavailable == OnUnavailable::Embedded {
            (true, "shared state: redis unavailable, serving this replica's embedded state\n")
        } else {
            (true, "shared state: redis unavailable, failing state calls\n")
        }
    }
}

/// Checks the settings without connecting: every URL makes a client, the CA file reads. Returns
/// the CA file's contents.
pub fn check(config: &RedisConfig) -> Result<Option<Vec<u8>>, SetupError> {
    let tls = match &config.tls_ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| SetupError(format!("cannot read tls_ca {}: {e}", path.display())))?)
        }
        None => None,
    };
    for node in nodes(&config.topology) {
        client(config, node, tls.clone())?;
    }
    Ok(tls)
}

fn nodes(topology: &RedisTopology) -> &[String] {
    match topology {
        RedisTopology::Standalone { url } => std::slice::from_ref(url),
        RedisTopology::Cluster { nodes } | RedisTopology::Sentinel { nodes, .. } => nodes,
    }
}

fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.connect_timeout))
        // Reconnecting is the manager's job, retrying is not: a call that failed has already
        // been served by the fallback (or failed), and the probe decides when Redis is back.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// A client for one server URL, with the configured user, password and root certificates.
fn client(config: &RedisConfig, url: &str, tls: Option<Vec<u8>>) -> Result<redis::Client, SetupError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(|e| SetupError(format!("{url:?}: {e}")))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    let info = info.set_redis_settings(settings);
    match tls {
        Some(root) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(root) })
        }
        _ => redis::Client::open(info),
    }
    .map_err(|e| SetupError(format!("{url:?}: {e}")))
}

/// Connects a cluster, or asks the sentinels for the master and connects to it.
async fn connect(config: &RedisConfig, tls: Option<Vec<u8>>) -> RedisResult<Conn> {
    match &config.topology {
        RedisTopology::Standalone { .. } => Err(redis::RedisError::from((redis::ErrorKind::Client, "standalone"))),
        RedisTopology::Cluster { nodes } => {
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(config.connect_timeout)
                .response_timeout(config.connect_timeout)
                .retries(1);
            if let Some(user) = &config.username {
                builder = builder.username(user);
            }
            if let Some(password) = &config.password {
                builder = builder.password(password.expose());
            }
            if let Some(root) = tls {
                builder = builder.certs(redis::TlsCertificates { client_tls: None, root_cert: Some(root) });
            }
            Ok(Conn::Cluster(builder.build()?.get_async_connection().await?))
        }
        RedisTopology::Sentinel { master, nodes } => {
            let mut settings = redis::RedisConnectionInfo::default();
            if let Some(user) = &config.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &config.password {
                settings = settings.set_password(password.expose());
            }
            let mut node = redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(settings);
            if nodes.iter().any(|n| n.starts_with("rediss://")) {
                node = node.set_tls_mode(redis::TlsMode::Secure);
            }
            let mut sentinel = redis::sentinel::SentinelClient::build(
                nodes.clone(),
                master.clone(),
                Some(node),
                redis::sentinel::SentinelServerType::Master,
            )?;
            let client = sentinel.async_get_client().await?;
            Ok(Conn::Single(ConnectionManager::new_with_config(client, manager_config(config)).await?))
        }
    }
}

/// Pings Redis: often while it is down, now and then while it is up, and at once after a call
/// failed. For cluster and sentinel it also (re)connects, so a failover is followed. It runs as
/// long as the runtime does (the `Shared` lives as long as the process).
async fn probe(s: Arc<Shared>, tls: Option<Vec<u8>>) {
    loop {
        let standalone = matches!(s.config.topology, RedisTopology::Standalone { .. });
        if !standalone && (s.conn.load().is_none() || !s.is_up()) {
            match tokio::time::timeout(s.config.connect_timeout, connect(&s.config, tls.clone())).await {
                Ok(Ok(conn)) => s.conn.store(Some(Arc::new(conn))),
                Ok(Err(error)) => tracing::debug!(%error, "cannot connect to Redis yet"),
                Err(_) => tracing::debug!("connecting to Redis timed out"),
            }
        }
        let answered = match s.conn.load_full() {
            Some(conn) => {
                let mut conn = Conn::clone(&conn);
                let ping = redis::cmd("PING");
                let answer = tokio::time::timeout(s.config.connect_timeout, ping.query_async::<String>(&mut conn));
                matches!(answer.await, Ok(Ok(_)))
            }
            None => false,
        };
        if answered {
            s.mark_up();
        } else if s.is_up() {
            s.mark_down("no answer to PING");
        }
        let pause = if s.is_up() { PROBE_UP } else { PROBE_DOWN };
        let failed = s.failed.notified();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = failed => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
