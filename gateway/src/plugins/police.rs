//! `on-stream-event`: a streamed answer's canonical chunks through every plugin of the chain that
//! declared the hook, in chain order, each plugin's output the next one's input. Each plugin has
//! a stage here holding what it held back (`hold`) and the answer's text as it has seen it, so a
//! match that spans chunks can be rewritten once the rest of it arrives. Per request, owned by the
//! relay (`stream.rs`), which sends the client only what comes out of the last stage.

use std::sync::Arc;

use serde_json::Value;

use super::bindings::weir::plugin::hooks::{EventAction, HookSet, Rewrite, StreamEvent};
use super::instance::LoadedPlugin;
use super::view::RequestView;
use super::{Chain, Hook, rejection};
use crate::api::sse::{Event, data_event};
use crate::error::Error;

/// The most bytes of events one plugin may hold back, whatever it declared.
pub const MAX_HOLD_BYTES: u32 = 64 * 1024;
/// The answer's text a plugin is shown (`stream-event.text`): its last this many bytes.
const TEXT_WINDOW: usize = 16 * 1024;

/// The stream plugins of one request.
#[derive(Debug)]
pub struct Policing {
    view: Arc<RequestView>,
    stages: Vec<Stage>,
}

#[derive(Debug)]
struct Stage {
    plugin: Arc<LoadedPlugin>,
    held: Vec<Event>,
    held_bytes: usize,
    /// The text of the held events.
    held_text: String,
    /// The answer's text as this plugin has seen it, its last [`TEXT_WINDOW`] bytes.
    text: String,
}

impl Policing {
    /// The policing of a stream of `view`'s request, if any plugin of `chain` polices streams.
    pub fn of(chain: &Chain, view: &Arc<RequestView>) -> Option<Self> {
        let stages: Vec<Stage> = chain
            .plugins
            .iter()
            .filter(|p| p.hooks.contains(HookSet::ON_STREAM_EVENT))
            .map(|plugin| Stage {
                plugin: plugin.clone(),
                held: Vec::new(),
                held_bytes: 0,
                held_text: String::new(),
                text: String::new(),
            })
            .collect();
        (!stages.is_empty()).then(|| Self { view: view.clone(), stages })
    }

    /// A canonical chunk through every stage: what goes on to the client now (perhaps nothing,
    /// perhaps several events), or the error that ends the stream (a plugin's `end`, or a fault
    /// of a closed one).
    pub async fn chunk(&mut self, event: Event) -> Result<Vec<Event>, Error> {
        self.through(vec![event], false).await
    }

    /// The answer is over (its terminal event is next): what every stage still holds, sent on
    /// through the stages after it.
    pub async fn finish(&mut self) -> Result<Vec<Event>, Error> {
        self.through(Vec::new(), true).await
    }

    async fn through(&mut self, mut batch: Vec<Event>, finish: bool) -> Result<Vec<Event>, Error> {
        for stage in &mut self.stages {
            let mut next = Vec::new();
            if finish {
                // Held here, so older than anything the stages before it pass on now.
                next.extend(stage.release());
            }
            for event in batch {
                next.extend(stage.call(&self.view, event).await?);
            }
            if finish {
                next.extend(stage.release());
            }
            batch = next;
        }
        Ok(batch)
    }
}

impl Stage {
    fn release(&mut self) -> Vec<Event> {
        self.held_bytes = 0;
        self.held_text.clear();
        std::mem::take(&mut self.held)
    }

    async fn call(&mut self, view: &Arc<RequestView>, event: Event) -> Result<Vec<Event>, Error> {
        let plugin = self.plugin.clone();
        if let Some(skipped) = plugin.quarantined(Hook::OnStreamEvent) {
            skipped.resolve()?;
            return Ok(self.pass(event));
        }
        let (content, carries) = read_chunk(&event.data);
        let pending = format!("{}{content}", self.held_text);
        push_window(&mut self.text, &content);
        let seen = StreamEvent { data: event.data.to_vec(), pending: pending.clone(), text: self.text.clone() };
        let action = match plugin.on_stream_event(view, seen).await {
            Ok(action) => action,
            Err(fault) => {
                fault.resolve()?;
                return Ok(self.pass(event));
            }
        };
        match action {
            EventAction::Pass => Ok(self.pass(event)),
            EventAction::Rewrite(Rewrite { send, hold }) => {
                // A chunk without a delta to carry the held text on (or that ends the answer)
                // sends it all.
                let finishing = !carries;
                let template = event.clone();
                let mut events = self.release();
                events.push(event);
                let limit = plugin.meta.stream_hold_bytes as usize;
                if hold.is_empty() || finishing || hold.len() > limit {
                    if hold.len() > limit && !finishing {
                        let detail = format!("held back {} bytes, over its stream-hold-bytes of {limit}", hold.len());
                        plugin.bad_decision(Hook::OnStreamEvent, detail).resolve()?;
                    }
                    return Ok(rewritten(events, &format!("{send}{hold}")));
                }
                let out = rewritten(events, &send);
                // The held text goes on in a chunk like this one, should it be sent as it is.
                if let Some(held) = rewritten(vec![template], &hold).pop() {
                    self.held_bytes = held.raw.len();
                    self.held.push(held);
                    self.held_text = hold;
                }
                Ok(out)
            }
            EventAction::Drop => Ok(Vec::new()),
            EventAction::Hold => {
                let limit = plugin.meta.stream_hold_bytes as usize;
                if self.held_bytes + event.raw.len() > limit {
                    let detail = format!(
                        "held back more than its stream-hold-bytes of {limit} ({} bytes)",
                        self.held_bytes + event.raw.len()
                    );
                    plugin.bad_decision(Hook::OnStreamEvent, detail).resolve()?;
                    return Ok(self.pass(event));
                }
                self.held_bytes += event.raw.len();
                self.held_text = pending;
                self.held.push(event);
                Ok(Vec::new())
            }
            EventAction::End(r) => match rejection(r) {
                Ok(error) => Err(error),
                Err(detail) => {
                    plugin.bad_decision(Hook::OnStreamEvent, detail).resolve()?;
                    Ok(self.pass(event))
                }
            },
        }
    }

