//! OpenAI's Responses API through the gateway: the official `openai` SDK against a native upstream
//! and a translated (Bedrock) one; the gateway holding the conversation (what upstreams receive),
//! team scoping, stored responses across a restart, and bad input in OpenAI's shape.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{
    TestGateway, bare_config, metric_eventually, post, post_raw_as, run_python_checks, sse_data, state_dir,
};

const KEY: &str = "sk-weir-responses-0123456789";
const OTHER: &str = "sk-weir-responses-other-team";

fn mock() -> weir_bench::mock::MockBuilder {
    MockUpstream::builder().api_key("mock-key").aws_credentials("AKIDRESPONSES", "secret")
}

/// A native (`native_responses`) and a Bedrock upstream on `mock`, with public models `native` and
/// `bedrock` (suffixed `-<tag>` unless `tag` is `ok`).
fn upstreams(tag: &str, mock: &MockUpstream) -> String {
    let base = format!("http://{}", mock.addr());
    let public = |kind: &str| if tag == "ok" { kind.to_owned() } else { format!("{kind}-{tag}") };
    format!(
        r#"
[[upstreams]]
name = "native-{tag}"
endpoint = "{base}/v1"
api_key = "mock-key"
native_responses = true

[[upstreams]]
name = "bedrock-{tag}"
kind = "bedrock"
endpoint = "{base}"
region = "us-east-1"
access_key_id = "AKIDRESPONSES"
secret_access_key = "secret"

[[models]]
name = "{n}"
targets = [{{ upstream = "native-{tag}", model = "gpt-5" }}]
[[models]]
name = "{b}"
targets = [{{ upstream = "bedrock-{tag}", model = "amazon.nova-pro-v1:0" }}]
"#,
        n = public("native"),
        b = public("bedrock"),
    )
}

fn config(body: &str, store: &std::path::Path) -> String {
    bare_config(&format!(
        r#"{body}
[state]
responses = "{}"

[[keys]]
name = "alice"
team = "red"
key = "{KEY}"

[[keys]]
name = "bob"
team = "blue"
key = "{OTHER}"
"#,
        store.display()
    ))
}

