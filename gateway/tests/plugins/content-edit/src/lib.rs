//! Test fixture `content-edit`: does to requests and answers what its config says, so the tests
//! can see the host take a valid rewrite and treat an invalid one as this plugin's fault.
//!
//! - `rewrite`: `"redact"` (every `@`-address in the request's texts becomes `[EMAIL]`),
//!   `"not-json"`, `"other-model"`, `"stream"` (turns streaming on), or absent.
//! - `answer`: `"replace"` (the answer's text becomes `[replaced] <old text>`, its usage zeroed — the
//!   host must put the upstream's back), `"refuse"` (451 `answer_refused`), `"no-choices"` (an
//!   invalid replacement), or absent.
//!
//! - `stream`: `"end"` (ends the stream with 451 `stream_refused` at the chunk whose text says
//!   `STOP`), `"hoard"` (holds every chunk, past its declared 300 bytes: its fault), or absent.
//!
//! It tags the response with the request's `prompt-tokens-estimate` and `digest` as `on-request`
//! saw them after any rewrite of an earlier plugin (`x-seen-estimate`, `x-seen-digest`).

use serde::Deserialize;
use serde_json::{Value, json};
use weir_sdk::{
    AnswerAction, Decision, EventAction, HookSet, Plugin, PluginInfo, Rejection, Request, StreamEvent, edit,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentEdit {
    #[serde(default)]
    rewrite: Option<String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    stream: Option<String>,
}

impl Plugin for ContentEdit {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let plugin: ContentEdit = weir_sdk::config(config)?;
        let mut hooks = HookSet::ON_REQUEST;
        if plugin.answer.is_some() {
            hooks |= HookSet::ON_RESPONSE;
        }
        if plugin.stream.is_some() {
            hooks |= HookSet::ON_STREAM_EVENT;
        }
        Ok((plugin, PluginInfo::hooks(hooks).needing_body().holding_stream_bytes(300)))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        req.add_response_header("x-seen-estimate", &info.prompt_tokens_estimate.to_string());
        req.add_response_header("x-seen-digest", &req.digest());
        let Ok(mut body) = weir_sdk::body_json(req) else { return Decision::Continue };
        match self.rewrite.as_deref() {
            Some("redact") => {
                edit::map_text(info.api, &mut body, |text| {
                    let spans: Vec<_> = text
                        .split_whitespace()
                        .filter(|w| w.contains('@'))
                        .map(|w| {
                            let start = w.as_ptr() as usize - text.as_ptr() as usize;
                            start..start + w.len()
                        })
                        .collect();
                    (!spans.is_empty()).then(|| edit::redact_spans(text, &spans, "[EMAIL]"))
                });
                weir_sdk::rewrite(req, &body);
            }
            Some("not-json") => req.set_body(b"{\"model\": "),
            Some("other-model") => {
                body["model"] = json!("someone-else");
                weir_sdk::rewrite(req, &body);
            }
            Some("stream") => {
                body["stream"] = json!(true);
                weir_sdk::rewrite(req, &body);
            }
            _ => {}
        }
        Decision::Continue
    }

    fn on_response(&self, _req: &Request, answer: Vec<u8>) -> AnswerAction {
        match self.answer.as_deref() {
            Some("replace") => {
                let Ok(mut answer) = serde_json::from_slice::<Value>(&answer) else { return AnswerAction::Continue };
                let old = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
                answer["choices"][0]["message"]["content"] = json!(format!("[replaced] {old}"));
                answer["usage"] = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
                AnswerAction::Replace(serde_json::to_vec(&answer).unwrap_or_default())
            }
            Some("refuse") => AnswerAction::Refuse(Rejection {
                status: 451,
                code: "answer_refused".into(),
                message: "The answer broke a rule.".into(),
                retry_after_ms: None,
            }),
            Some("no-choices") => AnswerAction::Replace(br#"{"object":"chat.completion"}"#.to_vec()),
            _ => AnswerAction::Continue,
        }
    }

    fn on_stream_event(&self, _req: &Request, event: StreamEvent) -> EventAction {
        match self.stream.as_deref() {
            Some("end") if event.pending.contains("STOP") => EventAction::End(Rejection {
                status: 451,
                code: "stream_refused".into(),
                message: "The answer broke a rule.".into(),
                retry_after_ms: None,
            }),
            Some("hoard") => EventAction::Hold,
            _ => EventAction::Pass,
        }
    }
}

weir_sdk::export_plugin!(ContentEdit);
