//! Test fixture `contract-v0-2-0`: a plugin built with wit-bindgen straight from the released
//! `weir:plugin@0.2.0` (`sdk/wit/released/0.2.0`), as every plugin compiled before 0.2.1 was. The
//! host serves 0.2.1 now; this component imports the 0.2.0 interfaces, which must resolve to them
//! (0.2.1 only added `catalog.time-left-us`). It reports the API kind, a kv counter and whether
//! `catalog.check-target` accepted its config's target.

// wit-bindgen's `export!` writes the component's entry points: `unsafe extern` functions.
#![expect(unsafe_code, reason = "the entry points that wit-bindgen's export! writes are unsafe extern functions")]

wit_bindgen::generate!({
    path: "../../../../sdk/wit/released/0.2.0",
    world: "plugin",
    generate_all,
});

use weir::plugin::hooks::HookSet;
use weir::plugin::types::ApiKind;
use weir::plugin::{catalog, kv};

struct Probe;

impl Guest for Probe {
    fn init(_config: String) -> Result<PluginInfo, String> {
        catalog::check_target("gpt")?;
        Ok(PluginInfo {
            hooks: HookSet::ON_REQUEST,
            read_headers: Vec::new(),
            needs_body: false,
            needs_response: false,
        })
    }

    fn on_request(req: &Request) -> Decision {
        let api = match req.info().api {
            ApiKind::ChatCompletions => "chat-completions",
            ApiKind::Embeddings => "embeddings",
            ApiKind::Completions => "completions",
            ApiKind::Messages => "messages",
            ApiKind::Responses => "responses",
            ApiKind::Predict => "predict",
        };
        req.add_response_header("x-probe-api", api);
        req.add_response_header("x-probe-requests", &kv::add("requests", 1, 0).to_string());
        Decision::Continue
    }

    fn on_response_headers(_req: &Request, _status: u16) -> ResponseAction {
        ResponseAction::Continue
    }

    fn on_complete(_req: &Request, _outcome: Completion) {}
}

export!(Probe);
