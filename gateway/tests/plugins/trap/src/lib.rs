//! Test fixture `trap`: `on-request` prints a line, then panics; on wasm32-wasip2 a panic aborts,
//! which the host sees as a trap (and the panic's message is on stderr). Configured so, it panics
//! in `init` instead.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request};

/// The plugin; it needs no state to misbehave.
struct Trap;

impl Plugin for Trap {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        // `config = { in = "init" }` panics here instead, as a config unwrapped in `init` would.
        assert!(!config.contains("\"init\""), "weir-test-plugin-trap panics in init on purpose");
        Ok((Trap, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    #[expect(clippy::print_stdout, reason = "the host logs a plugin's stdout; the test looks for this line")]
    fn on_request(&self, _req: &Request) -> Decision {
        println!("weir-test-plugin-trap is about to panic");
        panic!("weir-test-plugin-trap panics in on-request on purpose");
    }
}

weir_sdk::export_plugin!(Trap);
