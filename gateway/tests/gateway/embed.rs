//! The embedding surface, `weir::embed::Weir`, in front of the mock upstreams: requests answered in process
//! through `handle` (whole, streamed chunk by chunk, cancelled by dropping the body, refused by a key
//! or a plugin) and through `serve` on port 0; reloads under traffic and a graceful shutdown.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use weir::embed::Weir;
use weir_bench::mock::MockUpstream;
use weir_config::MapEnv;

use crate::support::{metric, openai_error, sse_json, state_dir, streamed_text, strict_config};

const KEY: &str = "embed-key-0123456789abcdef";

/// [`strict_config`] with one key: only the configured model names route.
fn keyed(mock: &MockUpstream, extra: &str) -> String {
    strict_config(&mock.base_url(), &format!("[[keys]]\nname = \"app\"\nteam = \"web\"\nkey = \"{KEY}\"\n{extra}"))
}

async fn embedded(text: &str) -> Weir {
    let config = weir_config::load_str(text, &MapEnv::default(), &state_dir()).expect("config");
    Weir::from_config(config).await.expect("gateway")
}

fn chat(body: &str) -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

async fn json(response: http::Response<weir::Body>) -> Value {
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
}

async fn metrics(weir: &Weir) -> String {
    let response =
        weir.handle(http::Request::get("/metrics").body(http_body_util::Empty::<Bytes>::new()).unwrap()).await;
    String::from_utf8(response.into_body().collect().await.expect("metrics").to_bytes().to_vec()).expect("utf-8")
}

const WHOLE: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hello from inside"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"one two three four five six"}]}"#;

