//! Property tests of the Gemini translators: any request the parse stage accepts translates or is
//! refused with a 400 naming its field; a thought signature survives the round trip through an
//! OpenAI client's tool call id whatever Gemini's own call id holds; any answer becomes OpenAI
//! choices with usage; a stream is translated the same however the network cuts it, ends after an
//! error event, and never sizes anything by what the upstream claims.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::providers::arbitrary::{self, accepted_chat, chunks, json_value};
use crate::providers::golden::stream_text;

/// A Gemini answer: real shapes, with values of any kind now and then.
fn answer() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        "[a-z ]{0,8}".prop_map(|t| json!({"text": t})),
        "[a-z ]{0,8}".prop_map(|t| json!({"text": t, "thought": true})),
        ("[a-z_]{1,6}", json_value(), prop::option::of("[A-Za-z0-9+/=]{1,8}"), prop::option::of("[a-z0-9~]{1,6}"))
            .prop_map(|(name, args, signature, id)| {
                let mut call = json!({"name": name, "args": args});
                if let Some(id) = id {
                    call["id"] = json!(id);
                }
                let mut part = json!({"functionCall": call});
                if let Some(signature) = signature {
                    part["thoughtSignature"] = json!(signature);
                }
                part
            }),
        json_value(),
    ];
    let candidate = (
        prop::collection::vec(part, 0..3),
        prop::option::of(prop::sample::select(vec!["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "OTHER"])),
        prop::option::of(prop_oneof![4 => (0u64..3).prop_map(Value::from), 1 => json_value()]),
    )
        .prop_map(|(parts, reason, index)| {
            let mut c = json!({"content": {"role": "model", "parts": parts}});
            if let Some(reason) = reason {
                c["finishReason"] = json!(reason);
            }
            if let Some(index) = index {
                c["index"] = index;
            }
            c
        });
    (prop::collection::vec(candidate, 0..3), prop::option::of(json_value()), any::<bool>()).prop_map(
        |(candidates, usage, blocked)| {
            let mut a = json!({"candidates": candidates});
            if let Some(usage) = usage {
                a["usageMetadata"] = json!({"promptTokenCount": usage, "candidatesTokenCount": 2});
            }
            if blocked {
                a["promptFeedback"] = json!({"blockReason": "SAFETY"});
            }
            a
        },
    )
}

/// One SSE event of a Gemini stream: an answer, an error, or data that is not JSON.
fn sse_event() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => answer().prop_map(|a| format!("data: {a}\r\n\r\n").into_bytes()),
        1 => (400u64..600).prop_map(|code| format!("data: {}\n\n", json!({"error": {"code": code, "message": "no"}})).into_bytes()),
        1 => "[a-z{ ]{0,10}".prop_map(|junk| format!("data: {junk}\n\n").into_bytes()),
    ]
}

fn translate(chunks: &[Vec<u8>]) -> String {
    let mut stream = ChunkStream::new("up", "m");
    let mut out = Vec::new();
    for chunk in chunks {
        stream.push(chunk, &mut out);
    }
    stream.finish(&mut out);
    for event in &out {
        assert!(&event.data[..] == b"[DONE]" || serde_json::from_slice::<Value>(&event.data).is_ok(), "{event:?}");
    }
    if let Some(at) = out.iter().position(|e| e.data.starts_with(b"{\"error\"")) {
        assert_eq!(at, out.len() - 1, "nothing after the error event");
    }
    stream_text(&out)
}

