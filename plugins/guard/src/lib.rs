//! Built-in policy `guard`: finds sensitive text in prompts and in answers, whole and streamed —
//! e-mail addresses, phone numbers, payment card numbers (Luhn-checked), IBANs (mod 97), US SSNs,
//! IP addresses, secrets (API keys, private keys), word lists and custom regexes — and, per rule,
//! redacts it (a typed placeholder such as `[CARD]`), blocks the request or answer (a 400 whose
//! code names the rule), or flags it (a response header and a metric). Rules can be limited to
//! models and teams; optional output checks refuse an answer that is not JSON or is too long.
//! A streamed answer stays streamed: only the end of the text that may still grow into a match is
//! held back. The matched text never reaches a log, a header or a metric label: those name rules.
//!
//! ```toml
//! [[plugins]]
//! name = "guard"
//! source = "builtin:guard"
//! [[plugins.config.rules]]
//! detect = ["card", "ssn", "secret"]
//! action = "block"
//! on = ["prompt"]
//! [[plugins.config.rules]]
//! detect = ["email", "phone"]
//! action = "redact"
//! ```
//!
//! With no rules and no output checks it declares no hooks, so it costs nothing.

mod detect;

use std::collections::BTreeSet;
use std::ops::Range;

use detect::{Detector, Kind};
use serde::Deserialize;
use serde_json::Value;
use weir_sdk::{
    AnswerAction, ApiKind, Decision, EventAction, HookSet, Plugin, PluginInfo, Rejection, Request, RequestInfo,
    Rewrite, StreamEvent, edit, metrics,
};

/// The most text a stream may hold back at once (a private key in progress, say); past half of it
/// the text is let go rather than held.
const HOLD: u32 = 16 * 1024;

/// The config table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    rules: Vec<RuleConfig>,
    output: Option<OutputConfig>,
}

/// One `[[rules]]` entry: what to look for (exactly one of `detect`, `words`, `pattern`), what to
/// do, where, and for whom.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// The rule's name in error codes, headers and metrics; defaults to the detector's.
    name: Option<String>,
    /// Built-in detectors: `email`, `phone`, `card`, `iban`, `ssn`, `ip`, `secret`.
    #[serde(default)]
    detect: Vec<String>,
    /// Words or phrases, matched whole and in any case.
    #[serde(default)]
    words: Vec<String>,
    /// A regex (the `regex` crate's syntax).
    pattern: Option<String>,
    action: Action,
    /// `prompt`, `answer` or both (the default).
    #[serde(default = "both_sides")]
    on: Vec<Side>,
    /// Only for these models (`gpt-4o`, or a prefix `gpt-*`); all when empty.
    #[serde(default)]
    models: Vec<String>,
    /// Only for these teams; all when empty.
    #[serde(default)]
    teams: Vec<String>,
    /// What a redaction writes; defaults to the kind's (`[EMAIL]`, …, `[NAME]` for words and
    /// patterns).
    placeholder: Option<String>,
    /// For a pattern that can span words: how many words at the end of a streamed text to hold
    /// back (default 1).
    hold_words: Option<usize>,
}

/// `[output]`: checks of whole answers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputConfig {
    /// The answer's text must parse as JSON (whole answers only: a stream is sent as it flows).
    #[serde(default)]
    json: bool,
    /// The most characters an answer's text may have (a stream ends with an error past it).
    max_chars: Option<usize>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    teams: Vec<String>,
}

