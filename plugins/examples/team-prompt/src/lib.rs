//! Example plugin `team-prompt`: each team's system prompt in front of its requests. It reads the
//! request (`needs-body`), adds the team's prompt with `weir_sdk::edit` in whichever chat API the
//! client spoke (Chat Completions, Messages, Responses, legacy Completions), and hands the body
//! back with `weir_sdk::rewrite`; the gateway validates it and sends the upstream the new request.
//!
//! ```toml
//! [[plugins]]
//! name = "team-prompt"
//! source = "builtin:team-prompt"
//! config = { prompts = { support = "You answer for ACME support. Be brief." }, default = "", replace = false }
//! ```

use std::collections::HashMap;

use serde::Deserialize;
use weir_sdk::{ApiKind, Decision, HookSet, Plugin, PluginInfo, Request, edit, log};

/// The config table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamPrompt {
    /// The system prompt of each team (the team of the request's API key).
    prompts: HashMap<String, String>,
    /// For teams not listed; empty (the default) leaves their requests alone.
    #[serde(default)]
    default: String,
    /// `true`: the team's prompt replaces the client's own system prompt; `false` (the default):
    /// it goes before it.
    #[serde(default)]
    replace: bool,
}

impl Plugin for TeamPrompt {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let plugin: TeamPrompt = weir_sdk::config(config)?;
        if plugin.prompts.is_empty() && plugin.default.is_empty() {
            return Err("prompts: name at least one team's prompt, or a default".to_owned());
        }
        Ok((plugin, PluginInfo::hooks(HookSet::ON_REQUEST).needing_body()))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        let prompt = self.prompts.get(&info.team).unwrap_or(&self.default);
        // Embeddings and predictions have no prompt to decorate.
        if prompt.is_empty() || matches!(info.api, ApiKind::Embeddings | ApiKind::Predict) {
            return Decision::Continue;
        }
        let mut body = match weir_sdk::body_json(req) {
            Ok(body) => body,
            Err(e) => {
                log::log(log::Level::Warn, &e);
                return Decision::Continue;
            }
        };
        let edited = if self.replace {
            edit::replace_system(info.api, &mut body, prompt)
        } else {
            edit::prepend_system(info.api, &mut body, prompt)
        };
        match edited {
            Ok(()) => {
                weir_sdk::rewrite(req, &body);
                req.add_response_header("x-team-prompt", &info.team);
            }
            // A legacy completion of token ids, say: sent as it came, and said so.
            Err(e) => log::log(log::Level::Debug, &format!("no team prompt for this request: {e}")),
        }
        Decision::Continue
    }
}

weir_sdk::export_plugin!(TeamPrompt);
