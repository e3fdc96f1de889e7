//! One loaded version of one plugin: its pre-instantiated component, its pool of warm instances,
//! and the calls that bound every hook by a deadline and a memory cap and turn a trap into a
//! [`Fault`] instead of an error of the gateway.
//!
//! Deadlines use epochs: the store's deadline is one tick away, and the epoch callback decides on
//! each tick whether the call may go on (yielding to the runtime once it has run for
//! [`YIELD_AFTER`]) or is over its deadline or its wall limit (a trap; see `clock.rs`). Between
//! ticks, fuel makes guest code yield every [`FUEL_YIELD`] units, and every call runs through the
//! gate of `gate.rs`, so a looping plugin holds a worker for microseconds at a time and never all
//! of them, and once it has run for [`super::gate::MOVE_AFTER`] it moves to the gate's long pool.
//! A plugin that keeps faulting is quarantined (`quarantine.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::HeaderName;
use wasmtime::component::Resource;
use wasmtime::{Store, UpdateDeadline};
use weir_config::{InstanceMode, OnError, PluginConfig, PluginSource};

use super::bindings::weir::plugin::hooks::{
    AnswerAction, Completion, Decision, EventAction, HookSet, PluginInfo, ResponseAction, StreamEvent,
};
use super::bindings::{Plugin, PluginPre, v0_1, v0_2};
use super::clock::{CallClock, Clocked, wall_limit};
use super::compat::{self, Contract};
use super::gate::{Gate, YIELD_AFTER};
use super::host::{HostState, PluginMeta, RequestHandle};
use super::quarantine::{Health, Standing};
use super::view::RequestView;
use super::wasm::{FUEL_YIELD, MAX_MEMORY, TICK, WasmEngine};
use super::{Fault, FaultKind, Hook, Services, builtin, missing_builtin};
use crate::metrics::PluginLabel;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A plugin that could not be loaded, and why.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin}: {problem}")]
pub struct PluginLoadError {
    pub plugin: String,
    pub problem: LoadProblem,
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadProblem {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: std::path::PathBuf, error: std::io::Error },
    #[error("{0}")]
    MissingBuiltin(String),
    #[error("compilation task failed: {0}")]
    Task(tokio::task::JoinError),
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    #[error("it imports something the host does not provide: {0:#}")]
    Imports(wasmtime::Error),
    #[error("it does not export the weir:plugin world: {0:#}")]
    World(wasmtime::Error),
    /// It was built against a contract version this host does not serve.
    #[error("{0}")]
    Contract(String),
    #[error("instantiation failed: {0:#}")]
    Instantiate(wasmtime::Error),
    /// The plugin's `init` refused its config, in its own words.
    #[error("init rejected its config: {0}")]
    ConfigRejected(String),
    #[error("init failed: {0:#}")]
    Init(wasmtime::Error),
}

/// Warm instances kept per plugin. The pool is per plugin version rather than per worker thread so
/// that it is dropped with the version it belongs to on a hot swap; a lock-free queue makes taking
/// and returning an instance about as cheap as a thread-local would be.
const POOL_SIZE: usize = 64;

struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
    calls: u64,
    /// The store's [`CallClock`], beside it so that a call can be polled by a `Clocked` while the
    /// call borrows the store.
    clock: Arc<CallClock>,
}

/// A component pre-instantiated against the contract it was built for.
enum Pre {
    V0_1(v0_1::PluginPre<HostState>),
    V0_2(v0_2::PluginPre<HostState>),
    V0_3(PluginPre<HostState>),
}

/// One instance's exports, of the contract it was built for; older ones' values are converted
/// (`compat.rs`), so the rest of the host sees the current types only.
enum Bindings {
    V0_1(v0_1::Plugin),
    V0_2(v0_2::Plugin),
    V0_3(Plugin),
}

impl Pre {
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::V0_1(pre) => pre.engine(),
            Pre::V0_2(pre) => pre.engine(),
            Pre::V0_3(pre) => pre.engine(),
        }
    }

    async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V0_1(pre) => Bindings::V0_1(pre.instantiate_async(store).await?),
            Pre::V0_2(pre) => Bindings::V0_2(pre.instantiate_async(store).await?),
            Pre::V0_3(pre) => Bindings::V0_3(pre.instantiate_async(store).await?),
        })
    }
}

