//! The built-in `guard` policy through the gateway: a card number in a prompt never reaches the
//! upstream, a blocked prompt gets a 400 naming the rule in each API's own shape (and never the
//! text), answers are redacted, flagged or refused whole, an e-mail address the upstream streams
//! over several events is redacted in the stream the client reads with streaming kept, rules are
//! per team, and the matched text reaches no metric.

use std::time::Duration;

use weir_bench::mock::MockUpstream;

use crate::content::{SALES, SUPPORT, chat, gateway, last_sent, messages, plugin, send, stream, text_of};
use crate::support::{metric, metric_eventually, run_python_checks};

const CARD: &str = "4111 1111 1111 1111";

fn guard(rules: &str) -> String {
    plugin("guard", "builtin:guard", &format!("on_error = \"closed\"\nconfig = {{ rules = [{rules}] }}"))
}

fn matches(text: &str, rule: &str, action: &str, on: &str) -> f64 {
    metric(
        text,
        "weir_plugin_counter_total",
        &[("plugin", "guard"), ("metric", "matches"), ("rule", rule), ("action", action), ("on", on)],
    )
}

#[tokio::test]
async fn a_card_in_a_prompt_never_reaches_the_upstream_and_a_blocked_prompt_gets_a_clear_400() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let rules = r#"{ detect = ["card", "email"], action = "redact", on = ["prompt"] },
                   { detect = ["ssn"], action = "block", on = ["prompt"] },
                   { name = "codename", words = ["project falcon"], action = "block", teams = ["sales"] }"#;
    let gw = gateway(&mock, &[("g", "\"guard\"")], &guard(rules)).await;

    // Redacted in every chat API before the upstream sees it.
    let prompt = format!("charge {CARD} and mail jo@example.com");
    let (status, headers, body) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-g", &prompt)).await;
    assert_eq!(status, 200, "{body}");
    let (_, sent) = last_sent(&mock);
    assert_eq!(sent["messages"][0]["content"], "charge [CARD] and mail [EMAIL]", "{sent}");
    assert_eq!(headers["x-weir-guard-redacted"], "card,email");
    let (status, _, body) = send(&gw, "/v1/messages", SUPPORT, messages("claude-g", &prompt)).await;
    assert_eq!(status, 200, "{body}");
    let (path, sent) = last_sent(&mock);
    assert_eq!(path, "/v1/messages");
    assert!(!sent.to_string().contains("4111") && sent.to_string().contains("[CARD]"), "{sent}");

    // Blocked: a 400 whose code names the rule, the text not echoed, the upstream not asked.
    let asked = mock.request_count();
    let (status, _, body) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-g", "my ssn is 123-45-6789")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "guard_ssn", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(!body.to_string().contains("6789"), "never echoed: {body}");
    let (status, _, body) = send(&gw, "/v1/messages", SUPPORT, messages("claude-g", "ssn 123-45-6789")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error", "Anthropic's own shape: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("`ssn`")), "{body}");
    assert_eq!(mock.request_count(), asked, "a blocked prompt reaches no upstream");

    // A team's rule is that team's only.
    let falcon = "tell me about Project Falcon";
    let (status, _, body) = send(&gw, "/v1/chat/completions", SALES, chat("gpt-g", falcon)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("guard_codename")), "{body}");
    let (status, _, _) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-g", falcon)).await;
    assert_eq!(status, 200);

    let text = gw.metrics().await;
    assert_eq!(matches(&text, "card", "redact", "prompt"), 2.0);
    assert_eq!(matches(&text, "ssn", "block", "prompt"), 2.0);
    assert!(!text.contains("4111") && !text.contains("6789") && !text.contains("example.com"), "no text in metrics");
}

#[tokio::test]
async fn whole_answers_are_redacted_flagged_or_refused() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    // The mock echoes the prompt, so what the prompt carries is in the answer.
    let rules = r#"{ detect = ["email"], action = "redact", on = ["answer"] },
                   { detect = ["ip"], action = "flag", on = ["answer"] },
                   { name = "secrets", detect = ["secret"], action = "block", on = ["answer"] }"#;
    let plugins = [
        guard(rules),
        plugin("short", "builtin:guard", "on_error = \"closed\"\nconfig = { output = { max_chars = 20 } }"),
    ]
    .concat();
    let gw = gateway(&mock, &[("g", "\"guard\""), ("short", "\"short\"")], &plugins).await;

    let (status, headers, body) =
        send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-g", "mail jo@example.com from 10.0.0.7")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: mail [EMAIL] from 10.0.0.7");
    assert_eq!(headers["x-weir-guard-redacted"], "email");
    assert_eq!(headers["x-weir-guard-flagged"], "ip");
    let (_, sent) = last_sent(&mock);
    assert!(sent.to_string().contains("jo@example.com"), "answer rules leave the prompt alone: {sent}");
    // A Messages client gets the redacted answer in its own shape.
    let (status, _, body) = send(&gw, "/v1/messages", SUPPORT, messages("claude-g", "mail jo@example.com")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"][0]["text"], "echo: mail [EMAIL]", "{body}");

    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz012345";
    let (status, _, body) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-g", &format!("key {key}"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("guard_secrets")), "{body}");
    assert!(!body.to_string().contains("abcdefgh"), "{body}");

    let (status, _, body) =
        send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-short", "one two three four five")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("guard_max_chars")), "{body}");
    let (status, _, _) = send(&gw, "/v1/chat/completions", SUPPORT, chat("gpt-short", "hi")).await;
    assert_eq!(status, 200);

    let text = gw.metrics().await;
    assert_eq!(matches(&text, "ip", "flag", "answer"), 1.0);
    assert_eq!(matches(&text, "secrets", "block", "answer"), 1.0);
}

