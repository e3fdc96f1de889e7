//! Golden translations: each case's OpenAI request, Converse answer or ConverseStream frames, and
//! what the gateway makes of it. `UPDATE_EXPECT=1 cargo test -p weir providers::bedrock` rewrites them.
#![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::Header;
use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;
use crate::providers::golden::{self, render, stream_text};

fn request(body: Value, expected: Expect) {
    expected.assert_eq(&golden::request(&body, chat_request));
}

fn answer(answer: Value, expected: Expect) {
    expected.assert_eq(&render(&chat_response(&answer, "anthropic.claude")));
}

fn frame(kind: &str, event: &str, payload: &Value) -> Vec<u8> {
    let type_header = if kind == "event" { ":event-type" } else { ":exception-type" };
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(type_header, EsHeaderValue::String(event.to_owned().into())))
        .add_header(Header::new(":content-type", EsHeaderValue::String("application/json".into())))
        .add_header(Header::new(":message-type", EsHeaderValue::String(kind.to_owned().into())));
    let mut out = Vec::new();
    write_message_to(&message, &mut out).unwrap();
    out
}

/// Feeds the frames one byte at a time, as a slow network would.
fn stream(frames: &[(&str, &str, Value)], expected: Expect) {
    let mut stream = ChunkStream::new("up", "anthropic.claude");
    let mut out = Vec::new();
    for (kind, event, payload) in frames {
        for byte in frame(kind, event, payload) {
            stream.push(&[byte], &mut out);
        }
    }
    stream.finish(&mut out);
    expected.assert_eq(&stream_text(&out));
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time"}}
    ])
}

