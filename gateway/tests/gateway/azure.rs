//! Azure OpenAI through its mock: deployment URLs with `api-version`, the `/openai/v1` surface,
//! `api-key` and Entra ID credentials, content-filter fields and Azure's empty first chunk.

use serde_json::{Value, json};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, openai_error, post_full, sse_json, streamed_text};

fn azure_config(mock: &MockUpstream) -> String {
    let base = format!("http://{}", mock.addr());
    bare_config(&format!(
        r#"
[[upstreams]]
name = "azure"
kind = "azure-openai"
endpoint = "{base}"
api_version = "2024-10-21"
api_key = "azure-key"
deployments = {{ "gpt-4o" = "prod-4o" }}

[[upstreams]]
name = "azure-entra"
kind = "azure-openai"
endpoint = "{base}"
tenant_id = "tenant-1"
client_id = "client-1"
client_secret = "secret-1"
token_endpoint = "{base}/tenant-1/oauth2/v2.0/token"

[[models]]
name = "chat"
targets = [{{ upstream = "azure", model = "gpt-4o" }}]

[[models]]
name = "v1"
targets = [{{ upstream = "azure-entra", model = "gpt-4o-mini" }}]

[[models]]
name = "embed"
targets = [{{ upstream = "azure", model = "text-embedding-3-small" }}]
"#
    ))
}

fn chat(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn deployment_urls_carry_the_api_version_and_the_key_and_filter_results_pass_through() {
    let mock = MockUpstream::builder().api_key("azure-key").start().await;
    let gw = TestGateway::start(&azure_config(&mock)).await;
    let (status, _, body) = post_full(&gw.url("/v1/chat/completions"), &chat("chat", "hello azure", false)).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hello azure");
    assert_eq!(body["choices"][0]["content_filter_results"]["hate"]["filtered"], false, "{body}");
    assert!(body["prompt_filter_results"].is_array(), "{body}");
    let sent = mock.requests().pop().expect("recorded");
    assert_eq!(sent.path, "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21");
    assert_eq!(sent.header("api-key"), Some("azure-key"));
    assert_eq!(sent.header("authorization"), None, "the client's key never reaches the upstream");

    let (status, _, body) =
        post_full(&gw.url("/v1/embeddings"), &json!({"model": "embed", "input": ["a b", "c"]})).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((status, body["data"].as_array().map(Vec::len)), (200, Some(2)), "{body}");
    assert_eq!(
        mock.requests().pop().expect("recorded").path,
        "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn an_empty_first_chunk_is_relayed_and_usage_is_stripped_unless_asked() {
    let mock = MockUpstream::builder().api_key("azure-key").start().await;
    let gw = TestGateway::start(&azure_config(&mock)).await;
    let (status, _, body) = post_full(&gw.url("/v1/chat/completions"), &chat("chat", "one two three", true)).await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&body);
    assert!(done);
    assert_eq!(events[0]["choices"], json!([]), "Azure's empty first chunk: {}", events[0]);
    assert!(events[0]["prompt_filter_results"].is_array());
    assert_eq!(streamed_text(&events), "echo: one two three");
    assert!(events.iter().all(|e| e.get("usage").is_none_or(Value::is_null)), "no usage chunk unless asked");
    assert_eq!(mock.requests()[0].json()["stream_options"]["include_usage"], true, "usage is always requested");

    let mut asked = chat("chat", "one two three", true);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, _, body) = post_full(&gw.url("/v1/chat/completions"), &asked).await;
    let (events, _) = sse_json(&body);
    let usage = events.iter().find_map(|e| e.get("usage").filter(|u| u.is_object())).expect("usage chunk");
    assert_eq!(usage["completion_tokens"], 4, "{usage}");
}

#[tokio::test]
async fn the_v1_surface_with_an_entra_token_fetched_once() {
    let mock = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&azure_config(&mock)).await;
    for _ in 0..3 {
        let (status, _, body) = post_full(&gw.url("/v1/chat/completions"), &chat("v1", "hi", false)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(mock.token_requests(), 1, "the token is cached");
    let sent = mock.requests().into_iter().filter(|r| r.path.starts_with("/openai/")).collect::<Vec<_>>();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].path, "/openai/v1/chat/completions");
    assert_eq!(sent[0].json()["model"], "gpt-4o-mini");
    assert!(sent[0].header("authorization").is_some_and(|a| a.starts_with("Bearer mock-token-")));
    assert_eq!(sent[0].header("api-key"), None);
}

#[tokio::test]
async fn an_expired_entra_token_is_renewed() {
    // A token issued with no lifetime left is due for renewal at once, so each request fetches anew.
    let mock = MockUpstream::builder().token_lifetime(0).start().await;
    let gw = TestGateway::start(&azure_config(&mock)).await;
    for _ in 0..2 {
        let (status, _, _) = post_full(&gw.url("/v1/chat/completions"), &chat("v1", "hi", false)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn a_content_filter_refusal_is_a_400_with_code_content_filter() {
    let mock = MockUpstream::builder().api_key("azure-key").start().await;
    let gw = TestGateway::start(&azure_config(&mock)).await;
    let (status, _, body) =
        post_full(&gw.url("/v1/chat/completions"), &chat("chat", "please trigger-content-filter", false)).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, 400, "{body}");
    assert_eq!(openai_error(&body)["code"], "content_filter");
}

#[tokio::test]
async fn a_rejected_key_is_the_gateways_problem() {
    let mock = MockUpstream::builder().api_key("another-key").start().await;
    let gw = TestGateway::start(&azure_config(&mock)).await;
    let (status, _, body) = post_full(&gw.url("/v1/chat/completions"), &chat("chat", "hi", false)).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, 502, "{body}");
    assert_eq!(openai_error(&body)["code"], "upstream_auth_failed");
    assert!(!body.to_string().contains("azure-key"));
}
