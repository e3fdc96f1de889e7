"""Weir's Anthropic Messages surface, checked with the official `anthropic` Python SDK against every
kind of target: an `anthropic` upstream (relayed natively), a Claude model on Bedrock (InvokeModel,
natively) and an OpenAI-compatible upstream (translated through chat completions).

Run by the Rust test `messages::the_anthropic_sdk_works_against_every_kind_of_target`, which starts
the gateway in front of the mocks and sets WEIR_BASE_URL, WEIR_API_KEY and WEIR_TARGETS. For each
target T the gateway serves the models T (healthy), T-429 (always rate limited), T-529 (always
overloaded) and T-break (its streams break after a few events).
"""

import base64
import os

import anthropic

from checks import check, raises, run

BASE_URL = os.environ["WEIR_BASE_URL"].removesuffix("/v1")
KEY = os.environ["WEIR_API_KEY"]
TARGETS = os.environ["WEIR_TARGETS"].split(",")
client = anthropic.Anthropic(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=30)
TOOLS = [{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]
PNG = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()


@check
def whole_message(t):
    m = client.messages.create(model=t, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello from python"}])
    assert m.type == "message" and m.role == "assistant", m
    assert m.content[0].type == "text" and m.content[0].text == "echo: hello from python", m
    assert m.stop_reason == "end_turn" and m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m


@check
def streamed_text_and_final_message(t):
    with client.messages.stream(model=t, max_tokens=100, messages=[{"role": "user", "content": "one two three"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: one two three", text
    assert final.content[0].text == text and final.stop_reason == "end_turn", final
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0, final.usage


@check
def streamed_tool_use(t):
    with client.messages.stream(model=t, max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}]) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(uses) == 1, final
    assert uses[0].name == "get_weather" and uses[0].input == {"location": "Paris"}, uses[0]


@check
def tool_round_trip(t):
    first = client.messages.create(model=t, max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "weather?"}])
    use = next(b for b in first.content if b.type == "tool_use")
    assert first.stop_reason == "tool_use" and use.input == {"location": "Paris"}, first
    second = client.messages.create(model=t, max_tokens=100, tools=TOOLS, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True, exclude={"caller"}) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]},
    ])
    assert second.content[0].text == "tool said: 21C", second
    assert second.stop_reason == "end_turn"


@check
def images(t):
    m = client.messages.create(model=t, max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "describe it"},
    ]}])
    assert m.content[0].text == "echo: describe it", m


@check
def count_tokens(t):
    n = client.messages.count_tokens(model=t, messages=[{"role": "user", "content": "one two three four"}]).input_tokens
    # Anthropic counts (the mock: one token per word); elsewhere the gateway estimates.
    assert (n == 4) if t == "anthropic" else (0 < n < 20), n


@check
def error_classes(t):
    e = raises(anthropic.BadRequestError, lambda: client.messages.create(model=t, messages=[{"role": "user", "content": "x"}], extra_body={}, max_tokens=None))
    assert e.body["error"]["type"] == "invalid_request_error" and "max_tokens" in e.message, e.body
    # A block only Claude understands: refused by the translation, or by the upstream itself.
    e = raises(anthropic.BadRequestError, lambda: client.messages.create(model=t, max_tokens=10, messages=[
        {"role": "user", "content": [{"type": "mystery_block", "text": "x"}]}]))
    assert e.body["type"] == "error", e.body
    raises(anthropic.AuthenticationError, lambda: anthropic.Anthropic(base_url=BASE_URL, api_key="sk-wrong-key-000000000000", max_retries=0).messages.create(
        model=t, max_tokens=10, messages=[{"role": "user", "content": "x"}]))
    e = raises(anthropic.NotFoundError, lambda: client.messages.create(model=f"{t}-no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}]))
    assert e.body["error"]["type"] == "not_found_error", e.body
    e = raises(anthropic.RateLimitError, lambda: client.messages.create(model=f"{t}-429", max_tokens=10, messages=[{"role": "user", "content": "x"}]))
    assert e.body["error"]["type"] == "rate_limit_error", e.body
    e = raises(anthropic.OverloadedError, lambda: client.messages.create(model=f"{t}-529", max_tokens=10, messages=[{"role": "user", "content": "x"}]))
    assert e.status_code == 529 and e.body["error"]["type"] == "overloaded_error", e.body


@check
def mid_stream_failure_raises(t):
    def read():
        with client.messages.stream(model=f"{t}-break", max_tokens=100, messages=[{"role": "user", "content": "a b c d e f g h i j"}]) as stream:
            for _ in stream:
                pass
    e = raises(anthropic.APIStatusError, read)
    assert "error" in str(e), e


if __name__ == "__main__":
    run("anthropic SDK checks", TARGETS)
