//! Property tests of the parse stage: the SSE splitter keeps every byte and finds the same events
//! whatever the chunking; the request parsers never panic on any bytes or any JSON, refuse with a
//! 400 that never repeats a value, and what they accept survives the trip to an upstream body and
//! back. Case counts are bounded so that the suite stays quick; `PROPTEST_CASES` raises them.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::sse::Splitter;
use super::{ChatRequest, EmbeddingsRequest};

/// A marker put in every generated string value: no error message may contain it.
const MARK: &str = "SECRETVALUE";

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, max_shrink_iters: 2048, ..ProptestConfig::default() }
}

/// `bytes` cut at the given points (any values: they are taken modulo the length); shared with
/// the providers' stream properties.
pub(crate) fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        out.push(bytes[start..cut].to_vec());
        start = cut;
    }
    out
}

/// Every event the splitter yields for `chunks`, and what it still holds at the end.
fn split(chunks: &[Vec<u8>]) -> (Vec<super::sse::Event>, usize) {
    let mut splitter = Splitter::default();
    let mut events = Vec::new();
    for chunk in chunks {
        splitter.push(chunk);
        while let Some(event) = splitter.next_event() {
            events.push(event);
        }
    }
    (events, splitter.pending())
}

/// One well-formed SSE event: its bytes and its expected `data`.
fn sse_event() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let line = prop_oneof![
        "[^\r\n]{0,20}".prop_map(|v| (format!("data: {v}"), Some(v))),
        // Without the space, one leading space of the value is the separator.
        "[^\r\n]{0,20}".prop_map(|v| (format!("data:{v}"), Some(v.strip_prefix(' ').map_or(v.clone(), str::to_owned)))),
        "[^\r\n]{0,12}".prop_map(|v| (format!(": {v}"), None)),
        "[a-z]{1,5}".prop_map(|v| (format!("event: {v}"), None)),
        "[0-9]{1,5}".prop_map(|v| (format!("id: {v}"), None)),
    ];
    (prop::collection::vec(line, 1..5), prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]).prop_map(|(lines, eol)| {
        let mut raw = String::new();
        let mut data: Vec<String> = Vec::new();
        for (text, value) in lines {
            raw.push_str(&text);
            raw.push_str(eol);
            if let Some(value) = value {
                data.push(value);
            }
        }
        raw.push_str(eol);
        (raw.into_bytes(), data.join("\n").into_bytes())
    })
}

