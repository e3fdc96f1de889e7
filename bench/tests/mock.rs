//! Checks that the mock upstream speaks OpenAI's wire protocol: JSON, SSE, errors and injected faults.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use weir_bench::mock::{MODELS, TOOL_ARGUMENTS, embedding_vector};
use weir_bench::{FIXTURES, MockUpstream, fixture};

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<not utf-8>")
    }

    /// The `data:` payloads of an SSE body, in order.
    fn events(&self) -> Vec<&str> {
        self.text().split_terminator("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect()
    }
}

/// One request on a fresh HTTP/1.1 connection, with a plain hyper client.
async fn send(
    mock: &MockUpstream,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let tcp = TcpStream::connect(mock.addr()).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", mock.addr().to_string());
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.map(Value::to_string).unwrap_or_default())))?;
    let response = sender.send_request(req).await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply { status, headers, body })
}

async fn chat(mock: &MockUpstream, body: &Value) -> Result<Reply> {
    send(mock, "POST", "/v1/chat/completions", Some(body), &[]).await
}

fn hello(stream: bool) -> Value {
    json!({
        "model": "mock-model",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there, mock"},
        ],
    })
}

fn assert_openai_error(reply: &Reply, status: u16, param: Option<&str>) -> Result<Value> {
    ensure!(reply.status.as_u16() == status, "status {} body {}", reply.status, reply.text());
    let error = reply.json()?["error"].clone();
    ensure!(error["message"].is_string() && error["type"].is_string(), "not an OpenAI error: {error}");
    ensure!(error.get("param").is_some() && error.get("code").is_some(), "missing fields: {error}");
    ensure!(error["param"].as_str() == param, "param {} != {param:?}", error["param"]);
    Ok(error)
}

#[tokio::test]
async fn fixture_replay_is_byte_exact_and_usage_only_on_request() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    for &name in FIXTURES {
        let recorded = fixture(name).context("listed fixture missing")?;
        let usage_event = recorded
            .split_inclusive("\n\n")
            .find(|e| e.contains(r#""choices":[],"usage":"#))
            .context("fixture has no usage chunk")?;
        let request = |include_usage: bool| {
            json!({
                "model": format!("fixture:{name}"),
                "stream": true,
                "stream_options": {"include_usage": include_usage},
                "messages": [{"role": "user", "content": "hi"}],
            })
        };

        let with_usage = chat(&mock, &request(true)).await?;
        ensure!(with_usage.status == StatusCode::OK, "{name}: {}", with_usage.text());
        ensure!(with_usage.headers["content-type"] == "text/event-stream");
        ensure!(with_usage.body == recorded.as_bytes(), "{name}: replay differs from fixture");

        let without = chat(&mock, &request(false)).await?;
        ensure!(without.text() == recorded.replacen(usage_event, "", 1), "{name}: usage not stripped");
        ensure!(without.text().ends_with("data: [DONE]\n\n"));
    }
    let unknown =
        chat(&mock, &json!({"model": "fixture:nope", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
            .await?;
    let error = assert_openai_error(&unknown, 404, None)?;
    ensure!(error["code"] == "model_not_found");
    Ok(())
}

#[tokio::test]
async fn chat_answers_echo_and_pass_unknown_fields() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let mut body = hello(false);
    body["x_probe"] = json!({"nested": [1, 2]});
    let reply = chat(&mock, &body).await?;
    ensure!(reply.status == StatusCode::OK, "{}", reply.text());
    let v = reply.json()?;
    ensure!(v["object"] == "chat.completion" && v["model"] == "mock-model");
    ensure!(v["choices"][0]["message"]["role"] == "assistant");
    ensure!(v["choices"][0]["message"]["content"] == "echo: Hello there, mock");
    ensure!(v["choices"][0]["finish_reason"] == "stop");
    // Prompt: "Be brief." (2 words) + "Hello there, mock" (3); answer: 4 words.
    ensure!(v["usage"] == json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}));
    ensure!(v["x_mock"]["echo_unknown"] == json!({"nested": [1, 2]}));

    let plain = chat(&mock, &hello(false)).await?.json()?;
    ensure!(plain["x_mock"]["echo_unknown"].is_null());
    Ok(())
}

#[tokio::test]
async fn chat_tool_call_then_tool_result() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let call =
        chat(&mock, &json!({"model": "m", "tools": tools, "messages": [{"role": "user", "content": "Weather?"}]}))
            .await?
            .json()?;
    let message = &call["choices"][0]["message"];
    ensure!(message["content"].is_null(), "{call}");
    ensure!(message["tool_calls"][0]["id"] == "call_mock_1");
    ensure!(message["tool_calls"][0]["type"] == "function");
    ensure!(message["tool_calls"][0]["function"]["name"] == "get_weather");
    ensure!(message["tool_calls"][0]["function"]["arguments"] == TOOL_ARGUMENTS);
    ensure!(call["choices"][0]["finish_reason"] == "tool_calls");

    let answer = chat(
        &mock,
        &json!({"model": "m", "tools": tools, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": message["tool_calls"]},
            {"role": "tool", "tool_call_id": "call_mock_1", "content": "sunny, 21C"},
        ]}),
    )
    .await?
    .json()?;
    ensure!(answer["choices"][0]["message"]["content"] == "tool said: sunny, 21C", "{answer}");
    ensure!(answer["choices"][0]["finish_reason"] == "stop");
    Ok(())
}

