//! Golden translations of the Completions API, both directions, streams fed byte by byte.
//! `UPDATE_EXPECT=1 cargo test -p weir api::completions` rewrites them.
#![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;
use crate::api::golden::{byte_by_byte, events, raw, render, stream_text};
use crate::api::sse::Splitter;

fn parse(body: Value) -> CompletionsRequest {
    CompletionsRequest::parse(&serde_json::to_vec(&body).unwrap()).expect("a valid request")
}

fn to_chat(body: Value, expected: Expect) {
    let rendered = match parse(body).to_chat() {
        Ok(chat) => render(&serde_json::to_value(&chat).unwrap()),
        Err(e) => format!("{} (param {:?})", e.message, e.param),
    };
    expected.assert_eq(&rendered);
}

/// A recorded OpenAI stream, fed byte by byte, through the encoder.
fn encode_stream(request: Value, sse: &str, expected: Expect) {
    let mut encoder = Encoder::new(&parse(request));
    let mut splitter = Splitter::default();
    let mut out = Vec::new();
    for byte in sse.as_bytes() {
        splitter.push(std::slice::from_ref(byte));
        while let Some(event) = splitter.next_event() {
            encoder.event(&event, &mut out);
        }
    }
    expected.assert_eq(&stream_text(&out));
}

