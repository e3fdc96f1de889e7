//! Test fixture `giant-response`: `on-request` answers every request itself with a 64 MiB body,
//! far over any sane limit on local responses.
//!
//! The body is built in guest memory, so the plugin needs a memory limit above 64 MiB to get as far
//! as returning it; under a smaller limit it traps in the allocator instead.

use weir_sdk::{Decision, HookSet, LocalResponse, Plugin, PluginInfo, Request};

/// The size of the body.
const BODY_LEN: usize = 64 << 20;

/// The plugin; it needs no state to misbehave.
struct GiantResponse;

impl Plugin for GiantResponse {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((GiantResponse, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        Decision::Respond(LocalResponse { status: 200, headers: vec![], body: vec![b'x'; BODY_LEN] })
    }
}

weir_sdk::export_plugin!(GiantResponse);