fn history() -> Value {
    json!([
        {"role": "user", "content": "weather and time"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
            {"id": "tooluse_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "tooluse_1", "content": "{\"temp\":21}"},
        {"role": "tool", "tool_call_id": "tooluse_2", "content": "noon"},
    ])
}

fn usage() -> Value {
    json!({"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5}, "metrics": {"latencyMs": 1}})
}

#[test]
fn system_and_developer_messages_become_system_blocks() {
    request(
        json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg=="}}]},
            {"role": "developer", "content": "use metric"},
            {"role": "user", "content": "and quickly"},
        ], "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 10, "stop": ["END", "STOP"], "x_unknown": true}),
        expect![[r#"
            {
              "inferenceConfig": {
                "maxTokens": 10,
                "stopSequences": [
                  "END",
                  "STOP"
                ],
                "temperature": 0.2,
                "topP": 0.9
              },
              "messages": [
                {
                  "content": [
                    {
                      "text": "what is this"
                    },
                    {
                      "image": {
                        "format": "webp",
                        "source": {
                          "bytes": "UklGRg=="
                        }
                      }
                    },
                    {
                      "text": "and quickly"
                    }
                  ],
                  "role": "user"
                }
              ],
              "system": [
                {
                  "text": "be brief"
                },
                {
                  "text": "use metric"
                }
              ]
            }"#]],
    );
}

#[test]
fn tool_choice_required_is_any() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "required"}),
        expect![[r#"
        {
          "messages": [
            {
              "content": [
                {
                  "text": "x"
                }
              ],
              "role": "user"
            }
          ],
          "toolConfig": {
            "toolChoice": {
              "any": {}
            },
            "tools": [
              {
                "toolSpec": {
                  "description": "Weather now",
                  "inputSchema": {
                    "json": {
                      "properties": {
                        "location": {
                          "type": "string"
                        }
                      },
                      "type": "object"
                    }
                  },
                  "name": "get_weather"
                }
              },
              {
                "toolSpec": {
                  "inputSchema": {
                    "json": {
                      "properties": {},
                      "type": "object"
                    }
                  },
                  "name": "get_time"
                }
              }
            ]
          }
        }"#]],
    );
}

#[test]
fn tool_choice_auto() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "auto"}),
        expect![[r#"
        {
          "messages": [
            {
              "content": [
                {
                  "text": "x"
                }
              ],
              "role": "user"
            }
          ],
          "toolConfig": {
            "toolChoice": {
              "auto": {}
            },
            "tools": [
              {
                "toolSpec": {
                  "description": "Weather now",
                  "inputSchema": {
                    "json": {
                      "properties": {
                        "location": {
                          "type": "string"
                        }
                      },
                      "type": "object"
                    }
                  },
                  "name": "get_weather"
                }
              },
              {
                "toolSpec": {
                  "inputSchema": {
                    "json": {
                      "properties": {},
                      "type": "object"
                    }
                  },
                  "name": "get_time"
                }
              }
            ]
          }
        }"#]],
    );
}

#[test]
fn tool_choice_naming_a_function() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        expect![[r#"
            {
              "messages": [
                {
                  "content": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "toolChoice": {
                  "tool": {
                    "name": "get_time"
                  }
                },
                "tools": [
                  {
                    "toolSpec": {
                      "description": "Weather now",
                      "inputSchema": {
                        "json": {
                          "properties": {
                            "location": {
                              "type": "string"
                            }
                          },
                          "type": "object"
                        }
                      },
                      "name": "get_weather"
                    }
                  },
                  {
                    "toolSpec": {
                      "inputSchema": {
                        "json": {
                          "properties": {},
                          "type": "object"
                        }
                      },
                      "name": "get_time"
                    }
                  }
                ]
              }
            }"#]],
    );
}

#[test]
fn json_schema_becomes_a_forced_tool() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}}),
        expect![[r#"
            {
              "messages": [
                {
                  "content": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "toolChoice": {
                  "tool": {
                    "name": "json_response"
                  }
                },
                "tools": [
                  {
                    "toolSpec": {
                      "description": "Respond with a JSON object that matches this schema.",
                      "inputSchema": {
                        "json": {
                          "properties": {
                            "a": {
                              "type": "integer"
                            }
                          },
                          "type": "object"
                        }
                      },
                      "name": "json_response"
                    }
                  }
                ]
              }
            }"#]],
    );
}

#[test]
fn tool_results_merge_into_one_user_turn() {
    // Results merged into one user turn of toolResults.
    request(
        json!({"model": "m", "messages": history(), "tools": tools()}),
        expect![[r#"
        {
          "messages": [
            {
              "content": [
                {
                  "text": "weather and time"
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "Let me look."
                },
                {
                  "toolUse": {
                    "input": {
                      "location": "Paris"
                    },
                    "name": "get_weather",
                    "toolUseId": "tooluse_1"
                  }
                },
                {
                  "toolUse": {
                    "input": {},
                    "name": "get_time",
                    "toolUseId": "tooluse_2"
                  }
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "toolResult": {
                    "content": [
                      {
                        "json": {
                          "temp": 21
                        }
                      }
                    ],
                    "toolUseId": "tooluse_1"
                  }
                },
                {
                  "toolResult": {
                    "content": [
                      {
                        "text": "noon"
                      }
                    ],
                    "toolUseId": "tooluse_2"
                  }
                }
              ],
              "role": "user"
            }
          ],
          "toolConfig": {
            "tools": [
              {
                "toolSpec": {
                  "description": "Weather now",
                  "inputSchema": {
                    "json": {
                      "properties": {
                        "location": {
                          "type": "string"
                        }
                      },
                      "type": "object"
                    }
                  },
                  "name": "get_weather"
                }
              },
              {
                "toolSpec": {
                  "inputSchema": {
                    "json": {
                      "properties": {},
                      "type": "object"
                    }
                  },
                  "name": "get_time"
                }
              }
            ]
          }
        }"#]],
    );
}

#[test]
fn tool_choice_none_writes_the_tool_history_as_text() {
    // The same history with tool_choice none (tools dropped) goes as text.
    request(
        json!({"model": "m", "messages": history(), "tools": tools(), "tool_choice": "none"}),
        expect![[r#"
        {
          "messages": [
            {
              "content": [
                {
                  "text": "weather and time"
                }
              ],
              "role": "user"
            },
            {
              "content": [
                {
                  "text": "Let me look."
                },
                {
                  "text": "[called tool get_weather with {\"location\":\"Paris\"}]"
                },
                {
                  "text": "[called tool get_time with {}]"
                }
              ],
              "role": "assistant"
            },
            {
              "content": [
                {
                  "text": "[tool result: {\"temp\":21}]"
                },
                {
                  "text": "[tool result: noon]"
                }
              ],
              "role": "user"
            }
          ]
        }"#]],
    );
}

#[test]
fn images_in_other_formats_are_refused() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}),
        expect![[r#"
            {
              "error": "Bedrock accepts png, jpeg, gif and webp images; this image's `data:` URL names another type."
            }"#]],
    );
}

#[test]
fn text_answer_counts_cache_reads_and_writes() {
    answer(
        json!({"output": {"message": {"role": "assistant", "content": [{"text": "Hello"}, {"text": " there"}]}}, "stopReason": "end_turn",
               "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 11, "cacheReadInputTokens": 3, "cacheWriteInputTokens": 1}, "metrics": {"latencyMs": 10}, "x_new": 1}),
        expect![[r#"
            {
              "choices": [
                {
                  "finish_reason": "stop",
                  "index": 0,
                  "logprobs": null,
                  "message": {
                    "content": "Hello there",
                    "refusal": null,
                    "role": "assistant"
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "anthropic.claude",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 2,
                "prompt_tokens": 9,
                "prompt_tokens_details": {
                  "cache_write_tokens": 1,
                  "cached_tokens": 3
                },
                "total_tokens": 11
              }
            }"#]],
    );
}

#[test]
fn tool_use_answer_becomes_tool_calls() {
    answer(
        json!({"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"location": "Paris"}}},
            {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time", "input": {}}}
        ]}}, "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 9, "totalTokens": 14}}),
        expect![[r#"
            {
              "choices": [
                {
                  "finish_reason": "tool_calls",
                  "index": 0,
                  "logprobs": null,
                  "message": {
                    "content": null,
                    "refusal": null,
                    "role": "assistant",
                    "tool_calls": [
                      {
                        "function": {
                          "arguments": "{\"location\":\"Paris\"}",
                          "name": "get_weather"
                        },
                        "id": "tooluse_1",
                        "type": "function"
                      },
                      {
                        "function": {
                          "arguments": "{}",
                          "name": "get_time"
                        },
                        "id": "tooluse_2",
                        "type": "function"
                      }
                    ]
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "anthropic.claude",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 9,
                "prompt_tokens": 5,
                "prompt_tokens_details": {
                  "cache_write_tokens": 0,
                  "cached_tokens": 0
                },
                "total_tokens": 14
              }
            }"#]],
    );
}

#[test]
fn json_schema_answer_is_the_message_text() {
    answer(
        json!({"output": {"message": {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "json_response", "input": {"a": 1}}}]}}, "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 3}}),
        expect![[r#"
            {
              "choices": [
                {
                  "finish_reason": "stop",
                  "index": 0,
                  "logprobs": null,
                  "message": {
                    "content": "{\"a\":1}",
                    "refusal": null,
                    "role": "assistant"
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "anthropic.claude",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 3,
                "prompt_tokens": 5,
                "prompt_tokens_details": {
                  "cache_write_tokens": 0,
                  "cached_tokens": 0
                },
                "total_tokens": 8
              }
            }"#]],
    );
}

#[test]
fn every_stop_reason_has_a_finish_reason() {
    let reasons: Vec<(&str, &str)> = [
        "end_turn",
        "tool_use",
        "max_tokens",
        "stop_sequence",
        "guardrail_intervened",
        "content_filtered",
        "malformed_model_output",
        "malformed_tool_use",
        "model_context_window_exceeded",
    ]
    .into_iter()
    .map(|r| (r, finish_reason(r)))
    .collect();
    expect![[r#"
        [
            (
                "end_turn",
                "stop",
            ),
            (
                "tool_use",
                "tool_calls",
            ),
            (
                "max_tokens",
                "length",
            ),
            (
                "stop_sequence",
                "stop",
            ),
            (
                "guardrail_intervened",
                "content_filter",
            ),
            (
                "content_filtered",
                "content_filter",
            ),
            (
                "malformed_model_output",
                "stop",
            ),
            (
                "malformed_tool_use",
                "stop",
            ),
            (
                "model_context_window_exceeded",
                "length",
            ),
        ]
    "#]]
    .assert_debug_eq(&reasons);
}

#[test]
fn text_stream_with_usage() {
    stream(
        &[
            ("event", "messageStart", json!({"role": "assistant"})),
            ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "abc"})),
            ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo"}})),
            ("event", "contentBlockStop", json!({"contentBlockIndex": 0})),
            ("event", "messageStop", json!({"stopReason": "max_tokens"})),
            ("event", "metadata", usage()),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"content":"Hel"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"content":"lo"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{},"finish_reason":"length","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":3,"prompt_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"total_tokens":5}}
            [DONE]"#]],
    );
}

#[test]
fn tool_use_stream() {
    stream(
        &[
            ("event", "messageStart", json!({"role": "assistant"})),
            (
                "event",
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}}}),
            ),
            ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"loc"}}})),
            (
                "event",
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "ation\":\"Paris\"}"}}}),
            ),
            ("event", "contentBlockStop", json!({"contentBlockIndex": 0})),
            (
                "event",
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "get_time"}}}),
            ),
            ("event", "contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}})),
            ("event", "contentBlockStop", json!({"contentBlockIndex": 1})),
            ("event", "messageStop", json!({"stopReason": "tool_use"})),
            ("event", "metadata", usage()),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"tooluse_1","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\"loc"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"ation\":\"Paris\"}"},"index":0}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"","name":"get_time"},"id":"tooluse_2","index":1,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}"},"index":1}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk","usage":{"completion_tokens":2,"prompt_tokens":3,"prompt_tokens_details":{"cache_write_tokens":0,"cached_tokens":0},"total_tokens":5}}
            [DONE]"#]],
    );
}