fn both_sides() -> Vec<Side> {
    vec![Side::Prompt, Side::Answer]
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Action {
    Redact,
    Block,
    Flag,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Redact => "redact",
            Action::Block => "block",
            Action::Flag => "flag",
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Side {
    Prompt,
    Answer,
}

/// The models and teams a rule is for.
#[derive(Default)]
struct Scope {
    models: Vec<String>,
    teams: Vec<String>,
}

impl Scope {
    fn covers(&self, info: &RequestInfo) -> bool {
        let model = |m: &String| match m.strip_suffix('*') {
            Some(prefix) => info.model.starts_with(prefix),
            None => *m == info.model,
        };
        (self.models.is_empty() || self.models.iter().any(model))
            && (self.teams.is_empty() || self.teams.contains(&info.team))
    }
}

/// One detector of one rule, ready to run.
struct Check {
    label: String,
    detector: Detector,
    action: Action,
    prompt: bool,
    answer: bool,
    scope: Scope,
    placeholder: String,
}

struct Output {
    json: bool,
    max_chars: Option<usize>,
    scope: Scope,
}

struct Guard {
    checks: Vec<Check>,
    output: Option<Output>,
}

impl Guard {
    fn from_config(config: Config) -> Result<Self, String> {
        let mut checks = Vec::new();
        for (i, rule) in config.rules.into_iter().enumerate() {
            checks.extend(rule_checks(&rule).map_err(|e| format!("rules[{i}]: {e}"))?);
        }
        let output = config.output.map(|o| Output {
            json: o.json,
            max_chars: o.max_chars,
            scope: Scope { models: o.models, teams: o.teams },
        });
        Ok(Self { checks, output })
    }

    fn info(&self) -> PluginInfo {
        let prompt = self.checks.iter().any(|c| c.prompt);
        let answer = self.checks.iter().any(|c| c.answer);
        let length = self.output.as_ref().is_some_and(|o| o.max_chars.is_some());
        let mut hooks = HookSet::empty();
        if prompt {
            hooks |= HookSet::ON_REQUEST;
        }
        if answer || self.output.is_some() {
            hooks |= HookSet::ON_RESPONSE;
        }
        if answer || length {
            hooks |= HookSet::ON_STREAM_EVENT;
        }
        let mut info = PluginInfo::hooks(hooks);
        if prompt {
            info = info.needing_body();
        }
        if answer {
            info = info.holding_stream_bytes(HOLD);
        }
        info
    }

    fn checks_for(&self, info: &RequestInfo, side: Side) -> Vec<&Check> {
        let on = |c: &&Check| if side == Side::Prompt { c.prompt } else { c.answer };
        self.checks.iter().filter(on).filter(|c| c.scope.covers(info)).collect()
    }

    fn output_for(&self, info: &RequestInfo) -> Option<&Output> {
        self.output.as_ref().filter(|o| o.scope.covers(info))
    }
}

fn rule_checks(rule: &RuleConfig) -> Result<Vec<Check>, String> {
    let sources = usize::from(!rule.detect.is_empty())
        + usize::from(!rule.words.is_empty())
        + usize::from(rule.pattern.is_some());
    if sources != 1 {
        return Err("give exactly one of `detect`, `words` or `pattern`".to_owned());
    }
    if rule.on.is_empty() {
        return Err("on: name `prompt`, `answer` or both".to_owned());
    }
    if let Some(name) = &rule.name
        && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        return Err(format!(
            "name `{name}`: use letters, digits, `-` and `_` (it is an error code and a metric label)"
        ));
    }
    let named = |what: &str| rule.name.clone().ok_or_else(|| format!("a {what} needs a `name`"));
    let detectors: Vec<(String, Detector)> = if let Some(pattern) = &rule.pattern {
        vec![(named("pattern")?, Detector::pattern(pattern, rule.hold_words.unwrap_or(1))?)]
    } else if !rule.words.is_empty() {
        vec![(named("word list")?, Detector::words(&rule.words)?)]
    } else {
        let mut detectors = Vec::new();
        for name in &rule.detect {
            detectors.push((rule.name.clone().unwrap_or_else(|| name.clone()), Detector::builtin(name)?));
        }
        detectors
    };
    Ok(detectors
        .into_iter()
        .map(|(label, detector)| {
            let placeholder = rule.placeholder.clone().unwrap_or_else(|| match detector.kind {
                Kind::Words | Kind::Pattern => format!("[{}]", label.to_ascii_uppercase()),
                _ => detector.placeholder().to_owned(),
            });
            Check {
                label,
                detector,
                action: rule.action,
                prompt: rule.on.contains(&Side::Prompt),
                answer: rule.on.contains(&Side::Answer),
                scope: Scope { models: rule.models.clone(), teams: rule.teams.clone() },
                placeholder,
            }
        })
        .collect())
}

/// Every match of `checks` in `text`, in order of where it starts.
fn matches<'a>(checks: &[&'a Check], text: &str) -> Vec<(Range<usize>, &'a Check)> {
    let mut found: Vec<(Range<usize>, &Check)> =
        checks.iter().flat_map(|check| check.detector.find(text).into_iter().map(move |span| (span, *check))).collect();
    found.sort_by_key(|(span, _)| span.start);
    found
}