proptest! {
    #![proptest_config(arbitrary::config())]

    #[test]
    fn any_accepted_request_translates_or_is_refused_naming_its_field(request in accepted_chat()) {
        match chat_request(&request) {
            Ok(body) => {
                let roles: Vec<&str> = body["contents"].as_array().into_iter().flatten().filter_map(|c| c["role"].as_str()).collect();
                prop_assert!(roles.iter().all(|r| *r == "user" || *r == "model"), "{roles:?}");
                prop_assert!(roles.windows(2).all(|w| w[0] != w[1]), "turns alternate: {roles:?}");
            }
            Err(error) => {
                prop_assert_eq!(error.http_status().as_u16(), 400, "{}", error);
                prop_assert!(error.param.as_deref().is_some_and(|p| p.starts_with("messages[")), "{}", error);
            }
        }
    }

    #[test]
    fn a_thought_signature_survives_the_round_trip_through_a_tool_call_id(
        id in prop::option::of("[a-z0-9_~-]{1,10}"),
        signature in "[A-Za-z0-9+/=]{1,24}",
    ) {
        let mut call = json!({"name": "f", "args": {}});
        if let Some(id) = &id {
            call["id"] = json!(id);
        }
        let answer = json!({"candidates": [{"content": {"parts": [{"functionCall": call, "thoughtSignature": signature}]}, "finishReason": "STOP"}]});
        let openai = chat_response(&answer, "m");
        let tool_call = &openai["choices"][0]["message"]["tool_calls"][0];
        // The client sends the call back in the next request, as OpenAI clients do.
        let next = json!({"model": "m", "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": tool_call["id"], "content": "{}"},
        ]});
        let request = ChatRequest::parse(next.to_string().as_bytes()).expect("parses");
        let gemini = chat_request(&request).expect("translates");
        prop_assert_eq!(&gemini["contents"][1]["parts"][0]["thoughtSignature"], &json!(signature), "{}", gemini);
        prop_assert_eq!(&gemini["contents"][2]["parts"][0]["functionResponse"]["name"], &json!("f"));
    }

    #[test]
    fn any_answer_becomes_choices_with_usage(answer in answer()) {
        let out = chat_response(&answer, "m");
        let choices = out["choices"].as_array().cloned().unwrap_or_default();
        prop_assert!(!choices.is_empty(), "{out}");
        for choice in &choices {
            prop_assert!(choice["finish_reason"].is_string(), "{choice}");
        }
        prop_assert!(out["usage"]["prompt_tokens"].is_u64(), "{out}");
    }

    #[test]
    fn a_stream_translates_the_same_however_it_is_cut(
        events in prop::collection::vec(sse_event(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes: Vec<u8> = events.concat();
        prop_assert_eq!(translate(&chunks(&bytes, &cuts)), translate(std::slice::from_ref(&bytes)));
    }

    #[test]
    fn any_bytes_end_in_chunks_or_one_error_never_a_panic(
        bytes in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        translate(&chunks(&bytes, &cuts));
    }
}

/// Found by the stream property: a candidate `index` of 2⁶³ sized a table by it (an allocation
/// that aborts the process); an index no request could have asked for is a broken answer.
#[test]
fn a_candidate_index_no_request_could_ask_for_is_an_error_not_an_allocation() {
    let mut stream = ChunkStream::new("up", "m");
    let mut out = Vec::new();
    let event =
        json!({"candidates": [{"index": u64::MAX / 2, "content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}]});
    stream.push(format!("data: {event}\n\n").as_bytes(), &mut out);
    stream.finish(&mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].data.starts_with(b"{\"error\""), "{:?}", out[0]);
}

/// Found by the signature round trip: Gemini call ids may hold the mark themselves.
#[test]
fn a_call_id_with_the_mark_in_it_keeps_its_signature() {
    let answer = json!({"candidates": [{"content": {"parts": [{"functionCall": {"id": "a~b", "name": "f", "args": {}}, "thoughtSignature": "SIG"}]}}]});
    let id = chat_response(&answer, "m")["choices"][0]["message"]["tool_calls"][0]["id"].clone();
    assert_eq!(id, "a~b~SIG");
    let next = json!({"model": "m", "messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]});
    let gemini = chat_request(&ChatRequest::parse(next.to_string().as_bytes()).expect("parses")).expect("translates");
    assert_eq!(gemini["contents"][0]["parts"][0]["thoughtSignature"], "SIG");
}
