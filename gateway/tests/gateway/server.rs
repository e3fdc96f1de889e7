//! The listening side: request ids, HTTP/2, TLS, health, metrics, header timeouts, and draining on
//! shutdown without cutting a stream.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, config, post, sse_data};

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let (_, headers, _) = post(&format!("{}/chat/completions", gw.base_url()), CHAT, None).await;
    let generated = headers.get("x-request-id").expect("generated id").to_str().expect("ascii");
    assert_eq!(generated.len(), 32);
    let (_, headers, _) = post(&gw.url("/nowhere"), "{}", None).await;
    assert!(headers.contains_key("x-request-id"), "errors carry it too");

    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", gw.base_url()))
        .header("x-request-id", "trace-abc-123")
        .body(CHAT)
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123", "a caller's id is kept");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(reqwest::get(gw.url(path)).await.expect("get").status().as_u16(), 200, "{path}");
    }
    post(&format!("{}/chat/completions", gw.base_url()), CHAT, None).await;
    let response = reqwest::get(gw.url("/metrics")).await.expect("metrics");
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("application/openmetrics-text"));
    let text = response.text().await.expect("text");
    for needle in [
        "# TYPE gen_ai_server_request_duration_seconds histogram",
        r#"gen_ai_server_request_duration_seconds_bucket{le="+Inf",operation="chat",surface="chat_completions",model="gpt-test",target="mock/mock-model",status="200"} 1"#,
        r#"weir_http_requests_total{route="chat",status="200"} 1"#,
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn http2_with_prior_knowledge() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().expect("client");
    let response = client.post(format!("{}/chat/completions", gw.base_url())).body(CHAT).send().await.expect("h2");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hi");
}

#[tokio::test]
async fn tls_with_alpn_serves_http2_and_http1() {
    let upstream = MockUpstream::builder().start().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let dir = std::env::temp_dir().join(format!("weir-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let tls =
        format!("tls = {{ cert = \"{}\", key = \"{}\" }}\nshutdown_grace", cert_path.display(), key_path.display());
    let gw = TestGateway::start(&config(&upstream.base_url(), "").replace("shutdown_grace", &tls)).await;

    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
    for http1_only in [false, true] {
        let mut builder = reqwest::Client::builder().tls_certs_only([root.clone()]).resolve("localhost", gw.addr);
        if http1_only {
            builder = builder.http1_only();
        }
        let client = builder.build().expect("client");
        let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
        let response = client.post(url).body(CHAT).send().await.expect("https");
        assert_eq!(response.status().as_u16(), 200);
        let want = if http1_only { reqwest::Version::HTTP_11 } else { reqwest::Version::HTTP_2 };
        assert_eq!(response.version(), want);
    }
    let plain = reqwest::get(gw.url("/healthz")).await;
    assert!(
        plain.is_err() || !plain.expect("response").status().is_success(),
        "plain HTTP is not served on a TLS port"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(
        &config(&upstream.base_url(), "").replace("shutdown_grace", "header_read_timeout = \"300ms\"\nshutdown_grace"),
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection should be closed after the header read timeout");
}

#[tokio::test]
async fn shutdown_drains_in_flight_streams_and_refuses_new_work() {
    let upstream = MockUpstream::builder().chunk_interval(Duration::from_millis(60)).start().await;
    let mut gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", gw.base_url()))
        .body(r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"a b c d e f g h"}]}"#)
        .send()
        .await
        .expect("send");
    let mut body = response.bytes_stream();
    let mut received = body.next().await.expect("first").expect("bytes").to_vec();

    let server = gw.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(gw.gateway.is_draining());
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err(), "no new connections while draining");

    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.expect("the stream is not cut"));
    }
    let data = sse_data(&received);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the in-flight stream finished: {data:?}");
    let result = tokio::time::timeout(Duration::from_secs(10), server).await.expect("the server exits after draining");
    result.expect("join").expect("serve");
}

/// Everything the gateway logs at every level, captured for the whole test binary.
pub(crate) fn captured_logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_carry_neither_secrets_nor_prompt_text() {
    let logs = captured_logs();
    let upstream = MockUpstream::builder().api_key("sk-upstream-secret-42").start().await;
    let extra = "[[keys]]\nname = \"logged-key\"\nteam = \"t\"\nkey = \"sk-client-secret-0123456789\"";
    let text = config(&upstream.base_url(), extra).replace(
        &format!("endpoint = \"{}\"", upstream.base_url()),
        &format!("endpoint = \"{}\"\napi_key = \"sk-upstream-secret-42\"", upstream.base_url()),
    );
    let gw = TestGateway::start(&text).await;
    let prompt = r#"{"model":"gpt-test","messages":[{"role":"user","content":"PROMPT-CANARY-7731"}]}"#;
    let url = format!("{}/chat/completions", gw.base_url());
    let (status, _, body) = post(&url, prompt, Some("sk-client-secret-0123456789")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = post(&url, prompt, Some("sk-wrong-secret-0123456789")).await;
    assert_eq!(status, 401);
    let streamed = prompt.replace("\"model\"", "\"stream\":true,\"model\"");
    post(&url, &streamed, Some("sk-client-secret-0123456789")).await;

    let text = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
    assert!(text.contains("logged-key"), "the request was logged, by key name: {text}");
    for secret in
        ["sk-upstream-secret-42", "sk-client-secret-0123456789", "sk-wrong-secret-0123456789", "PROMPT-CANARY-7731"]
    {
        assert!(!text.contains(secret), "{secret} reached the logs");
    }
}