#[test]
fn a_prompt_becomes_one_user_message_with_the_legacy_default_max_tokens() {
    to_chat(
        json!({"model": "m", "prompt": "Once upon a time", "temperature": 0, "stop": ["\n"], "user": "u1", "x_unknown": 1}),
        expect![[r#"
            {
              "max_tokens": 16,
              "messages": [
                {
                  "content": "Once upon a time",
                  "role": "user"
                }
              ],
              "model": "m",
              "stop": [
                "\n"
              ],
              "temperature": 0,
              "user": "u1"
            }"#]],
    );
}

#[test]
fn what_chat_cannot_express_is_refused_naming_the_field() {
    to_chat(
        json!({"model": "m", "prompt": ["a", "b"]}),
        expect![[
            r#"Only one text prompt per request can be translated (not a list or token ids). This model's provider is reached through chat completions; use a model served by an OpenAI-compatible upstream. (param Some("prompt"))"#
        ]],
    );
    to_chat(
        json!({"model": "m", "prompt": "a", "suffix": "z"}),
        expect![[
            r#"'suffix' (insertion) has no chat equivalent. This model's provider is reached through chat completions; use a model served by an OpenAI-compatible upstream. (param Some("suffix"))"#
        ]],
    );
    to_chat(
        json!({"model": "m", "prompt": [1, 2, 3]}),
        expect![[
            r#"Only one text prompt per request can be translated (not a list or token ids). This model's provider is reached through chat completions; use a model served by an OpenAI-compatible upstream. (param Some("prompt"))"#
        ]],
    );
    to_chat(
        json!({"model": "m", "prompt": "a", "logprobs": 2}),
        expect![[
            r#"'logprobs' cannot be translated for this model. This model's provider is reached through chat completions; use a model served by an OpenAI-compatible upstream. (param Some("logprobs"))"#
        ]],
    );
}

#[test]
fn bad_requests_name_the_field() {
    for (body, param) in [
        (json!({"prompt": "x"}), "model"),
        (json!({"model": "m"}), "prompt"),
        (json!({"model": "m", "prompt": {}}), "prompt"),
        (json!({"model": "m", "prompt": []}), "prompt"),
        (json!({"model": "m", "prompt": "x", "suffix": 3}), "suffix"),
        (json!({"model": "m", "prompt": "x", "logprobs": 9}), "logprobs"),
        (json!({"model": "m", "prompt": "x", "echo": "yes"}), "echo"),
    ] {
        let e = CompletionsRequest::parse(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
    }
}

#[test]
fn a_native_relay_keeps_every_field_and_asks_for_usage() {
    let r =
        parse(json!({"model": "m", "prompt": ["a", "b"], "stream": true, "suffix": "z", "logprobs": 1, "x": {"y": 1}}));
    let up: Value = serde_json::from_slice(&r.upstream_body("up").unwrap()).unwrap();
    expect![[r#"
        {
          "logprobs": 1,
          "model": "up",
          "prompt": [
            "a",
            "b"
          ],
          "stream": true,
          "stream_options": {
            "include_usage": true
          },
          "suffix": "z",
          "x": {
            "y": 1
          }
        }"#]]
    .assert_eq(&render(&up));
}

#[test]
fn a_whole_answer_becomes_a_text_completion_with_echo() {
    let completion: Completion = serde_json::from_value(json!({
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 7, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " there lived"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }))
    .unwrap();
    let encoder = Encoder::new(&parse(json!({"model": "m", "prompt": "Once", "echo": true})));
    expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "length",
              "index": 0,
              "logprobs": null,
              "text": "Once there lived"
            }
          ],
          "created": 0,
          "id": "cmpl-abc",
          "model": "up",
          "object": "text_completion",
          "usage": {
            "completion_tokens": 2,
            "prompt_tokens": 4,
            "total_tokens": 6
          }
        }"#]]
    .assert_eq(&render(&encoder.whole(&completion)));
}

#[test]
fn a_recorded_chat_stream_becomes_completion_chunks() {
    encode_stream(
        json!({"model": "m", "prompt": "hi", "stream": true, "stream_options": {"include_usage": true}}),
        include_str!("../../../../bench/fixtures/openai/length.sse"),
        expect![[r#"
            {"choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":"{\""}],"created":0,"id":"cmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","model":"gpt-4o-2024-08-06","object":"text_completion"}
            {"choices":[{"finish_reason":"length","index":0,"logprobs":null,"text":""}],"created":0,"id":"cmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","model":"gpt-4o-2024-08-06","object":"text_completion"}
            {"choices":[],"created":0,"id":"cmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","model":"gpt-4o-2024-08-06","object":"text_completion","usage":{"completion_tokens":1,"prompt_tokens":79,"total_tokens":80}}
            [DONE]"#]],
    );
}

#[test]
fn without_include_usage_the_usage_chunk_is_not_sent() {
    encode_stream(
        json!({"model": "m", "prompt": "hi", "stream": true}),
        include_str!("../../../../bench/fixtures/openai/length.sse"),
        expect![[r#"
            {"choices":[{"finish_reason":null,"index":0,"logprobs":null,"text":"{\""}],"created":0,"id":"cmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","model":"gpt-4o-2024-08-06","object":"text_completion"}
            {"choices":[{"finish_reason":"length","index":0,"logprobs":null,"text":""}],"created":0,"id":"cmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh","model":"gpt-4o-2024-08-06","object":"text_completion"}
            [DONE]"#]],
    );
}

#[test]
fn native_completions_read_as_chat_for_plugins_without_the_echo() {
    let stream = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"w\",\"choices\":[{\"index\":0,\"text\":\"Hel\",\"logprobs\":null,\"finish_reason\":null}]}\n\ndata: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"w\",\"choices\":[{\"index\":0,\"text\":\"lo\",\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"w\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    let mut splitter = Splitter::default();
    let split = byte_by_byte(stream.as_bytes(), |b, out| {
        splitter.push(b);
        out.extend(std::iter::from_fn(|| splitter.next_event()));
    });
    assert_eq!(raw(&split), stream.as_bytes(), "split without changing a byte");
    let mut decoder = Decoder::new(&parse(json!({"model": "m", "prompt": "He", "echo": true})));
    let decoded: Vec<u8> = split.iter().flat_map(|e| decoder.event(e).to_vec()).collect();
    assert_eq!(events(&decoded).len(), 4);
    expect![[r#"
        {"choices":[{"delta":{"content":"l"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"cmpl-1","model":"w","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":"lo"},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"cmpl-1","model":"w","object":"chat.completion.chunk"}
        {"choices":[],"created":0,"id":"cmpl-1","model":"w","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":2,"total_tokens":4}}
        [DONE]"#]]
    .assert_eq(&stream_text(&decoded));
    let whole = decode_whole(br#"{"id":"cmpl-2","object":"text_completion","created":1,"model":"w","choices":[{"index":0,"text":"Hello","logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#, Some("He")).unwrap();
    assert_eq!(
        whole.pointer("/choices/0/message/content"),
        Some(&json!("llo")),
        "the echoed prompt is not the model's answer"
    );
    assert_eq!(whole["usage"]["total_tokens"], 2);
}