/// Any JSON value, its strings carrying [`MARK`] or one of the words the gateway reads.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "[a-z ]{0,6}".prop_map(|s| Value::from(format!("{MARK}{s}"))),
        prop::sample::select(vec!["user", "assistant", "system", "tool", "text", "image_url", "float", "base64"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: the fields the parsers read, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "model",
            "messages",
            "role",
            "content",
            "stream",
            "stream_options",
            "include_usage",
            "input",
            "encoding_format",
            "tool_calls",
            "tool_call_id",
            "type",
            "text",
            "image_url",
            "url",
            "function",
            "name",
            "arguments",
            "max_tokens",
            "temperature",
            "user",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

/// A chat request that is likely to parse: the right fields, with values of any type now and then.
fn chat_like() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        4 => prop::sample::select(vec!["user", "assistant", "system", "developer", "tool"]).prop_map(Value::from),
        1 => json_value(),
    ];
    let content = prop_oneof![
        "[a-z ]{0,10}".prop_map(Value::from),
        prop::collection::vec("[a-z]{0,5}".prop_map(|t| json!({"type": "text", "text": t})), 0..3)
            .prop_map(Value::Array),
        json_value(),
    ];
    let message = (role, content, prop::collection::btree_map(key(), json_value(), 0..2)).prop_map(|(r, c, extra)| {
        let mut m: Map<String, Value> = extra.into_iter().collect();
        m.insert("role".into(), r);
        m.insert("content".into(), c);
        Value::Object(m)
    });
    (
        prop_oneof![4 => "[a-z0-9:/._-]{1,12}".prop_map(Value::from), 1 => json_value()],
        prop::collection::vec(message, 0..4),
        prop::collection::btree_map(key(), json_value(), 0..4),
    )
        .prop_map(|(model, messages, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("model".into(), model);
            m.insert("messages".into(), Value::Array(messages));
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_splitter_finds_the_same_events_whatever_the_chunking(
        events in prop::collection::vec(sse_event(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream: Vec<u8> = events.iter().flat_map(|(raw, _)| raw.clone()).collect();
        let (got, pending) = split(&chunks(&stream, &cuts));
        prop_assert_eq!(pending, 0);
        prop_assert_eq!(got.iter().flat_map(|e| e.raw.to_vec()).collect::<Vec<u8>>(), stream);
        let datas: Vec<Vec<u8>> = got.iter().map(|e| e.data.to_vec()).collect();
        let expected: Vec<Vec<u8>> = events.iter().map(|(_, data)| data.clone()).collect();
        prop_assert_eq!(datas, expected);
    }

    #[test]
    fn the_splitter_never_changes_or_loses_a_byte_of_any_input(
        bytes in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (got, pending) = split(&chunks(&bytes, &cuts));
        let relayed: Vec<u8> = got.iter().flat_map(|e| e.raw.to_vec()).collect();
        prop_assert_eq!(relayed.len() + pending, bytes.len());
        prop_assert_eq!(&bytes[..relayed.len()], &relayed[..]);
        // The same input in one piece splits the same way.
        let (whole, _) = split(std::slice::from_ref(&bytes));
        prop_assert_eq!(whole, got);
    }

    #[test]
    fn the_parsers_refuse_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        for error in [ChatRequest::parse(&bytes).err(), EmbeddingsRequest::parse(&bytes).err()].into_iter().flatten() {
            prop_assert_eq!(error.http_status().as_u16(), 400);
            prop_assert!(error.code.is_some());
        }
    }

    #[test]
    fn refusals_name_fields_and_types_never_values(value in prop_oneof![chat_like(), json_value()]) {
        let body = serde_json::to_vec(&value).expect("JSON");
        for error in [ChatRequest::parse(&body).err(), EmbeddingsRequest::parse(&body).err()].into_iter().flatten() {
            prop_assert_eq!(error.http_status().as_u16(), 400);
            prop_assert!(!error.message.contains(MARK), "{}", error.message);
            prop_assert!(!error.to_string().contains(MARK), "{}", error);
        }
    }

    #[test]
    fn an_accepted_chat_request_survives_the_trip_to_an_upstream_and_back(value in chat_like()) {
        let body = serde_json::to_vec(&value).expect("JSON");
        let Ok(request) = ChatRequest::parse(&body) else { return Ok(()) };
        let upstream = request.upstream_body("target-model").expect("encodes");
        let again = ChatRequest::parse(&upstream).expect("the upstream body parses");
        prop_assert_eq!(&again.model, "target-model");
        prop_assert_eq!(serde_json::to_value(&again.messages).ok(), serde_json::to_value(&request.messages).ok());
        prop_assert_eq!(&again.extra, &request.extra);
        prop_assert_eq!(again.stream, request.stream);
        if request.is_stream() {
            prop_assert!(again.client_wants_usage(), "streams always ask for usage");
        }
        // Everything the client sent is still there, but for the model.
        let mut sent: Map<String, Value> = serde_json::from_slice(&body).expect("object");
        let mut relayed: Map<String, Value> = serde_json::from_slice(&upstream).expect("object");
        sent.remove("model");
        relayed.remove("model");
        // A `null` for a field the gateway reads means "not set", and is relayed as not set.
        for field in ["stream", "stream_options"] {
            if sent.get(field) == Some(&Value::Null) {
                sent.remove(field);
            }
        }
        if request.is_stream() {
            sent.remove("stream_options");
            relayed.remove("stream_options");
        }
        prop_assert_eq!(sent, relayed);
    }

    #[test]
    fn an_accepted_embeddings_request_survives_the_trip_to_an_upstream_and_back(
        value in (json_value(), prop::collection::btree_map(key(), json_value(), 0..3)).prop_map(|(input, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            m.insert("model".into(), json!("m"));
            m.insert("input".into(), input);
            Value::Object(m)
        }),
    ) {
        let body = serde_json::to_vec(&value).expect("JSON");
        let Ok(request) = EmbeddingsRequest::parse(&body) else { return Ok(()) };
        let upstream = request.upstream_body("target-model").expect("encodes");
        let again = EmbeddingsRequest::parse(&upstream).expect("the upstream body parses");
        prop_assert_eq!(&again.model, "target-model");
        prop_assert_eq!(&again.input, &request.input);
        prop_assert_eq!(&again.extra, &request.extra);
    }
}
