//! Property tests of the Bedrock translators: any request the parse stage accepts translates or is
//! refused with a 400 naming its field; any Converse answer becomes one OpenAI choice with usage;
//! a ConverseStream is decoded to the same chunks however the network cuts it; any bytes at all
//! end in chunks or one error event, never a panic, and never more buffering than one frame may
//! hold.

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::Header;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::providers::arbitrary::{self, accepted_chat, chunks, json_value};
use crate::providers::golden::stream_text;

fn frame(kind: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let type_header = if kind == "event" { ":event-type" } else { ":exception-type" };
    let message = Message::new(Bytes::copy_from_slice(payload))
        .add_header(Header::new(type_header, EsHeaderValue::String(event.to_owned().into())))
        .add_header(Header::new(":message-type", EsHeaderValue::String(kind.to_owned().into())));
    let mut out = Vec::new();
    write_message_to(&message, &mut out).expect("encodes");
    out
}

/// One ConverseStream frame: a real event shape with values of any kind now and then, an
/// exception, or an event that is not JSON.
fn converse_frame() -> impl Strategy<Value = Vec<u8>> {
    let index = prop_oneof![4 => (0u64..4).prop_map(Value::from), 1 => json_value()];
    let event = prop_oneof![
        Just(("messageStart".to_owned(), json!({"role": "assistant"}))),
        (index.clone(), "[a-z_]{1,6}", "tooluse_[a-z0-9]{1,4}").prop_map(|(i, name, id)| {
            (
                "contentBlockStart".to_owned(),
                json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
            )
        }),
        (index.clone(), "[a-z ]{0,8}")
            .prop_map(|(i, t)| ("contentBlockDelta".to_owned(), json!({"contentBlockIndex": i, "delta": {"text": t}}))),
        (index.clone(), "[a-z{}:\"]{0,8}").prop_map(|(i, t)| (
            "contentBlockDelta".to_owned(),
            json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": t}}})
        )),
        index.prop_map(|i| ("contentBlockStop".to_owned(), json!({"contentBlockIndex": i}))),
        prop::sample::select(vec![
            "end_turn",
            "tool_use",
            "max_tokens",
            "stop_sequence",
            "guardrail_intervened",
            "other"
        ])
        .prop_map(|r| ("messageStop".to_owned(), json!({"stopReason": r}))),
        (json_value(), json_value()).prop_map(|(i, o)| (
            "metadata".to_owned(),
            json!({"usage": {"inputTokens": i, "outputTokens": o, "totalTokens": 3}})
        )),
        ("[a-zA-Z]{1,10}", json_value()).prop_map(|(e, p)| (e, p)),
    ];
    prop_oneof![
        8 => event.prop_map(|(event, payload)| frame("event", &event, payload.to_string().as_bytes())),
        1 => (prop::sample::select(vec!["throttlingException", "validationException", "modelStreamErrorException"]), "[a-z ]{0,10}")
            .prop_map(|(kind, m)| frame("exception", kind, json!({"message": m}).to_string().as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(|p| frame("event", "contentBlockDelta", &p)),
    ]
}

/// The events a stream gives for `chunks`, rendered with ids and times made stable.
fn decode(chunks: &[Vec<u8>]) -> String {
    let mut stream = ChunkStream::new("up", "m");
    let mut out = Vec::new();
    for chunk in chunks {
        stream.push(chunk, &mut out);
    }
    stream.finish(&mut out);
    for event in &out {
        assert!(event.raw.starts_with(b"data: ") && event.raw.ends_with(b"\n\n"), "not an SSE event: {event:?}");
        assert!(&event.data[..] == b"[DONE]" || serde_json::from_slice::<Value>(&event.data).is_ok(), "{event:?}");
    }
    let errors = out.iter().filter(|e| e.data.starts_with(b"{\"error\"")).count();
    assert!(errors <= 1, "at most one error event");
    if errors == 1 {
        assert!(out.last().is_some_and(|e| e.data.starts_with(b"{\"error\"")), "nothing after the error event");
    }
    stream_text(&out)
}

proptest! {
    #![proptest_config(arbitrary::config())]

    #[test]
    fn any_accepted_request_translates_or_is_refused_naming_its_field(request in accepted_chat()) {
        match chat_request(&request) {
            Ok(body) => {
                prop_assert!(body["messages"].is_array(), "{body}");
                // Converse wants turns to alternate.
                let roles: Vec<&str> = body["messages"].as_array().into_iter().flatten().filter_map(|m| m["role"].as_str()).collect();
                prop_assert!(roles.windows(2).all(|w| w[0] != w[1]), "{roles:?}");
            }
            Err(error) => {
                prop_assert_eq!(error.http_status().as_u16(), 400, "{}", error);
                prop_assert!(error.param.as_deref().is_some_and(|p| p.starts_with("messages[")), "{}", error);
            }
        }
    }

    #[test]
    fn any_answer_becomes_one_choice_with_usage(
        answer in (json_value(), json_value(), json_value()).prop_map(|(content, reason, usage)| {
            json!({"output": {"message": {"role": "assistant", "content": content}}, "stopReason": reason, "usage": usage})
        }),
    ) {
        let out = chat_response(&answer, "m");
        prop_assert_eq!(out["choices"].as_array().map(Vec::len), Some(1));
        prop_assert!(out["usage"]["prompt_tokens"].is_u64() && out["usage"]["completion_tokens"].is_u64(), "{out}");
    }

    #[test]
    fn a_stream_decodes_the_same_however_it_is_cut(
        frames in prop::collection::vec(converse_frame(), 0..10),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let bytes: Vec<u8> = frames.concat();
        prop_assert_eq!(decode(&chunks(&bytes, &cuts)), decode(std::slice::from_ref(&bytes)));
    }

    #[test]
    fn any_bytes_end_in_chunks_or_one_error_never_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        decode(&chunks(&bytes, &cuts));
    }
}

/// Found by the property above's input space: a prelude that declares a frame of 2 GiB made the
/// stream buffer everything the upstream sent after it.
#[test]
fn a_frame_declared_larger_than_any_event_ends_the_stream_instead_of_buffering() {
    let mut stream = ChunkStream::new("up", "m");
    let mut out = Vec::new();
    let mut prelude = Vec::new();
    prelude.extend_from_slice(&(1u32 << 31).to_be_bytes());
    prelude.extend_from_slice(&0u32.to_be_bytes());
    prelude.extend_from_slice(&crc32fast_prelude(&prelude).to_be_bytes());
    stream.push(&prelude, &mut out);
    let junk = vec![0u8; 1 << 20];
    for _ in 0..(MAX_FRAME / junk.len() + 4) {
        stream.push(&junk, &mut out);
    }
    assert!(stream.buf.len() <= MAX_FRAME, "buffered {} bytes", stream.buf.len());
    assert_eq!(out.len(), 1, "one error event");
    assert!(out[0].data.starts_with(b"{\"error\""), "{:?}", out[0]);
    stream.finish(&mut out);
    assert_eq!(out.len(), 1, "no [DONE] after it");
}

/// The CRC-32 of a prelude, as event-stream frames carry it (computed here by hand: the test must
/// forge a prelude the encoder would refuse to write).
fn crc32fast_prelude(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
