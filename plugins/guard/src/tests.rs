//! Unit tests of the guard's detectors, of its verdict on a whole text, and of what a stream sends
//! and holds back as chunks arrive.

use super::detect::{Detector, iban_checks, last_words, luhn};
use super::*;

fn guard(config: &str) -> Guard {
    Guard::from_config(serde_json::from_str(config).expect("test config is JSON")).expect("the config builds")
}

fn all(guard: &Guard) -> Vec<&Check> {
    guard.checks.iter().collect()
}

fn redacted(config: &str, text: &str) -> String {
    let guard = guard(config);
    match judge(&all(&guard), text) {
        Verdict::Send { text: Some(text), .. } => text,
        Verdict::Send { text: None, .. } => text.to_owned(),
        Verdict::Block(check) => panic!("blocked by {}", check.label),
    }
}

const EVERYTHING: &str =
    r#"{"rules": [{"detect": ["email", "phone", "card", "iban", "ssn", "ip", "secret"], "action": "redact"}]}"#;

fn found(detector: &str, text: &str) -> Vec<String> {
    let d = Detector::builtin(detector).unwrap();
    d.find(text).into_iter().map(|r| text[r].to_owned()).collect()
}

#[test]
fn each_detector_finds_its_kind_and_leaves_look_alikes() {
    assert_eq!(found("email", "write to jo.doe+x@mail.example.com."), ["jo.doe+x@mail.example.com"]);
    assert!(found("email", "an @ sign, a@b, user@localhost").is_empty());
    assert_eq!(
        found("card", "pay 4111 1111 1111 1111 or 5500-0000-0000-0004"),
        ["4111 1111 1111 1111", "5500-0000-0000-0004"]
    );
    assert!(found("card", "order 4111 1111 1111 1112 and x4111111111111111").is_empty(), "Luhn and whole numbers");
    assert_eq!(found("ssn", "ssn 123-45-6789, not 000-12-3456 or 666-12-3456"), ["123-45-6789"]);
    assert_eq!(found("iban", "to DE89 3704 0044 0532 0130 00 please"), ["DE89 3704 0044 0532 0130 00"]);
    assert_eq!(found("iban", "GB82WEST12345698765432"), ["GB82WEST12345698765432"]);
    assert!(found("iban", "DE89 3704 0044 0532 0130 01").is_empty(), "mod 97");
    assert_eq!(found("ip", "from 10.0.0.12 and 2001:db8::8a2e:370:7334"), ["10.0.0.12", "2001:db8::8a2e:370:7334"]);
    assert!(found("ip", "version 1.2.3.4.5, 999.1.1.1, std::net, at 12:30:45").is_empty());
    assert_eq!(found("phone", "call +1 (555) 123-4567 or 030 1234 5678"), ["+1 (555) 123-4567", "030 1234 5678"]);
    assert!(found("phone", "on 2026-12-04, ssn 123-45-6789, ip 192.168.10.20").is_empty());
    let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
    assert_eq!(
        found("secret", &format!("k sk-proj-abcdefghijklmnopqrstuv and AKIAIOSFODNN7EXAMPLE {key} end")),
        ["sk-proj-abcdefghijklmnopqrstuv", "AKIAIOSFODNN7EXAMPLE", key]
    );
    assert!(found("secret", "a task-abcdefghijklmnopqrstuvwxyz is no key").is_empty());
    assert!(found("secret", "sk-short, AKIAIOSFODNN7EXAMPL, ghp_abc").is_empty(), "too short to be keys");
}

#[test]
fn the_checksums_are_the_standards() {
    assert!(luhn("4111111111111111") && luhn("378282246310005") && !luhn("4111111111111121"));
    assert!(iban_checks("FR1420041010050500013M02606") && !iban_checks("FR1420041010050500013M02607"));
}

#[test]
fn redaction_puts_the_typed_placeholder_in() {
    assert_eq!(
        redacted(EVERYTHING, "mail a@b.io, card 4111-1111-1111-1111, ssn 123-45-6789, ip 10.1.2.3."),
        "mail [EMAIL], card [CARD], ssn [SSN], ip [IP]."
    );
    let words = r#"{"rules": [{"name": "codename", "words": ["Project Falcon", "osprey"], "action": "redact"}]}"#;
    assert_eq!(
        redacted(words, "about project  falcon and OSPREY, not ospreys"),
        "about [CODENAME] and [CODENAME], not ospreys"
    );
    let ticket =
        r#"{"rules": [{"name": "ticket", "pattern": "TCK-[0-9]{6}", "action": "redact", "placeholder": "<ticket>"}]}"#;
    assert_eq!(redacted(ticket, "see TCK-123456"), "see <ticket>");
}

#[test]
fn a_block_names_the_rule_and_never_the_text() {
    let config = r#"{"rules": [{"detect": ["card"], "action": "block"}, {"detect": ["email"], "action": "redact"}]}"#;
    let guard = guard(config);
    let Verdict::Block(check) = judge(&all(&guard), "a@b.io 4111 1111 1111 1111") else { panic!("not blocked") };
    let rejection = blocked(check, Side::Prompt);
    assert_eq!((rejection.status, rejection.code.as_str()), (400, "guard_card"));
    assert!(!rejection.message.contains("4111"), "{}", rejection.message);
}

