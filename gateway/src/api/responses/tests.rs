//! Golden translations of the Responses API, both directions, streams fed byte by byte.
//! `UPDATE_EXPECT=1 cargo test -p weir api::responses` rewrites them.
#![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;
use crate::api::golden::{byte_by_byte, events, raw, render, stream_text};

fn parse(body: Value) -> ResponsesRequest {
    ResponsesRequest::parse(&serde_json::to_vec(&body).unwrap()).expect("a valid request")
}

fn to_chat_case(request: ResponsesRequest, expected: Expect) {
    let rendered = match request.to_chat() {
        Ok(chat) => render(&serde_json::to_value(&chat).unwrap()),
        Err(e) => format!("{} (param {:?})", e.message, e.param),
    };
    expected.assert_eq(&rendered);
}

/// A recorded OpenAI chat stream, fed byte by byte, encoded into Responses events.
fn encode_stream(request: Value, sse: &str) -> (String, Option<Value>) {
    let mut encoder = Encoder::new(Echo::new(&parse(request)));
    let mut splitter = Splitter::default();
    let mut out = Vec::new();
    for byte in sse.as_bytes() {
        splitter.push(std::slice::from_ref(byte));
        while let Some(event) = splitter.next_event() {
            encoder.event(&event, &mut out);
        }
    }
    // Every event is numbered, from 0, without gaps.
    for (n, event) in events(&out).iter().enumerate() {
        let data: Value = serde_json::from_slice(&event.data).unwrap();
        assert_eq!(data["sequence_number"], n, "{data}");
    }
    (stream_text(&out), encoder.finished)
}

fn decode_stream(sse: &str) -> String {
    let mut decoder = Decoder::new();
    stream_text(&raw(&byte_by_byte(sse.as_bytes(), |b, out| decoder.push(b, out))))
}

