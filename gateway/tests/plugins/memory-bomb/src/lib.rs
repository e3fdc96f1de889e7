//! Test fixture `memory-bomb`: `on-request` allocates 1 MiB blocks until the allocator fails, so
//! the host's memory limit must stop it (the failed allocation aborts, which is a trap).

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request};

/// The size of each block; large enough to reach any sane limit in a few dozen steps.
const BLOCK: usize = 1 << 20;

/// The plugin; it needs no state to misbehave.
struct MemoryBomb;

impl Plugin for MemoryBomb {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((MemoryBomb, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Filled with ones, not zeros: a zeroed allocation may be served from freshly grown
            // memory without writing it, and the point is to make the host commit every page.
            // `black_box` keeps the optimizer from removing blocks that are never read.
            hoard.push(std::hint::black_box(vec![1_u8; BLOCK]));
        }
    }
}

weir_sdk::export_plugin!(MemoryBomb);