impl Bindings {
    async fn init(&self, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<PluginInfo, String>> {
        Ok(match self {
            Bindings::V0_1(b) => b.call_init(store, config).await?.map(compat::v0_1::plugin_info),
            Bindings::V0_2(b) => b.call_init(store, config).await?.map(compat::v0_2::plugin_info),
            Bindings::V0_3(b) => b.call_init(store, config).await?,
        })
    }

    async fn on_request(
        &self,
        store: &mut Store<HostState>,
        req: Resource<RequestHandle>,
    ) -> wasmtime::Result<Decision> {
        Ok(match self {
            Bindings::V0_1(b) => compat::v0_1::decision(b.call_on_request(store, req).await?),
            Bindings::V0_2(b) => compat::v0_2::decision(b.call_on_request(store, req).await?),
            Bindings::V0_3(b) => b.call_on_request(store, req).await?,
        })
    }

    async fn on_response_headers(
        &self,
        store: &mut Store<HostState>,
        req: Resource<RequestHandle>,
        status: u16,
    ) -> wasmtime::Result<ResponseAction> {
        Ok(match self {
            Bindings::V0_1(b) => compat::v0_1::response_action(b.call_on_response_headers(store, req, status).await?),
            Bindings::V0_2(b) => compat::v0_2::response_action(b.call_on_response_headers(store, req, status).await?),
            Bindings::V0_3(b) => b.call_on_response_headers(store, req, status).await?,
        })
    }

    async fn on_complete(
        &self,
        store: &mut Store<HostState>,
        req: Resource<RequestHandle>,
        completion: &Completion,
    ) -> wasmtime::Result<()> {
        match self {
            Bindings::V0_1(b) => b.call_on_complete(store, req, &compat::v0_1::completion(completion)).await,
            Bindings::V0_2(b) => b.call_on_complete(store, req, &compat::v0_2::completion(completion)).await,
            Bindings::V0_3(b) => b.call_on_complete(store, req, completion).await,
        }
    }

    /// `on-response`; an older guest never declares it (its hook set has no such flag), so the
    /// host never calls it there.
    async fn on_response(
        &self,
        store: &mut Store<HostState>,
        req: Resource<RequestHandle>,
        answer: &[u8],
    ) -> wasmtime::Result<AnswerAction> {
        match self {
            Bindings::V0_3(b) => b.call_on_response(store, req, answer).await,
            Bindings::V0_1(_) | Bindings::V0_2(_) => Ok(AnswerAction::Continue),
        }
    }

    /// `on-stream-event`; as `on-response`, never declared by an older guest.
    async fn on_stream_event(
        &self,
        store: &mut Store<HostState>,
        req: Resource<RequestHandle>,
        event: &StreamEvent,
    ) -> wasmtime::Result<EventAction> {
        match self {
            Bindings::V0_3(b) => b.call_on_stream_event(store, req, event).await,
            Bindings::V0_1(_) | Bindings::V0_2(_) => Ok(EventAction::Pass),
        }
    }
}

/// A plugin ready to be called.
pub struct LoadedPlugin {
    pub meta: Arc<PluginMeta>,
    pub hooks: HookSet,
    pub on_error: OnError,
    config: PluginConfig,
    memory: usize,
    pre: Pre,
    pool: ArrayQueue<Warm>,
    /// Its faults, for the quarantine and the rate limit on fault lines.
    health: Health,
    /// The engine's gate, which every call runs through.
    gate: Arc<Gate>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("name", &self.meta.name).field("hooks", &self.hooks).finish()
    }
}

