//! Tried as a hostile client would, through the real listener: idle sockets are closed and capped
//! while real requests keep being served; model names never reach another path of a provider;
//! a success status without a JSON answer is a 502; refused requests' messages and log lines never
//! repeat what the client sent.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_bench::mock::MockUpstream;

use crate::support::{TestGateway, bare_config, config, metric, openai_error, post, post_full};

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;

/// [`config`] with these `[server]` settings added.
fn with_server(mock: &MockUpstream, settings: &str) -> String {
    config(&mock.base_url(), "").replace("shutdown_grace", &format!("{settings}\nshutdown_grace"))
}

/// Waits until the gateway closes `tcp` (a read returns end of file or a reset); false if it
/// is still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response to something sent earlier: keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_closed_and_capped_while_real_requests_are_served() {
    weir::server::raise_fd_limit();
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&with_server(
        &upstream,
        "header_read_timeout = \"2s\"\nidle_timeout = \"2s\"\nmax_connections = 40",
    ))
    .await;
    let url = format!("{}/chat/completions", gw.base_url());

    // Three hundred sockets that never send a byte, as a client exhausting descriptors would.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    // Real requests still get through: each new connection takes the place of an idle one.
    for _ in 0..20 {
        let (status, _, body) = post(&url, CHAT, None).await;
        assert_eq!(status, 200, "{body}");
    }
    let text = gw.metrics().await;
    assert!(metric(&text, "weir_connections_open", &[]) <= 45.0, "capped: {text}");
    assert!(metric(&text, "weir_connections_closed_total", &[("reason", "evicted")]) >= 260.0, "{text}");

    // The idle sockets the cap left open are closed after the first-request timeout.
    let started = Instant::now();
    for tcp in &mut idle {
        assert!(closed_within(tcp, Duration::from_secs(15)).await, "an idle socket stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let text = gw.metrics().await;
    assert!(metric(&text, "weir_connections_closed_total", &[("reason", "idle_timeout")]) >= 1.0, "{text}");
    assert!(metric(&text, "weir_connections_open", &[]) <= 2.0, "only the scrapes' connections: {text}");
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_once_idle_but_never_while_a_request_is_in_flight() {
    let upstream = MockUpstream::builder().latency(Duration::from_millis(1500)).start().await;
    let gw = TestGateway::start(&with_server(&upstream, "idle_timeout = \"500ms\"")).await;

    // A request slower than the idle timeout is answered: it is in flight, not idle.
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("answered").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Then, with nothing in flight, the keep-alive connection is closed after the idle timeout.
    assert!(closed_within(&mut tcp, Duration::from_secs(10)).await, "the idle keep-alive connection stayed open");
}

#[tokio::test]
async fn at_the_limit_with_every_connection_busy_new_ones_are_refused() {
    let upstream = MockUpstream::builder().latency(Duration::from_millis(1500)).start().await;
    let gw = TestGateway::start(&with_server(&upstream, "max_connections = 2")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, CHAT, None).await.0 })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut extra = TcpStream::connect(gw.addr).await.expect("the kernel accepts");
    assert!(closed_within(&mut extra, Duration::from_secs(1)).await, "a third connection was kept");
    for task in busy {
        assert_eq!(task.await.expect("join"), 200, "busy connections are never evicted");
    }
    let text = gw.metrics().await;
    assert_eq!(metric(&text, "weir_connections_closed_total", &[("reason", "refused")]), 1.0, "{text}");
}

/// One gateway whose wildcard route passes any model name to `upstream` (a `[[upstreams]]` table).
async fn wildcard_gateway(upstream: &str) -> TestGateway {
    let text = format!("{upstream}\n[[models]]\nname = \"*\"\ntargets = [{{ upstream = \"up\" }}]\n");
    TestGateway::start(&bare_config(&text)).await
}

