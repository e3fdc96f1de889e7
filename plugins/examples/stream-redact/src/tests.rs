use super::{luhn, may_continue, redact};

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
fn a_chunk_is_held_while_its_text_may_go_on_into_a_match() {
    assert!(may_continue(" 4111"), "a card number may go on");
    assert!(may_continue(" bob"), "a word may become an address");
    assert!(!may_continue("done. "), "a space ends every match");
    assert!(!may_continue(""));
}
