//! Golden translations of the Messages API, both directions, streams fed byte by byte.
//! `UPDATE_EXPECT=1 cargo test -p weir api::messages` rewrites them.
#![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

use expect_test::{Expect, expect};
use http::HeaderMap;
use serde_json::{Value, json};

use super::*;
use crate::api::golden::{byte_by_byte, events, raw, render, stream_text};

fn parse(body: Value) -> MessagesRequest {
    MessagesRequest::parse(&serde_json::to_vec(&body).unwrap(), &HeaderMap::new()).expect("a valid request")
}

fn to_chat(body: Value, expected: Expect) {
    let rendered = match parse(body).to_chat() {
        Ok(chat) => render(&serde_json::to_value(&chat).unwrap()),
        Err(e) => format!("{} (param {:?})", e.message, e.param),
    };
    expected.assert_eq(&rendered);
}

fn from_chat_case(body: Value, expected: Expect) {
    let chat = ChatRequest::parse(&serde_json::to_vec(&body).unwrap()).unwrap();
    expected.assert_eq(&render(&from_chat(&chat, "claude-x").unwrap()));
}

/// A recorded OpenAI stream, fed byte by byte, encoded into Messages events.
fn encode_stream(sse: &str) -> String {
    let mut encoder = Encoder::default();
    let mut splitter = Splitter::default();
    let mut out = Vec::new();
    for byte in sse.as_bytes() {
        splitter.push(std::slice::from_ref(byte));
        while let Some(event) = splitter.next_event() {
            encoder.event(&event, &mut out);
        }
    }
    stream_text(&out)
}

/// A recorded Anthropic stream, fed byte by byte, decoded into canonical chunks.
fn decode_stream(sse: &str) -> Vec<Event> {
    let mut decoder = Decoder::new("up", "claude");
    let mut out = byte_by_byte(sse.as_bytes(), |b, out| decoder.push(b, out));
    decoder.finish(&mut out);
    out
}

#[test]
fn a_full_conversation_becomes_chat_messages() {
    to_chat(
        json!({"model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Use metric."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this image and this file?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "report.pdf"},
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": true},
                    {"type": "text", "text": "And tomorrow?"},
                ]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "temperature": 0.5, "top_k": 5, "metadata": {"user_id": "u-1"}, "stream": true,
        }),
        expect![[r#"
            {
              "max_completion_tokens": 100,
              "messages": [
                {
                  "content": "Be brief.\n\nUse metric.",
                  "role": "system"
                },
                {
                  "content": [
                    {
                      "text": "What is in this image and this file?",
                      "type": "text"
                    },
                    {
                      "image_url": {
                        "url": "data:image/png;base64,iVBORw0KGgo="
                      },
                      "type": "image_url"
                    },
                    {
                      "file": {
                        "file_data": "data:application/pdf;base64,JVBERi0=",
                        "filename": "report.pdf"
                      },
                      "type": "file"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": "Let me check.",
                  "role": "assistant",
                  "tool_calls": [
                    {
                      "function": {
                        "arguments": "{\"location\":\"Paris\"}",
                        "name": "get_weather"
                      },
                      "id": "toolu_1",
                      "type": "function"
                    }
                  ]
                },
                {
                  "content": "21C",
                  "role": "tool",
                  "tool_call_id": "toolu_1"
                },
                {
                  "content": "[error] timeout",
                  "role": "tool",
                  "tool_call_id": "toolu_2"
                },
                {
                  "content": "And tomorrow?",
                  "role": "user"
                }
              ],
              "model": "claude",
              "parallel_tool_calls": false,
              "stop": [
                "END"
              ],
              "stream": true,
              "stream_options": {
                "include_usage": true
              },
              "temperature": 0.5,
              "tool_choice": "required",
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
                    }
                  },
                  "type": "function"
                }
              ],
              "user": "u-1"
            }"#]],
    );
}

#[test]
fn what_only_anthropic_can_do_is_refused_naming_the_block() {
    to_chat(
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        expect![[
            r#"tools.0.type: The server tool 'web_search_20250305' is not supported for this model, whose provider is reached through translation; use a Claude model served by Anthropic or Bedrock. (param Some("tools.0.type"))"#
        ]],
    );
    to_chat(
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}]}]}]}),
        expect![[
            r#"messages.0.content.0.content.0.type: A block of type 'image' inside a tool result is not supported for this model, whose provider is reached through translation; use a Claude model served by Anthropic or Bedrock. (param Some("messages.0.content.0.content.0.type"))"#
        ]],
    );
    to_chat(
        json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}]}]}),
        expect![[
            r#"messages.0.content.0.type: A block of type 'search_result' is not supported for this model, whose provider is reached through translation; use a Claude model served by Anthropic or Bedrock. (param Some("messages.0.content.0.type"))"#
        ]],
    );
}

