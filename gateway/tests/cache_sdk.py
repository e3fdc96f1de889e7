"""The `cache` plugin's streamed replay, checked with the official `openai` Python SDK: a stream
served from the cache yields the same text, tool calls, finish reason and usage as the live stream
that filled it, and a whole answer and a stream share one entry.

Run by the Rust test `cache::a_cached_stream_replays_faithfully_to_the_openai_python_sdk`, which
starts the gateway with the cache in front of a mock upstream and sets WEIR_BASE_URL and WEIR_API_KEY.
"""

import os
import time

import openai
from checks import check, run

client = openai.OpenAI(base_url=os.environ["WEIR_BASE_URL"], api_key=os.environ["WEIR_API_KEY"], max_retries=0, timeout=30)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]


def stream(include_usage, **kwargs):
    """One streamed request: (x-weir-cache, text, tool call arguments, finish reasons, usage)."""
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    raw = client.chat.completions.with_raw_response.create(stream=True, temperature=0, **kwargs)
    text, arguments, finish, usage = "", {}, [], None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                arguments[call.index] = arguments.get(call.index, "") + (call.function.arguments or "")
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return raw.headers.get("x-weir-cache"), text, arguments, finish, usage


def live_then_cached(**kwargs):
    status, *live = stream(True, **kwargs)
    assert status == "miss", status
    # A stream's answer is stored once its last event went out; give it a moment (bounded).
    for _ in range(100):
        status, *cached = stream(True, **kwargs)
        if status == "hit":
            break
        time.sleep(0.05)
    assert status == "hit", status
    assert cached == live, (cached, live)
    assert live[3] is not None and live[3]["completion_tokens"] > 0, live
    return live


@check
def synthesized_text_stream():
    live_then_cached(model="gpt-test", messages=[{"role": "user", "content": "stream and cache me"}])


@check
def recorded_openai_text_stream():
    text, _, finish, usage = live_then_cached(model="fixture:text_a", messages=[{"role": "user", "content": "recorded"}])
    assert text and finish == ["stop"] and usage["prompt_tokens"] > 0


@check
def recorded_tool_call_stream():
    _, arguments, finish, _ = live_then_cached(model="fixture:tool_call", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS)
    assert finish == ["tool_calls"] and arguments[0].startswith("{"), (finish, arguments)


@check
def cached_stream_without_usage_and_as_a_whole_answer():
    messages = [{"role": "user", "content": "one entry, three shapes"}]
    status, text, _, finish, usage = stream(True, model="gpt-test", messages=messages)
    assert status == "miss", status
    for _ in range(100):
        status, text2, _, finish2, usage2 = stream(False, model="gpt-test", messages=messages)
        if status == "hit":
            break
        time.sleep(0.05)
    assert status == "hit" and (text2, finish2, usage2) == (text, finish, None), (status, text2, finish2, usage2)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=messages, temperature=0)
    whole = raw.parse()
    assert raw.headers.get("x-weir-cache") == "hit"
    assert whole.choices[0].message.content == text and whole.choices[0].finish_reason == finish[0]
    assert whole.usage.model_dump() == usage, (whole.usage, usage)


if __name__ == "__main__":
    run()