/// `text` with the spans of the redacting matches replaced by their placeholders (where matches
/// overlap, the first to start wins and the span covers both).
fn redact(text: &str, found: &[(Range<usize>, &Check)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, check) in found.iter().filter(|(_, c)| c.action == Action::Redact) {
        if span.start < at {
            at = at.max(span.end);
            continue;
        }
        out.push_str(&text[at..span.start]);
        out.push_str(&check.placeholder);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// What the checks make of one whole text: blocked by a rule, or the text to send (redacted).
enum Verdict<'a> {
    Block(&'a Check),
    Send { text: Option<String>, hits: Vec<&'a Check> },
}

fn judge<'a>(checks: &[&'a Check], text: &str) -> Verdict<'a> {
    let found = matches(checks, text);
    if let Some((_, check)) = found.iter().find(|(_, c)| c.action == Action::Block) {
        return Verdict::Block(check);
    }
    let redacting = found.iter().any(|(_, c)| c.action == Action::Redact);
    let text = redacting.then(|| redact(text, &found));
    Verdict::Send { text, hits: found.into_iter().map(|(_, c)| c).collect() }
}

/// What the checks make of a stream's pending text: where to cut it (what is before the cut goes
/// now, what is after is held), and what was found in what goes.
struct Step<'a> {
    cut: usize,
    found: Vec<(Range<usize>, &'a Check)>,
}

fn step<'a>(checks: &[&'a Check], pending: &str, finished: bool) -> Step<'a> {
    let found = matches(checks, pending);
    let mut cut = if finished || pending.len() >= HOLD as usize / 2 {
        pending.len()
    } else {
        checks.iter().map(|c| c.detector.tail(pending)).min().unwrap_or(pending.len())
    };
    // A match that goes on past the cut is held whole.
    while let Some(start) = found.iter().filter(|(s, _)| s.start < cut && s.end > cut).map(|(s, _)| s.start).min() {
        cut = start;
    }
    Step { cut, found: found.into_iter().filter(|(span, _)| span.end <= cut).collect() }
}

fn blocked(check: &Check, side: Side) -> Rejection {
    let what = match check.detector.kind {
        Kind::Email => "an e-mail address",
        Kind::Phone => "a phone number",
        Kind::Card => "a payment card number",
        Kind::Iban => "an IBAN",
        Kind::Ssn => "a US social security number",
        Kind::Ip => "an IP address",
        Kind::Secret => "a secret (an API key or a private key)",
        Kind::Words => "a blocked word",
        Kind::Pattern => "text the rule's pattern matches",
    };
    let side = if side == Side::Prompt { "request" } else { "answer" };
    Rejection {
        status: 400,
        code: format!("guard_{}", check.label),
        message: format!("the {side} was blocked by the guard rule `{}`: it contains {what}", check.label),
        retry_after_ms: None,
    }
}

fn refused(code: &str, message: String) -> Rejection {
    Rejection { status: 400, code: code.to_owned(), message, retry_after_ms: None }
}

/// Counts what was found in the counter `matches` (exported as
/// `weir_plugin_counter_total{plugin, metric="matches", rule, action, on}`): rule names only,
/// never the text.
fn count(hits: &[&Check], side: Side) {
    let on = if side == Side::Prompt { "prompt" } else { "answer" };
    let mut rules: Vec<(&str, Action)> = hits.iter().map(|c| (c.label.as_str(), c.action)).collect();
    rules.sort_by_key(|&(label, action)| (label, action.name()));
    for group in rules.chunk_by(|a, b| a == b) {
        let (rule, action) = group[0];
        let labels = [
            ("rule".to_owned(), rule.to_owned()),
            ("action".to_owned(), action.name().to_owned()),
            ("on".to_owned(), on.to_owned()),
        ];
        metrics::counter_add("matches", &labels, group.len() as u64);
    }
}

/// Names the rules that redacted or flagged in `x-weir-guard-redacted` and `x-weir-guard-flagged`.
fn say(req: &Request, hits: &[&Check]) {
    for (action, header) in [(Action::Redact, "x-weir-guard-redacted"), (Action::Flag, "x-weir-guard-flagged")] {
        let rules: BTreeSet<&str> = hits.iter().filter(|c| c.action == action).map(|c| c.label.as_str()).collect();
        if !rules.is_empty() {
            req.add_response_header(header, &rules.into_iter().collect::<Vec<_>>().join(","));
        }
    }
}

impl Plugin for Guard {
    fn init(config: &str) -> Result<(Self, PluginInfo), String> {
        let guard = Guard::from_config(weir_sdk::config(config)?)?;
        let info = guard.info();
        Ok((guard, info))
    }

