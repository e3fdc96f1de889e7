//! What a plugin instance may call: the host imports of the `plugin` world, served from the store's
//! [`HostState`]. Every import is bounded (key and value sizes, log rate, metric series) so that a
//! plugin hammering them costs its own deadline and nothing more.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Services;
use super::bindings::weir::plugin::{catalog, hooks, kv, ledger, log, metrics, quota, request, types};
use super::clock::{CallClock, wall_limit};
use super::gate::YIELD_AFTER;
use super::output::{Output, Stream};
use super::view::RequestView;
use crate::metrics::{PluginLabel, PluginVersion};
use crate::state::Unavailable;
use crate::state::ledger::{Entry, Spender};
use crate::state::quota::{Ask, Covers};

/// Keys and values a plugin may store; larger ones are refused (a `set` is dropped, a `get` misses).
const MAX_KEY: usize = 1024;
const MAX_VALUE: usize = 1 << 20;
/// Reservations one `reserve-all` call may ask for, and keys one `get-many` or `add-many` may name.
const MAX_ASKS: usize = 256;
/// Log lines per second one plugin may write (burst: twice that); the rest are counted and dropped.
const LOG_PER_SEC: f64 = 50.0;

/// The request resource: a handle to the request's view, valid during one hook call.
#[derive(Debug)]
pub struct RequestHandle {
    pub view: Arc<RequestView>,
}

/// What every instance of one loaded plugin shares.
#[derive(Debug)]
pub struct PluginMeta {
    pub name: Arc<str>,
    /// Unique per loaded version; keys this plugin's per-request scratch space.
    pub id: u64,
    /// Request headers the plugin declared, lower-cased.
    pub read_headers: Vec<HeaderName>,
    pub needs_body: bool,
    pub needs_response: bool,
    /// What `on-stream-event` may hold back, as declared (at most `police::MAX_HOLD_BYTES`).
    pub stream_hold_bytes: u32,
    pub services: Arc<Services>,
    log_budget: Mutex<(f64, Instant)>,
    /// How this version's metric series are booked (see `metrics/plugin_series.rs`).
    pub metrics_as: PluginVersion,
}

impl PluginMeta {
    pub fn new(name: &str, id: u64, services: Arc<Services>) -> Self {
        Self {
            name: name.into(),
            id,
            read_headers: Vec::new(),
            needs_body: false,
            needs_response: false,
            stream_hold_bytes: 0,
            services,
            log_budget: Mutex::new((2.0 * LOG_PER_SEC, Instant::now())),
            metrics_as: PluginVersion { name: name.into(), version: id },
        }
    }