#[tokio::test]
async fn synthetic_stream_matches_the_non_streaming_answer() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let whole = chat(&mock, &hello(false)).await?.json()?;

    let reply = chat(&mock, &hello(true)).await?;
    ensure!(reply.headers["content-type"] == "text/event-stream");
    let events = reply.events();
    ensure!(events.last() == Some(&"[DONE]"), "{}", reply.text());
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e)).collect::<Result<_, _>>()?;
    ensure!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "mock-model"));
    ensure!(chunks[0]["choices"][0]["delta"] == json!({"role": "assistant", "content": ""}));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    ensure!(text == whole["choices"][0]["message"]["content"], "streamed {text:?}");
    ensure!(chunks.len() > 3, "one chunk per word expected");
    let last = chunks.last().context("no chunks")?;
    ensure!(last["choices"][0]["finish_reason"] == "stop" && last["choices"][0]["delta"] == json!({}));
    ensure!(chunks.iter().all(|c| c.get("usage").is_none()), "usage without include_usage");

    let mut with_usage = hello(true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let reply = chat(&mock, &with_usage).await?;
    let events = reply.events();
    let usage: Value = serde_json::from_str(events[events.len() - 2])?;
    ensure!(usage["choices"] == json!([]) && usage["usage"] == whole["usage"], "{usage}");
    Ok(())
}

#[tokio::test]
async fn streamed_tool_call_arguments_concatenate() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let reply = chat(
        &mock,
        &json!({"model": "m", "stream": true,
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "messages": [{"role": "user", "content": "go"}]}),
    )
    .await?;
    let events = reply.events();
    ensure!(events.last() == Some(&"[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e)).collect::<Result<_, _>>()?;
    let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    ensure!(first["id"] == "call_mock_1" && first["function"]["name"] == "lookup", "{first}");
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    ensure!(arguments == TOOL_ARGUMENTS);
    ensure!(chunks.last().context("no chunks")?["choices"][0]["finish_reason"] == "tool_calls");
    Ok(())
}

#[tokio::test]
async fn chat_validation_errors_name_the_param() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let no_model = chat(&mock, &json!({"messages": [{"role": "user", "content": "x"}]})).await?;
    assert_openai_error(&no_model, 400, Some("model"))?;
    let empty = chat(&mock, &json!({"model": "m", "messages": []})).await?;
    assert_openai_error(&empty, 400, Some("messages"))?;
    let missing = chat(&mock, &json!({"model": "m"})).await?;
    assert_openai_error(&missing, 400, Some("messages"))?;
    let not_json = send(&mock, "POST", "/v1/chat/completions", None, &[]).await?;
    assert_openai_error(&not_json, 400, None)?;
    let unknown = send(&mock, "GET", "/v1/nope", None, &[]).await?;
    assert_openai_error(&unknown, 404, None)?;
    let wrong_method = send(&mock, "GET", "/v1/chat/completions", None, &[]).await?;
    assert_openai_error(&wrong_method, 404, None)?;
    Ok(())
}

