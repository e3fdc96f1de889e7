//! Test fixture `header-tag`: tags each response with the version from its config and reports the
//! same version in `on-complete`, so a hot-swap test can check that every request saw exactly one
//! version of the plugin from start to end. It reads its config with `weir_sdk::config` and tags
//! the response with `weir_sdk::time_left()` too, for the tests of both.

use serde::Deserialize;
use weir_sdk::{Completion, Decision, HookSet, Plugin, PluginInfo, Request, metrics};

/// The response header that carries the version.
const HEADER: &str = "x-plugin-version";
/// The per-request local that carries the version from `on-request` to `on-complete`.
const LOCAL: &str = "v";

/// The config table: `{"version": "v1"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Any string; the test swaps it to see which instance served a request.
    version: String,
}

/// The plugin: the version of the config it was built from.
struct HeaderTag {
    version: String,
}

impl Plugin for HeaderTag {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let Config { version } = weir_sdk::config(config).map_err(|e| format!("header-tag config: {e}"))?;
        Ok((HeaderTag { version }, PluginInfo::hooks(HookSet::ON_REQUEST | HookSet::ON_COMPLETE)))
    }

    fn on_request(&self, req: &Request) -> Decision {
        req.add_response_header(HEADER, &self.version);
        req.add_response_header("x-plugin-time-left-us", &weir_sdk::time_left().as_micros().to_string());
        req.set_local(LOCAL, self.version.as_bytes());
        Decision::Continue
    }

    fn on_complete(&self, req: &Request, _outcome: Completion) {
        // The version is read back from the request rather than from `self`, so the metric shows
        // what `on-request` saw: a host that moved a request to another instance between hooks
        // would lose the local and count "missing".
        let version = match req.get_local(LOCAL) {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => "missing".to_owned(),
        };
        metrics::counter_add("completed", &[("version".into(), version)], 1);
    }
}

weir_sdk::export_plugin!(HeaderTag);