    /// Whether one more line may be logged now (the `log` import and the guest's stdout and
    /// stderr share the budget).
    pub(super) fn may_log(&self) -> bool {
        let mut b = self.log_budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * LOG_PER_SEC).min(2.0 * LOG_PER_SEC);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Drop for PluginMeta {
    /// The version is gone (swapped out on reload, its last request over, or a probe after
    /// `init`): the metric series no other version uses go with it.
    fn drop(&mut self) {
        self.services.metrics.release_plugin_version(&self.metrics_as.name, self.metrics_as.version);
    }
}

/// Memory and table caps of one instance; remembers whether the memory cap was hit, so a fault can
/// be reported as such rather than as a generic trap.
#[derive(Debug)]
pub struct Limits {
    pub memory: usize,
    pub memory_exceeded: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        if desired > self.memory {
            self.memory_exceeded = true;
            wasmtime::bail!("the plugin's memory cap of {} bytes was reached", self.memory);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The data of one plugin instance's store.
pub struct HostState {
    pub meta: Arc<PluginMeta>,
    pub table: ResourceTable,
    pub limits: Limits,
    /// What the current call has been charged against its deadline (`clock.rs`), and the deadline
    /// (which also sets how old the call may grow, [`wall_limit`]).
    pub clock: Arc<CallClock>,
    pub deadline: std::time::Duration,
    /// When the current call last gave its thread back in an import (see [`Self::pace`]).
    paced: Instant,
    /// Set by the epoch callback when it ends a call for running too long.
    pub deadline_hit: bool,
    /// Set when a state call trapped because the shared state did not answer.
    pub state_unavailable: bool,
    /// What the instance writes to stdout and stderr, logged; the current call's stderr is kept
    /// for its fault line (`output.rs`).
    pub output: Arc<Output>,
    /// WASI with nothing granted: no files, sockets, environment or arguments. Clocks and random
    /// numbers work (Rust's `HashMap` seeds itself from them); stdout and stderr go to the log.
    wasi: WasiCtx,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("plugin", &self.meta.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HostState {
    pub fn new(meta: Arc<PluginMeta>, memory: usize) -> Self {
        let output = Output::new(meta.clone());
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .build();
        Self {
            meta,
            table: ResourceTable::new(),
            limits: Limits { memory, memory_exceeded: false },
            clock: Arc::default(),
            deadline: std::time::Duration::from_millis(10),
            paced: Instant::now(),
            deadline_hit: false,
            state_unavailable: false,
            output,
            wasi,
        }
    }

    /// A call begins now; it was made at `made` (its wall limit counts from there).
    pub fn begin_call(&mut self, deadline: std::time::Duration, made: Instant) {
        self.paced = Instant::now();
        self.clock.reset(self.paced);
        self.clock.began(made);
        self.deadline = deadline;
        self.output.begin_call();
    }

    /// What is left of the current call's deadline and of its wall limit, whichever is less.
    fn left(&self) -> std::time::Duration {
        self.deadline
            .saturating_sub(self.clock.charged())
            .min(wall_limit(self.deadline).saturating_sub(self.clock.age()))
    }

    /// What is left of the current call's deadline (and of its wall limit), the longest a state
    /// call may wait, after [`Self::pace`].
    async fn turn(&mut self) -> std::time::Duration {
        self.pace().await;
        self.left()
    }

    /// Gives the thread back if the call has run for [`YIELD_AFTER`] since it last did here.
    /// Every import starts with it: time in the host burns no fuel, so a plugin looping on
    /// imports would otherwise hold its thread until the next epoch tick.
    async fn pace(&mut self) {
        if self.paced.elapsed() >= YIELD_AFTER {
            tokio::task::yield_now().await;
            self.paced = Instant::now();
        }
    }

    /// A state call's answer, or the trap that makes an unavailable backend this plugin's fault.
    fn state<T>(&mut self, answer: std::result::Result<T, Unavailable>) -> Result<T> {
        answer.map_err(|unavailable| {
            self.state_unavailable = true;
            wasmtime::Error::new(unavailable)
        })
    }

    fn view(&self, req: &Resource<RequestHandle>) -> Result<Arc<RequestView>> {
        Ok(self.table.get(req)?.view.clone())
    }
}

/// A state call (Redis, the ledger): the time the call is suspended waiting for it counts against
/// the plugin's deadline, unlike time it waits for a worker (`clock.rs`).
async fn waited<T>(clock: &CallClock, call: impl Future<Output = T>) -> T {
    let _waiting = clock.waiting();
    call.await
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for HostState {}
impl hooks::Host for HostState {}

impl request::Host for HostState {}

impl request::HostRequest for HostState {
    async fn info(&mut self, req: Resource<RequestHandle>) -> Result<types::RequestInfo> {
        self.pace().await;
        Ok(self.view(&req)?.info())
    }

    async fn header(&mut self, req: Resource<RequestHandle>, name: String) -> Result<Option<String>> {
        self.pace().await;
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { return Ok(None) };
        if !self.meta.read_headers.contains(&name) {
            return Ok(None);
        }
        let view = self.view(&req)?;
        Ok(view.headers.get(&name).and_then(|v| v.to_str().ok()).map(str::to_owned))
    }

    async fn body(&mut self, req: Resource<RequestHandle>) -> Result<Vec<u8>> {
        self.pace().await;
        if !self.meta.needs_body {
            return Ok(Vec::new());
        }
        Ok(self.view(&req)?.body().to_vec())
    }

    async fn response_body(&mut self, req: Resource<RequestHandle>) -> Result<Vec<u8>> {
        self.pace().await;
        if !self.meta.needs_response {
            return Ok(Vec::new());
        }
        Ok(self.view(&req)?.response().to_vec())
    }

    async fn mirror(&mut self, req: Resource<RequestHandle>, target: String) -> Result<()> {
        self.pace().await;
        if self.meta.services.routes.target(&target).is_some() {
            self.view(&req)?.add_mirror(target);
        } else {
            tracing::debug!(plugin = %self.meta.name, %target, "ignored a mirror to an unknown target");
        }
        Ok(())
    }

    async fn digest(&mut self, req: Resource<RequestHandle>) -> Result<String> {
        self.pace().await;
        Ok(self.view(&req)?.digest().to_string())
    }

    async fn add_response_header(&mut self, req: Resource<RequestHandle>, name: String, value: String) -> Result<()> {
        self.pace().await;
        let view = self.view(&req)?;
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            (Ok(name), Ok(value)) => view.add_response_header(name, value),
            _ => tracing::debug!(plugin = %self.meta.name, "ignored an invalid response header"),
        }
        Ok(())
    }

    async fn get_local(&mut self, req: Resource<RequestHandle>, key: String) -> Result<Option<Vec<u8>>> {
        self.pace().await;
        Ok(self.view(&req)?.get_local(self.meta.id, &key))
    }

    async fn set_local(&mut self, req: Resource<RequestHandle>, key: String, value: Vec<u8>) -> Result<()> {
        self.pace().await;
        if key.len() <= MAX_KEY && value.len() <= MAX_VALUE {
            self.view(&req)?.set_local(self.meta.id, key, value);
        }
        Ok(())
    }

    async fn set_body(&mut self, req: Resource<RequestHandle>, body: Vec<u8>) -> Result<()> {
        self.pace().await;
        // Validated by the chain when the hook returns (`Chain::on_request`), where the request's
        // API and the gateway's body limit are known; only `on-request` takes it.
        self.view(&req)?.set_rewrite(body.into());
        Ok(())
    }

    async fn drop(&mut self, req: Resource<RequestHandle>) -> Result<()> {
        self.table.delete(req)?;
        Ok(())
    }
}

// The state imports go to the configured backend. Each waits at most what is left of the plugin's
// deadline (and `[state.redis] timeout`); a call the backend could not answer under
// `on_unavailable = "fail"` traps, which makes it a fault of this plugin (`state_unavailable`).
impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        let wait = self.turn().await;
        if key.len() > MAX_KEY {
            return Ok(None);
        }
        let answer = waited(&self.clock, self.meta.services.kv.get(&self.meta.name, key, wait)).await;
        self.state(answer)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u32) -> Result<()> {
        let wait = self.turn().await;
        if key.len() <= MAX_KEY && value.len() <= MAX_VALUE {
            let answer =
                waited(&self.clock, self.meta.services.kv.set(&self.meta.name, key, value, ttl_ms, wait)).await;
            self.state(answer)?;
        }
        Ok(())
    }

    async fn delete(&mut self, key: String) -> Result<()> {
        let wait = self.turn().await;
        let answer = waited(&self.clock, self.meta.services.kv.delete(&self.meta.name, key, wait)).await;
        self.state(answer)
    }

    async fn add(&mut self, key: String, delta: i64, ttl_ms: u32) -> Result<i64> {
        let wait = self.turn().await;
        if key.len() > MAX_KEY {
            return Ok(0);
        }
        let answer = waited(&self.clock, self.meta.services.kv.add(&self.meta.name, key, delta, ttl_ms, wait)).await;
        self.state(answer)
    }

    async fn get_many(&mut self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.len() > MAX_ASKS {
            wasmtime::bail!("get-many takes at most {MAX_ASKS} keys, got {}", keys.len());
        }
        // Keys over the bound miss, as a `get` of one would; the rest are read in one call.
        let valid: Vec<bool> = keys.iter().map(|k| k.len() <= MAX_KEY).collect();
        let asked: Vec<String> = keys.into_iter().filter(|k| k.len() <= MAX_KEY).collect();
        let wait = self.turn().await;
        let answer = waited(&self.clock, self.meta.services.kv.get_many(&self.meta.name, asked, wait)).await;
        let mut values = self.state(answer)?.into_iter();
        Ok(valid.into_iter().map(|ok| if ok { values.next().flatten() } else { None }).collect())
    }

    async fn add_many(&mut self, adds: Vec<(String, i64, u32)>) -> Result<Vec<i64>> {
        if adds.len() > MAX_ASKS {
            wasmtime::bail!("add-many takes at most {MAX_ASKS} adds, got {}", adds.len());
        }
        let valid: Vec<bool> = adds.iter().map(|(k, _, _)| k.len() <= MAX_KEY).collect();
        let asked: Vec<(String, i64, u32)> = adds.into_iter().filter(|(k, _, _)| k.len() <= MAX_KEY).collect();
        let wait = self.turn().await;
        let answer = waited(&self.clock, self.meta.services.kv.add_many(&self.meta.name, asked, wait)).await;
        let mut values = self.state(answer)?.into_iter();
        Ok(valid.into_iter().map(|ok| if ok { values.next().unwrap_or(0) } else { 0 }).collect())
    }
}

impl quota::Host for HostState {
    async fn reserve(
        &mut self,
        key: String,
        amount: u64,
        limit: quota::Limit,
    ) -> Result<Result<quota::Grant, quota::Denial>> {
        let wait = self.turn().await;
        let quota = &self.meta.services.quota;
        let answer =
            waited(&self.clock, quota.reserve(&self.meta.name, key, amount, limit.amount, limit.window_ms, wait)).await;
        Ok(match self.state(answer)? {
            Ok(g) => Ok(quota::Grant { reservation: g.reservation, remaining: g.remaining, reset_ms: g.reset_ms }),
            Err(d) => Err(quota::Denial { retry_after_ms: d.retry_after_ms, remaining: d.remaining }),
        })
    }

    async fn reserve_all(&mut self, asks: Vec<quota::Ask>) -> Result<Result<Vec<quota::Grant>, quota::Refusal>> {
        if asks.len() > MAX_ASKS {
            wasmtime::bail!("reserve-all takes at most {MAX_ASKS} asks, got {}", asks.len());
        }
        let asks: Vec<Ask> = asks
            .into_iter()
            .map(|a| Ask {
                key: a.key,
                amount: a.amount,
                limit: a.limit.amount,
                window_ms: a.limit.window_ms,
                covers: a.covers.map(|c| Covers { who: spender(c.who), name: c.name, since_ms: c.since_ms }),
            })
            .collect();
        let wait = self.turn().await;
        let meta = self.meta.clone();
        let spent_here = |c: &Covers| meta.services.ledger.spent_here(&meta.name, c.who, &c.name, c.since_ms);
        let answer = waited(&self.clock, meta.services.quota.reserve_all(&meta.name, asks, &spent_here, wait)).await;
        Ok(match self.state(answer)? {
            Ok(grants) => Ok(grants
                .into_iter()
                .map(|g| quota::Grant { reservation: g.reservation, remaining: g.remaining, reset_ms: g.reset_ms })
                .collect()),
            Err((index, d)) => Err(quota::Refusal {
                index,
                denial: quota::Denial { retry_after_ms: d.retry_after_ms, remaining: d.remaining },
            }),
        })
    }

    async fn settle(&mut self, reservation: u64, actual: u64) -> Result<()> {
        self.meta.services.quota.settle(reservation, actual);
        Ok(())
    }
}

impl metrics::Host for HostState {
    async fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, delta: u64) -> Result<()> {
        self.pace().await;
        self.meta.services.metrics.plugin_counter_add(&self.meta.metrics_as, name, labels, delta);
        Ok(())
    }

    async fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> Result<()> {
        self.pace().await;
        self.meta.services.metrics.plugin_gauge_set(&self.meta.metrics_as, name, labels, value);
        Ok(())
    }

    async fn histogram_observe(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> Result<()> {
        self.pace().await;
        if value.is_finite() {
            self.meta.services.metrics.plugin_observe(&self.meta.metrics_as, name, labels, value);
        }
        Ok(())
    }
}

impl ledger::Host for HostState {
    async fn append(&mut self, e: ledger::Entry) -> Result<()> {
        let entry = Entry {
            ts_ms: now_ms(),
            request_id: e.request_id,
            key_name: e.key_name,
            team: e.team,
            model: e.model,
            target: e.target,
            prompt_tokens: e.prompt_tokens,
            completion_tokens: e.completion_tokens,
            cached_tokens: e.cached_tokens,
            cost_pico_usd: e.cost_pico_usd,
            plugin: self.meta.name.to_string(),
        };
        let wait = self.turn().await;
        if let Err(error) = waited(&self.clock, self.meta.services.ledger.append(&entry, wait)).await {
            // Losing a money record is worth a loud line; the request itself is already done.
            tracing::error!(plugin = %self.meta.name, %error, "could not append to the ledger");
        }
        Ok(())
    }

    async fn spent(&mut self, who: ledger::Spender, name: String, since_ms: u64) -> Result<u64> {
        let who = spender(who);
        let wait = self.turn().await;
        let answer =
            waited(&self.clock, self.meta.services.ledger.spent(&self.meta.name, who, &name, since_ms, wait)).await;
        self.state(answer)
    }
}

impl catalog::Host for HostState {
    async fn price(&mut self, model: String) -> Result<Option<catalog::ModelPrice>> {
        self.pace().await;
        Ok(self.meta.services.price(&model).map(|p| catalog::ModelPrice {
            input: p.input,
            output: p.output,
            cached_input: p.cached_input,
            per_request: p.per_request,
            per_thousand_instances: p.per_1k_instances,
            per_compute_second: p.per_compute_second,
        }))
    }

    async fn target_stats(&mut self, target: String) -> Result<Option<catalog::TargetHealth>> {
        self.pace().await;
        Ok(self.meta.services.routes.target(&target).map(|t| {
            let s = t.stats.snapshot();
            catalog::TargetHealth {
                healthy: s.healthy,
                in_flight: s.in_flight,
                latency_ms: s.latency_ms,
                error_rate: s.error_rate,
            }
        }))
    }

    async fn targets(&mut self, model: String) -> Result<Vec<String>> {
        self.pace().await;
        Ok(self.meta.services.routes.targets_of(&model))
    }

    async fn check_target(&mut self, name: String) -> Result<Result<(), String>> {
        self.pace().await;
        Ok(self.meta.services.routes.check_target(&name))
    }

    async fn now_ms(&mut self) -> Result<u64> {
        self.pace().await;
        Ok(now_ms())
    }

    async fn random_u64(&mut self) -> Result<u64> {
        self.pace().await;
        Ok(rand::random())
    }

    async fn time_left_us(&mut self) -> Result<u64> {
        self.pace().await;
        Ok(u64::try_from(self.left().as_micros()).unwrap_or(u64::MAX))
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> Result<()> {
        self.pace().await;
        if !self.meta.may_log() {
            self.meta
                .services
                .metrics
                .plugin_logs_dropped
                .get_or_create(&PluginLabel { plugin: self.meta.name.clone() })
                .inc();
            return Ok(());
        }
        let plugin = &*self.meta.name;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

fn spender(who: ledger::Spender) -> Spender {
    match who {
        ledger::Spender::Key => Spender::Key,
        ledger::Spender::Team => Spender::Team,
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
