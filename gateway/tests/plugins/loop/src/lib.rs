//! Test fixture `loop`: `on-request` spins forever, so only the host's epoch deadline can end the
//! call.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request};

/// The plugin; it needs no state to misbehave.
struct Loop;

impl Plugin for Loop {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((Loop, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        // `black_box` keeps the optimizer from proving the loop has no effect; the loop makes no
        // host call either, so the deadline must interrupt pure guest code.
        loop {
            std::hint::black_box(0);
        }
    }
}

weir_sdk::export_plugin!(Loop);