impl LoadedPlugin {
    /// Reads, compiles, pre-instantiates and `init`s a plugin. Any failure names the plugin and
    /// what would fix it; nothing is swapped in until this succeeds.
    pub async fn load(
        wasm: &Arc<WasmEngine>,
        config: &PluginConfig,
        services: Arc<Services>,
    ) -> Result<Arc<Self>, PluginLoadError> {
        let name = &config.name;
        let failed = |problem| PluginLoadError { plugin: name.clone(), problem };
        let bytes = match &config.source {
            PluginSource::File(path) => {
                std::fs::read(path).map_err(|error| failed(LoadProblem::Read { path: path.clone(), error }))?
            }
            PluginSource::Builtin(b) => {
                builtin(b).ok_or_else(|| failed(LoadProblem::MissingBuiltin(missing_builtin(b))))?.to_vec()
            }
        };
        // Compiling is CPU work of up to seconds: keep it off the async workers.
        let compiler = wasm.clone();
        let component = tokio::task::spawn_blocking(move || compiler.compile(&bytes))
            .await
            .map_err(|e| failed(LoadProblem::Task(e)))?
            .map_err(|e| failed(LoadProblem::Compile(e)))?;
        let contract = Contract::of(&component, &wasm.engine).map_err(|e| failed(LoadProblem::Contract(e)))?;
        let pre = wasm.linker.instantiate_pre(&component).map_err(|e| failed(LoadProblem::Imports(e)))?;
        let pre = match contract {
            Contract::V0_1 => Pre::V0_1(v0_1::PluginPre::new(pre).map_err(|e| failed(LoadProblem::World(e)))?),
            Contract::V0_2 => Pre::V0_2(v0_2::PluginPre::new(pre).map_err(|e| failed(LoadProblem::World(e)))?),
            Contract::V0_3 => Pre::V0_3(PluginPre::new(pre).map_err(|e| failed(LoadProblem::World(e)))?),
        };
        let memory = usize::try_from(config.memory).unwrap_or(MAX_MEMORY).min(MAX_MEMORY);

        // A first instance runs `init` to learn the plugin's hooks and headers, and proves the
        // config is one the plugin accepts.
        let probe_meta = Arc::new(PluginMeta::new(name, NEXT_ID.fetch_add(1, Ordering::Relaxed), services.clone()));
        let (_, info) = instantiate(&pre, probe_meta, memory, config).await.map_err(failed)?;
        let mut meta = PluginMeta::new(name, NEXT_ID.fetch_add(1, Ordering::Relaxed), services);
        meta.read_headers = info
            .read_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        meta.needs_body = info.needs_body;
        meta.needs_response = info.needs_response;
        meta.stream_hold_bytes = info.stream_hold_bytes.min(super::police::MAX_HOLD_BYTES);
        tracing::debug!(plugin = %name, contract = contract.label(), "plugin loaded");
        Ok(Arc::new(Self {
            meta: Arc::new(meta),
            hooks: info.hooks,
            on_error: config.on_error,
            config: config.clone(),
            memory,
            pre,
            pool: ArrayQueue::new(POOL_SIZE),
            health: Health::new(config.quarantine),
            gate: wasm.gate.clone(),
        }))
    }

    /// Whether the plugin is quarantined now (and its hooks are to be skipped per its
    /// `on_error`); the fault that skipping a closed plugin's hook turns into.
    pub fn quarantined(&self, hook: Hook) -> Option<Fault> {
        let remaining = self.health.quarantined(|| {
            let metrics = &self.meta.services.metrics;
            metrics.plugin_quarantined.get_or_create(&PluginLabel { plugin: self.meta.name.clone() }).set(0);
            tracing::info!(plugin = %self.meta.name, "plugin quarantine over; its hooks run again");
        })?;
        self.meta.services.metrics.plugin_skipped(&self.meta.name, hook.label());
        Some(Fault {
            plugin: self.meta.name.clone(),
            hook,
            kind: FaultKind::Quarantined,
            detail: format!(
                "quarantined for another {}",
                humantime::format_duration(Duration::from_secs(remaining.as_secs().max(1)))
            ),
            on_error: self.on_error,
        })
    }

