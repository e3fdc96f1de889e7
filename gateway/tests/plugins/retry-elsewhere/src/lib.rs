//! Test fixture `retry-elsewhere`: when an upstream answers with a 5xx, asks the host to retry on the
//! target named in its config (`{"target": "upstream/model"}`), exercising `on-response-headers`.

use weir_sdk::{HookSet, Plugin, PluginInfo, Request, ResponseAction};

struct RetryElsewhere {
    target: String,
}

impl Plugin for RetryElsewhere {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        // The config is `{"target":"..."}`; a real plugin would use serde_json, this one keeps the
        // fixture free of dependencies.
        let target = config.split('"').nth(3).ok_or("config needs a target")?.to_owned();
        Ok((RetryElsewhere { target }, PluginInfo::hooks(HookSet::ON_RESPONSE_HEADERS)))
    }

    fn on_response_headers(&self, _req: &Request, status: u16) -> ResponseAction {
        if status >= 500 { ResponseAction::Retry(self.target.clone()) } else { ResponseAction::Continue }
    }
}

weir_sdk::export_plugin!(RetryElsewhere);
