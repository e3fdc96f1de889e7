//! Golden translations: each case's OpenAI request, Gemini answer or Gemini stream, and what the
//! gateway makes of it. `UPDATE_EXPECT=1 cargo test -p weir providers::gemini` rewrites them.
#![expect(clippy::needless_pass_by_value, reason = "the helpers take each literal case by value")]

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;
use crate::providers::golden::{self, render, stream_text};

fn request(body: Value, expected: Expect) {
    expected.assert_eq(&golden::request(&body, chat_request));
}

fn answer(answer: Value, expected: Expect) {
    expected.assert_eq(&render(&chat_response(&answer, "gemini-2.5-flash")));
}

fn stream(events: &[Value], expected: Expect) {
    let mut stream = ChunkStream::new("up", "gemini-2.5-flash");
    let mut out = Vec::new();
    for e in events {
        stream.push(format!("data: {e}\r\n\r\n").as_bytes(), &mut out);
    }
    stream.finish(&mut out);
    expected.assert_eq(&stream_text(&out));
}

const TOOLS: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"location":{"type":["string","null"],"default":"Paris"},"unit":{"enum":["c","f"]}},"required":["location"],"additionalProperties":false,"$schema":"x"},"strict":true}},{"type":"function","function":{"name":"get_time","parameters":{"type":"object","properties":{}}}}]"#;

fn tools() -> Value {
    serde_json::from_str(TOOLS).unwrap()
}

#[test]
fn system_and_developer_messages_join_the_system_instruction() {
    request(
        json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "use metric"},
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        ], "temperature": 0.2, "top_p": 0.9, "max_tokens": 10, "stop": "END", "n": 1, "x_unknown": true}),
        expect![[r#"
            {
              "contents": [
                {
                  "parts": [
                    {
                      "text": "what is this"
                    },
                    {
                      "inlineData": {
                        "data": "iVBORw0KGgo=",
                        "mimeType": "image/png"
                      }
                    }
                  ],
                  "role": "user"
                }
              ],
              "generationConfig": {
                "candidateCount": 1,
                "maxOutputTokens": 10,
                "stopSequences": [
                  "END"
                ],
                "temperature": 0.2,
                "topP": 0.9
              },
              "systemInstruction": {
                "parts": [
                  {
                    "text": "be brief"
                  },
                  {
                    "text": "use metric"
                  }
                ]
              }
            }"#]],
    );
}

#[test]
fn tool_choice_required_is_any() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "required"}),
        expect![[r#"
            {
              "contents": [
                {
                  "parts": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "functionCallingConfig": {
                  "mode": "ANY"
                }
              },
              "tools": [
                {
                  "functionDeclarations": [
                    {
                      "description": "Weather now",
                      "name": "get_weather",
                      "parameters": {
                        "properties": {
                          "location": {
                            "nullable": true,
                            "type": "string"
                          },
                          "unit": {
                            "enum": [
                              "c",
                              "f"
                            ],
                            "type": "string"
                          }
                        },
                        "required": [
                          "location"
                        ],
                        "type": "object"
                      }
                    },
                    {
                      "name": "get_time",
                      "parameters": {
                        "properties": {},
                        "type": "object"
                      }
                    }
                  ]
                }
              ]
            }"#]],
    );
}

#[test]
fn tool_choice_naming_a_function() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
        expect![[r#"
            {
              "contents": [
                {
                  "parts": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "functionCallingConfig": {
                  "allowedFunctionNames": [
                    "get_time"
                  ],
                  "mode": "ANY"
                }
              },
              "tools": [
                {
                  "functionDeclarations": [
                    {
                      "description": "Weather now",
                      "name": "get_weather",
                      "parameters": {
                        "properties": {
                          "location": {
                            "nullable": true,
                            "type": "string"
                          },
                          "unit": {
                            "enum": [
                              "c",
                              "f"
                            ],
                            "type": "string"
                          }
                        },
                        "required": [
                          "location"
                        ],
                        "type": "object"
                      }
                    },
                    {
                      "name": "get_time",
                      "parameters": {
                        "properties": {},
                        "type": "object"
                      }
                    }
                  ]
                }
              ]
            }"#]],
    );
}

#[test]
fn tool_choice_none_and_max_completion_tokens() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools(), "tool_choice": "none", "max_completion_tokens": 5}),
        expect![[r#"
            {
              "contents": [
                {
                  "parts": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "generationConfig": {
                "maxOutputTokens": 5
              },
              "toolConfig": {
                "functionCallingConfig": {
                  "mode": "NONE"
                }
              },
              "tools": [
                {
                  "functionDeclarations": [
                    {
                      "description": "Weather now",
                      "name": "get_weather",
                      "parameters": {
                        "properties": {
                          "location": {
                            "nullable": true,
                            "type": "string"
                          },
                          "unit": {
                            "enum": [
                              "c",
                              "f"
                            ],
                            "type": "string"
                          }
                        },
                        "required": [
                          "location"
                        ],
                        "type": "object"
                      }
                    },
                    {
                      "name": "get_time",
                      "parameters": {
                        "properties": {},
                        "type": "object"
                      }
                    }
                  ]
                }
              ]
            }"#]],
    );
}

#[test]
fn json_schema_becomes_a_response_schema() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}, "additionalProperties": false}}}}),
        expect![[r#"
            {
              "contents": [
                {
                  "parts": [
                    {
                      "text": "x"
                    }
                  ],
                  "role": "user"
                }
              ],
              "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {
                  "properties": {
                    "a": {
                      "nullable": true,
                      "type": "integer"
                    }
                  },
                  "type": "object"
                }
              }
            }"#]],
    );
}