#[test]
fn stream_without_metadata_has_no_done() {
    // messageStop without its metadata: the stream was cut before usage, so no [DONE].
    stream(
        &[
            ("event", "messageStart", json!({"role": "assistant"})),
            ("event", "messageStop", json!({"stopReason": "end_turn"})),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}"#]],
    );
}

#[test]
fn exception_frame_ends_the_stream_with_an_error() {
    stream(
        &[
            ("event", "messageStart", json!({"role": "assistant"})),
            ("event", "contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
            ("exception", "throttlingException", json!({"message": "Too many tokens, please wait."})),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"content":"Hel"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"anthropic.claude","object":"chat.completion.chunk"}
            {"error":{"code":"throttling","message":"The upstream 'up' is rate limiting requests: Too many tokens, please wait.","param":null,"type":"rate_limit_error"}}"#]],
    );
}

#[test]
fn throttling_is_read_from_the_error_type_header() {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-amzn-errortype",
        "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/".parse().unwrap(),
    );
    let d = detail(&headers, br#"{"message":"Too many requests"}"#);
    assert_eq!(
        (d.code.as_deref(), d.throttled, d.message.as_deref()),
        (Some("throttling"), true, Some("Too many requests"))
    );
}

#[test]
fn validation_is_read_from_the_type_field() {
    let d = detail(&HeaderMap::new(), br#"{"__type":"com.amazon.coral.validate#ValidationException","Message":"bad"}"#);
    assert_eq!((d.code.as_deref(), d.message.as_deref()), (Some("validation"), Some("bad")));
}
