//! Text in and out of a model: the `tokenizers` tokenizer from `tokenizer.json`, the chat template
//! that turns messages into a prompt, and incremental detokenisation with stop sequences.

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::api::chat::{Message, Role};

/// A model's tokenizer.
pub struct Text {
    tokenizer: Tokenizer,
    /// The end-of-text token, which ends a generation.
    pub eos: Option<u32>,
    /// Ids below this are the model's (special tokens included). Counted once: `tokenizers`
    /// counts it by building the whole vocabulary as a map on every call, which was a tenth of
    /// a single-sentence embedding's time.
    vocab_size: usize,
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Text").field("eos", &self.eos).finish_non_exhaustive()
    }
}

impl Text {
    pub fn load(dir: &Path, config: &Value) -> Result<Self, String> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        // Requests are padded and checked against the context here, not by the tokenizer's own
        // settings (MiniLM's tokenizer.json pads everything to 128 and truncates silently).
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
        let eos = config
            .get("eos_token_id")
            .and_then(Value::as_u64)
            .map(|id| id as u32)
            .or_else(|| tokenizer.token_to_id("<|endoftext|>"));
        let vocab_size = tokenizer.get_vocab_size(true);
        Ok(Self { tokenizer, eos, vocab_size })
    }

    /// Token ids of `text`, with the model's special tokens (`[CLS]`/`[SEP]` for BERT).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| format!("cannot tokenize the input: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// The prompt for a list of chat messages. GPT-2-family models have no chat template of their own, so
/// the worker uses a plain transcript (`System: …`, `User: …`, `Assistant: …`, one per paragraph) ending
/// with `Assistant:`; generation stops where the model starts a `User:` turn.
pub fn chat_prompt(messages: &[Message]) -> Result<String, String> {
    let mut prompt = String::new();
    for (i, m) in messages.iter().enumerate() {
        let speaker = match m.role {
            Role::System | Role::Developer => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::Tool | Role::Function => "Tool",
        };
        let content = match m.rest.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("text") | None => p
                        .get("text")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| format!("messages[{i}].content: every part needs a text field")),
                    Some(other) => Err(format!("messages[{i}].content: this model reads text only, not {other:?}")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join("\n"),
            Some(Value::Null) | None => String::new(),
            Some(_) => return Err(format!("messages[{i}].content must be a string or an array of text parts")),
        };
        prompt.push_str(speaker);
        prompt.push_str(": ");
        prompt.push_str(content.trim());
        prompt.push_str("\n\n");
    }
    prompt.push_str("Assistant:");
    Ok(prompt)
}

/// The stop sequence every chat generation has, on top of the request's own.
pub const CHAT_STOP: &str = "\n\nUser:";

/// Turns a growing list of generated ids into text deltas, holding back what could still become a
/// stop sequence (or an incomplete UTF-8 character) until it is known not to.
#[derive(Debug)]
pub struct Detokenizer {
    ids: Vec<u32>,
    stops: Vec<String>,
    /// Bytes of the decoded text already sent.
    sent: usize,
}

/// What one more token did to the text.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text that may be sent now (possibly empty).
    Delta(String),
    /// A stop sequence appeared: the last text before it; the generation ends.
    Stopped(String),
}

impl Detokenizer {
    pub fn new(stops: Vec<String>) -> Self {
        Self { ids: Vec::new(), stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), sent: 0 }
    }

    pub fn push(&mut self, text: &Text, id: u32) -> Step {
        self.ids.push(id);
        let full = text.decode(&self.ids);
        if let Some(at) = self.stops.iter().filter_map(|s| full.find(s.as_str())).min() {
            let delta = full.get(self.sent..at).unwrap_or_default().to_owned();
            self.sent = at;
            return Step::Stopped(delta);
        }
        // Hold back a trailing replacement character (a multi-byte character cut between tokens)
        // and any suffix that is a prefix of a stop sequence.
        let mut safe = full.trim_end_matches('\u{fffd}').len();
        let mut hold = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if full[..safe].ends_with(&stop[..i]) {
                    hold = hold.max(i);
                }
            }
        }
        safe -= hold;
        let safe = (0..=safe).rev().find(|&i| full.is_char_boundary(i)).unwrap_or(0);
        if safe <= self.sent {
            return Step::Delta(String::new());
        }
        let delta = full[self.sent..safe].to_owned();
        self.sent = safe;
        Step::Delta(delta)
    }

    /// Whatever was held back, at the end of a generation that did not stop on a sequence.
    pub fn finish(&mut self, text: &Text) -> String {
        let full = text.decode(&self.ids);
        let rest = full.get(self.sent..).unwrap_or_default().to_owned();
        self.sent = full.len();
        rest
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_is_a_transcript_ending_with_the_assistant() {
        let messages: Vec<Message> = serde_json::from_str(
            r#"[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}]"#,
        )
        .unwrap();
        assert_eq!(chat_prompt(&messages).unwrap(), "System: Be brief.\n\nUser: Hi\n\nAssistant:");
        let image: Vec<Message> =
            serde_json::from_str(r#"[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]"#).unwrap();
        assert!(chat_prompt(&image).unwrap_err().contains("text only"));
    }
}