    /// A warm instance for a call of `hook` made at `made`: one from the pool, else a new one. The
    /// call's wall limit counts from `made`, so that the time it waited for the gate is in it; a
    /// new instance is bounded by its own deadline, and the call's limit counts from when it is
    /// ready (a first call is not charged for making the instance).
    async fn checkout(&self, hook: Hook, made: Instant) -> Result<Warm, Fault> {
        let pooled = (self.config.instances == InstanceMode::Pooled).then(|| self.pool.pop()).flatten();
        let (mut warm, made) = match pooled {
            Some(warm) => (warm, made),
            None => {
                let (warm, _) =
                    instantiate(&self.pre, self.meta.clone(), self.memory, &self.config).await.map_err(|problem| {
                        self.fault(hook, FaultKind::Instantiate, Some(&wasmtime::Error::msg(problem.to_string())))
                    })?;
                (warm, Instant::now())
            }
        };
        warm.store.data_mut().begin_call(self.config.deadline, made);
        warm.store.set_epoch_deadline(1);
        // Fuel only paces the yields (see `wasm.rs`): a call never runs out of it.
        warm.store.set_fuel(u64::MAX).map_err(|e| self.fault(hook, FaultKind::Instantiate, Some(&e)))?;
        Ok(warm)
    }

    fn checkin<R>(
        &self,
        mut warm: Warm,
        hook: Hook,
        started: Instant,
        result: wasmtime::Result<R>,
    ) -> Result<R, Fault> {
        self.meta.services.metrics.plugin_call(&self.meta.name, hook.label(), started.elapsed());
        match result {
            Ok(value) => {
                warm.calls += 1;
                if self.config.instances == InstanceMode::Pooled && warm.calls < self.config.recycle_after {
                    // A full pool just drops the extra instance.
                    let _ = self.pool.push(warm);
                }
                Ok(value)
            }
            Err(error) => {
                // The instance is thrown away: after a trap its state cannot be trusted.
                let state = warm.store.data();
                let kind = if state.limits.memory_exceeded {
                    FaultKind::Memory
                } else if state.deadline_hit {
                    FaultKind::Deadline
                } else if state.state_unavailable {
                    FaultKind::StateUnavailable
                } else {
                    FaultKind::Trap
                };
                let said = state.output.said();
                Err(self.fault_saying(hook, kind, Some(&error), &said))
            }
        }
    }

    // Each call owns what it reads (two `Arc`s, the completion copied), because a long one moves
    // to the gate's long pool and outlives this borrow's thread (`gate.rs`).
    pub async fn on_request(self: &Arc<Self>, view: &Arc<RequestView>) -> Result<Decision, Fault> {
        let (this, view, made) = (self.clone(), view.clone(), Instant::now());
        self.gate.run(async move { this.call_on_request(&view, made).await }).await
    }

    pub async fn on_response_headers(
        self: &Arc<Self>,
        view: &Arc<RequestView>,
        status: u16,
    ) -> Result<ResponseAction, Fault> {
        let (this, view, made) = (self.clone(), view.clone(), Instant::now());
        self.gate.run(async move { this.call_on_response_headers(&view, status, made).await }).await
    }

    pub async fn on_complete(self: &Arc<Self>, view: &Arc<RequestView>, completion: &Completion) -> Result<(), Fault> {
        let (this, view, completion, made) = (self.clone(), view.clone(), completion.clone(), Instant::now());
        self.gate.run(async move { this.call_on_complete(&view, &completion, made).await }).await
    }

    pub async fn on_response(self: &Arc<Self>, view: &Arc<RequestView>, answer: Bytes) -> Result<AnswerAction, Fault> {
        let (this, view, made) = (self.clone(), view.clone(), Instant::now());
        self.gate.run(async move { this.call_on_response(&view, &answer, made).await }).await
    }

    pub async fn on_stream_event(
        self: &Arc<Self>,
        view: &Arc<RequestView>,
        event: StreamEvent,
    ) -> Result<EventAction, Fault> {
        let (this, view, made) = (self.clone(), view.clone(), Instant::now());
        self.gate.run(async move { this.call_on_stream_event(&view, &event, made).await }).await
    }

    // `started`: when the hook was called, before it waited for the gate (see `checkout`).
    async fn call_on_request(&self, view: &Arc<RequestView>, started: Instant) -> Result<Decision, Fault> {
        let mut warm = self.checkout(Hook::OnRequest, started).await?;
        let Warm { store, bindings, clock, .. } = &mut warm;
        let result = Clocked::new(clock, async {
            let handle = store.data_mut().table.push(RequestHandle { view: view.clone() })?;
            let borrowed = Resource::new_borrow(handle.rep());
            let decision = bindings.on_request(&mut *store, borrowed).await;
            store.data_mut().table.delete(handle)?;
            decision
        })
        .await;
        self.checkin(warm, Hook::OnRequest, started, result)
    }

