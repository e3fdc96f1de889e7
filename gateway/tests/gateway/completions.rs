//! OpenAI's legacy Completions API through the gateway: the default configuration's local worker
//! with the official `openai` SDK, a native relay to an OpenAI-compatible upstream, and a
//! translated target.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{
    TestGateway, bare_config, config, default_config, post, post_raw, run_python_script, sse_json, state_dir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configs_local_worker_answers_legacy_completions() {
    let mock = MockUpstream::builder().start().await;
    let upstream = mock.base_url();
    let ledger = state_dir().join(format!("completions-ledger-{}.jsonl", mock.addr().port()));
    let env = weir_config::MapEnv::from_pairs([
        ("WEIR_UPSTREAM", upstream.as_str()),
        ("WEIR_DEVICE", "cpu"),
        ("WEIR_LEDGER", ledger.to_str().expect("utf-8")),
    ]);
    let gw = TestGateway::start_with(default_config(&env)).await;
    let stdout = run_python_script(&gw, "completions_sdk.py", "anonymous").await;
    eprintln!("{stdout}");
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    assert_eq!(mock.request_count(), 0, "the local worker answered, not the pass-through upstream");
}

#[tokio::test]
async fn completions_are_relayed_natively_to_openai_compatible_upstreams() {
    let mock = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&mock.base_url(), "")).await;
    let url = format!("{}/completions", gw.base_url());
    let body =
        json!({"model": "gpt-test", "prompt": ["Say hi"], "max_tokens": 5, "echo": true, "suffix": "", "x_probe": 1});
    let (status, _, answer) = post(&url, &body.to_string(), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "text_completion");
    assert_eq!(answer["choices"][0]["text"], "Say hiecho: Say hi");
    let sent = mock.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/completions");
    let sent = sent.json();
    assert_eq!(
        (sent["model"].as_str(), sent["x_probe"].as_u64(), sent["echo"].as_bool()),
        (Some("mock-model"), Some(1), Some(true))
    );
    // Streams: the usage chunk is asked for upstream and removed again unless the client wants it.
    for wants in [false, true] {
        let mut body = json!({"model": "gpt-test", "prompt": "a b", "stream": true});
        if wants {
            body["stream_options"] = json!({"include_usage": true});
        }
        let (status, raw) = post_raw(&url, &body.to_string()).await;
        assert_eq!(status, 200);
        let (events, done) = sse_json(&raw);
        assert!(done);
        assert_eq!(events.iter().any(|e| e.get("usage").is_some_and(Value::is_object)), wants, "{events:?}");
        let text: String = events.iter().filter_map(|e| e.pointer("/choices/0/text").and_then(Value::as_str)).collect();
        assert_eq!(text, "echo: a b");
        assert_eq!(mock.requests().pop().unwrap().json()["stream_options"]["include_usage"], true);
    }
}

#[tokio::test]
async fn completions_to_a_translated_target_are_chat_turns_and_refuse_what_chat_cannot_do() {
    let mock = MockUpstream::builder().aws_credentials("AKIDCMPL", "secret").start().await;
    let base = format!("http://{}", mock.addr());
    let gw = TestGateway::start(&bare_config(&format!(
        r#"
[[upstreams]]
name = "bedrock"
kind = "bedrock"
endpoint = "{base}"
region = "us-east-1"
access_key_id = "AKIDCMPL"
secret_access_key = "secret"

[[models]]
name = "nova"
targets = [{{ upstream = "bedrock", model = "amazon.nova-lite-v1:0" }}]
"#
    )))
    .await;
    let url = format!("{}/completions", gw.base_url());
    let (status, _, answer) =
        post(&url, &json!({"model": "nova", "prompt": "one two", "echo": true}).to_string(), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], "one twoecho: one two", "echo done by the gateway");
    assert!(answer["id"].as_str().unwrap().starts_with("cmpl-"));
    let sent = mock.requests().pop().unwrap().json();
    assert_eq!(sent["messages"][0]["content"][0]["text"], "one two");
    assert_eq!(sent["inferenceConfig"]["maxTokens"], 16, "the legacy API's default max_tokens");
    let (status, raw) = post_raw(&url, &json!({"model": "nova", "prompt": "a b c", "stream": true}).to_string()).await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&raw);
    assert!(done && events.iter().all(|e| e["object"] == "text_completion"), "{events:?}");
    for (body, param) in [
        (json!({"model": "nova", "prompt": "a", "suffix": "b"}), "suffix"),
        (json!({"model": "nova", "prompt": ["a", "b"]}), "prompt"),
        (json!({"model": "nova", "prompt": "a", "logprobs": 1}), "logprobs"),
        (json!({"model": "nova", "prompt": {"a": 1}}), "prompt"),
    ] {
        let (status, _, error) = post(&url, &body.to_string(), None).await;
        assert_eq!((status, error["error"]["param"].as_str()), (400, Some(param)), "{error}");
    }
}
