//! Unit tests of the redaction and of what an unfinished stream tail holds back.

use super::{luhn, redact, unfinished};

#[test]
fn cards_pass_the_luhn_check_to_be_redacted() {
    assert_eq!(redact("pay with 4111 1111 1111 1111 today"), "pay with [CARD] today");
    assert_eq!(redact("or 5500-0000-0000-0004."), "or [CARD].");
    assert_eq!(redact("order 4111 1111 1111 1112 is not a card"), "order 4111 1111 1111 1112 is not a card");
    assert_eq!(redact("in 2024 at 10 am"), "in 2024 at 10 am");
    assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]) && !luhn(&[1, 2]));
}

#[test]
fn addresses_are_redacted_and_plain_words_are_not() {
    assert_eq!(redact("mail bob.smith@example.com, or ann@x.org."), "mail [EMAIL], or [EMAIL].");
    assert_eq!(redact("at @home or user@localhost"), "at @home or user@localhost");
}

#[test]
fn what_may_still_grow_into_a_match_is_held_back() {
    fn held(text: &str) -> &str {
        &text[unfinished(text)..]
    }
    assert_eq!(held("echo: pay with 4111 1111"), "4111 1111", "a card number in progress");
    assert_eq!(held("mail bob"), "bob", "a word may become an address");
    assert_eq!(held("mail bob@example.com today"), "today");
    assert_eq!(held("done. "), "", "a space ends every match");
    assert_eq!(held("echo:"), "");
    assert_eq!(held(""), "");
}