#[test]
fn tool_result_round_trip_keeps_the_thought_signature() {
    // A tool-result round trip: the signature rides in the call id; results are one turn.
    request(
        json!({"model": "m", "tools": tools(), "messages": [
            {"role": "user", "content": "weather and time"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a_0~c2lnQQ==", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_a_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a_0~c2lnQQ==", "content": "{\"temp\":21}"},
            {"role": "tool", "tool_call_id": "call_a_1", "content": "noon"},
            {"role": "user", "content": "thanks"},
            {"role": "user", "content": "and tomorrow?"}
        ]}),
        expect![[r#"
            {
              "contents": [
                {
                  "parts": [
                    {
                      "text": "weather and time"
                    }
                  ],
                  "role": "user"
                },
                {
                  "parts": [
                    {
                      "functionCall": {
                        "args": {
                          "location": "Paris"
                        },
                        "name": "get_weather"
                      },
                      "thoughtSignature": "c2lnQQ=="
                    },
                    {
                      "functionCall": {
                        "args": {},
                        "name": "get_time"
                      }
                    }
                  ],
                  "role": "model"
                },
                {
                  "parts": [
                    {
                      "functionResponse": {
                        "name": "get_weather",
                        "response": {
                          "temp": 21
                        }
                      }
                    },
                    {
                      "functionResponse": {
                        "name": "get_time",
                        "response": {
                          "result": "noon"
                        }
                      }
                    },
                    {
                      "text": "thanks"
                    },
                    {
                      "text": "and tomorrow?"
                    }
                  ],
                  "role": "user"
                }
              ],
              "toolConfig": {
                "functionCallingConfig": {
                  "mode": "AUTO"
                }
              },
              "tools": [
                {
                  "functionDeclarations": [
                    {
                      "description": "Weather now",
                      "name": "get_weather",
                      "parameters": {
                        "properties": {
                          "location": {
                            "nullable": true,
                            "type": "string"
                          },
                          "unit": {
                            "enum": [
                              "c",
                              "f"
                            ],
                            "type": "string"
                          }
                        },
                        "required": [
                          "location"
                        ],
                        "type": "object"
                      }
                    },
                    {
                      "name": "get_time",
                      "parameters": {
                        "properties": {},
                        "type": "object"
                      }
                    }
                  ]
                }
              ]
            }"#]],
    );
}

#[test]
fn remote_image_urls_are_refused() {
    request(
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]}),
        expect![[r#"
            {
              "error": "Only base64 `data:` image URLs are supported for this model's provider; the gateway does not fetch remote URLs."
            }"#]],
    );
}

#[test]
fn thoughts_are_dropped_from_the_text_and_counted() {
    answer(
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "hmm", "thought": true}, {"text": "Hello"}, {"text": " there"}]}, "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 7, "cachedContentTokenCount": 1, "totalTokenCount": 13},
               "modelVersion": "gemini-2.5-flash", "responseId": "r1", "x_new_field": {}}),
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
              "model": "gemini-2.5-flash",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 9,
                "completion_tokens_details": {
                  "reasoning_tokens": 7
                },
                "prompt_tokens": 4,
                "prompt_tokens_details": {
                  "cached_tokens": 1
                },
                "total_tokens": 13
              }
            }"#]],
    );
}

#[test]
fn function_calls_finish_with_tool_calls() {
    answer(
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnQQ=="},
            {"functionCall": {"name": "get_time", "args": {}}}
        ]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 6, "totalTokenCount": 10}}),
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
                        "id": "call_ID_0~c2lnQQ==",
                        "type": "function"
                      },
                      {
                        "function": {
                          "arguments": "{}",
                          "name": "get_time"
                        },
                        "id": "call_ID_1",
                        "type": "function"
                      }
                    ]
                  }
                }
              ],
              "created": 0,
              "id": "chatcmpl-ID",
              "model": "gemini-2.5-flash",
              "object": "chat.completion",
              "usage": {
                "completion_tokens": 6,
                "completion_tokens_details": {
                  "reasoning_tokens": 0
                },
                "prompt_tokens": 4,
                "prompt_tokens_details": {
                  "cached_tokens": 0
                },
                "total_tokens": 10
              }
            }"#]],
    );
}