#[test]
fn bad_requests_name_the_field() {
    for (body, param) in [
        (json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]}), "max_tokens"),
        (json!({"model": "c", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}), "max_tokens"),
        (json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}), "model"),
        (json!({"model": "c", "max_tokens": 5, "messages": []}), "messages"),
        (json!({"model": "c", "max_tokens": 5, "messages": [{"role": "wizard", "content": "hi"}]}), "messages.0.role"),
        (json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]}), "messages.0.content"),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}),
            "messages.0.content.0.type",
        ),
        (json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": 4}), "system"),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"input_schema": {}}]}),
            "tools.0.name",
        ),
        (
            json!({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "maybe"}}),
            "tool_choice.type",
        ),
    ] {
        let e = MessagesRequest::parse(&serde_json::to_vec(&body).unwrap(), &HeaderMap::new()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
    }
}

#[test]
fn a_chat_request_becomes_a_messages_request() {
    from_chat_case(
        json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "use metric"},
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            {"role": "user", "content": "thanks"},
        ], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}, {"type": "function", "function": {"name": "get_time"}}],
           "tool_choice": "required", "parallel_tool_calls": false, "stop": "END", "user": "u", "temperature": 0.1, "stream": true}),
        expect![[r#"
            {
              "max_tokens": 4096,
              "messages": [
                {
                  "content": [
                    {
                      "text": "what is this",
                      "type": "text"
                    },
                    {
                      "source": {
                        "data": "UklGRg==",
                        "media_type": "image/webp",
                        "type": "base64"
                      },
                      "type": "image"
                    },
                    {
                      "source": {
                        "type": "url",
                        "url": "https://example.com/a.png"
                      },
                      "type": "image"
                    }
                  ],
                  "role": "user"
                },
                {
                  "content": [
                    {
                      "text": "Let me look.",
                      "type": "text"
                    },
                    {
                      "id": "call_1",
                      "input": {
                        "location": "Paris"
                      },
                      "name": "get_weather",
                      "type": "tool_use"
                    },
                    {
                      "id": "call_2",
                      "input": {},
                      "name": "get_time",
                      "type": "tool_use"
                    }
                  ],
                  "role": "assistant"
                },
                {
                  "content": [
                    {
                      "content": "21C",
                      "tool_use_id": "call_1",
                      "type": "tool_result"
                    },
                    {
                      "content": "noon",
                      "tool_use_id": "call_2",
                      "type": "tool_result"
                    },
                    {
                      "text": "thanks",
                      "type": "text"
                    }
                  ],
                  "role": "user"
                }
              ],
              "metadata": {
                "user_id": "u"
              },
              "model": "claude-x",
              "stop_sequences": [
                "END"
              ],
              "stream": true,
              "system": "be brief\n\nuse metric",
              "temperature": 0.1,
              "tool_choice": {
                "disable_parallel_tool_use": true,
                "type": "any"
              },
              "tools": [
                {
                  "input_schema": {
                    "type": "object"
                  },
                  "name": "get_weather"
                },
                {
                  "input_schema": {
                    "properties": {},
                    "type": "object"
                  },
                  "name": "get_time"
                }
              ]
            }"#]],
    );
}

#[test]
fn json_schema_answers_are_a_forced_tool_and_max_tokens_has_a_default() {
    from_chat_case(
        json!({"model": "m", "messages": [{"role": "user", "content": "where?"}], "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": {"type": "object", "properties": {"location": {"type": "string"}}}}}}),
        expect![[r#"
            {
              "max_tokens": 4096,
              "messages": [
                {
                  "content": [
                    {
                      "text": "where?",
                      "type": "text"
                    }
                  ],
                  "role": "user"
                }
              ],
              "model": "claude-x",
              "tool_choice": {
                "name": "json_response",
                "type": "tool"
              },
              "tools": [
                {
                  "description": "Respond with a JSON object that matches this schema.",
                  "input_schema": {
                    "properties": {
                      "location": {
                        "type": "string"
                      }
                    },
                    "type": "object"
                  },
                  "name": "json_response"
                }
              ]
            }"#]],
    );
}