#[tokio::test]
async fn api_key_is_required_when_configured() -> Result<()> {
    let mock = MockUpstream::builder().api_key("sk-test").start().await;
    let none = chat(&mock, &hello(false)).await?;
    ensure!(assert_openai_error(&none, 401, None)?["code"] == "invalid_api_key");
    let wrong =
        send(&mock, "POST", "/v1/chat/completions", Some(&hello(false)), &[("authorization", "Bearer nope")]).await?;
    ensure!(assert_openai_error(&wrong, 401, None)?["code"] == "invalid_api_key");
    let right =
        send(&mock, "POST", "/v1/chat/completions", Some(&hello(false)), &[("authorization", "Bearer sk-test")])
            .await?;
    ensure!(right.status == StatusCode::OK, "{}", right.text());
    Ok(())
}

#[tokio::test]
async fn models_are_listed() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let v = send(&mock, "GET", "/v1/models", None, &[]).await?.json()?;
    ensure!(v["object"] == "list");
    let ids: Vec<&str> = v["data"].as_array().context("data")?.iter().filter_map(|m| m["id"].as_str()).collect();
    ensure!(ids == MODELS);
    ensure!(
        v["data"]
            .as_array()
            .context("data")?
            .iter()
            .all(|m| m["object"] == "model" && m["owned_by"].is_string() && m["created"].is_u64())
    );
    Ok(())
}

#[tokio::test]
async fn embeddings_base64_decodes_to_the_float_vector() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let embed = |body: Value| {
        let mock = &mock;
        async move { send(mock, "POST", "/v1/embeddings", Some(&body), &[]).await }
    };
    let floats = embed(json!({"model": "e", "input": ["first text", "second"]})).await?.json()?;
    let encoded =
        embed(json!({"model": "e", "input": ["first text", "second"], "encoding_format": "base64"})).await?.json()?;
    ensure!(floats["object"] == "list" && floats["model"] == "e");
    ensure!(floats["usage"] == json!({"prompt_tokens": 3, "total_tokens": 3}), "{}", floats["usage"]);
    for index in 0..2 {
        let item = &floats["data"][index];
        ensure!(item["object"] == "embedding" && item["index"] == index);
        let vector: Vec<f32> = item["embedding"]
            .as_array()
            .context("float embedding")?
            .iter()
            // The mock sends f32 values, so narrowing loses nothing.
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        ensure!(vector.len() == 8, "default dimension is 8");
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        ensure!((norm - 1.0).abs() < 1e-5, "norm {norm}");

        let b64 = encoded["data"][index]["embedding"].as_str().context("base64 embedding")?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        ensure!(decoded == vector, "base64 {decoded:?} != float {vector:?}");
    }
    let expected = embedding_vector(b"first text", 8);
    ensure!(
        serde_json::to_string(&floats["data"][0]["embedding"])? == serde_json::to_string(&expected)?,
        "not f32 short form"
    );

    let sized = embed(json!({"model": "e", "input": "x", "dimensions": 32})).await?.json()?;
    ensure!(sized["data"][0]["embedding"].as_array().map(Vec::len) == Some(32));
    let tokens = embed(json!({"model": "e", "input": [[1, 2, 3], [4]]})).await?.json()?;
    ensure!(tokens["data"].as_array().map(Vec::len) == Some(2));
    ensure!(tokens["usage"]["prompt_tokens"] == 4);
    let one_token_list = embed(json!({"model": "e", "input": [5, 6]})).await?.json()?;
    ensure!(one_token_list["data"].as_array().map(Vec::len) == Some(1));

    for bad in [
        json!({"model": "e"}),
        json!({"model": "e", "input": ""}),
        json!({"model": "e", "input": []}),
        json!({"model": "e", "input": [[]]}),
    ] {
        assert_openai_error(&embed(bad).await?, 400, Some("input"))?;
    }
    assert_openai_error(
        &embed(json!({"model": "e", "input": "x", "encoding_format": "hex"})).await?,
        400,
        Some("encoding_format"),
    )?;
    Ok(())
}

