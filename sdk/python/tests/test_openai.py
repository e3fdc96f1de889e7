"""The official `openai` SDK through the embedded gateway's transports: no socket between them."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from conftest import KEY, eventually, metric

MESSAGES = [{"role": "user", "content": "hello from python"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}},
    }
]
# 120 words: the slow mock echoes them one event each, 50 ms apart (about 6 s in all).
LONG = [{"role": "user", "content": " ".join(f"w{i}" for i in range(120))}]


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(
        base_url="http://weir/v1", api_key=KEY, max_retries=0, http_client=httpx.Client(transport=gateway.transport())
    )


def test_chat(client):
    r = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert r.choices[0].message.content == "echo: hello from python", r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_streamed_chat_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello from python", text
    assert len(chunks) > 3, "one chunk per event, not one blob"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1]


def test_stream_arrives_chunk_by_chunk(gateway):
    # Read from the transport itself: the first event must arrive long before the last is sent
    # (the slow mock spaces its ~120 events 50 ms apart), so nothing is buffered to the end.
    http = httpx.Client(transport=gateway.transport())
    body = {"model": "slow", "messages": LONG, "stream": True}
    with http.stream("POST", "http://weir/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        first = next(r.iter_raw())
        assert first.startswith(b"data: "), first
        # Buffered to its end, the first chunk would hold the last word and [DONE].
        assert b"w119" not in first and b"[DONE]" not in first, first


def test_embeddings(client):
    r = client.embeddings.create(model="embed", input=["alpha", "beta"], encoding_format="float")
    assert len(r.data) == 2 and len(r.data[0].embedding) == 8
    # Without a format the SDK asks for base64 and decodes it itself.
    default = client.embeddings.create(model="embed", input="alpha")
    assert default.data[0].embedding == pytest.approx(r.data[0].embedding, rel=1e-6)


def test_tools(client):
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


def test_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-test", messages=[])
    assert e.value.status_code == 400 and e.value.body["param"] == "messages", e.value.body


def test_wrong_key(gateway):
    wrong = openai.OpenAI(
        base_url="http://weir/v1",
        api_key="sk-not-a-weir-key-000",
        max_retries=0,
        http_client=httpx.Client(transport=gateway.transport()),
    )
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert e.value.status_code == 401


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="no-such-embedder", input="x")
    assert e.value.body["code"] == "model_not_found", e.value.body


def test_rate_limit(client):
    # `limited` admits one request a minute per key (the ratelimit plugin, as configured in conftest).
    client.chat.completions.create(model="limited", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="limited", messages=MESSAGES)
    assert e.value.status_code == 429 and e.value.body["code"] == "rate_limit_exceeded", e.value.body
    assert int(e.value.response.headers["retry-after"]) > 0


def test_mid_stream_failure_raises(client):
    stream = client.chat.completions.create(model="breaks-mid-stream", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            received.append(chunk)
    assert received, "some chunks arrived before the failure"
    assert "stream" in str(e.value.message), e.value.message


def test_closing_a_stream_cancels_the_upstream(client, gateway, mocks):
    slow = mocks["slow"]
    cancelled = slow.stats()["cancelled_streams"]
    aborted = metric(gateway.metrics(), "weir_requests_total", outcome="client_abort", model="slow")
    stream = client.chat.completions.create(model="slow", messages=LONG, stream=True)
    words = [next(stream), next(stream), next(stream)]
    assert words[-1].choices[0].delta.content, words
    stream.close()
    # The mock sees its connection dropped long before its ~6 s stream would have ended.
    assert eventually(lambda: slow.stats()["cancelled_streams"], cancelled + 1, within=5) == cancelled + 1
    read = lambda: metric(gateway.metrics(), "weir_requests_total", outcome="client_abort", model="slow")
    assert eventually(read, aborted + 1, within=5) == aborted + 1


def test_async_client_with_concurrent_streams(gateway, mocks):
    async def main():
        client = openai.AsyncOpenAI(
            base_url="http://weir/v1",
            api_key=KEY,
            max_retries=0,
            http_client=httpx.AsyncClient(transport=gateway.async_transport()),
        )
        # 8 streams of ~1 s each from the slow mock: concurrent, they take about 1 s, not 8.
        prompts = [f"stream {i} " + " ".join(f"w{j}" for j in range(16)) for i in range(8)]

        async def one(prompt):
            stream = await client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": prompt}], stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        loop = asyncio.get_running_loop()
        started = loop.time()
        texts = await asyncio.gather(*(one(p) for p in prompts))
        elapsed = loop.time() - started
        assert texts == [f"echo: {p}" for p in prompts], texts
        # A generous bound (the serial time is 8 × ~0.9 s): it fails only if streams ran one by one.
        assert elapsed < 6, elapsed
        whole = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert whole.choices[0].message.content == "echo: hello from python"
        await client.close()

    asyncio.run(main())


def test_async_stream_cancelled_midway(gateway, mocks):
    slow = mocks["slow"]
    cancelled = slow.stats()["cancelled_streams"]

    async def main():
        client = openai.AsyncOpenAI(
            base_url="http://weir/v1",
            api_key=KEY,
            max_retries=0,
            http_client=httpx.AsyncClient(transport=gateway.async_transport()),
        )
        stream = await client.chat.completions.create(model="slow", messages=LONG, stream=True)
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()
        await client.close()

    asyncio.run(main())
    assert eventually(lambda: slow.stats()["cancelled_streams"], cancelled + 1, within=5) == cancelled + 1


def test_serve_gives_a_url_the_sdk_uses(gateway):
    url = gateway.serve("127.0.0.1:0")
    assert url.startswith("http://127.0.0.1:"), url
    over_http = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    r = over_http.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert r.choices[0].message.content == "echo: hello from python"
    chunks = list(over_http.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello from python"
