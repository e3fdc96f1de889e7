//! The one wasmtime `Engine` of the process: component model, pooling allocator, epoch
//! interruption (a ticker thread advances the epoch every [`TICK`]), and compiled components cached
//! twice — in memory by content hash, so a reload recompiles only what changed, and on disk through
//! wasmtime's cache, so a restart does not recompile at all.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Plugin, v0_1, v0_2};
use super::gate::Gate;
use super::host::HostState;

/// The epoch period: deadlines are checked at these ticks, so a call may overrun its deadline by up
/// to one tick. Each tick wakes a thread; at 1 ms that thread took a tenth of the gateway's CPU time
/// on a saturated 2-core machine (perf), at 5 ms it is lost in the noise.
pub const TICK: Duration = Duration::from_millis(5);

/// The epoch period while a long plugin call runs: such a call yields at every tick, so this
/// bounds how long a plugin that spends its time in host calls holds a thread.
pub const FAST_TICK: Duration = Duration::from_micros(500);

/// Fuel (about one unit per wasm instruction) a plugin may burn before it yields its thread to
/// other tasks: tens of microseconds of guest code, so that a busy plugin hands its worker back far
/// more often than the epoch tick could without waking a thread that often. Fuel paces the yields
/// only; stores hold `u64::MAX` of it, and deadlines stay the epochs' job. A call shorter than this
/// never yields.
pub const FUEL_YIELD: u64 = 20_000;

/// The largest memory cap a plugin may be given (the pooling allocator reserves slots this big);
/// the config refuses larger caps.
pub const MAX_MEMORY: usize = weir_config::MAX_PLUGIN_MEMORY as usize;

/// Engine, linker and compile cache, shared by every version of every plugin.
pub struct WasmEngine {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    /// How many threads may run plugin code at once (`gate.rs`).
    pub gate: Arc<Gate>,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine").finish_non_exhaustive()
    }
}

impl WasmEngine {
    /// Builds the engine; `cache_dir` holds compiled components across restarts.
    pub fn new(cache_dir: &Path) -> wasmtime::Result<Arc<Self>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        config.max_wasm_stack(512 << 10);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(512)
            .total_core_instances(4000)
            .total_memories(512)
            .total_tables(4000)
            .total_stacks(1000)
            .max_memory_size(MAX_MEMORY);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let mut cache = CacheConfig::new();
        cache.with_directory(cache_dir);
        match Cache::new(cache) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => tracing::warn!(dir = %cache_dir.display(), error = %e, "plugin compile cache disabled"),
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        // Components built against the released 0.2.x and 0.1.0 contracts link to their
        // interfaces, which delegate to the current ones (`compat/`).
        v0_2::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        v0_1::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;

        // The ticker holds only a weak reference, so it stops when the engine is dropped. It ticks
        // faster while a long plugin call runs (one on the gate's long pool, which only a busy or
        // hostile plugin reaches): time spent in host calls burns no fuel, so ticks are what makes
        // a plugin that hammers host imports yield.
        let weak = engine.weak();
        let gate = Gate::new(super::gate::permits());
        let ticker_gate = gate.clone();
        std::thread::Builder::new().name("weir-plugin-epoch".into()).spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                let busy = ticker_gate.long_call_within(TICK * 2);
                std::thread::sleep(if busy { FAST_TICK } else { TICK });
            }
        })?;
        Ok(Arc::new(Self { engine, linker, gate, compiled: Mutex::new(HashMap::new()) }))
    }

    /// Compiles a component, or returns the one already compiled from the same bytes.
    pub fn compile(&self, bytes: &[u8]) -> wasmtime::Result<Component> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&hash) {
            return Ok(c.clone());
        }
        let component = Component::new(&self.engine, bytes)?;
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(hash, component.clone());
        Ok(component)
    }
}