#[tokio::test]
async fn fail_first_then_success() -> Result<()> {
    let mock = MockUpstream::builder().fail_first(2, 429).start().await;
    for _ in 0..2 {
        let reply = chat(&mock, &hello(false)).await?;
        ensure!(assert_openai_error(&reply, 429, None)?["code"] == "rate_limit_exceeded");
        ensure!(reply.headers["retry-after"] == "1");
    }
    ensure!(chat(&mock, &hello(false)).await?.status == StatusCode::OK);
    ensure!(mock.request_count() == 3);

    let down = MockUpstream::builder().always_fail(503).start().await;
    for _ in 0..3 {
        let reply = send(&down, "POST", "/v1/embeddings", Some(&json!({"model": "e", "input": "x"})), &[]).await?;
        ensure!(assert_openai_error(&reply, 503, None)?["type"] == "server_error");
        ensure!(reply.headers.get("retry-after").is_none());
    }
    Ok(())
}

/// Writes a raw HTTP/1.1 request and reads until the server closes or resets the connection.
async fn raw_exchange(mock: &MockUpstream, body: &Value) -> Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(mock.addr()).await?;
    let body = body.to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        mock.addr(),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await? {
            Ok(0) | Err(_) => return Ok(received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn break_stream_after_aborts_without_done() -> Result<()> {
    let mock = MockUpstream::builder().break_stream_after(3).start().await;
    let mut request = hello(true);
    request["model"] = json!("fixture:text_a");
    let raw = raw_exchange(&mock, &request).await?;
    let text = String::from_utf8_lossy(&raw);
    ensure!(text.starts_with("HTTP/1.1 200"), "{text}");
    ensure!(text.matches("data: ").count() == 3, "{text}");
    ensure!(!text.contains("[DONE]"));
    ensure!(!text.ends_with("0\r\n\r\n"), "stream ended with a clean chunked terminator");

    // A normal client sees the body fail, not end.
    let tcp = TcpStream::connect(mock.addr()).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::post("/v1/chat/completions")
        .header("host", mock.addr().to_string())
        .body(Full::new(Bytes::from(hello(true).to_string())))?;
    let response = sender.send_request(req).await?;
    ensure!(response.into_body().collect().await.is_err(), "a broken stream must not end cleanly");
    Ok(())
}

#[tokio::test]
async fn client_going_away_counts_as_cancelled_stream() -> Result<()> {
    let mock = MockUpstream::builder().chunk_interval(Duration::from_millis(50)).start().await;
    let mut request = hello(true);
    request["model"] = json!("fixture:text_b");
    let body = request.to_string();
    let mut tcp = TcpStream::connect(mock.addr()).await?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(body.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buf = [0_u8; 4096];
    while !String::from_utf8_lossy(&received).contains("data: ") {
        let n = tcp.read(&mut buf).await?;
        ensure!(n > 0, "closed before the first event");
        received.extend_from_slice(&buf[..n]);
    }
    ensure!(mock.cancelled_streams() == 0);
    drop(tcp);
    ensure!(mock.wait_cancelled_streams(1, Duration::from_secs(5)).await, "cancellation not seen");

    // A stream read to the end is not a cancellation.
    let fast = MockUpstream::builder().start().await;
    chat(&fast, &hello(true)).await?;
    ensure!(!fast.wait_cancelled_streams(1, Duration::from_millis(100)).await);
    Ok(())
}

#[tokio::test]
async fn requests_are_recorded_in_order() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    send(&mock, "GET", "/v1/models?limit=2", None, &[("x-trace", "abc")]).await?;
    chat(&mock, &hello(false)).await?;
    let requests = mock.requests();
    ensure!(requests.len() == 2 && mock.request_count() == 2);
    ensure!(requests[0].method == "GET" && requests[0].path == "/v1/models?limit=2");
    ensure!(requests[0].header("x-trace") == Some("abc") && requests[0].json().is_null());
    ensure!(requests[1].method == "POST" && requests[1].path == "/v1/chat/completions");
    ensure!(requests[1].json() == hello(false));

    let quiet = MockUpstream::builder().record_requests(false).start().await;
    chat(&quiet, &hello(false)).await?;
    ensure!(quiet.requests().is_empty() && quiet.request_count() == 1);
    Ok(())
}

#[tokio::test]
async fn latency_and_chunk_interval_delay_responses() -> Result<()> {
    let mock = MockUpstream::builder()
        .latency(Duration::from_millis(100))
        .chunk_interval(Duration::from_millis(20))
        .start()
        .await;
    let started = Instant::now();
    send(&mock, "GET", "/v1/models", None, &[]).await?;
    ensure!(started.elapsed() >= Duration::from_millis(100));

    let started = Instant::now();
    let mut request = hello(true);
    request["model"] = json!("fixture:length"); // 4 events without usage: 3 gaps
    let reply = chat(&mock, &request).await?;
    ensure!(reply.events().len() == 4);
    ensure!(started.elapsed() >= Duration::from_millis(160), "{:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn dropping_the_mock_stops_the_server() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let addr = mock.addr();
    ensure!(mock.base_url() == format!("http://{addr}/v1"));
    drop(mock);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        ensure!(Instant::now() < deadline, "still accepting after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn failover_knobs_fail_the_way_real_upstreams_do() -> Result<()> {
    // A reset before any response byte: the connection dies, then the mock answers again.
    let mock = MockUpstream::builder().reset_first(1).start().await;
    ensure!(chat(&mock, &hello(false)).await.is_err(), "the first request is reset");
    ensure!(chat(&mock, &hello(false)).await?.status == StatusCode::OK);

    // A 429 with the Retry-After asked for.
    let mock = MockUpstream::builder().fail_first(1, 429).retry_after("7").start().await;
    let reply = chat(&mock, &hello(false)).await?;
    ensure!(reply.status == StatusCode::TOO_MANY_REQUESTS && reply.headers["retry-after"] == "7");

    // A clean end without [DONE], after the finish and the usage chunk.
    let mock = MockUpstream::builder().no_done().start().await;
    let mut request = hello(true);
    request["stream_options"] = json!({"include_usage": true});
    let reply = chat(&mock, &request).await?;
    let events = reply.events();
    ensure!(!events.contains(&"[DONE]") && events.last().is_some_and(|e| e.contains("\"usage\"")), "{events:?}");

    // A slow first token: headers at once, the first event later.
    let mock = MockUpstream::builder().first_token_delay(Duration::from_millis(300)).start().await;
    let started = Instant::now();
    let reply = chat(&mock, &hello(true)).await?;
    ensure!(reply.status == StatusCode::OK && started.elapsed() >= Duration::from_millis(290));

    // Only the first stream stalls; it is cancelled when its client leaves.
    let mock = MockUpstream::builder().stall_stream_after(2).faulty_streams(1).start().await;
    let stalled = tokio::time::timeout(Duration::from_millis(500), chat(&mock, &hello(true))).await;
    ensure!(stalled.is_err(), "the first stream stalls");
    ensure!(mock.wait_cancelled_streams(1, Duration::from_secs(5)).await);
    ensure!(chat(&mock, &hello(true)).await?.events().contains(&"[DONE]"), "the second is whole");
    Ok(())
}

#[tokio::test]
async fn prefill_is_continued_when_asked_the_upstreams_way_or_refused() -> Result<()> {
    let mock = MockUpstream::builder().start().await;
    let mut request = hello(false);
    request["messages"].as_array_mut().unwrap().push(json!({"role": "assistant", "content": "echo: Hello"}));
    let anew = chat(&mock, &request).await?.json()?;
    ensure!(anew["choices"][0]["message"]["content"] == "echo: Hello there, mock", "unmarked: answered anew");
    request["continue_final_message"] = json!(true);
    let continued = chat(&mock, &request).await?.json()?;
    ensure!(continued["choices"][0]["message"]["content"] == " there, mock", "{continued}");

    let refusing = MockUpstream::builder().refuse_prefill().start().await;
    assert_openai_error(&chat(&refusing, &request).await?, 400, Some("messages"))?;
    Ok(())
}

#[tokio::test]
async fn a_small_context_window_and_a_giant_event_are_what_providers_send() -> Result<()> {
    let mock = MockUpstream::builder().context_window(2).start().await;
    let error = assert_openai_error(&chat(&mock, &hello(false)).await?, 400, Some("messages"))?;
    ensure!(error["code"] == "context_length_exceeded", "{error}");

    let mock = MockUpstream::builder().giant_event(1 << 20).start().await;
    let reply = chat(&mock, &hello(true)).await?;
    ensure!(reply.body.len() > 1 << 20 && !reply.text().contains("\n\n"), "one event without an end");
    Ok(())
}