    /// The held events, then `event`, as they are.
    fn pass(&mut self, event: Event) -> Vec<Event> {
        let mut events = self.release();
        events.push(event);
        events
    }
}

/// Choice 0's `delta.content` of a canonical chunk ("" when it has none), and whether the chunk
/// can carry held text on: it has a delta and does not end the answer (no `finish_reason`).
fn read_chunk(data: &[u8]) -> (String, bool) {
    let Ok(chunk) = serde_json::from_slice::<Value>(data) else { return (String::new(), false) };
    let choice = chunk.pointer("/choices/0");
    let text = choice.and_then(|c| c.pointer("/delta/content")).and_then(Value::as_str).unwrap_or_default();
    let delta = choice.and_then(|c| c.get("delta")).is_some_and(Value::is_object);
    let ends = choice.and_then(|c| c.get("finish_reason")).is_some_and(|f| !f.is_null());
    (text.to_owned(), delta && !ends)
}

/// Appends `text`, keeping the last [`TEXT_WINDOW`] bytes (on a character boundary).
fn push_window(window: &mut String, text: &str) {
    window.push_str(text);
    if window.len() > TEXT_WINDOW {
        let mut cut = window.len() - TEXT_WINDOW;
        while !window.is_char_boundary(cut) {
            cut += 1;
        }
        window.drain(..cut);
    }
}

/// `events` with their choice-0 text replaced by `text`: the first chunk with a choice carries it,
/// the others lose theirs, and those left with nothing (no other field in the delta, no finish,
/// no usage) are left out.
fn rewritten(events: Vec<Event>, text: &str) -> Vec<Event> {
    let mut out = Vec::with_capacity(events.len());
    let mut placed = false;
    for event in events {
        let Ok(mut chunk) = serde_json::from_slice::<Value>(&event.data) else {
            out.push(event);
            continue;
        };
        let Some(delta) = chunk.pointer_mut("/choices/0/delta").and_then(Value::as_object_mut) else {
            out.push(event);
            continue;
        };
        if placed {
            delta.remove("content");
            let empty = delta.is_empty()
                && chunk.pointer("/choices/0/finish_reason").is_none_or(Value::is_null)
                && chunk.get("usage").is_none_or(Value::is_null)
                && chunk.get("choices").and_then(Value::as_array).is_some_and(|c| c.len() == 1);
            if empty {
                continue;
            }
        } else {
            delta.insert("content".to_owned(), Value::String(text.to_owned()));
            placed = true;
        }
        out.push(data_event(&chunk));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canonical chunk.
    fn chunk(content: Option<&str>, finish: Option<&str>) -> Event {
        let mut delta = serde_json::Map::new();
        if let Some(c) = content {
            delta.insert("content".into(), Value::String(c.into()));
        }
        data_event(&serde_json::json!({
            "id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    }

    fn texts(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| read_chunk(&e.data).0).collect()
    }

    #[test]
    fn a_rewrite_puts_the_new_text_in_the_first_chunk_and_drops_chunks_left_empty() {
        let events = vec![chunk(Some("4111 "), None), chunk(Some("1111"), None), chunk(Some(" ok"), Some("stop"))];
        let out = rewritten(events, "[CARD] ok");
        assert_eq!(out.len(), 2, "the middle chunk had only text; the last keeps its finish_reason");
        assert_eq!(texts(&out), ["[CARD] ok", ""]);
        let last: Value = serde_json::from_slice(&out[1].data).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(last["choices"][0]["delta"].get("content").is_none());
        let first = std::str::from_utf8(&out[0].raw).unwrap();
        assert!(first.starts_with("data: {") && first.ends_with("\n\n"), "{first}");
    }

    #[test]
    fn the_text_window_keeps_the_last_bytes_on_a_character_boundary() {
        let mut window = String::new();
        push_window(&mut window, &"é".repeat(TEXT_WINDOW));
        assert!(window.len() <= TEXT_WINDOW && window.chars().all(|c| c == 'é'));
        push_window(&mut window, "end");
        assert!(window.ends_with("end") && window.len() <= TEXT_WINDOW);
    }
}