    fn on_request(&self, req: &Request) -> Decision {
        let info = req.info();
        let checks = self.checks_for(&info, Side::Prompt);
        if checks.is_empty() || info.api == ApiKind::Predict {
            return Decision::Continue;
        }
        // The host parsed the body before any plugin ran: it reads.
        let Ok(mut body) = weir_sdk::body_json(req) else { return Decision::Continue };
        let mut block = None;
        let mut hits = Vec::new();
        let changed = edit::map_text(info.api, &mut body, |text| {
            if block.is_some() {
                return None;
            }
            match judge(&checks, text) {
                Verdict::Block(check) => {
                    block = Some(check);
                    None
                }
                Verdict::Send { text, hits: found } => {
                    hits.extend(found);
                    text
                }
            }
        });
        if let Some(check) = block {
            count(&[check], Side::Prompt);
            return Decision::Reject(blocked(check, Side::Prompt));
        }
        count(&hits, Side::Prompt);
        say(req, &hits);
        if changed > 0 {
            weir_sdk::rewrite(req, &body);
        }
        Decision::Continue
    }

    fn on_response(&self, req: &Request, answer: Vec<u8>) -> AnswerAction {
        let info = req.info();
        let checks = self.checks_for(&info, Side::Answer);
        let output = self.output_for(&info);
        if checks.is_empty() && output.is_none() {
            return AnswerAction::Continue;
        }
        let Ok(mut body) = serde_json::from_slice::<Value>(&answer) else { return AnswerAction::Continue };
        let mut hits = Vec::new();
        let mut changed = false;
        for choice in body.get_mut("choices").and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(Value::String(content)) = choice.pointer_mut("/message/content") else { continue };
            match judge(&checks, content) {
                Verdict::Block(check) => {
                    count(&[check], Side::Answer);
                    return AnswerAction::Refuse(blocked(check, Side::Answer));
                }
                Verdict::Send { text, hits: found } => {
                    hits.extend(found);
                    if let Some(text) = text {
                        *content = text;
                        changed = true;
                    }
                }
            }
            if let Some(output) = output {
                if let Some(max) = output.max_chars
                    && content.chars().count() > max
                {
                    return AnswerAction::Refuse(refused(
                        "guard_max_chars",
                        format!("the answer is longer than the guard allows ({max} characters)"),
                    ));
                }
                if output.json && serde_json::from_str::<Value>(content).is_err() {
                    return AnswerAction::Refuse(refused(
                        "guard_json",
                        "the answer is not the JSON the guard requires".to_owned(),
                    ));
                }
            }
        }
        count(&hits, Side::Answer);
        say(req, &hits);
        if changed {
            // A `Value` always serializes.
            AnswerAction::Replace(serde_json::to_vec(&body).unwrap_or_default())
        } else {
            AnswerAction::Continue
        }
    }

    fn on_stream_event(&self, req: &Request, event: StreamEvent) -> EventAction {
        let info = req.info();
        if let Some(max) = self.output_for(&info).and_then(|o| o.max_chars)
            && event.text.chars().count() > max
        {
            return EventAction::End(refused(
                "guard_max_chars",
                format!("the answer is longer than the guard allows ({max} characters)"),
            ));
        }
        let checks = self.checks_for(&info, Side::Answer);
        if checks.is_empty() {
            return EventAction::Pass;
        }
        let chunk: Value = serde_json::from_slice(&event.data).unwrap_or_default();
        let finished = !chunk["choices"][0]["finish_reason"].is_null();
        let text = event.pending.as_str();
        let Step { cut, found } = step(&checks, text, finished);
        if let Some((_, check)) = found.iter().find(|(_, c)| c.action == Action::Block) {
            count(&[check], Side::Answer);
            return EventAction::End(blocked(check, Side::Answer));
        }
        let hits: Vec<&Check> = found.iter().map(|(_, c)| *c).collect();
        count(&hits, Side::Answer);
        let redacting = found.iter().any(|(_, c)| c.action == Action::Redact);
        let hold = &text[cut..];
        match (redacting, cut) {
            (false, 0) if !hold.is_empty() => EventAction::Hold,
            (false, _) if hold.is_empty() => EventAction::Pass,
            _ => EventAction::Rewrite(Rewrite { send: redact(&text[..cut], &found), hold: hold.to_owned() }),
        }
    }
}

weir_sdk::export_plugin!(Guard);

#[cfg(test)]
mod tests;