#[test]
fn rules_are_for_their_models_and_teams_and_sides() {
    let config = r#"{"rules": [{"detect": ["email"], "action": "flag", "on": ["answer"], "models": ["gpt-*"], "teams": ["support"]}]}"#;
    let guard = guard(config);
    let info = |model: &str, team: &str| RequestInfo {
        request_id: String::new(),
        api: ApiKind::ChatCompletions,
        model: model.to_owned(),
        stream: false,
        max_tokens: None,
        temperature: None,
        prompt_tokens_estimate: 0,
        body_len: 0,
        instances: 0,
        key_name: String::new(),
        team: team.to_owned(),
        end_user: None,
    };
    assert_eq!(guard.checks_for(&info("gpt-4o", "support"), Side::Answer).len(), 1);
    assert!(guard.checks_for(&info("gpt-4o", "support"), Side::Prompt).is_empty());
    assert!(guard.checks_for(&info("claude", "support"), Side::Answer).is_empty());
    assert!(guard.checks_for(&info("gpt-4o", "sales"), Side::Answer).is_empty());
    assert!(guard.info().hooks.contains(HookSet::ON_STREAM_EVENT) && !guard.info().hooks.contains(HookSet::ON_REQUEST));
}

#[test]
fn no_rules_declare_no_hooks() {
    assert!(guard("{}").info().hooks.is_empty());
}

#[test]
fn a_config_that_cannot_work_is_refused() {
    let refused = |config: &str| match Guard::from_config(serde_json::from_str(config).unwrap()) {
        Ok(_) => panic!("accepted {config}"),
        Err(e) => e,
    };
    assert!(refused(r#"{"rules": [{"detect": ["dna"], "action": "block"}]}"#).contains("unknown detector `dna`"));
    assert!(
        refused(r#"{"rules": [{"pattern": "(", "name": "p", "action": "block"}]}"#).starts_with("rules[0]: pattern:")
    );
    assert!(refused(r#"{"rules": [{"pattern": "a*", "name": "p", "action": "block"}]}"#).contains("empty"));
    assert!(refused(r#"{"rules": [{"words": ["x"], "action": "block"}]}"#).contains("needs a `name`"));
    assert!(
        refused(r#"{"rules": [{"detect": ["ip"], "words": ["x"], "name": "n", "action": "flag"}]}"#)
            .contains("exactly one")
    );
    assert!(refused(r#"{"rules": [{"detect": ["ip"], "name": "a b", "action": "flag"}]}"#).contains("name `a b`"));
}

/// Feeds `chunks` through `step` as the host would (the held text first in the next `pending`)
/// and returns what the client reads, chunk by chunk.
fn stream(config: &str, chunks: &[&str]) -> Vec<String> {
    let guard = guard(config);
    let checks = all(&guard);
    let mut held = String::new();
    let mut sent = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let pending = format!("{held}{chunk}");
        let Step { cut, found } = step(&checks, &pending, i == chunks.len() - 1);
        sent.push(redact(&pending[..cut], &found));
        held = pending[cut..].to_owned();
    }
    assert!(held.is_empty(), "the finish lets go of everything");
    sent
}

#[test]
fn a_stream_holds_back_only_what_may_grow_into_a_match() {
    let sent =
        stream(EVERYTHING, &["Write to jo", "e@exa", "mple.com and pay ", "4111 1111", " 1111 1111", " now. Bye", "."]);
    assert_eq!(sent.concat(), "Write to [EMAIL] and pay [CARD] now. Bye.");
    // Plain words go as soon as they end: the stream stays a stream.
    assert_eq!(sent[0], "Write to ");
    let plain = stream(EVERYTHING, &["Paris is ", "the capital ", "of France", "."]);
    assert_eq!(plain, ["Paris is ", "the capital ", "of ", "France."]);
}

#[test]
fn a_phrase_split_between_chunks_is_still_found() {
    let words = r#"{"rules": [{"name": "codename", "words": ["project falcon"], "action": "redact"}]}"#;
    assert_eq!(stream(words, &["it is project ", "falcon, yes", "."]).concat(), "it is [CODENAME], yes.");
}

#[test]
fn last_words_counts_an_unfinished_word_as_one() {
    assert_eq!(last_words("hello wor", 1), 6);
    assert_eq!(last_words("hello ", 1), 6);
    assert_eq!(last_words("say hello ", 2), 4);
    assert_eq!(last_words("one", 3), 0);
}

#[test]
fn a_stream_holds_only_the_characters_a_match_is_made_of() {
    let email = Detector::builtin("email").unwrap();
    assert_eq!(email.tail("echo"), 0, "may become echo@…");
    assert_eq!(email.tail("echo:"), 5, "cannot");
    assert_eq!(email.tail("write to jo@exa"), 9);
    let card = Detector::builtin("card").unwrap();
    assert_eq!(card.tail("pay 4111 11"), 4);
    assert_eq!(card.tail("pay now"), 7);
    let secret = Detector::builtin("secret").unwrap();
    assert_eq!(secret.tail("key: -----BEGIN RSA PRIVATE KEY-----\nMII"), 5, "a key is held until its end");
    assert_eq!(secret.tail("key: sk-pro"), 5);
}
