//! Test fixture `reject-header`: rejects requests that carry the `x-block` header with a 403, so
//! a test sees a plugin's decision (not a fault) reach the client; it also checks that a header it
//! did not declare reads as `None`.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Rejection, Request};

/// The declared header whose presence blocks a request.
const BLOCK: &str = "x-block";
/// A header the plugin deliberately does not declare; the host must hide it.
const UNDECLARED: &str = "x-undeclared";

/// The plugin; it needs no state.
struct RejectHeader;

impl Plugin for RejectHeader {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((RejectHeader, PluginInfo::hooks(HookSet::ON_REQUEST).reading_headers([BLOCK])))
    }

    fn on_request(&self, req: &Request) -> Decision {
        // A test that sends `x-undeclared` expects the request to pass; this 500 makes a host
        // that leaks undeclared headers fail that test visibly.
        if req.header(UNDECLARED).is_some() {
            return reject(500, "undeclared_header_visible", "the plugin could read a header it did not declare");
        }
        if req.header(BLOCK).is_some() {
            return reject(403, "blocked", "blocked by policy");
        }
        Decision::Continue
    }
}

/// A rejection without `retry-after`.
fn reject(status: u16, code: &str, message: &str) -> Decision {
    Decision::Reject(Rejection { status, code: code.into(), message: message.into(), retry_after_ms: None })
}

weir_sdk::export_plugin!(RejectHeader);
