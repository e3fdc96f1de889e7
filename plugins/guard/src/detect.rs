//! The guard's detectors: each finds the spans of one kind of sensitive text (a regex for the
//! candidates, then the check the kind has — Luhn for cards, mod 97 for IBANs, a parse for IP
//! addresses, the SSA's rules for SSNs, whole tokens for everything), and says where the end of a
//! streamed text may still grow into a match, so that only that end is held back.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use regex::Regex;

/// What a detector looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Ip,
    Secret,
    /// A word list from config (whole words, any case).
    Words,
    /// A custom regex from config.
    Pattern,
}

/// One detector, ready to scan.
#[derive(Debug)]
pub struct Detector {
    pub kind: Kind,
    re: Regex,
    /// For word lists and patterns: how many words at the end of a streamed text are held back.
    tail_words: usize,
}

/// The built-in detectors' names, as config spells them.
pub const BUILTIN: [&str; 7] = ["email", "phone", "card", "iban", "ssn", "ip", "secret"];

impl Detector {
    /// The built-in detector `name` (one of [`BUILTIN`]).
    pub fn builtin(name: &str) -> Result<Self, String> {
        // ASCII classes and unbounded repetitions, lengths checked after the match: an automaton of
        // a few hundred states rather than Unicode tables and `{20,}` copies, in every instance.
        let (kind, pattern) = match name {
            "email" => (Kind::Email, r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            "phone" => {
                (Kind::Phone, r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{2,4}(?:[ .-][0-9]{2,4}){1,4}")
            }
            "card" => (Kind::Card, r"[0-9](?:[ -]?[0-9])+"),
            "iban" => (Kind::Iban, r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9])+"),
            "ssn" => (Kind::Ssn, r"[0-9]{3}-[0-9]{2}-[0-9]{4}"),
            "ip" => (Kind::Ip, r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]*(?::[0-9A-Fa-f]*){2,7}"),
            "secret" => (
                Kind::Secret,
                concat!(
                    r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)",
                    r"|sk-[A-Za-z0-9_-]+",
                    r"|(?:AKIA|ASIA)[0-9A-Z]+",
                    r"|gh[pousr]_[A-Za-z0-9]+|github_pat_[A-Za-z0-9_]+",
                    r"|xox[abprs]-[A-Za-z0-9-]+",
                    r"|AIza[0-9A-Za-z_-]+",
                    r"|[rs]k_live_[0-9A-Za-z]+",
                ),
            ),
            other => return Err(format!("unknown detector `{other}` (known: {})", BUILTIN.join(", "))),
        };
        Ok(Self { kind, re: Regex::new(pattern).map_err(|e| e.to_string())?, tail_words: 1 })
    }