fn store_path(name: &str) -> std::path::PathBuf {
    state_dir().join(format!("responses-{name}-{}.jsonl", uuid::Uuid::now_v7().simple()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_responses_api_works_natively_and_translated() {
    let ok = mock().start().await;
    let breaks = mock().break_stream_after(4).start().await;
    let text = format!("{}{}", upstreams("ok", &ok), upstreams("break", &breaks));
    let gw = TestGateway::start(&config(&text, &store_path("sdk"))).await;
    let env = [("WEIR_OTHER_KEY", OTHER), ("WEIR_TARGETS", "native,bedrock")];
    let stdout = run_python_checks(&gw, "responses_sdk.py", KEY, &env).await;
    eprintln!("{stdout}");
    assert!(stdout.contains("16 passed, 0 failed"), "{stdout}");
    // The native upstream never saw a previous_response_id: the gateway sent the conversation.
    let native: Vec<Value> = ok.requests().iter().filter(|r| r.path == "/v1/responses").map(|r| r.json()).collect();
    assert!(!native.is_empty() && native.iter().all(|b| b.get("previous_response_id").is_none()), "{native:?}");
    assert!(ok.requests().iter().any(|r| r.path.ends_with("/converse")), "Bedrock is reached through Converse");
    let seen =
        metric_eventually(&gw, "weir_requests_total", &[("surface", "responses"), ("outcome", "ok")], 10.0).await;
    assert!(seen >= 10.0, "{seen}");
}

async fn create(gw: &TestGateway, key: &str, body: &Value) -> (u16, Value) {
    let (status, _, answer) = post(&format!("{}/responses", gw.base_url()), &body.to_string(), Some(key)).await;
    (status, answer)
}

async fn get(gw: &TestGateway, key: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new().get(gw.url(path)).bearer_auth(key).send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_conversation_continues_from_the_gateways_store_on_any_target() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&config(&upstreams("ok", &ok), &store_path("continue"))).await;
    // A first turn on Bedrock, continued on the native upstream: the conversation moves with it.
    let (status, first) =
        create(&gw, KEY, &json!({"model": "bedrock", "input": "Weather in Paris?", "instructions": "Be brief."})).await;
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap();
    assert!(id.starts_with("resp_") && first["store"] == true, "{first}");
    let (status, second) =
        create(&gw, KEY, &json!({"model": "native", "previous_response_id": id, "input": "And tomorrow?"})).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], id);
    let sent = ok.requests().iter().rev().find(|r| r.path == "/v1/responses").unwrap().json();
    expect_test::expect![[r#"{"input":[{"content":[{"text":"Weather in Paris?","type":"input_text"}],"role":"user","type":"message"},{"content":"echo: Weather in Paris?","role":"assistant","type":"message"},{"content":[{"text":"And tomorrow?","type":"input_text"}],"role":"user","type":"message"}],"model":"gpt-5"}"#]]
        .assert_eq(&sent.to_string());
    // `store: false` keeps nothing.
    let (_, unstored) = create(&gw, KEY, &json!({"model": "native", "input": "forget me", "store": false})).await;
    let (status, _) = get(&gw, KEY, &format!("/v1/responses/{}", unstored["id"].as_str().unwrap())).await;
    assert_eq!(status, 404);
    // Items listed newest first by default, the request's own only.
    let (status, items) =
        get(&gw, KEY, &format!("/v1/responses/{}/input_items?order=asc", second["id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{items}");
    assert_eq!(items["data"].as_array().unwrap().len(), 1, "{items}");
    assert_eq!(items["data"][0]["content"][0]["text"], "And tomorrow?");
    // Cancelling: only background responses could be, and the gateway runs none.
    let (status, _, cancel) = post(&gw.url(&format!("/v1/responses/{id}/cancel")), "", Some(KEY)).await;
    assert_eq!((status, cancel["error"]["param"].as_str()), (400, Some("response_id")), "{cancel}");
}

#[tokio::test]
async fn another_teams_response_is_a_404_everywhere() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&config(&upstreams("ok", &ok), &store_path("teams"))).await;
    let (_, mine) = create(&gw, KEY, &json!({"model": "bedrock", "input": "secret"})).await;
    let id = mine["id"].as_str().unwrap();
    let before = ok.request_count();
    let (status, error) =
        create(&gw, OTHER, &json!({"model": "bedrock", "previous_response_id": id, "input": "and?"})).await;
    assert_eq!((status, error["error"]["param"].as_str()), (404, Some("previous_response_id")), "{error}");
    assert_eq!(ok.request_count(), before, "refused before any upstream is asked");
    for path in [format!("/v1/responses/{id}"), format!("/v1/responses/{id}/input_items")] {
        assert_eq!(get(&gw, OTHER, &path).await.0, 404, "{path}");
        assert_eq!(get(&gw, KEY, &path).await.0, 200, "{path}");
    }
    let deleted =
        reqwest::Client::new().delete(gw.url(&format!("/v1/responses/{id}"))).bearer_auth(OTHER).send().await.unwrap();
    assert_eq!(deleted.status(), 404);
}

#[tokio::test]
async fn stored_responses_survive_a_restart() {
    let ok = mock().start().await;
    let path = store_path("restart");
    let text = config(&upstreams("ok", &ok), &path);
    let gw = TestGateway::start(&text).await;
    let (_, whole) = create(&gw, KEY, &json!({"model": "bedrock", "input": "remember this"})).await;
    let url = format!("{}/responses", gw.base_url());
    let (_, streamed) =
        post_raw_as(&url, &json!({"model": "native", "input": "and this", "stream": true}).to_string(), Some(KEY))
            .await;
    let completed: Value = serde_json::from_str(&sse_data(&streamed).pop().unwrap()).unwrap();
    let streamed_id = completed["response"]["id"].as_str().unwrap().to_owned();
    drop(gw);
    let gw = TestGateway::start(&text).await;
    let (status, again) = get(&gw, KEY, &format!("/v1/responses/{}", whole["id"].as_str().unwrap())).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, whole, "the same object after a restart");
    let (status, again) = get(&gw, KEY, &format!("/v1/responses/{streamed_id}")).await;
    assert_eq!((status, again["output"][0]["content"][0]["text"].as_str()), (200, Some("echo: and this")), "{again}");
    // And both can be continued.
    for id in [whole["id"].as_str().unwrap(), &streamed_id] {
        let (status, next) =
            create(&gw, KEY, &json!({"model": "bedrock", "previous_response_id": id, "input": "what was it?"})).await;
        assert_eq!(status, 200, "{next}");
    }
}

#[tokio::test]
async fn a_native_stream_is_relayed_untouched_and_a_broken_one_ends_in_response_failed() {
    let ok = mock().start().await;
    let breaks = mock().break_stream_after(5).start().await;
    let extra = format!(
        r#"{}{}
[[models]]
name = "recorded"
targets = [{{ upstream = "native-ok", model = "fixture:text" }}]
[[models]]
name = "recorded-failure"
targets = [{{ upstream = "native-ok", model = "fixture:error_mid_stream" }}]
"#,
        upstreams("ok", &ok),
        upstreams("break", &breaks)
    );
    let gw = TestGateway::start(&config(&extra, &store_path("native"))).await;
    let url = format!("{}/responses", gw.base_url());
    let ask = |model: &str| json!({"model": model, "input": "hi", "stream": true}).to_string();
    let (status, streamed) = post_raw_as(&url, &ask("recorded"), Some(KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(streamed, include_bytes!("../../../bench/fixtures/openai-responses/text.sse").to_vec());
    let tokens =
        metric_eventually(&gw, "weir_tokens_total", &[("surface", "responses"), ("token_type", "input")], 20.0).await;
    assert!(tokens >= 20.0, "usage learnt from response.completed: {tokens}");
    // The upstream's own failure passes as it came; a broken connection gets error + response.failed.
    let (_, failed) = post_raw_as(&url, &ask("recorded-failure"), Some(KEY)).await;
    assert_eq!(failed, include_bytes!("../../../bench/fixtures/openai-responses/error_mid_stream.sse").to_vec());
    for model in ["native-break", "bedrock-break"] {
        let body = json!({"model": model, "input": "a b c d e f g h", "stream": true}).to_string();
        let (_, broken) = post_raw_as(&url, &body, Some(KEY)).await;
        let events: Vec<Value> = sse_data(&broken).iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds[kinds.len() - 2..], ["error", "response.failed"], "{model}: {kinds:?}");
        assert!(!kinds.contains(&"response.completed"));
        let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>(), "{model}: numbered without gaps");
    }
}

#[tokio::test]
async fn bad_input_gets_an_openai_error_naming_the_field() {
    let ok = mock().start().await;
    let gw = TestGateway::start(&config(&upstreams("ok", &ok), &store_path("bad"))).await;
    for (body, param) in [
        (
            json!({"model": "native", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
            "input[0].call_id",
        ),
        (json!({"model": "bedrock", "input": "x", "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (json!({"model": "native", "input": "x", "background": true}), "background"),
        (json!({"model": "native", "input": 5}), "input"),
    ] {
        let (status, error) = create(&gw, KEY, &body).await;
        assert_eq!((status, error["error"]["param"].as_str()), (400, Some(param)), "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (status, error) = get(&gw, KEY, "/v1/responses/resp_nope").await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("not_found")));
}