#[tokio::test]
async fn model_names_never_reach_another_path_of_any_provider() {
    let mock = MockUpstream::builder().aws_credentials("AKIDWEIRTEST", "secret").start().await;
    let base = format!("http://{}", mock.addr());
    let sa = crate::gemini::service_account(&mock);
    let upstreams = [
        ("openai", format!("[[upstreams]]\nname = \"up\"\nendpoint = \"{base}/v1\"")),
        (
            "azure deployments",
            format!(
                "[[upstreams]]\nname = \"up\"\nkind = \"azure-openai\"\nendpoint = \"{base}\"\napi_version = \"2024-10-21\"\napi_key = \"k\""
            ),
        ),
        (
            "azure v1",
            format!("[[upstreams]]\nname = \"up\"\nkind = \"azure-openai\"\nendpoint = \"{base}\"\napi_key = \"k\""),
        ),
        (
            "bedrock",
            format!(
                "[[upstreams]]\nname = \"up\"\nkind = \"bedrock\"\nendpoint = \"{base}\"\nregion = \"us-east-1\"\naccess_key_id = \"AKIDWEIRTEST\"\nsecret_access_key = \"secret\""
            ),
        ),
        ("gemini", format!("[[upstreams]]\nname = \"up\"\nkind = \"gemini\"\nendpoint = \"{base}\"\napi_key = \"g\"")),
        (
            "vertex",
            format!(
                "[[upstreams]]\nname = \"up\"\nkind = \"vertex\"\nendpoint = \"{base}\"\nproject = \"p\"\nlocation = \"us-central1\"\ncredentials_file = \"{}\"",
                sa.display()
            ),
        ),
    ];
    let hostile = [
        "../../something?",
        "..",
        "gemini-pro:generateContent?key=x",
        "a b",
        "x#frag",
        "%2e%2e%2fadmin",
        "name\u{0}",
        "m/../../v1/admin",
        &"m".repeat(300),
    ];
    for (kind, upstream) in &upstreams {
        let gw = wildcard_gateway(upstream).await;
        for path in ["/v1/chat/completions", "/v1/embeddings"] {
            for name in hostile {
                let before = mock.request_count();
                let body = if path.ends_with("embeddings") {
                    json!({"model": name, "input": "hi"})
                } else {
                    json!({"model": name, "messages": [{"role": "user", "content": "hi"}]})
                };
                let (status, _, bytes) = post_full(&gw.url(path), &body).await;
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                assert_eq!(status, 400, "{kind} {path} {name:?}: {body}");
                let error = openai_error(&body);
                assert_eq!(error["param"], "model", "{kind}: {body}");
                if name.len() > 3 {
                    assert!(!error["message"].as_str().unwrap_or_default().contains(name), "the name is not echoed");
                }
                assert_eq!(mock.request_count(), before, "{kind}: {name:?} reached the upstream");
            }
        }
        // A plausible name with characters that mean something in a URL stays one path segment.
        let before = mock.requests().len();
        let body = json!({"model": "org/name:tag@v1", "messages": [{"role": "user", "content": "hi"}]});
        post_full(&gw.url("/v1/chat/completions"), &body).await;
        let requests = mock.requests();
        let paths: Vec<&str> = requests[before..].iter().map(|r| r.path.as_str()).filter(|p| *p != "/token").collect();
        assert_eq!(paths.len(), 1, "{kind}: {paths:?}");
        let path = paths[0];
        match *kind {
            "openai" | "azure v1" => assert!(!path.contains("org"), "{kind}: the model is in the body only: {path}"),
            _ => assert!(path.contains("/org%2Fname%3Atag%40v1"), "{kind}: {path}"),
        }
    }
}

#[tokio::test]
async fn a_success_status_without_a_json_answer_is_a_502_and_an_upstream_error() {
    let upstream = MockUpstream::builder().not_json(true).start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    for (path, body) in
        [("/chat/completions", CHAT.to_owned()), ("/embeddings", r#"{"model":"gpt-test","input":"hi"}"#.to_owned())]
    {
        let (status, _, body) = post(&format!("{}{path}", gw.base_url()), &body, None).await;
        assert_eq!(status, 502, "{path}: {body}");
        let error = openai_error(&body);
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("server_error"), Some("upstream_error")));
    }
    let text = gw.metrics().await;
    assert_eq!(
        metric(&text, "weir_upstream_errors_total", &[("target", "mock/mock-model"), ("class", "protocol")]),
        2.0,
        "{text}"
    );
    assert_eq!(metric(&text, "weir_requests_total", &[("status", "502"), ("outcome", "error")]), 2.0, "{text}");
    assert_eq!(metric(&text, "weir_tokens_total", &[]), 0.0, "no usage guessed: {text}");
    // Streams are not whole answers: relayed as before.
    let stream = CHAT.replace("\"model\"", "\"stream\":true,\"model\"");
    let (status, _, _) = post(&format!("{}/chat/completions", gw.base_url()), &stream, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn refused_requests_name_fields_and_types_never_the_values_sent() {
    let logs = crate::server::captured_logs();
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let url = format!("{}/chat/completions", gw.base_url());
    let secret = "PROMPT-VALUE-4242, expected secret at line 9";
    let bodies = [
        json!({"model": "gpt-test", "messages": [{"role": secret, "content": "x"}]}),
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": secret}),
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": secret}}),
        json!({"model": "gpt-test", "messages": secret}),
        json!({"model": ["gpt-test", secret], "messages": []}),
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "stream": {"k": secret}}),
        json!([secret]),
    ];
    for body in &bodies {
        let (status, _, answer) = post(&url, &body.to_string(), None).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = openai_error(&answer)["message"].as_str().unwrap_or_default().to_owned();
        assert!(!message.contains("PROMPT-VALUE"), "{message}");
    }
    // The type is still named, and the field.
    let (_, _, answer) = post(&url, &bodies[1].to_string(), None).await;
    let error = openai_error(&answer);
    assert_eq!(error["param"], "stream");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("expected a boolean, got string")), "{answer}");
    let embeddings = json!({"model": "gpt-test", "input": "x", "encoding_format": secret});
    let (status, _, answer) = post(&format!("{}/embeddings", gw.base_url()), &embeddings.to_string(), None).await;
    assert_eq!(status, 400, "{answer}");
    assert!(!answer.to_string().contains("PROMPT-VALUE"), "{answer}");

    let text = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
    assert!(text.contains("request refused"), "the refusals were logged at debug level");
    assert!(!text.contains("PROMPT-VALUE"), "a refused request's value reached the logs");
}