    /// A word list: each entry matched as whole words, in any case (`project falcon` is two).
    pub fn words(words: &[String]) -> Result<Self, String> {
        let words: Vec<&str> = words.iter().map(|w| w.trim()).filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            return Err("words: the list is empty".to_owned());
        }
        let alternatives: Vec<String> =
            words.iter().map(|w| w.split_whitespace().map(regex::escape).collect::<Vec<_>>().join(r"\s+")).collect();
        let re = Regex::new(&format!(r"(?i)\b(?:{})\b", alternatives.join("|"))).map_err(|e| e.to_string())?;
        let tail_words = words.iter().map(|w| w.split_whitespace().count()).max().unwrap_or(1);
        Ok(Self { kind: Kind::Words, re, tail_words })
    }

    /// A custom regex (the `regex` crate's syntax); a streamed text holds back its last
    /// `tail_words` words for it.
    pub fn pattern(pattern: &str, tail_words: usize) -> Result<Self, String> {
        let re = Regex::new(pattern).map_err(|e| format!("pattern: {e}"))?;
        if re.is_match("") {
            return Err("pattern: it matches the empty text".to_owned());
        }
        Ok(Self { kind: Kind::Pattern, re, tail_words: tail_words.max(1) })
    }

    /// The placeholder a redaction of this kind puts in the text.
    pub fn placeholder(&self) -> &'static str {
        match self.kind {
            Kind::Email => "[EMAIL]",
            Kind::Phone => "[PHONE]",
            Kind::Card => "[CARD]",
            Kind::Iban => "[IBAN]",
            Kind::Ssn => "[SSN]",
            Kind::Ip => "[IP]",
            Kind::Secret => "[SECRET]",
            Kind::Words | Kind::Pattern => "[REDACTED]",
        }
    }

    /// The byte ranges of `text` this detector matches.
    pub fn find(&self, text: &str) -> Vec<Range<usize>> {
        let mut found = Vec::new();
        for m in self.re.find_iter(text) {
            let span = m.range();
            let found_here = match self.kind {
                Kind::Words | Kind::Pattern => Some(span),
                // A secret token is not part of a longer one.
                Kind::Secret => {
                    (token(text, &span, |c| c.is_ascii_alphanumeric()) && secret(&text[span.clone()])).then_some(span)
                }
                Kind::Email => token(text, &span, is_mail_char).then_some(span),
                Kind::Card => (digit_token(text, &span) && luhn(&text[span.clone()])).then_some(span),
                Kind::Ssn => (digit_token(text, &span) && ssn(&text[span.clone()])).then_some(span),
                Kind::Phone => (digit_token(text, &span) && phone(&text[span.clone()])).then_some(span),
                Kind::Iban => iban(text, span),
                Kind::Ip => (token(text, &span, |c| c.is_ascii_alphanumeric() || c == ':' || c == '.')
                    && ip(&text[span.clone()]))
                .then_some(span),
            };
            found.extend(found_here);
        }
        found
    }

    /// Where the end of a streamed `text` that the next chunk may still grow into a match begins:
    /// the trailing run of the characters this kind is made of, so that prose goes out as it comes
    /// (for word lists and patterns, which may be made of anything, the last words).
    pub fn tail(&self, text: &str) -> usize {
        match self.kind {
            Kind::Email => run_of(text, is_mail_char),
            Kind::Phone | Kind::Card | Kind::Ssn => numeric_run(text),
            Kind::Ip => numeric_run(text).min(run_of(text, |c| c.is_ascii_hexdigit() || c == ':' || c == '.')),
            Kind::Iban => upper_run(text),
            // A private key in progress is held whole (within the plugin's hold limit).
            Kind::Secret => {
                let token = run_of(text, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                match (text.rfind("-----BEGIN"), text.rfind("-----END")) {
                    (Some(begin), end) if end.is_none_or(|end| end < begin) => token.min(begin),
                    _ => token,
                }
            }
            Kind::Words | Kind::Pattern => last_words(text, self.tail_words),
        }
    }
}

fn is_mail_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-@".contains(c)
}

/// Where the run of `part` characters that ends `text` begins.
fn run_of(text: &str, part: impl Fn(char) -> bool) -> usize {
    text.char_indices().rev().take_while(|&(_, c)| part(c)).last().map_or(text.len(), |(i, _)| i)
}

/// Whether `span` is a whole token of `text`: the characters either side are not `part` of one (a
/// full stop that ends a sentence is not).
fn token(text: &str, span: &Range<usize>, part: impl Fn(char) -> bool) -> bool {
    let before = text[..span.start].chars().next_back().is_none_or(|c| !part(c));
    let mut rest = text[span.end..].chars();
    let after = match rest.next() {
        None => true,
        Some('.') => rest.next().is_none_or(|c| !c.is_ascii_alphanumeric()),
        Some(c) => !part(c),
    };
    before && after
}

/// A number not glued to other digits or letters (`4111…` in `x4111…` is not a card).
fn digit_token(text: &str, span: &Range<usize>) -> bool {
    let before = text[..span.start].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric());
    let mut rest = text[span.end..].chars();
    let after = match rest.next() {
        None => true,
        // `1.5` or `1-2`: the number goes on.
        Some('.' | '-') => rest.next().is_none_or(|d| !d.is_ascii_digit()),
        Some(c) => !c.is_ascii_alphanumeric(),
    };
    before && after
}

