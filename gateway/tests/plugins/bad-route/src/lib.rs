//! Test fixture `bad-route`: `on-request` routes every request to a target that no config has, so
//! the host must refuse the route rather than fail somewhere downstream.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request};

/// The target it routes to; no test config may define it.
const NOWHERE: &str = "nowhere/nothing";

/// The plugin; it needs no state to misbehave.
struct BadRoute;

impl Plugin for BadRoute {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((BadRoute, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        Decision::Route(NOWHERE.into())
    }
}

weir_sdk::export_plugin!(BadRoute);
