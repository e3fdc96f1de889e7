//! Test fixture `noop`: implements every hook and does nothing, so a benchmark measures only what
//! the host pays to call a plugin.

use weir_sdk::{Completion, Decision, HookSet, Plugin, PluginInfo, Request, ResponseAction};

/// Holds no state: anything it kept would make the benchmark measure more than the host.
struct Noop;

impl Plugin for Noop {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        // Every hook is declared so that the host calls all three on each request.
        let hooks = HookSet::ON_REQUEST | HookSet::ON_RESPONSE_HEADERS | HookSet::ON_COMPLETE;
        Ok((Noop, PluginInfo::hooks(hooks)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        Decision::Continue
    }

    fn on_response_headers(&self, _req: &Request, _status: u16) -> ResponseAction {
        ResponseAction::Continue
    }

    fn on_complete(&self, _req: &Request, _outcome: Completion) {}
}

weir_sdk::export_plugin!(Noop);