#[test]
fn max_tokens_is_length() {
    answer(
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "a b"}]}, "finishReason": "MAX_TOKENS"}]}),
        expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "length",
              "index": 0,
              "logprobs": null,
              "message": {
                "content": "a b",
                "refusal": null,
                "role": "assistant"
              }
            }
          ],
          "created": 0,
          "id": "chatcmpl-ID",
          "model": "gemini-2.5-flash",
          "object": "chat.completion",
          "usage": {
            "completion_tokens": 0,
            "completion_tokens_details": {
              "reasoning_tokens": 0
            },
            "prompt_tokens": 0,
            "prompt_tokens_details": {
              "cached_tokens": 0
            },
            "total_tokens": 0
          }
        }"#]],
    );
}

#[test]
fn safety_is_content_filter() {
    answer(
        json!({"candidates": [{"finishReason": "SAFETY", "safetyRatings": []}]}),
        expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "content_filter",
              "index": 0,
              "logprobs": null,
              "message": {
                "content": "",
                "refusal": null,
                "role": "assistant"
              }
            }
          ],
          "created": 0,
          "id": "chatcmpl-ID",
          "model": "gemini-2.5-flash",
          "object": "chat.completion",
          "usage": {
            "completion_tokens": 0,
            "completion_tokens_details": {
              "reasoning_tokens": 0
            },
            "prompt_tokens": 0,
            "prompt_tokens_details": {
              "cached_tokens": 0
            },
            "total_tokens": 0
          }
        }"#]],
    );
}

#[test]
fn a_blocked_prompt_is_content_filter() {
    answer(
        json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 3}}),
        expect![[r#"
        {
          "choices": [
            {
              "finish_reason": "content_filter",
              "index": 0,
              "logprobs": null,
              "message": {
                "content": "",
                "refusal": null,
                "role": "assistant"
              }
            }
          ],
          "created": 0,
          "id": "chatcmpl-ID",
          "model": "gemini-2.5-flash",
          "object": "chat.completion",
          "usage": {
            "completion_tokens": 0,
            "completion_tokens_details": {
              "reasoning_tokens": 0
            },
            "prompt_tokens": 3,
            "prompt_tokens_details": {
              "cached_tokens": 0
            },
            "total_tokens": 3
          }
        }"#]],
    );
}

#[test]
fn text_stream_with_usage() {
    stream(
        &[
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "index": 0}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "thoughtsTokenCount": 3}}),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"Hel","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"content":"lo"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"choices":[{"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"choices":[],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk","usage":{"completion_tokens":5,"completion_tokens_details":{"reasoning_tokens":3},"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":7}}
            [DONE]"#]],
    );
}

#[test]
fn parallel_calls_get_distinct_indexes() {
    // Parallel calls in separate events, then STOP: distinct indexes and `tool_calls`.
    stream(
        &[
            json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnQQ=="}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]}}]}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 8}}),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"","role":"assistant","tool_calls":[{"function":{"arguments":"{\"location\":\"Paris\"}","name":"get_weather"},"id":"call_ID_0~c2lnQQ==","index":0,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}","name":"get_time"},"id":"call_ID_1","index":1,"type":"function"}]},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"choices":[{"delta":{},"finish_reason":"tool_calls","index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"choices":[],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk","usage":{"completion_tokens":8,"completion_tokens_details":{"reasoning_tokens":0},"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":0},"total_tokens":10}}
            [DONE]"#]],
    );
}

#[test]
fn a_stream_without_finish_reason_is_incomplete() {
    // A stream that stops without a finish reason is incomplete: no usage, no [DONE].
    stream(
        &[json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]})],
        expect![[
            r#"{"choices":[{"delta":{"content":"Hel","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}"#
        ]],
    );
}

#[test]
fn an_error_event_mid_stream() {
    // An error event mid-stream.
    stream(
        &[
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]}),
            json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
        ],
        expect![[r#"
            {"choices":[{"delta":{"content":"Hel","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":0,"id":"chatcmpl-ID","model":"gemini-2.5-flash","object":"chat.completion.chunk"}
            {"error":{"code":"upstream_error","message":"The upstream 'up' failed with status 503: The model is overloaded.","param":null,"type":"server_error"}}"#]],
    );
}

#[test]
fn quota_errors_carry_retry_info() {
    let d = detail(br#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12.5s"}]}}"#);
    assert_eq!((d.code.as_deref(), d.retry_after), (Some("rate_limit_exceeded"), Some(13)));
}

#[test]
fn an_invalid_api_key_is_the_gateways_credentials() {
    let d = detail(br#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}]"#);
    assert!(d.credentials_rejected);
}