    async fn call_on_response_headers(
        &self,
        view: &Arc<RequestView>,
        status: u16,
        started: Instant,
    ) -> Result<ResponseAction, Fault> {
        let mut warm = self.checkout(Hook::OnResponseHeaders, started).await?;
        let Warm { store, bindings, clock, .. } = &mut warm;
        let result = Clocked::new(clock, async {
            let handle = store.data_mut().table.push(RequestHandle { view: view.clone() })?;
            let borrowed = Resource::new_borrow(handle.rep());
            let action = bindings.on_response_headers(&mut *store, borrowed, status).await;
            store.data_mut().table.delete(handle)?;
            action
        })
        .await;
        self.checkin(warm, Hook::OnResponseHeaders, started, result)
    }

    async fn call_on_response(
        &self,
        view: &Arc<RequestView>,
        answer: &[u8],
        started: Instant,
    ) -> Result<AnswerAction, Fault> {
        let mut warm = self.checkout(Hook::OnResponse, started).await?;
        let Warm { store, bindings, clock, .. } = &mut warm;
        let result = Clocked::new(clock, async {
            let handle = store.data_mut().table.push(RequestHandle { view: view.clone() })?;
            let borrowed = Resource::new_borrow(handle.rep());
            let action = bindings.on_response(&mut *store, borrowed, answer).await;
            store.data_mut().table.delete(handle)?;
            action
        })
        .await;
        self.checkin(warm, Hook::OnResponse, started, result)
    }

    async fn call_on_stream_event(
        &self,
        view: &Arc<RequestView>,
        event: &StreamEvent,
        started: Instant,
    ) -> Result<EventAction, Fault> {
        let mut warm = self.checkout(Hook::OnStreamEvent, started).await?;
        let Warm { store, bindings, clock, .. } = &mut warm;
        let result = Clocked::new(clock, async {
            let handle = store.data_mut().table.push(RequestHandle { view: view.clone() })?;
            let borrowed = Resource::new_borrow(handle.rep());
            let action = bindings.on_stream_event(&mut *store, borrowed, event).await;
            store.data_mut().table.delete(handle)?;
            action
        })
        .await;
        self.checkin(warm, Hook::OnStreamEvent, started, result)
    }

    async fn call_on_complete(
        &self,
        view: &Arc<RequestView>,
        completion: &Completion,
        started: Instant,
    ) -> Result<(), Fault> {
        let mut warm = self.checkout(Hook::OnComplete, started).await?;
        let Warm { store, bindings, clock, .. } = &mut warm;
        let result = Clocked::new(clock, async {
            let handle = store.data_mut().table.push(RequestHandle { view: view.clone() })?;
            let borrowed = Resource::new_borrow(handle.rep());
            let done = bindings.on_complete(&mut *store, borrowed, completion).await;
            store.data_mut().table.delete(handle)?;
            done
        })
        .await;
        self.checkin(warm, Hook::OnComplete, started, result)
    }

    /// A decision the host cannot act on, as a fault.
    pub fn bad_decision(&self, hook: Hook, detail: String) -> Fault {
        self.fault(hook, FaultKind::BadDecision, Some(&wasmtime::Error::msg(detail)))
    }

    /// A fault of this plugin: counted, weighed for the quarantine, and logged as one line with
    /// the plugin, hook, kind and cause (at most a few a second per plugin; the wasm backtrace at
    /// debug level only).
    pub fn fault(&self, hook: Hook, kind: FaultKind, cause: Option<&wasmtime::Error>) -> Fault {
        self.fault_saying(hook, kind, cause, "")
    }