#[tokio::test]
async fn handle_answers_a_whole_chat_and_an_error_in_openais_shape() {
    let mock = MockUpstream::builder().start().await;
    let weir = embedded(&keyed(&mock, "")).await;

    let response = weir.handle(chat(WHOLE)).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"), "{:?}", response.headers());
    let body = json(response).await;
    assert_eq!(body["choices"][0]["message"]["content"], "echo: hello from inside", "{body}");
    // The mock saw the upstream model name: the same routing as over HTTP.
    assert_eq!(mock.requests().last().expect("a request").json()["model"], "mock-model");

    let unauthenticated = http::Request::post("/v1/chat/completions").body(Full::new(Bytes::from(WHOLE))).unwrap();
    let response = weir.handle(unauthenticated).await;
    assert_eq!(response.status(), 401);
    let body = json(response).await;
    assert_eq!(openai_error(&body)["code"], "missing_api_key", "{body}");
    assert_eq!(openai_error(&body)["type"], "authentication_error", "{body}");

    let response = weir.handle(chat(r#"{"model":"gpt-test","messages":"not a list"}"#)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(openai_error(&json(response).await)["param"], "messages");
    assert_eq!(mock.request_count(), 1, "refused requests never reach the upstream");
}

#[tokio::test]
async fn a_streamed_answer_arrives_chunk_by_chunk_and_dropping_it_cancels_the_upstream() {
    let mock = MockUpstream::builder().chunk_interval(Duration::from_millis(50)).start().await;
    let weir = embedded(&keyed(&mock, "")).await;

    let response = weir.handle(chat(STREAM)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut frames = 0;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("infallible").into_data() {
            frames += 1;
            bytes.extend_from_slice(&data);
        }
    }
    // Six words, the role chunk, the stop chunk and [DONE]: one frame per event at least, not one
    // buffered answer.
    assert!(frames >= 6, "{frames} frames: {}", String::from_utf8_lossy(&bytes));
    let (events, done) = sse_json(&bytes);
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(streamed_text(&events), "echo: one two three four five six");

    // Dropped after the first event: the upstream's stream is cancelled, and accounted once.
    let slow = MockUpstream::builder().chunk_interval(Duration::from_millis(200)).start().await;
    let weir = embedded(&keyed(&slow, "")).await;
    let mut body = weir.handle(chat(STREAM)).await.into_body();
    let first = body.frame().await.expect("a first event").expect("infallible").into_data().expect("data");
    assert!(first.starts_with(b"data: "), "{first:?}");
    drop(body);
    assert!(slow.wait_cancelled_streams(1, Duration::from_secs(10)).await, "the upstream stream was not cancelled");
    let mut aborted = 0.0;
    for _ in 0..100 {
        aborted = metric(&metrics(&weir).await, "weir_requests_total", &[("outcome", "client_abort")]);
        if aborted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(aborted, 1.0);
}

#[tokio::test]
async fn the_ratelimit_plugin_refuses_in_process_with_a_429() {
    let mock = MockUpstream::builder().start().await;
    let plugin = "[[plugins]]\nname = \"ratelimit\"\nsource = \"builtin:ratelimit\"\non_error = \"closed\"\nconfig = { limits = [{ per = [\"key\"], requests_per_minute = 2 }] }\n";
    // `chain` is a top-level key: before the first table.
    let text = format!("chain = [\"ratelimit\"]\n{}", keyed(&mock, plugin));
    let weir = embedded(&text).await;
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..4 {
        let response = weir.handle(chat(WHOLE)).await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"), "{:?}", response.headers());
            refused = Some(json(response).await);
        }
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    let body = refused.expect("refused");
    assert_eq!(openai_error(&body)["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn a_principal_the_application_vouches_for_needs_no_key_and_has_its_own_limits() {
    let mock = MockUpstream::builder().start().await;
    let plugin = "[[plugins]]\nname = \"ratelimit\"\nsource = \"builtin:ratelimit\"\non_error = \"closed\"\nconfig = { limits = [{ per = [\"key\"], requests_per_minute = 2 }] }\n";
    let text = format!("chain = [\"ratelimit\"]\n{}", keyed(&mock, plugin));
    let weir = embedded(&text).await;
    let unkeyed = || {
        http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(WHOLE)))
            .expect("request")
    };
    assert_eq!(weir.handle(unkeyed()).await.status(), 401, "over handle, a request still needs its key");
    // Two users of the application, each its own principal: each has its own two a minute.
    let mut statuses = Vec::new();
    for user in ["alice", "bob", "alice", "bob", "alice"] {
        statuses.push(weir.handle_as(user, "web", unkeyed()).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    assert_eq!(mock.request_count(), 4, "the refused request never went upstream");
    assert!(weir.shutdown().await);
}

/// A gateway built in code, with no configuration text: failover to the second target, the cache,
/// a per-key rate limit and the ledger's prices, each as the file's own sections would behave.
#[tokio::test]
async fn a_gateway_built_in_code_fails_over_caches_limits_and_prices() {
    use weir::embed::{Budget, Period, RateLimit, Upstream};

    let primary = MockUpstream::builder().always_fail(503).start().await;
    let backup = MockUpstream::builder().start().await;
    let ledger = state_dir().join(format!("builder-{}-{}.jsonl", std::process::id(), rand::random::<u32>()));
    let weir = Weir::builder()
        .upstream(Upstream::openai("primary", &primary.base_url()))
        .upstream(Upstream::openai("backup", &backup.base_url()).header("x-from", "builder"))
        .model("gpt-test", [("primary", "x"), ("backup", "x")])
        .key("app", "web", KEY)
        .rate_limit(RateLimit::per_key().requests_per_minute(3))
        .budget(Budget::team("web", 100.0, Period::Month))
        .cache(Duration::from_secs(60))
        .price("backup/x", 2.0, 8.0)
        .ledger(&ledger)
        .start()
        .await
        .expect("a gateway built in code");

    let cached = r#"{"model":"gpt-test","temperature":0,"messages":[{"role":"user","content":"cache me"}]}"#;
    let response = weir.handle(chat(cached)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-weir-cache"], "miss");
    let first = json(response).await;
    assert_eq!(first["choices"][0]["message"]["content"], "echo: cache me", "{first}");
    assert!(primary.request_count() >= 1, "the primary was tried first");
    assert_eq!(backup.request_count(), 1, "and the backup answered");
    assert_eq!(backup.requests()[0].header("x-from"), Some("builder"));

    let response = weir.handle(chat(cached)).await;
    assert_eq!(response.headers()["x-weir-cache"], "hit");
    assert_eq!(json(response).await["choices"], first["choices"]);
    assert_eq!(backup.request_count(), 1, "a hit never goes upstream");

    // The limit counts the hit too (it runs before the cache): the fourth request is refused.
    assert_eq!(weir.handle(chat(WHOLE)).await.status(), 200);
    let refused = weir.handle(chat(WHOLE)).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(openai_error(&json(refused).await)["code"], "rate_limit_exceeded");
    assert!(weir.shutdown().await);

    // Both upstream answers are on the ledger at the builder's price, $2 in and $8 out per million.
    let entries = weir::state::ledger::Ledger::read(&ledger).expect("the ledger");
    let answered: Vec<_> = entries.iter().filter(|e| e.target == "backup/x").collect();
    assert_eq!(answered.len(), 2, "{entries:?}");
    for entry in answered {
        let exact = u64::from(entry.prompt_tokens) * 2_000_000 + u64::from(entry.completion_tokens) * 8_000_000;
        assert!(entry.completion_tokens > 0, "{entry:?}");
        assert_eq!(entry.cost_pico_usd, exact, "{entry:?}");
        assert_eq!((entry.key_name.as_str(), entry.team.as_str()), ("app", "web"));
    }
}

#[tokio::test]
async fn serve_on_port_zero_answers_over_http_and_shutdown_drains_a_stream() {
    let mock = MockUpstream::builder().chunk_interval(Duration::from_millis(100)).start().await;
    let weir = embedded(&keyed(&mock, "")).await;
    let served = weir.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind")).expect("serve");
    assert_ne!(served.local_addr().port(), 0);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", served.url());

    let answer: Value =
        client.post(&url).bearer_auth(KEY).body(WHOLE).send().await.expect("send").json().await.expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], "echo: hello from inside");
    let refused = client.post(&url).body(WHOLE).send().await.expect("send");
    assert_eq!(refused.status(), 401);

    // A stream in flight over HTTP and one in process: shutdown waits for both to end.
    let over_http = client.post(&url).bearer_auth(KEY).body(STREAM).send().await.expect("send");
    assert_eq!(over_http.status(), 200);
    let in_process = weir.handle(chat(STREAM)).await;
    let stopping = tokio::spawn({
        let weir = weir.clone();
        async move { weir.shutdown().await }
    });
    let text = over_http.bytes().await.expect("the stream completes during the drain");
    assert_eq!(streamed_text(&sse_json(&text).0), "echo: one two three four five six");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!stopping.is_finished(), "shutdown waits for the in-process stream, not yet read");
    let bytes = in_process.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(streamed_text(&sse_json(&bytes).0), "echo: one two three four five six");
    assert!(stopping.await.expect("shutdown"), "everything drained within the grace period");

    // Stopped: the listener is closed, and in process a model request is refused as shutting down.
    assert!(client.get(format!("{}/healthz", served.url())).send().await.is_err(), "still accepting");
    let response = weir.handle(chat(WHOLE)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(openai_error(&json(response).await)["code"], "shutting_down");
}

#[tokio::test]
async fn a_reload_while_requests_are_in_flight_loses_none() {
    // About a second per stream: long enough that every reload below lands while they run.
    let mock = MockUpstream::builder().chunk_interval(Duration::from_millis(120)).start().await;
    let dir = state_dir().join("embed-reload");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("weir.toml");
    std::fs::write(&file, keyed(&mock, "")).expect("write");
    let weir = Weir::from_file(&file).await.expect("gateway");
    let served = weir.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind")).expect("serve");
    let url = format!("{}/v1/chat/completions", served.url());

    let mut requests = Vec::new();
    for i in 0..24 {
        let weir = weir.clone();
        let url = url.clone();
        requests.push(tokio::spawn(async move {
            if i % 2 == 0 {
                let response = weir.handle(chat(STREAM)).await;
                let status = response.status().as_u16();
                (status, response.into_body().collect().await.expect("body").to_bytes().to_vec())
            } else {
                let response =
                    reqwest::Client::new().post(&url).bearer_auth(KEY).body(STREAM).send().await.expect("send");
                (response.status().as_u16(), response.bytes().await.expect("body").to_vec())
            }
        }));
    }
    for _ in 0..200 {
        if mock.request_count() == 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mock.request_count(), 24, "every request reached the upstream");
    // Reloads while those streams run: a new model name appears with each, and a rejected config
    // in between leaves the last good one serving.
    for n in 0..4 {
        std::fs::write(
            &file,
            keyed(
                &mock,
                &format!("[[models]]\nname = \"added-{n}\"\ntargets = [{{ upstream = \"mock\", model = \"m\" }}]\n"),
            ),
        )
        .expect("write");
        weir.reload().await.expect("reload");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(requests.iter().any(|r| !r.is_finished()), "the reloads ran while streams were in flight");
    std::fs::write(&file, "[[upstreams]]\nname = 1\n").expect("write");
    let error = weir.reload().await.expect_err("an invalid file is refused");
    assert!(error.to_string().contains("upstreams[0].name"), "{error}");

    for request in requests {
        let (status, body) = request.await.expect("request task");
        assert_eq!(status, 200);
        let (events, done) = sse_json(&body);
        assert!(done, "cut short: {}", String::from_utf8_lossy(&body));
        assert_eq!(streamed_text(&events), "echo: one two three four five six");
    }
    assert_eq!(mock.cancelled_streams(), 0);
    let added = weir.handle(chat(&WHOLE.replace("gpt-test", "added-3"))).await;
    assert_eq!(added.status(), 200, "the last good reload serves");
    // Its body is still held: a shutdown now would wait for it.
    drop(added);
    assert!(weir.shutdown().await);
}
