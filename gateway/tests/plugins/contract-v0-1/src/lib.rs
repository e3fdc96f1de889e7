//! Test fixture `contract-v0-1`: a plugin built with wit-bindgen straight from the released
//! `weir:plugin@0.1.0` (`sdk/wit/released/0.1.0`), as every plugin compiled before 0.2.0 was. It
//! reports what the host told it (the API kind, a kv counter, whether the response it read was in
//! the canonical chat form) and, when asked, answers itself in the canonical chat form — so a test
//! can check that an old component loads, is served, and that its answer reaches a client of an
//! API it never heard of in that API's shape.

// wit-bindgen's `export!` writes the component's entry points: `unsafe extern` functions. (The SDK's
// macro does the same in every plugin, but as an external macro it is exempt from the lint.)
#![expect(unsafe_code, reason = "the entry points that wit-bindgen's export! writes are unsafe extern functions")]

wit_bindgen::generate!({
    path: "../../../../sdk/wit/released/0.1.0",
    world: "plugin",
    generate_all,
});

use weir::plugin::hooks::{HookSet, LocalResponse};
use weir::plugin::types::ApiKind;
use weir::plugin::{kv, metrics};

struct Probe;

fn api(kind: ApiKind) -> &'static str {
    match kind {
        ApiKind::ChatCompletions => "chat-completions",
        ApiKind::Embeddings => "embeddings",
    }
}

impl Guest for Probe {
    fn init(_config: String) -> Result<PluginInfo, String> {
        Ok(PluginInfo {
            hooks: HookSet::ON_REQUEST | HookSet::ON_COMPLETE,
            read_headers: vec!["x-probe".to_owned()],
            needs_body: false,
            needs_response: true,
        })
    }

    fn on_request(req: &Request) -> Decision {
        let info = req.info();
        req.add_response_header("x-probe-api", api(info.api));
        let seen = kv::add("requests", 1, 0);
        req.add_response_header("x-probe-requests", &seen.to_string());
        if req.header("x-probe").as_deref() == Some("answer") {
            let body = r#"{"id":"chatcmpl-probe","object":"chat.completion","created":1,"model":"probe","choices":[{"index":0,"message":{"role":"assistant","content":"from a 0.1.0 plugin"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7}}"#;
            return Decision::Respond(LocalResponse {
                status: 200,
                headers: vec![("content-type".to_owned(), "application/json".to_owned())],
                body: body.as_bytes().to_vec(),
            });
        }
        Decision::Continue
    }

    fn on_response_headers(_req: &Request, _status: u16) -> ResponseAction {
        ResponseAction::Continue
    }

    fn on_complete(req: &Request, outcome: Completion) {
        let body = req.response_body();
        let canonical = if body.windows(9).any(|w| w == b"\"choices\"") { "yes" } else { "no" };
        let tokens = outcome.usage.map_or(0, |u| u.completion_tokens);
        metrics::counter_add(
            "completed",
            &[
                ("api".to_owned(), api(req.info().api).to_owned()),
                ("canonical".to_owned(), canonical.to_owned()),
                ("tokens".to_owned(), tokens.to_string()),
            ],
            1,
        );
    }
}

export!(Probe);