    /// [`Self::fault`], with what the call wrote to stderr (a panic's message) on its line.
    fn fault_saying(&self, hook: Hook, kind: FaultKind, cause: Option<&wasmtime::Error>, said: &str) -> Fault {
        let metrics = &self.meta.services.metrics;
        metrics.plugin_fault(&self.meta.name, hook.label(), kind.label());
        // The root cause is the trap or our own message; the chain above it is the backtrace.
        let detail =
            cause.map(|e| e.root_cause().to_string().lines().next().unwrap_or_default().to_owned()).unwrap_or_default();
        let plugin = &*self.meta.name;
        if let Some(suppressed) = self.health.may_log() {
            // `None` leaves the field off the line.
            let stderr = (!said.is_empty()).then_some(said);
            tracing::warn!(plugin, hook = hook.label(), kind = kind.label(), on_error = ?self.on_error, cause = %detail, stderr, suppressed, "plugin fault");
            if let Some(cause) = cause.filter(|_| kind != FaultKind::BadDecision) {
                tracing::debug!(
                    plugin,
                    hook = hook.label(),
                    kind = kind.label(),
                    "plugin {plugin}: fault backtrace: {cause:?}"
                );
            }
        }
        if let Standing::Quarantined(cooldown) = self.health.fault() {
            metrics.plugin_quarantined.get_or_create(&PluginLabel { plugin: self.meta.name.clone() }).set(1);
            metrics.plugin_quarantines.get_or_create(&PluginLabel { plugin: self.meta.name.clone() }).inc();
            tracing::warn!(
                plugin,
                faults = self.config.quarantine.faults,
                window = %humantime::format_duration(self.config.quarantine.window),
                cooldown = %humantime::format_duration(cooldown),
                on_error = ?self.on_error,
                "plugin quarantined after repeated faults: its hooks are skipped (on_error = open: as if it said continue; closed: requests fail) until the cooldown ends"
            );
        }
        Fault { plugin: self.meta.name.clone(), hook, kind, detail, on_error: self.on_error }
    }
}

/// A new instance, `init`-ed with the plugin's config.
async fn instantiate(
    pre: &Pre,
    meta: Arc<PluginMeta>,
    memory: usize,
    config: &PluginConfig,
) -> Result<(Warm, PluginInfo), LoadProblem> {
    let mut store = Store::new(pre.engine(), HostState::new(meta, memory));
    store.limiter(|s| &mut s.limits);
    store.set_fuel(u64::MAX).map_err(LoadProblem::Instantiate)?;
    store.fuel_async_yield_interval(Some(FUEL_YIELD)).map_err(LoadProblem::Instantiate)?;
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        let (elapsed, age) = state.clock.tick();
        if elapsed >= state.deadline {
            state.deadline_hit = true;
            wasmtime::bail!("the plugin ran past its deadline of {:?}", state.deadline);
        }
        let limit = wall_limit(state.deadline);
        if age >= limit {
            state.deadline_hit = true;
            wasmtime::bail!(
                "the plugin call was still unfinished {:?} after it began (its deadline of {:?}, mostly spent waiting for its turn on a busy machine)",
                limit,
                state.deadline
            );
        }
        // A long call yields at every tick (and the ticker ticks faster while one runs).
        Ok(if elapsed < YIELD_AFTER { UpdateDeadline::Continue(1) } else { UpdateDeadline::Yield(1) })
    });
    // Instantiation and `init` get the same deadline as a hook.
    store.data_mut().begin_call(config.deadline.max(TICK * 100), Instant::now());
    store.set_epoch_deadline(1);
    // Guest code runs only inside a `Clocked` future: outside one, nothing is charged.
    let clock = store.data().clock.clone();
    let bindings = Clocked::new(&clock, pre.instantiate(&mut store)).await.map_err(LoadProblem::Instantiate)?;
    let info = match Clocked::new(&clock, bindings.init(&mut store, &config.config_json)).await {
        Ok(Ok(info)) => info,
        Ok(Err(message)) => return Err(LoadProblem::ConfigRejected(message)),
        Err(e) => {
            // A panic in `init` (a config it cannot read, unwrapped) says why on stderr.
            let said = store.data().output.said();
            let e = if said.is_empty() { e } else { e.context(format!("it wrote to stderr: {said}")) };
            return Err(LoadProblem::Init(e));
        }
    };
    Ok((Warm { store, bindings, calls: 0, clock }, info))
}