#[tokio::test]
async fn an_email_streamed_over_several_events_is_redacted_as_the_stream_flows() {
    let interval = Duration::from_millis(30);
    // Pieces of at most 4 bytes: " jo@", "exam", "ple.", "com", … as a tokenizer cuts them.
    let mock = MockUpstream::builder().api_key("mock-key").chunk_interval(interval).piece_bytes(4).start().await;
    let rules = r#"{ detect = ["email", "card", "phone"], action = "redact", on = ["answer"] },
                   { detect = ["ssn"], action = "block", on = ["prompt"] }"#;
    let gw = gateway(&mock, &[("clean", ""), ("g", "\"guard\"")], &guard(rules)).await;
    let prompt = "write to jo@example.com or call +1 555 123 4567 today";
    // Each route once first, so that neither timing below includes a plugin instance's start.
    for model in ["gpt-clean", "gpt-g"] {
        assert_eq!(stream(&gw, "/v1/chat/completions", chat(model, "hi")).await.0, 200);
    }

    let (status, clean) = stream(&gw, "/v1/chat/completions", chat("gpt-clean", prompt)).await;
    assert_eq!(status, 200);
    let (clean_text, clean_first, _) = text_of(&clean);
    assert_eq!(clean_text, format!("echo: {prompt}"));
    assert!(clean.iter().any(|(_, d)| d.contains("\"exam\"")), "the mock splits the address: {clean:?}");

    let (status, guarded) = stream(&gw, "/v1/chat/completions", chat("gpt-g", prompt)).await;
    assert_eq!(status, 200);
    let (text, first, last) = text_of(&guarded);
    assert_eq!(text, "echo: write to [EMAIL] or call [PHONE] today");
    assert!(
        guarded.iter().all(|(_, d)| !d.contains("jo@") && !d.contains("exam") && !d.contains("4567")),
        "{guarded:?}"
    );
    assert_eq!(guarded.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    // Still a stream: the first words go out before the address arrives.
    let (first, last, clean_first) = (first.expect("text"), last.expect("text"), clean_first.expect("text"));
    assert!(last - first >= interval * 8, "not buffered: first {first:?}, last {last:?}");
    eprintln!("first content: unguarded {clean_first:?}, guarded {first:?}");
    assert!(first < clean_first + interval * 2, "first content: unguarded {clean_first:?}, guarded {first:?}");

    // Through the official openai SDK: the redacted stream, and a blocked prompt's error.
    run_python_checks(&gw, "guard_sdk.py", SUPPORT, &[("WEIR_MODEL", "gpt-g")]).await;
}

#[tokio::test]
async fn the_cache_keeps_the_redacted_answer_not_the_upstreams() {
    let mock = MockUpstream::builder().api_key("mock-key").start().await;
    let rules = r#"{ detect = ["email"], action = "redact", on = ["answer"] }"#;
    let plugins = [guard(rules), plugin("cache", "builtin:cache", "config = { ttl_seconds = 60 }")].concat();
    let gw = gateway(&mock, &[("g", "\"guard\", \"cache\"")], &plugins).await;
    let mut body = chat("gpt-g", "mail jo@example.com");
    body["temperature"] = serde_json::json!(0);
    for round in ["miss", "hit"] {
        let (status, headers, answer) = send(&gw, "/v1/chat/completions", SUPPORT, body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(headers["x-weir-cache"], round);
        assert_eq!(answer["choices"][0]["message"]["content"], "echo: mail [EMAIL]", "{round}: {answer}");
        if round == "miss" {
            let stores = &[("plugin", "cache"), ("metric", "stores")];
            assert_eq!(metric_eventually(&gw, "weir_plugin_counter_total", stores, 1.0).await, 1.0);
        }
    }
    assert_eq!(mock.request_count(), 1, "the hit reached no upstream");
}