#[test]
fn items_tools_and_formats_become_a_chat_request() {
    to_chat_case(
        parse(json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris? Look at this:"}, {"type": "input_image", "image_url": "data:image/png;base64,iVBO", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"location\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true}},
        "reasoning": {"effort": "low"}, "max_output_tokens": 200, "temperature": 0, "user": "u", "metadata": {"k": "v"},
        "store": true, "truncation": "auto", "include": ["reasoning.encrypted_content"], "stream": true})),
        expect![[r#"
            {
              "max_completion_tokens": 200,
              "messages": [
                {
                  "content": "Be brief.",
                  "role": "system"
                },
                {
                  "content": [
                    {
                      "text": "Weather in Paris? Look at this:",
                      "type": "text"
                    },
                    {
                      "image_url": {
                        "detail": "low",
                        "url": "data:image/png;base64,iVBO"
                      },
                      "type": "image_url"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": null,
                  "role": "assistant",
                  "tool_calls": [
                    {
                      "function": {
                        "arguments": "{\"location\":\"Paris\"}",
                        "name": "get_weather"
                      },
                      "id": "call_1",
                      "type": "function"
                    },
                    {
                      "function": {
                        "arguments": "{}",
                        "name": "get_time"
                      },
                      "id": "call_2",
                      "type": "function"
                    }
                  ]
                },
                {
                  "content": "21C",
                  "role": "tool",
                  "tool_call_id": "call_1"
                },
                {
                  "content": "noon",
                  "role": "tool",
                  "tool_call_id": "call_2"
                }
              ],
              "model": "m",
              "reasoning_effort": "low",
              "response_format": {
                "json_schema": {
                  "name": "answer",
                  "schema": {
                    "type": "object"
                  },
                  "strict": true
                },
                "type": "json_schema"
              },
              "stream": true,
              "stream_options": {
                "include_usage": true
              },
              "temperature": 0,
              "tool_choice": {
                "function": {
                  "name": "get_weather"
                },
                "type": "function"
              },
              "tools": [
                {
                  "function": {
                    "description": "Weather now",
                    "name": "get_weather",
                    "parameters": {
                      "properties": {
                        "location": {
                          "type": "string"
                        }
                      },
                      "type": "object"
                    },
                    "strict": true
                  },
                  "type": "function"
                }
              ],
              "user": "u"
            }"#]],
    );
}

#[test]
fn a_continued_conversation_starts_from_the_stored_items() {
    let mut request = parse(
        json!({"model": "m", "previous_response_id": "resp_1", "input": "And tomorrow?", "instructions": "Answer in French."}),
    );
    request.history = vec![
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}),
        json!({"type": "message", "role": "assistant", "content": "Sunny."}),
    ];
    to_chat_case(
        request.clone(),
        expect![[r#"
        {
          "messages": [
            {
              "content": "Answer in French.",
              "role": "system"
            },
            {
              "content": [
                {
                  "text": "Weather?",
                  "type": "text"
                }
              ],
              "role": "user"
            },
            {
              "content": "Sunny.",
              "role": "assistant"
            },
            {
              "content": [
                {
                  "text": "And tomorrow?",
                  "type": "text"
                }
              ],
              "role": "user"
            }
          ],
          "model": "m"
        }"#]],
    );
    let native: Value = serde_json::from_slice(&request.upstream_body("gpt-up").unwrap()).unwrap();
    expect![[r#"
        {
          "input": [
            {
              "content": [
                {
                  "text": "Weather?",
                  "type": "input_text"
                }
              ],
              "role": "user",
              "type": "message"
            },
            {
              "content": "Sunny.",
              "role": "assistant",
              "type": "message"
            },
            {
              "content": [
                {
                  "text": "And tomorrow?",
                  "type": "input_text"
                }
              ],
              "role": "user",
              "type": "message"
            }
          ],
          "instructions": "Answer in French.",
          "model": "gpt-up"
        }"#]]
    .assert_eq(&render(&native));
}

#[test]
fn tools_and_items_chat_cannot_express_are_refused_naming_them() {
    to_chat_case(
        parse(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]})),
        expect![[
            r#"The tool type 'web_search' is not supported for this model, whose provider is reached through chat completions; use a model served by an upstream that speaks the Responses API. (param Some("tools[0].type"))"#
        ]],
    );
    to_chat_case(
        parse(json!({"model": "m", "input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]})),
        expect![[
            r#"An input item of type 'computer_call_output' is not supported for this model, whose provider is reached through chat completions; use a model served by an upstream that speaks the Responses API. (param Some("input[0].type"))"#
        ]],
    );
}

#[test]
fn bad_requests_name_the_field() {
    for (body, param) in [
        (json!({"input": "x"}), "model"),
        (json!({"model": "m"}), "input"),
        (json!({"model": "m", "input": 3}), "input"),
        (json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}), "input[0].role"),
        (json!({"model": "m", "input": [{"role": "user"}]}), "input[0].content"),
        (
            json!({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
            "input[0].call_id",
        ),
        (json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}), "input[0].output"),
        (json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}), "tools[0].name"),
        (json!({"model": "m", "input": "x", "max_output_tokens": 4}), "max_output_tokens"),
        (
            json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
            "text.format.schema",
        ),
        (json!({"model": "m", "input": "x", "background": true}), "background"),
        (json!({"model": "m", "input": "x", "conversation": "conv_1"}), "conversation"),
        (json!({"model": "m", "input": "x", "stream": "yes"}), "stream"),
    ] {
        let e = ResponsesRequest::parse(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
    }
}

fn completion(value: Value) -> Completion {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_whole_answer_becomes_a_response() {
    let echo = Echo::new(&parse(json!({"model": "m", "input": "hi", "temperature": 0.2, "metadata": {"k": "v"}})));
    let answer = completion(
        json!({"model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10}, "completion_tokens_details": {"reasoning_tokens": 4}}}),
    );
    expect![[r#"
        {
          "background": false,
          "created_at": 0,
          "error": null,
          "id": "resp_ID",
          "incomplete_details": null,
          "instructions": null,
          "max_output_tokens": null,
          "metadata": {
            "k": "v"
          },
          "model": "gpt-4o",
          "object": "response",
          "output": [
            {
              "arguments": "{\"location\":\"Paris\"}",
              "call_id": "call_9",
              "id": "fc_ID",
              "name": "get_weather",
              "status": "completed",
              "type": "function_call"
            }
          ],
          "parallel_tool_calls": true,
          "previous_response_id": null,
          "reasoning": {
            "effort": null,
            "summary": null
          },
          "service_tier": "default",
          "status": "completed",
          "store": true,
          "temperature": 0.2,
          "text": {
            "format": {
              "type": "text"
            }
          },
          "tool_choice": "auto",
          "tools": [],
          "top_p": 1.0,
          "truncation": "disabled",
          "usage": {
            "input_tokens": 30,
            "input_tokens_details": {
              "cached_tokens": 10
            },
            "output_tokens": 9,
            "output_tokens_details": {
              "reasoning_tokens": 4
            },
            "total_tokens": 39
          },
          "user": null
        }"#]]
    .assert_eq(&render(&encode_whole(&echo, &answer)));
    let cut = completion(
        json!({"model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Once upon"}}]}),
    );
    let response = encode_whole(&echo, &cut);
    assert_eq!(
        (response["status"].as_str(), response["incomplete_details"]["reason"].as_str()),
        (Some("incomplete"), Some("max_output_tokens"))
    );
}

#[test]
fn a_recorded_tool_call_stream_becomes_responses_events() {
    let (text, finished) = encode_stream(
        json!({"model": "m", "input": "weather?", "stream": true, "tools": [{"type": "function", "name": "get_weather"}]}),
        include_str!("../../../../bench/fixtures/openai/tool_call.sse"),
    );
    expect![[r#"
        response.created {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"gpt-4o-2024-08-06","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"in_progress","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[{"name":"get_weather","type":"function"}],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":0,"type":"response.created"}
        response.in_progress {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"gpt-4o-2024-08-06","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"in_progress","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[{"name":"get_weather","type":"function"}],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":1,"type":"response.in_progress"}
        response.output_item.added {"item":{"arguments":"","call_id":"call_CTf1nWJLqSeRgDqaCG27xZ74","id":"fc_ID","name":"get_weather","status":"in_progress","type":"function_call"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}
        response.function_call_arguments.delta {"delta":"{\"","item_id":"fc_ID","output_index":0,"sequence_number":3,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"city","item_id":"fc_ID","output_index":0,"sequence_number":4,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"\":\"","item_id":"fc_ID","output_index":0,"sequence_number":5,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"San","item_id":"fc_ID","output_index":0,"sequence_number":6,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":" Francisco","item_id":"fc_ID","output_index":0,"sequence_number":7,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"\",\"","item_id":"fc_ID","output_index":0,"sequence_number":8,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"state","item_id":"fc_ID","output_index":0,"sequence_number":9,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"\":\"","item_id":"fc_ID","output_index":0,"sequence_number":10,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"CA","item_id":"fc_ID","output_index":0,"sequence_number":11,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.delta {"delta":"\"}","item_id":"fc_ID","output_index":0,"sequence_number":12,"type":"response.function_call_arguments.delta"}
        response.function_call_arguments.done {"arguments":"{\"city\":\"San Francisco\",\"state\":\"CA\"}","item_id":"fc_ID","output_index":0,"sequence_number":13,"type":"response.function_call_arguments.done"}
        response.output_item.done {"item":{"arguments":"{\"city\":\"San Francisco\",\"state\":\"CA\"}","call_id":"call_CTf1nWJLqSeRgDqaCG27xZ74","id":"fc_ID","name":"get_weather","status":"completed","type":"function_call"},"output_index":0,"sequence_number":14,"type":"response.output_item.done"}
        response.completed {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"gpt-4o-2024-08-06","object":"response","output":[{"arguments":"{\"city\":\"San Francisco\",\"state\":\"CA\"}","call_id":"call_CTf1nWJLqSeRgDqaCG27xZ74","id":"fc_ID","name":"get_weather","status":"completed","type":"function_call"}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"completed","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[{"name":"get_weather","type":"function"}],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":48,"input_tokens_details":{"cached_tokens":0},"output_tokens":19,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":67},"user":null},"sequence_number":15,"type":"response.completed"}"#]].assert_eq(&text);
    assert_eq!(finished.unwrap()["status"], "completed");
}

#[test]
fn a_recorded_text_stream_cut_by_length_is_incomplete() {
    let (text, finished) = encode_stream(
        json!({"model": "m", "input": "hi", "stream": true}),
        include_str!("../../../../bench/fixtures/openai/length.sse"),
    );
    expect![[r#"
        response.created {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"gpt-4o-2024-08-06","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"in_progress","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":0,"type":"response.created"}
        response.in_progress {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"gpt-4o-2024-08-06","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"in_progress","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":1,"type":"response.in_progress"}
        response.output_item.added {"item":{"content":[],"id":"msg_ID","role":"assistant","status":"in_progress","type":"message"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}
        response.content_part.added {"content_index":0,"item_id":"msg_ID","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"","type":"output_text"},"sequence_number":3,"type":"response.content_part.added"}
        response.output_text.delta {"content_index":0,"delta":"{\"","item_id":"msg_ID","logprobs":[],"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}
        response.output_text.done {"content_index":0,"item_id":"msg_ID","logprobs":[],"output_index":0,"sequence_number":5,"text":"{\"","type":"response.output_text.done"}
        response.content_part.done {"content_index":0,"item_id":"msg_ID","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"{\"","type":"output_text"},"sequence_number":6,"type":"response.content_part.done"}
        response.output_item.done {"item":{"content":[{"annotations":[],"logprobs":[],"text":"{\"","type":"output_text"}],"id":"msg_ID","role":"assistant","status":"completed","type":"message"},"output_index":0,"sequence_number":7,"type":"response.output_item.done"}
        response.incomplete {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":{"reason":"max_output_tokens"},"instructions":null,"max_output_tokens":null,"metadata":{},"model":"gpt-4o-2024-08-06","object":"response","output":[{"content":[{"annotations":[],"logprobs":[],"text":"{\"","type":"output_text"}],"id":"msg_ID","role":"assistant","status":"completed","type":"message"}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"incomplete","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":79,"input_tokens_details":{"cached_tokens":0},"output_tokens":1,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":80},"user":null},"sequence_number":8,"type":"response.incomplete"}"#]].assert_eq(&text);
    assert_eq!(finished.unwrap()["incomplete_details"]["reason"], "max_output_tokens");
}

#[test]
fn a_failed_stream_ends_with_error_and_response_failed() {
    let mut encoder = Encoder::new(Echo::new(&parse(json!({"model": "m", "input": "hi", "stream": true}))));
    let mut out = Vec::new();
    for event in events(b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n") {
        encoder.event(&event, &mut out);
    }
    encoder.fail(
        &crate::error::Error::new(crate::error::Kind::UpstreamFailed, "The upstream broke.")
            .code("upstream_stream_error"),
        &mut out,
    );
    let text = stream_text(&out);
    expect![[r#"
        response.created {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"m","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"in_progress","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":0,"type":"response.created"}
        response.in_progress {"response":{"background":false,"created_at":0,"error":null,"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"m","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"in_progress","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":1,"type":"response.in_progress"}
        response.output_item.added {"item":{"content":[],"id":"msg_ID","role":"assistant","status":"in_progress","type":"message"},"output_index":0,"sequence_number":2,"type":"response.output_item.added"}
        response.content_part.added {"content_index":0,"item_id":"msg_ID","output_index":0,"part":{"annotations":[],"logprobs":[],"text":"","type":"output_text"},"sequence_number":3,"type":"response.content_part.added"}
        response.output_text.delta {"content_index":0,"delta":"Hi","item_id":"msg_ID","logprobs":[],"output_index":0,"sequence_number":4,"type":"response.output_text.delta"}
        error {"error":{"code":"upstream_stream_error","message":"The upstream broke.","param":null,"type":"server_error"},"sequence_number":5,"type":"error"}
        response.failed {"response":{"background":false,"created_at":0,"error":{"code":"upstream_stream_error","message":"The upstream broke."},"id":"resp_ID","incomplete_details":null,"instructions":null,"max_output_tokens":null,"metadata":{},"model":"m","object":"response","output":[{"content":[{"annotations":[],"logprobs":[],"text":"Hi","type":"output_text"}],"id":"msg_ID","role":"assistant","status":"completed","type":"message"}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"service_tier":"default","status":"failed","store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":null,"user":null},"sequence_number":6,"type":"response.failed"}"#]].assert_eq(&text);
}

#[test]
fn recorded_responses_become_chat_completions() {
    let call: Value =
        serde_json::from_str(include_str!("../../../../bench/fixtures/openai-responses/response_function_call.json"))
            .unwrap();
    expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "tool_calls",
              "index": 0,
              "logprobs": null,
              "message": {
                "content": null,
                "role": "assistant",
                "tool_calls": [
                  {
                    "function": {
                      "arguments": "{\"country\":\"PotatoLand\"}",
                      "name": "get_capital"
                    },
                    "id": "call_YfwRsW8sUxDKipwyhWTzOXCA",
                    "type": "function"
                  }
                ]
              }
            }
          ],
          "created": 0,
          "id": "resp_04907f5d3de791830068fbaa19bb908195a91378279dba0f14",
          "model": "gpt-4o-2024-08-06",
          "object": "chat.completion",
          "usage": {
            "completion_tokens": 18,
            "completion_tokens_details": {
              "reasoning_tokens": 0
            },
            "prompt_tokens": 40,
            "prompt_tokens_details": {
              "cached_tokens": 0
            },
            "total_tokens": 58
          }
        }"#]]
    .assert_eq(&render(&decode_whole(&call)));
    let text: Value =
        serde_json::from_str(include_str!("../../../../bench/fixtures/openai-responses/response_text.json")).unwrap();
    let decoded = decode_whole(&text);
    assert_eq!(decoded.pointer("/choices/0/finish_reason"), Some(&json!("stop")));
    assert!(decoded.pointer("/choices/0/message/content").and_then(Value::as_str).is_some_and(|t| !t.is_empty()));
}

#[test]
fn a_recorded_function_call_stream_becomes_chat_chunks() {
    expect![[r#"
        {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"final_result"},"id":"call_CWXgs68YprAjp6t0371hiPOI","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\""},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"result"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\":"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"666"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"6"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk"}
        {"choices":[],"created":0,"id":"chatcmpl_ID","model":"gpt-5-2025-08-07","object":"chat.completion.chunk","usage":{"completion_tokens":469,"completion_tokens_details":{"reasoning_tokens":448},"prompt_tokens":53,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":522}}
        [DONE]"#]].assert_eq(&decode_stream(include_str!("../../../../bench/fixtures/openai-responses/function_call.sse")));
}

#[test]
fn a_recorded_text_stream_becomes_chat_chunks() {
    expect![[r#"
        {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":"2"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":"+"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":"2"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":" ="},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":" "},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":"4"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk"}
        {"choices":[],"created":0,"id":"chatcmpl_ID","model":"gpt-5.2-2025-12-11","object":"chat.completion.chunk","usage":{"completion_tokens":10,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":20,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":30}}
        [DONE]"#]].assert_eq(&decode_stream(include_str!("../../../../bench/fixtures/openai-responses/text.sse")));
}

#[test]
fn native_events_give_usage_their_end_and_failures() {
    let mut content = 0;
    let mut last = NativePeek::default();
    for event in events(include_bytes!("../../../../bench/fixtures/openai-responses/text.sse")) {
        last = peek(&event.data);
        content += usize::from(last.content);
    }
    assert_eq!((content, last.done, last.error), (6, true, false));
    let usage = last.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (20, 10));
    let peeks: Vec<NativePeek> =
        events(include_bytes!("../../../../bench/fixtures/openai-responses/error_mid_stream.sse"))
            .iter()
            .map(|e| peek(&e.data))
            .collect();
    assert!(peeks[2].error && !peeks[2].done, "the error event");
    assert!(peeks[3].error && peeks[3].done, "then response.failed ends it");
    let appended = native_failure(
        &crate::error::Error::new(crate::error::Kind::UpstreamFailed, "broke"),
        peeks[1].response.as_ref(),
        2,
    );
    expect![[r#"
        error {"error":{"code":"server_error","message":"broke","param":null,"type":"server_error"},"sequence_number":2,"type":"error"}
        response.failed {"response":{"background":false,"created_at":0,"error":{"code":"server_error","message":"broke"},"id":"resp_05500b38c2cd9bfc00691c7c9d222481a3b595421266dab424","incomplete_details":null,"instructions":null,"max_output_tokens":null,"max_tool_calls":null,"metadata":{},"model":"gpt-5-nano-2025-08-07","object":"response","output":[],"parallel_tool_calls":true,"previous_response_id":null,"prompt_cache_key":null,"prompt_cache_retention":null,"reasoning":{"effort":"medium","summary":null},"safety_identifier":null,"service_tier":"auto","status":"failed","store":true,"temperature":1,"text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","tools":[],"top_logprobs":0,"top_p":1,"truncation":"disabled","usage":null,"user":null},"sequence_number":3,"type":"response.failed"}"#]].assert_eq(&stream_text(&appended));
}

#[test]
fn output_goes_back_as_input_without_ids() {
    let output = vec![
        json!({"id": "rs_1", "type": "reasoning", "summary": []}),
        json!({"id": "rs_2", "type": "reasoning", "summary": [], "encrypted_content": "gAAA"}),
        json!({"id": "msg_1", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny", "annotations": []}]}),
        json!({"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "f", "arguments": "{}"}),
    ];
    expect![[r#"
        [
          {
            "encrypted_content": "gAAA",
            "id": "rs_2",
            "summary": [],
            "type": "reasoning"
          },
          {
            "content": "Sunny",
            "role": "assistant",
            "type": "message"
          },
          {
            "arguments": "{}",
            "call_id": "call_1",
            "name": "f",
            "type": "function_call"
          }
        ]"#]]
    .assert_eq(&render(&Value::Array(next_input(&output))));
    let listed = listed_items(&[json!({"role": "user", "content": "hi"})]);
    assert!(listed[0]["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(listed[0]["content"], json!([{"type": "input_text", "text": "hi"}]));
}