#[test]
fn a_whole_answer_becomes_a_message() {
    let completion: Completion = serde_json::from_value(json!({
        "id": "chatcmpl-1", "model": "gpt-4o", "created": 1,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.", "reasoning_content": "they want weather",
            "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 10}},
    }))
    .unwrap();
    expect![[r#"
        {
          "content": [
            {
              "signature": "",
              "thinking": "they want weather",
              "type": "thinking"
            },
            {
              "text": "Checking.",
              "type": "text"
            },
            {
              "id": "call_9",
              "input": {
                "location": "Paris"
              },
              "name": "get_weather",
              "type": "tool_use"
            }
          ],
          "id": "msg_ID",
          "model": "gpt-4o",
          "role": "assistant",
          "stop_reason": "tool_use",
          "stop_sequence": null,
          "type": "message",
          "usage": {
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 10,
            "input_tokens": 20,
            "output_tokens": 9
          }
        }"#]]
    .assert_eq(&render(&encode_whole(&completion)));
}

#[test]
fn a_recorded_tool_call_stream_becomes_messages_events() {
    expect![[r#"
        message_start {"message":{"content":[],"id":"msg_ID","model":"gpt-4o-2024-08-06","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}
        ping {"type":"ping"}
        content_block_start {"content_block":{"id":"call_CTf1nWJLqSeRgDqaCG27xZ74","input":{},"name":"get_weather","type":"tool_use"},"index":0,"type":"content_block_start"}
        content_block_delta {"delta":{"partial_json":"{\"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"city","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"\":\"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"San","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":" Francisco","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"\",\"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"state","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"\":\"","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"CA","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_delta {"delta":{"partial_json":"\"}","type":"input_json_delta"},"index":0,"type":"content_block_delta"}
        content_block_stop {"index":0,"type":"content_block_stop"}
        message_delta {"delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":48,"output_tokens":19}}
        message_stop {"type":"message_stop"}"#]].assert_eq(&encode_stream(include_str!("../../../../bench/fixtures/openai/tool_call.sse")));
}

#[test]
fn a_recorded_text_stream_becomes_messages_events() {
    expect![[r#"
        message_start {"message":{"content":[],"id":"msg_ID","model":"gpt-4o-2024-08-06","role":"assistant","stop_reason":null,"stop_sequence":null,"type":"message","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":0,"output_tokens":0}},"type":"message_start"}
        ping {"type":"ping"}
        content_block_start {"content_block":{"text":"","type":"text"},"index":0,"type":"content_block_start"}
        content_block_delta {"delta":{"text":"{\"","type":"text_delta"},"index":0,"type":"content_block_delta"}
        content_block_stop {"index":0,"type":"content_block_stop"}
        message_delta {"delta":{"stop_reason":"max_tokens","stop_sequence":null},"type":"message_delta","usage":{"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"input_tokens":79,"output_tokens":1}}
        message_stop {"type":"message_stop"}"#]].assert_eq(&encode_stream(include_str!("../../../../bench/fixtures/openai/length.sse")));
}

#[test]
fn a_stream_that_fails_ends_with_an_error_event_and_no_message_stop() {
    let mut encoder = Encoder::default();
    let mut out = Vec::new();
    for event in events(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"model\":\"m\"}\n\ndata: {\"error\":{\"message\":\"The engine is overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}\n\n") {
        encoder.event(&event, &mut out);
    }
    let text = stream_text(&out);
    assert!(
        text.ends_with(
            r#"error {"error":{"message":"The engine is overloaded","type":"overloaded_error"},"type":"error"}"#
        ),
        "{text}"
    );
    assert!(!text.contains("message_stop"), "{text}");
    let mut failed = Encoder::default();
    let mut out = Vec::new();
    let error = crate::error::Error::new(crate::error::Kind::UpstreamTimeout, "too slow");
    failed.fail(&error, &mut out);
    assert_eq!(stream_text(&out), r#"error {"error":{"message":"too slow","type":"api_error"},"type":"error"}"#);
}

#[test]
fn a_recorded_message_becomes_a_chat_completion() {
    let answer: Value =
        serde_json::from_str(include_str!("../../../../bench/fixtures/anthropic/message_tool_use.json")).unwrap();
    expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "tool_calls",
              "index": 0,
              "logprobs": null,
              "message": {
                "content": "I'll get the weather for each of those cities. Let me start by checking San Francisco.",
                "refusal": null,
                "role": "assistant",
                "tool_calls": [
                  {
                    "function": {
                      "arguments": "{\"location\":\"San Francisco, CA\",\"units\":\"f\"}",
                      "name": "get_weather"
                    },
                    "id": "toolu_01LRanfq6DmHn1yDTB4d1SAh",
                    "type": "function"
                  }
                ]
              }
            }
          ],
          "created": 0,
          "id": "chatcmpl_ID",
          "model": "claude-haiku-4-5-20251001",
          "object": "chat.completion",
          "usage": {
            "completion_tokens": 93,
            "prompt_tokens": 701,
            "prompt_tokens_details": {
              "cache_write_tokens": 0,
              "cached_tokens": 0
            },
            "total_tokens": 794
          }
        }"#]]
    .assert_eq(&render(&decode_whole(&answer, "claude")));
}

#[test]
fn a_recorded_tool_use_stream_becomes_chat_chunks() {
    let events = decode_stream(include_str!("../../../../bench/fixtures/anthropic/tool_use.sse"));
    expect![[r#"
        {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"toolu_018acGYLtfR52q9yDbWaEdQZ","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\""},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"loca"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"tio"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"n\": "},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"\"San Fr"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"anci"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"sco, CA\""},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":", \""},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"units\": \"f\"}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk"}
        {"choices":[],"created":0,"id":"chatcmpl_ID","model":"claude-haiku-4-5-20251001","object":"chat.completion.chunk","usage":{"completion_tokens":74,"prompt_tokens":656,"prompt_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"total_tokens":730}}
        [DONE]"#]].assert_eq(&stream_text(&raw(&events)));
}

#[test]
fn a_recorded_short_stream_becomes_chat_chunks() {
    let events = decode_stream(include_str!("../../../../bench/fixtures/anthropic/text_short.sse"));
    expect![[r#"
        {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-sonnet-4-5-20250929","object":"chat.completion.chunk"}
        {"choices":[{"delta":{"content":"2"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-sonnet-4-5-20250929","object":"chat.completion.chunk"}
        {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl_ID","model":"claude-sonnet-4-5-20250929","object":"chat.completion.chunk"}
        {"choices":[],"created":0,"id":"chatcmpl_ID","model":"claude-sonnet-4-5-20250929","object":"chat.completion.chunk","usage":{"completion_tokens":5,"prompt_tokens":20,"prompt_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"total_tokens":25}}
        [DONE]"#]].assert_eq(&stream_text(&raw(&events)));
}

#[test]
fn a_recorded_thinking_stream_keeps_its_reasoning_and_text() {
    let events = decode_stream(include_str!("../../../../bench/fixtures/anthropic/thinking.sse"));
    let chunks: Vec<Value> = events.iter().filter_map(|e| serde_json::from_slice(&e.data).ok()).collect();
    let joined = |field: &str| -> String {
        chunks.iter().filter_map(|c| c.pointer(&format!("/choices/0/delta/{field}")).and_then(Value::as_str)).collect()
    };
    assert!(joined("reasoning_content").starts_with("This is a straightforward question about pedestrian safety"));
    assert!(!joined("content").is_empty());
    assert_eq!(&events.last().unwrap().data[..], b"[DONE]");
}

#[test]
fn an_error_event_ends_the_decoded_stream_without_done() {
    let sse = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let events = decode_stream(sse);
    let text = stream_text(&raw(&events));
    assert!(text.contains(r#""code":"overloaded""#) && !text.contains("[DONE]"), "{text}");
}

#[test]
fn native_events_give_their_usage_and_their_end() {
    let mut usage = Map::new();
    let mut last = NativePeek::default();
    let mut content = 0;
    for event in events(include_bytes!("../../../../bench/fixtures/anthropic/text_short.sse")) {
        last = peek(&event.data, &mut usage);
        content += usize::from(last.content);
    }
    assert_eq!((content, last.done), (1, true));
    let usage = usage_of(&Value::Object(usage));
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (20, 5));
}

#[test]
fn bedrock_takes_the_body_without_model_and_stream_and_with_its_version() {
    let mut headers = HeaderMap::new();
    headers.insert("anthropic-beta", "context-1m-2025-08-07, interleaved-thinking-2025-05-14".parse().unwrap());
    let r = MessagesRequest::parse(
        br#"{"model":"c","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi","x":1}],"metadata":{"user_id":"u"},"thinking":{"type":"enabled","budget_tokens":1024}}"#,
        &headers,
    )
    .unwrap();
    let bedrock: Value = serde_json::from_slice(&r.upstream_body(None, true).unwrap()).unwrap();
    expect![[r#"
        {
          "anthropic_beta": [
            "context-1m-2025-08-07",
            "interleaved-thinking-2025-05-14"
          ],
          "anthropic_version": "bedrock-2023-05-31",
          "max_tokens": 5,
          "messages": [
            {
              "content": "hi",
              "role": "user",
              "x": 1
            }
          ],
          "thinking": {
            "budget_tokens": 1024,
            "type": "enabled"
          }
        }"#]]
    .assert_eq(&render(&bedrock));
    let anthropic: Value = serde_json::from_slice(&r.upstream_body(Some("claude-up"), false).unwrap()).unwrap();
    assert_eq!((anthropic["model"].as_str(), anthropic["stream"].as_bool()), (Some("claude-up"), Some(true)));
    assert_eq!(anthropic["metadata"]["user_id"], "u", "the Anthropic API keeps every field");
}
