//! The drop-in surface: chat (whole and streamed), tools, embeddings and models through async-openai,
//! and the recorded OpenAI streams relayed without losing a byte.

use async_openai::types::chat::{ChatCompletionMessageToolCalls, CreateChatCompletionRequest, FinishReason};
use async_openai::types::embeddings::CreateEmbeddingRequest;
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};
use weir_bench::mock::{self, MockUpstream};

use crate::support::{TestGateway, config, metric, post, post_raw, sse_data};

fn chat_request(value: Value) -> CreateChatCompletionRequest {
    serde_json::from_value(value).expect("a valid chat request")
}

#[tokio::test]
async fn chat_is_relayed_with_the_model_rewritten_and_unknown_fields_kept_both_ways() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;

    let response = gw
        .openai("unused")
        .chat()
        .create(chat_request(json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hello there"}]})))
        .await
        .expect("chat");
    assert_eq!(response.choices[0].message.content.as_deref(), Some("echo: hello there"));
    let usage = response.usage.expect("usage");
    assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);

    let sent = upstream.requests().pop().expect("the mock saw the request").json();
    assert_eq!(sent["model"], "mock-model", "the public name is rewritten to the target's");

    // Fields neither side of the gateway knows must cross it untouched.
    let (status, _, body) = post(
        &format!("{}/chat/completions", gw.base_url()),
        r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi","x_msg":[1]}],"x_probe":{"deep":[1,"two",null]},"logit_bias":{"50256":-100}}"#,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = upstream.requests().pop().expect("recorded").json();
    assert_eq!(sent["x_probe"], json!({"deep": [1, "two", null]}));
    assert_eq!(sent["logit_bias"], json!({"50256": -100}));
    assert_eq!(sent["messages"][0]["x_msg"], json!([1]));
    assert_eq!(
        body["x_mock"]["echo_unknown"],
        json!({"deep": [1, "two", null]}),
        "unknown response fields reach the client"
    );

    let metrics = gw.metrics().await;
    let labels = [("model", "gpt-test"), ("target", "mock/mock-model"), ("status", "200"), ("outcome", "ok")];
    assert_eq!(metric(&metrics, "weir_requests_total", &labels), 2.0, "{metrics}");
    assert!(metric(&metrics, "weir_tokens_total", &[("model", "gpt-test"), ("token_type", "output")]) >= 4.0);
}

#[tokio::test]
async fn streams_carry_usage_only_when_the_client_asks_but_the_gateway_always_learns_it() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let client = gw.openai("unused");

    for include_usage in [false, true] {
        let mut request = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "one two three"}]});
        if include_usage {
            request["stream_options"] = json!({"include_usage": true});
        }
        let mut stream = client.chat().create_stream(chat_request(request)).await.expect("stream");
        let (mut text, mut usage, mut finish) = (String::new(), None, None);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("chunk");
            if let Some(u) = chunk.usage {
                usage = Some(u);
            }
            for choice in chunk.choices {
                text.push_str(choice.delta.content.as_deref().unwrap_or_default());
                finish = finish.or(choice.finish_reason);
            }
        }
        assert_eq!(text, "echo: one two three");
        assert_eq!(finish, Some(FinishReason::Stop));
        assert_eq!(usage.is_some(), include_usage, "usage chunk iff asked (include_usage={include_usage})");
        let sent = upstream.requests().pop().expect("recorded").json();
        assert_eq!(sent["stream_options"]["include_usage"], true, "the gateway always asks the upstream");
    }

    let metrics = gw.metrics().await;
    let input = metric(&metrics, "weir_tokens_total", &[("model", "gpt-test"), ("token_type", "input")]);
    assert!(input >= 6.0, "usage of both streams was recorded: {metrics}");
    assert_eq!(metric(&metrics, "gen_ai_server_time_to_first_token_seconds_count", &[("model", "gpt-test")]), 2.0);
}

