"""Conformance of Weir's OpenAI-compatible surface, checked with the official `openai` Python SDK.

Run by the Rust test `python::the_openai_python_sdk_works_against_the_gateway`, which starts the
gateway in front of mock upstreams and sets WEIR_BASE_URL and WEIR_API_KEY.
"""

import base64
import os
import struct

import openai
from checks import check, raises, run

BASE_URL = os.environ["WEIR_BASE_URL"]
KEY = os.environ["WEIR_API_KEY"]
client = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=30)
MESSAGES = [{"role": "user", "content": "hello from python"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]

@check
def chat_completion():
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert r.choices[0].message.content == "echo: hello from python", r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


@check
def streaming_with_usage():
    stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello from python", text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1]


@check
def streaming_without_usage():
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks), "the usage chunk must be removed when not asked for"
    assert chunks[-1].choices[0].finish_reason == "stop"


@check
def recorded_stream_n3():
    chunks = list(client.chat.completions.create(model="fixture:n3_choices", messages=MESSAGES, stream=True, n=3))
    texts = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(texts) == [0, 1, 2] and all(texts.values()), texts


@check
def tool_call_round_trip():
    first = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and call.function.arguments == '{"location":"Paris"}'
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model="gpt-test", messages=history, tools=TOOLS)
    assert second.choices[0].message.content == "tool said: sunny", second


@check
def embeddings_float_and_base64():
    floats = client.embeddings.create(model="embed", input=["alpha", "beta"], encoding_format="float")
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 8
    raw = client.embeddings.create(model="embed", input=["alpha", "beta"], encoding_format="base64")
    decoded = list(struct.unpack("<8f", base64.b64decode(raw.data[0].embedding)))
    # JSON carries the shortest decimal of each f32; round it back to f32 to compare exactly.
    as_f32 = list(struct.unpack("<8f", struct.pack("<8f", *floats.data[0].embedding)))
    assert decoded == as_f32, (decoded, as_f32)
    # Without a format the SDK asks for base64 itself and decodes it.
    default = client.embeddings.create(model="embed", input="alpha")
    assert list(struct.unpack("<8f", struct.pack("<8f", *default.data[0].embedding))) == as_f32


@check
def models_list():
    ids = [m.id for m in client.models.list()]
    assert "gpt-test" in ids and "embed" in ids and "*" not in ids, ids


@check
def bad_request_for_malformed_json():
    # The SDK cannot send malformed JSON, so its own HTTP client sends it and its own mapping judges.
    response = client._client.post(f"{BASE_URL}/chat/completions", content=b'{"model": "gpt-test", "messages": [', headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    error = client._make_status_error_from_response(response)
    assert isinstance(error, openai.BadRequestError), error
    assert error.body["code"] == "invalid_json", error.body
    e = raises(openai.BadRequestError, lambda: client.chat.completions.create(model="gpt-test", messages=[]))
    assert e.status_code == 400 and e.body["param"] == "messages", e.body


@check
def authentication_error_for_a_wrong_key():
    wrong = openai.OpenAI(base_url=BASE_URL, api_key="sk-not-a-weir-key-000", max_retries=0)
    e = raises(openai.AuthenticationError, lambda: wrong.chat.completions.create(model="gpt-test", messages=MESSAGES))
    assert e.status_code == 401


@check
def not_found_for_an_unknown_model():
    strict = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0)
    e = raises(openai.NotFoundError, lambda: strict.embeddings.create(model="no-such-embedder", input="x"))
    assert e.body["code"] == "model_not_found", e.body


@check
def api_error_raised_mid_stream():
    stream = client.chat.completions.create(model="breaks-mid-stream", messages=MESSAGES, stream=True)
    received = []

    def consume():
        for chunk in stream:
            received.append(chunk)

    e = raises(openai.APIError, consume)
    assert received, "some chunks arrived before the failure"
    assert "stream" in str(e.message), e.message


if __name__ == "__main__":
    run()
