"""The official `openai` Python SDK pointed at Weir, answered by each cloud provider through its mock
(Bedrock, Gemini API, Vertex AI, Azure OpenAI): the same client code must get correct answers from
every provider, streaming and not.

Run by the Rust test `python::the_openai_sdk_gets_correct_answers_from_every_provider`, which sets
WEIR_BASE_URL and WEIR_API_KEY and serves the public models bedrock, gemini, vertex and azure.
"""

import base64
import os

import openai
from checks import check_each, raises, run

client = openai.OpenAI(base_url=os.environ["WEIR_BASE_URL"], api_key=os.environ["WEIR_API_KEY"], max_retries=0, timeout=30)
PROVIDERS = ["bedrock", "gemini", "vertex", "azure"]
# Bedrock and Gemini are translated by Weir; Azure is relayed (its mock is OpenAI's, which does not
# implement every parameter, so a few checks are for the translated providers only).
TRANSLATED = ["bedrock", "gemini", "vertex"]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()

def user(text):
    return [{"role": "user", "content": text}]


@check_each(PROVIDERS)
def text_with_system_prompt(model):
    r = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "be brief"}] + user("hello there"), temperature=0.2, stop=["END"], extra_body={"x_unknown_field": 1})
    assert r.choices[0].message.content == "echo: hello there", r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens >= 3 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@check_each(PROVIDERS)
def stream_with_and_without_usage(model):
    chunks = list(client.chat.completions.create(model=model, messages=user("one two three"), stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 4, chunks[-1]
    chunks = list(client.chat.completions.create(model=model, messages=user("one two three"), stream=True))
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three"


@check_each(TRANSLATED)
def image_from_a_data_url(model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert r.choices[0].message.content == "echo: what is it", r
    # Remote image URLs are refused, not fetched.
    e = raises(openai.BadRequestError, lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]))
    assert e.param == "messages[0].content", e


@check_each(PROVIDERS)
def single_tool_call_and_result(model):
    r = client.chat.completions.create(model=model, messages=user("weather?"), tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"location":"Paris"}', call
    messages = user("weather?") + [choice.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert r.choices[0].message.content.startswith("tool said:") and "sunny" in r.choices[0].message.content, r


@check_each(TRANSLATED)
def parallel_tool_calls_round_trip(model):
    for stream in [False, True]:
        if stream:
            chunks = list(client.chat.completions.create(model=model, messages=user("weather and time?"), tools=[WEATHER, TIME], stream=True))
            calls = {}
            for c in chunks:
                for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                    entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                    entry["id"] = tc.id or entry["id"]
                    entry["name"] = (tc.function.name if tc.function else None) or entry["name"]
                    entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
            assert sorted(calls) == [0, 1], calls
            assert [calls[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
            assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
            tool_calls = [{"id": calls[i]["id"], "type": "function", "function": {"name": calls[i]["name"], "arguments": calls[i]["arguments"]}} for i in (0, 1)]
            assistant = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        else:
            r = client.chat.completions.create(model=model, messages=user("weather and time?"), tools=[WEATHER, TIME])
            assert r.choices[0].finish_reason == "tool_calls"
            assistant = r.choices[0].message.model_dump(exclude_none=True)
            tool_calls = assistant["tool_calls"]
            assert len({c["id"] for c in tool_calls}) == 2
        # Both results go back; for Gemini the call ids carry the thought signatures, which its
        # mock insists on.
        messages = user("weather and time?") + [assistant] + [{"role": "tool", "tool_call_id": c["id"], "content": f"result {i}"} for i, c in enumerate(tool_calls)]
        r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER, TIME])
        assert "result 1" in r.choices[0].message.content, r


@check_each(TRANSLATED)
def tool_choice_none_required_and_named(model):
    r = client.chat.completions.create(model=model, messages=user("hi"), tools=[WEATHER, TIME], tool_choice="none")
    assert r.choices[0].message.content == "echo: hi" and not r.choices[0].message.tool_calls, r
    r = client.chat.completions.create(model=model, messages=user("hi"), tools=[WEATHER, TIME], tool_choice="required")
    assert r.choices[0].finish_reason == "tool_calls"
    r = client.chat.completions.create(model=model, messages=user("hi"), tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_time"], r


@check_each(TRANSLATED)
def json_schema(model):
    schema = {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": False}
    r = client.chat.completions.create(model=model, messages=user("where?"), response_format={"type": "json_schema", "json_schema": {"name": "place", "strict": True, "schema": schema}})
    assert r.choices[0].finish_reason == "stop", r
    assert r.choices[0].message.content, r


@check_each(TRANSLATED)
def max_tokens_is_length(model):
    r = client.chat.completions.create(model=model, messages=user("a b c d e f"), max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "echo: a b", r
    chunks = list(client.chat.completions.create(model=model, messages=user("a b c d e f"), max_completion_tokens=3, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


@check_each(PROVIDERS)
def content_filter(model):
    if model == "azure":
        # Azure refuses a filtered prompt.
        e = raises(openai.BadRequestError, lambda: client.chat.completions.create(model=model, messages=user("trigger-content-filter")))
        assert e.code == "content_filter", e
        return
    r = client.chat.completions.create(model=model, messages=user("trigger-content-filter"))
    assert r.choices[0].finish_reason == "content_filter", r


@check_each(TRANSLATED)
def a_mid_stream_failure_raises(model):
    stream = client.chat.completions.create(model=model, messages=user("trigger-stream-exception"), stream=True)
    # The stream must fail, not end cleanly.
    e = raises(openai.APIError, lambda: list(stream))
    assert "stream" in str(e).lower() or "overloaded" in str(e).lower(), e


@check_each(["bedrock-embed", "gemini-embed", "vertex-embed", "azure-embed"])
def embeddings(model):
    inputs = ["a b"] if model == "bedrock-embed" else ["a b", "c"]
    r = client.embeddings.create(model=model, input=inputs)
    assert [d.index for d in r.data] == list(range(len(inputs))), r
    assert all(len(d.embedding) > 0 for d in r.data)


if __name__ == "__main__":
    run("openai SDK across providers")
