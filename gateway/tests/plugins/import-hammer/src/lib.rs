//! Test fixture `import-hammer`: `on-request` calls host imports in an endless loop, so the
//! deadline must stop a guest that spends its time inside the host rather than in its own code.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request, kv, log, metrics};

/// The plugin; it needs no state to misbehave.
struct ImportHammer;

impl Plugin for ImportHammer {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((ImportHammer, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        // The key grows by one byte a round, so every round writes a new, longer key that never
        // expires: a host without its own bounds on the store grows with the guest's runtime.
        let mut key = String::from("hammer/");
        let mut round: u64 = 0;
        loop {
            key.push('k');
            kv::set(&key, &round.to_le_bytes(), 0);
            std::hint::black_box(kv::get(&key));
            log::log(log::Level::Trace, &key);
            metrics::counter_add("hammer_rounds", &[], 1);
            round = round.wrapping_add(1);
        }
    }
}

weir_sdk::export_plugin!(ImportHammer);