fn digits(text: &str) -> Vec<u32> {
    text.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn check of a card number (13 to 19 digits).
pub fn luhn(text: &str) -> bool {
    let digits = digits(text);
    let doubled = |d: u32| if d * 2 > 9 { d * 2 - 9 } else { d * 2 };
    let sum: u32 = digits.iter().rev().enumerate().map(|(i, &d)| if i % 2 == 1 { doubled(d) } else { d }).sum();
    (13..=19).contains(&digits.len()) && sum.is_multiple_of(10)
}

/// A key of a known shape, long enough to be one (`sk-` and 20 more, an AWS key id's 16 after
/// `AKIA`, …); a private key block always is.
fn secret(text: &str) -> bool {
    let rest = |prefix: &str| text.strip_prefix(prefix).map(str::len);
    let long = |prefix: &str, min: usize| rest(prefix).is_some_and(|n| n >= min);
    text.starts_with("-----BEGIN")
        || long("sk-", 20)
        || rest("AKIA").or(rest("ASIA")) == Some(16)
        || ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"].iter().any(|p| long(p, 36))
        || long("github_pat_", 22)
        || ["xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"].iter().any(|p| long(p, 10))
        || rest("AIza") == Some(35)
        || long("rk_live_", 24)
        || long("sk_live_", 24)
}

/// A US SSN as the SSA issues them: no area 000, 666 or 900–999, no group 00, no serial 0000.
fn ssn(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let [area, group, serial] = parts[..] else { return false };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// A phone number: 9 to 15 digits (E.164's most), not an SSN, a date or an IPv4 address.
fn phone(text: &str) -> bool {
    let count = digits(text).len();
    (9..=15).contains(&count) && !ssn_shaped(text) && text.parse::<Ipv4Addr>().is_err()
}

fn ssn_shaped(text: &str) -> bool {
    let lengths: Vec<usize> = text.split('-').map(str::len).collect();
    lengths == [3, 2, 4] && text.chars().all(|c| c.is_ascii_digit() || c == '-')
}

/// The longest IBAN that starts `span` and passes the ISO 13616 check (mod 97 = 1); the regex's
/// match may have run on into the next word.
fn iban(text: &str, span: Range<usize>) -> Option<Range<usize>> {
    let before = text[..span.start].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric());
    if !before {
        return None;
    }
    let candidate = &text[span.clone()];
    let ends = candidate.char_indices().filter(|&(_, c)| c == ' ').map(|(i, _)| i).chain([candidate.len()]);
    let mut ends: Vec<usize> = ends.collect();
    ends.reverse();
    ends.into_iter()
        .filter(|&end| text[span.start + end..].chars().next().is_none_or(|c| !c.is_ascii_alphanumeric()))
        .find(|&end| iban_checks(&candidate[..end]))
        .map(|end| span.start..span.start + end)
}

pub fn iban_checks(text: &str) -> bool {
    let compact: Vec<char> = text.chars().filter(|c| *c != ' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, body) = compact.split_at(4);
    let mut rest = 0u32;
    for c in body.iter().chain(head) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        for d in value.to_string().chars().filter_map(|d| d.to_digit(10)) {
            rest = (rest * 10 + d) % 97;
        }
    }
    rest == 1
}

/// An IPv4 or IPv6 address (IPv6 with at least three groups written, so `d::` in code is not one).
fn ip(text: &str) -> bool {
    if text.contains('.') {
        return text.parse::<Ipv4Addr>().is_ok();
    }
    text.split(':').filter(|g| !g.is_empty()).count() >= 3 && text.parse::<Ipv6Addr>().is_ok()
}

/// Where the last `n` words of `text` begin; the last may be unfinished (empty when `text` ends
/// in white space).
pub fn last_words(text: &str, n: usize) -> usize {
    let mut at = text.len();
    for k in 0..n {
        if k > 0 {
            at = text[..at].trim_end().len();
        }
        at =
            text[..at].rfind(char::is_whitespace).map_or(0, |i| i + text[i..].chars().next().map_or(1, char::len_utf8));
        if at == 0 {
            break;
        }
    }
    at
}

/// Where a number in progress at the end of `text` begins: digits with spaces, dashes, dots,
/// parentheses or a plus between (a card, a phone number, an SSN, an IPv4 address).
fn numeric_run(text: &str) -> usize {
    let run = text.rfind(|c: char| !(c.is_ascii_digit() || " -.()+".contains(c))).map_or(0, |i| i + 1);
    match text[run..].find(|c: char| c.is_ascii_digit() || c == '+' || c == '(') {
        Some(start) => run + start,
        None => text.len(),
    }
}

/// Where an IBAN in progress at the end of `text` begins: capitals and digits, spaces between.
fn upper_run(text: &str) -> usize {
    let run = text.rfind(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ')).map_or(0, |i| i + 1);
    match text[run..].find(|c: char| c != ' ') {
        Some(start) => run + start,
        None => text.len(),
    }
}
