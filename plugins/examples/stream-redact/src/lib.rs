//! Example plugin `stream-redact`: e-mail addresses and payment card numbers (13 to 19 digits,
//! Luhn-checked, spaces or dashes between groups) redacted from streamed answers as they flow.
//! A match can span chunks (`4111` · ` 1111` · …), so the end of the text that may still grow into
//! one — a card number in progress, or a word not yet followed by a space — is held back and the
//! rest sent (at most one word, or one card number, of delay); the held text is redacted once the
//! rest of it arrives.
//! Load it with `source = "builtin:stream-redact"`.

use weir_sdk::{EventAction, HookSet, Plugin, PluginInfo, Request, Rewrite, StreamEvent};

/// What may be held back at once; past half of it the text is let go rather than held.
const HOLD: u32 = 4096;

struct StreamRedact;

impl Plugin for StreamRedact {
    fn init(_config: &str) -> Result<(Self, PluginInfo), String> {
        Ok((StreamRedact, PluginInfo::hooks(HookSet::ON_STREAM_EVENT).holding_stream_bytes(HOLD)))
    }

    fn on_stream_event(&self, _req: &Request, event: StreamEvent) -> EventAction {
        // The chunk that finishes the answer lets go of everything.
        let chunk: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
        let finished = !chunk["choices"][0]["finish_reason"].is_null();
        let text = &event.pending;
        let cut = if finished || text.len() >= HOLD as usize / 2 { text.len() } else { unfinished(text) };
        let (send, hold) = (redact(&text[..cut]), &text[cut..]);
        match (send == text[..cut], cut) {
            (_, 0) if !hold.is_empty() => EventAction::Hold,
            (true, _) if hold.is_empty() => EventAction::Pass,
            _ => EventAction::Rewrite(Rewrite { send, hold: hold.to_owned() }),
        }
    }
}

/// Where the end of `text` that the next chunk may still grow into a match begins: a card number
/// in progress (digits, with spaces or dashes between groups), or a word of e-mail characters.
fn unfinished(text: &str) -> usize {
    let word =
        text.rfind(|c: char| !is_mail_char(c)).map_or(0, |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
    let run = text.rfind(|c: char| !(c.is_ascii_digit() || c == ' ' || c == '-')).map_or(0, |i| i + 1);
    let card = run + text[run..].find(|c: char| c.is_ascii_digit()).unwrap_or(text.len() - run);
    word.min(card)
}

fn is_mail_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-@".contains(c)
}

/// `text` with its e-mail addresses and card numbers replaced by `[EMAIL]` and `[CARD]`.
fn redact(text: &str) -> String {
    let mails: String = text
        .split_inclusive(|c: char| !is_mail_char(c))
        .map(|piece| {
            // A sentence's full stop is not the address's.
            let word = piece.trim_end_matches(|c: char| !is_mail_char(c)).trim_end_matches('.');
            let mail = word.split_once('@').is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
            if mail { piece.replacen(word, "[EMAIL]", 1) } else { piece.to_owned() }
        })
        .collect();
    // Card numbers: runs of digits with single spaces or dashes between them.
    let mut out = String::with_capacity(mails.len());
    let mut rest = mails.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..start]);
        let run = &rest[start..];
        let mut end = 0;
        for (i, c) in run.char_indices() {
            let joins = " -".contains(c) && run[i + 1..].starts_with(|d: char| d.is_ascii_digit());
            if c.is_ascii_digit() {
                end = i + 1;
            } else if !joins {
                break;
            }
        }
        let digits: Vec<u32> = run[..end].chars().filter_map(|c| c.to_digit(10)).collect();
        let card = (13..=19).contains(&digits.len()) && luhn(&digits);
        out.push_str(if card { "[CARD]" } else { &run[..end] });
        rest = &run[end..];
    }
    out.push_str(rest);
    out
}

/// The Luhn check of a card number's digits.
fn luhn(digits: &[u32]) -> bool {
    let doubled = |d: u32| if d * 2 > 9 { d * 2 - 9 } else { d * 2 };
    let sum: u32 = digits.iter().rev().enumerate().map(|(i, &d)| if i % 2 == 1 { doubled(d) } else { d }).sum();
    sum.is_multiple_of(10)
}

weir_sdk::export_plugin!(StreamRedact);

#[cfg(test)]
mod tests;