#[tokio::test]
async fn every_recorded_openai_stream_is_relayed_byte_for_byte() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    for name in mock::FIXTURES {
        let fixture = mock::fixture(name).expect("fixture");
        let url = format!("{}/chat/completions", gw.base_url());
        let with_usage = format!(
            r#"{{"model":"fixture:{name}","messages":[{{"role":"user","content":"x"}}],"stream":true,"stream_options":{{"include_usage":true}}}}"#
        );
        let (status, body) = post_raw(&url, &with_usage).await;
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8_lossy(&body), fixture, "{name}: relayed bytes differ from the recording");

        // Without include_usage the client gets exactly the recording minus its usage chunk.
        let without = with_usage.replace(r#","stream_options":{"include_usage":true}"#, "");
        let (_, body) = post_raw(&url, &without).await;
        let expected: String = fixture
            .split_inclusive("\n\n")
            .filter(|event| !(event.contains(r#""choices":[]"#) && event.contains(r#""usage":{"#)))
            .collect();
        assert!(expected.len() < fixture.len(), "{name} has a usage chunk");
        assert_eq!(String::from_utf8_lossy(&body), expected, "{name}: without include_usage");
    }
}

#[tokio::test]
async fn a_tool_call_round_trip_is_relayed() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let client = gw.openai("unused");
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);

    let first = client
        .chat()
        .create(chat_request(
            json!({"model": "gpt-test", "tools": tools, "messages": [{"role": "user", "content": "weather?"}]}),
        ))
        .await
        .expect("first turn");
    let choice = &first.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let Some(ChatCompletionMessageToolCalls::Function(call)) =
        choice.message.tool_calls.as_ref().and_then(|c| c.first())
    else {
        panic!("expected a function call: {first:?}");
    };
    assert_eq!((call.function.name.as_str(), call.function.arguments.as_str()), ("get_weather", mock::TOOL_ARGUMENTS));

    let second = client
        .chat()
        .create(chat_request(json!({"model": "gpt-test", "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}
        ]})))
        .await
        .expect("second turn");
    assert_eq!(second.choices[0].message.content.as_deref(), Some("tool said: sunny, 21C"));
    let sent = upstream.requests().pop().expect("recorded").json();
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], call.id.as_str(), "tool history reaches the upstream");
    assert_eq!(sent["messages"][2]["tool_call_id"], call.id.as_str());

    // The recorded parallel tool-call stream, assembled by the client from argument fragments.
    let mut stream = client
        .chat()
        .create_stream(chat_request(
            json!({"model": "fixture:parallel_tool_calls", "messages": [{"role": "user", "content": "x"}]}),
        ))
        .await
        .expect("stream");
    let mut calls: Vec<(String, String)> = Vec::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.expect("chunk").choices {
            for tc in choice.delta.tool_calls.unwrap_or_default() {
                let i = tc.index as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                if let Some(f) = tc.function {
                    calls[i].0.push_str(f.name.as_deref().unwrap_or_default());
                    calls[i].1.push_str(f.arguments.as_deref().unwrap_or_default());
                }
            }
        }
    }
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (name, args) in &calls {
        assert!(!name.is_empty());
        serde_json::from_str::<Value>(args)
            .unwrap_or_else(|e| panic!("arguments of {name} are not JSON ({e}): {args}"));
    }
}

#[tokio::test]
async fn embeddings_as_floats_and_base64_and_the_model_list() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(
        &upstream.base_url(),
        "[[models]]\nname = \"embed\"\ntargets = [{ upstream = \"mock\", model = \"text-embedding-3-small\" }]",
    ))
    .await;
    let client = gw.openai("unused");
    let request: CreateEmbeddingRequest =
        serde_json::from_value(json!({"model": "embed", "input": ["alpha", "beta"], "dimensions": 4}))
            .expect("request");
    let floats = client.embeddings().create(request.clone()).await.expect("float embeddings");
    assert_eq!(floats.data.len(), 2);
    assert_eq!(floats.data[0].embedding.len(), 4);
    assert_eq!(upstream.requests().pop().expect("recorded").json()["model"], "text-embedding-3-small");

    let mut request = request;
    request.encoding_format = Some(async_openai::types::embeddings::EncodingFormat::Base64);
    let b64 = client.embeddings().create_base64(request).await.expect("base64 embeddings");
    for (f, b) in floats.data.iter().zip(&b64.data) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&b.embedding.0).expect("base64");
        let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(decoded, f.embedding, "the base64 body is relayed intact");
    }

    let models = client.models().list().await.expect("models");
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["gpt-test", "embed"], "public names only, in config order; the wildcard is not a model");
    let one = client.models().retrieve("embed").await.expect("retrieve");
    assert_eq!(one.id, "embed");
}

#[tokio::test]
async fn the_openai_compatible_paths_also_work_without_the_v1_prefix_and_data_lines_are_parsed() {
    let upstream = MockUpstream::builder().start().await;
    let gw = TestGateway::start(&config(&upstream.base_url(), "")).await;
    let (status, body) = post_raw(
        &gw.url("/chat/completions"),
        r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"a b"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
}
