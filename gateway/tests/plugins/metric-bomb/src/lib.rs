//! Test fixture `metric-bomb`: every `on-request` adds to a counter whose `id` label is new each
//! call and `label_bytes` long (config, default 1 MiB), plus a counter `steady` labelled with the
//! config's `tag`, so a test sees the host's bounds on label sizes and series, and which series of
//! a version survive a reload.

use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request, catalog, metrics};

/// The configured sizes.
struct MetricBomb {
    label_bytes: usize,
    tag: String,
}

/// Reads `"key": number` from the config's JSON text (the fixture avoids a JSON dependency).
fn number(config: &str, key: &str) -> Option<usize> {
    let rest = &config[config.find(&format!("\"{key}\""))? + key.len() + 2..];
    let digits: String = rest.trim_start_matches([':', ' ']).chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Reads `"key": "text"` from the config's JSON text.
fn text(config: &str, key: &str) -> Option<String> {
    let rest = &config[config.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start_matches([':', ' ']).strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

impl Plugin for MetricBomb {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let label_bytes = number(config, "label_bytes").unwrap_or(1 << 20);
        let tag = text(config, "tag").unwrap_or_else(|| "v1".to_owned());
        Ok((MetricBomb { label_bytes, tag }, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        let id = format!("{:016x}", catalog::random_u64());
        let mut label = id.repeat(self.label_bytes / id.len() + 1);
        label.truncate(self.label_bytes);
        metrics::counter_add("bomb", &[("id".to_owned(), label)], 1);
        metrics::counter_add("steady", &[("tag".to_owned(), self.tag.clone())], 1);
        Decision::Continue
    }
}

weir_sdk::export_plugin!(MetricBomb);
