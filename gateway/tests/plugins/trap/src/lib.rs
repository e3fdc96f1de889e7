//! Test fixture `trap`: `on-request` panics; on wasm32-wasip2 a panic aborts, which the host sees
//! as a trap.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request};

/// The plugin; it needs no state to misbehave.
struct Trap;

impl Plugin for Trap {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((Trap, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        panic!("weir-test-plugin-trap panics in on-request on purpose");
    }
}

weir_sdk::export_plugin!(Trap);
