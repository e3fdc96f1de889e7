//! Test fixture `loop`: `on-request` spins forever, so only the host's epoch deadline can end the
//! call. With `{"rounds": N}` it stops after N rounds and lets the request go on: honest work that
//! takes a while, for the tests of what a deadline counts.

use serde::Deserialize;
use weir_sdk::{Decision, HookSet, Plugin, PluginInfo, Request};

/// The config table: `{}` (spin forever) or `{"rounds": N}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rounds: Option<u64>,
}

/// The plugin: how many rounds a call spins, `None` for ever.
struct Loop {
    rounds: Option<u64>,
}

impl Plugin for Loop {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let Config { rounds } = serde_json::from_str(config).map_err(|e| format!("loop config: {e}"))?;
        Ok((Loop { rounds }, PluginInfo::hooks(HookSet::ON_REQUEST)))
    }

    fn on_request(&self, _req: &Request) -> Decision {
        // `black_box` keeps the optimizer from proving the loop has no effect; the loop makes no
        // host call either, so the deadline must interrupt pure guest code.
        let mut round: u64 = 0;
        while self.rounds.is_none_or(|rounds| round < rounds) {
            round = std::hint::black_box(round) + 1;
        }
        Decision::Continue
    }
}

weir_sdk::export_plugin!(Loop);
