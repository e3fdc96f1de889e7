//! Generators shared by the providers' property tests: chat requests as the parse stage accepts
//! them (roles, text and image parts, tool calls and results, the parameters translators read,
//! each with values of other types now and then), any JSON, and ways to cut a byte stream.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use crate::api::ChatRequest;
pub(crate) use crate::api::properties::chunks;

/// Bounded case counts, so that the suite stays quick; `PROPTEST_CASES` raises them.
pub(crate) fn config() -> ProptestConfig {
    ProptestConfig { cases: 192, max_shrink_iters: 2048, ..ProptestConfig::default() }
}

/// Any JSON value, small.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[a-zA-Z0-9 ~_:/.-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value that is usually `typical` and sometimes anything.
fn mostly(typical: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
    prop_oneof![4 => typical.boxed(), 1 => json_value().boxed()]
}

fn content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        "[a-z ]{0,8}".prop_map(|t| json!({"type": "text", "text": t})),
        prop_oneof![
            Just("data:image/png;base64,iVBORw0KGgo="),
            Just("data:;base64,AA=="),
            Just("https://example.com/x.png"),
            Just("data:text/plain,hi")
        ]
        .prop_map(|url| json!({"type": "image_url", "image_url": {"url": url}})),
        json_value(),
    ];
    mostly(prop_oneof!["[a-z ]{0,12}".prop_map(Value::from), prop::collection::vec(part, 0..3).prop_map(Value::Array)])
}

fn tool_calls() -> impl Strategy<Value = Value> {
    let call = ("call_[a-z0-9]{1,4}(~[A-Za-z0-9+/=]{1,8})?", "[a-z_]{1,6}", prop_oneof![Just("{}".to_owned()), Just("{\"a\":1}".to_owned()), "[a-z{}:\"]{0,8}"])
        .prop_map(|(id, name, arguments)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
    mostly(prop::collection::vec(call, 0..3).prop_map(Value::Array))
}

fn message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["system", "developer", "user", "assistant", "tool", "function"]),
        content(),
        prop::option::of(tool_calls()),
        prop::option::of(mostly("call_[a-z0-9]{1,4}".prop_map(Value::from))),
        prop::option::of(mostly("[a-z_]{1,6}".prop_map(Value::from))),
    )
        .prop_map(|(role, content, calls, call_id, name)| {
            let mut m = Map::new();
            m.insert("role".into(), json!(role));
            m.insert("content".into(), content);
            if let Some(calls) = calls.filter(|_| role == "assistant") {
                m.insert("tool_calls".into(), calls);
            }
            if let Some(id) = call_id.filter(|_| role == "tool") {
                m.insert("tool_call_id".into(), id);
            }
            if let Some(name) = name {
                m.insert("name".into(), name);
            }
            Value::Object(m)
        })
}

/// The parameters the translators read, each present or not, usually of the right type.
fn params() -> impl Strategy<Value = Map<String, Value>> {
    let tool = ("[a-z_]{1,6}", json_value()).prop_map(|(name, parameters)| {
        json!({"type": "function", "function": {"name": name, "description": "d", "parameters": parameters}})
    });
    let schema = json_value().prop_map(|s| json!({"type": "object", "properties": {"a": s}, "required": ["a"]}));
    let entries: Vec<(&'static str, BoxedStrategy<Value>)> = vec![
        ("temperature", mostly((0.0f64..2.0).prop_map(Value::from)).boxed()),
        ("top_p", mostly((0.0f64..1.0).prop_map(Value::from)).boxed()),
        ("max_tokens", mostly((1u64..5000).prop_map(Value::from)).boxed()),
        ("max_completion_tokens", mostly((1u64..5000).prop_map(Value::from)).boxed()),
        ("n", mostly((1u64..4).prop_map(Value::from)).boxed()),
        ("seed", json_value().boxed()),
        (
            "stop",
            mostly(prop_oneof![
                "[a-z]{1,4}".prop_map(Value::from),
                prop::collection::vec("[a-z]{0,4}".prop_map(Value::from), 0..3).prop_map(Value::Array)
            ])
            .boxed(),
        ),
        ("tools", mostly(prop::collection::vec(tool, 0..3).prop_map(Value::Array)).boxed()),
        (
            "tool_choice",
            mostly(prop_oneof![
                Just(json!("auto")),
                Just(json!("none")),
                Just(json!("required")),
                "[a-z_]{1,6}".prop_map(|n| json!({"type": "function", "function": {"name": n}}))
            ])
            .boxed(),
        ),
        (
            "response_format",
            mostly(prop_oneof![
                Just(json!({"type": "text"})),
                Just(json!({"type": "json_object"})),
                schema.prop_map(|s| json!({"type": "json_schema", "json_schema": {"name": "out", "schema": s}}))
            ])
            .boxed(),
        ),
        (
            "reasoning_effort",
            mostly(prop::sample::select(vec!["minimal", "low", "medium", "high"]).prop_map(Value::from)).boxed(),
        ),
        ("stream_options", mostly(Just(json!({"include_usage": true}))).boxed()),
    ];
    let present: Vec<BoxedStrategy<Option<(&'static str, Value)>>> =
        entries.into_iter().map(|(name, value)| prop::option::of(value.prop_map(move |v| (name, v))).boxed()).collect();
    present.prop_map(|entries| entries.into_iter().flatten().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// A chat request the parse stage accepted.
pub(crate) fn accepted_chat() -> impl Strategy<Value = ChatRequest> {
    (prop::collection::vec(message(), 1..6), params(), any::<bool>()).prop_filter_map(
        "the parse stage refused it",
        |(messages, mut body, stream)| {
            body.insert("model".into(), json!("m"));
            body.insert("messages".into(), Value::Array(messages));
            body.insert("stream".into(), json!(stream));
            ChatRequest::parse(&serde_json::to_vec(&Value::Object(body)).ok()?).ok()
        },
    )
}
