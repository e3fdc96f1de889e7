"""`weir.Gateway` itself: configurations, errors, reload, the ledger, metrics, shutdown, other SDKs."""

from __future__ import annotations

import asyncio
import datetime
import threading

import anthropic
import httpx
import openai
import pytest

import weir
from conftest import KEY, OTHER_KEY, eventually, gateway_config, metric

MESSAGES = [{"role": "user", "content": "hello from python"}]


def openai_client(gw: weir.Gateway, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://weir/v1", api_key=key, max_retries=0, http_client=httpx.Client(transport=gw.transport()))


def test_the_default_config_answers_weir_tiny_chat_with_no_network(tmp_path, monkeypatch):
    # The default config writes its ledger to ./weir-ledger.jsonl, and sends unknown models to
    # $WEIR_UPSTREAM: a closed port here, so an answer can only come from the local model.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WEIR_UPSTREAM", "http://127.0.0.1:9/v1")
    with weir.Gateway() as gw:
        client = openai_client(gw, "unused")
        r = client.chat.completions.create(
            model="weir-tiny-chat", messages=[{"role": "user", "content": "Where is Phileas Fogg?"}], max_tokens=16
        )
        assert r.object == "chat.completion"
        assert r.choices[0].message.content, r
        assert 0 < r.usage.completion_tokens <= 16, r.usage
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert e.value.status_code >= 500, e.value


def test_a_bad_config_raises_config_error_with_the_field_path():
    with pytest.raises(weir.ConfigError) as e:
        weir.Gateway(config='[[upstreams]]\nname = "a"\nendpoint = "ftp://x"')
    assert "upstreams[0].endpoint" in str(e.value), e.value
    assert isinstance(e.value, weir.WeirError)
    with pytest.raises(weir.ConfigError) as e:
        weir.Gateway(config_file="/nonexistent/weir.toml")
    assert "/nonexistent/weir.toml" in str(e.value), e.value
    with pytest.raises(ValueError):
        weir.Gateway(config_file="a.toml", config="")


def test_reload_from_the_file_and_from_text(mocks, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    path = tmp_path / "weir.toml"
    path.write_text(gateway_config(mocks, ledger))
    with weir.Gateway(config_file=path) as gw:
        client = openai_client(gw)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="renamed", messages=MESSAGES)
        path.write_text(gateway_config(mocks, ledger).replace('name = "gpt-test"', 'name = "renamed"'))
        gw.reload()
        assert client.chat.completions.create(model="renamed", messages=MESSAGES).choices[0].message.content
        # An invalid file keeps the current configuration serving, and says why.
        path.write_text("[[models]]\nname = 3\n")
        with pytest.raises(weir.ConfigError) as e:
            gw.reload()
        assert "models" in str(e.value), e.value
        assert client.chat.completions.create(model="renamed", messages=MESSAGES).choices[0].message.content
        gw.reload(config=gateway_config(mocks, ledger))
        assert client.chat.completions.create(model="gpt-test", messages=MESSAGES).choices[0].message.content


def test_spend_reports_the_ledger_as_weir_spend_does(mocks, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    with weir.Gateway(config=gateway_config(mocks, ledger)) as gw:
        assert gw.ledger_path == str(ledger)
        for key, n in ((KEY, 2), (OTHER_KEY, 1)):
            client = openai_client(gw, key)
            for _ in range(n):
                client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        # The ledger is written as each request is accounted, which may end just after its answer.
        assert eventually(lambda: gw.spend(by=["key"])[-1]["requests"], 3) == 3
        rows = gw.spend(by=["key"])
        assert [r.get("key") for r in rows] == ["other", "python", None], rows
        assert [r["requests"] for r in rows] == [1, 2, 3], rows
        total = rows[-1]
        assert total["prompt_tokens"] > 0 and total["completion_tokens"] > 0, total
        assert isinstance(total["cost_usd"], str)
        today = datetime.datetime.now(datetime.timezone.utc).date()
        assert gw.spend(by=["day"], since=today)[0]["day"] == today.isoformat()
        assert gw.spend(since=today + datetime.timedelta(days=1))[-1]["requests"] == 0
        with pytest.raises(ValueError, match="cannot group by"):
            gw.spend(by=["colour"])


def test_metrics_count_requests(gateway):
    before = metric(gateway.metrics(), "weir_requests_total", model="gpt-test", outcome="ok")
    openai_client(gateway).chat.completions.create(model="gpt-test", messages=MESSAGES)
    read = lambda: metric(gateway.metrics(), "weir_requests_total", model="gpt-test", outcome="ok")
    assert eventually(read, before + 1) == before + 1


def test_context_manager_shuts_down(mocks, tmp_path):
    with weir.Gateway(config=gateway_config(mocks, tmp_path / "ledger.jsonl")) as gw:
        client = openai_client(gw)
        assert client.chat.completions.create(model="gpt-test", messages=MESSAGES).choices[0].message.content
    assert gw.closed
    assert gw.shutdown(), "a second shutdown is a no-op"
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    with pytest.raises(weir.GatewayClosed):
        gw.serve("127.0.0.1:0")


# 120 words: the slow mock streams them one event each, 50 ms apart (about 6 s in all).
LONG_STREAM = {"model": "slow", "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(120))}], "stream": True}


def short_grace(mocks, tmp_path) -> str:
    return gateway_config(mocks, tmp_path / "ledger.jsonl").replace('shutdown_grace = "5s"', 'shutdown_grace = "200ms"')


def test_a_stream_cut_by_shutdown_is_a_read_error_not_a_clean_end(mocks, tmp_path):
    gw = weir.Gateway(config=short_grace(mocks, tmp_path))
    client = httpx.Client(transport=gw.transport())
    headers = {"Authorization": f"Bearer {KEY}"}
    with client.stream("POST", "http://weir/v1/chat/completions", json=LONG_STREAM, headers=headers) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        assert next(chunks).startswith(b"data: ")
        # The stream outlives the 200 ms grace by seconds: shutdown stops the runtime under it,
        # while this thread keeps reading (or is blocked in a read).
        stopper = threading.Thread(target=gw.shutdown)
        stopper.start()
        with pytest.raises(httpx.ReadError) as e:
            for _ in chunks:
                pass
        stopper.join(timeout=30)
    assert isinstance(e.value.__cause__, weir.GatewayClosed), e.value
    assert gw.closed


def test_an_async_stream_cut_by_shutdown_raises_instead_of_waiting_forever(mocks, tmp_path):
    gw = weir.Gateway(config=short_grace(mocks, tmp_path))

    async def read_through_shutdown() -> BaseException | None:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=gw.async_transport()) as client:
            async with client.stream("POST", "http://weir/v1/chat/completions", json=LONG_STREAM, headers=headers) as r:
                chunks = r.aiter_raw()
                assert (await chunks.__anext__()).startswith(b"data: ")
                stopping = asyncio.get_running_loop().run_in_executor(None, gw.shutdown)
                try:
                    async for _ in chunks:
                        pass
                except httpx.ReadError as error:
                    await stopping
                    return error
        return None

    # Bounded: before, a read in flight when the runtime stopped was never answered.
    error = asyncio.run(asyncio.wait_for(read_through_shutdown(), timeout=30))
    assert isinstance(error, httpx.ReadError), error
    assert isinstance(error.__cause__, weir.GatewayClosed), error
    assert gw.closed


def test_anthropic_sdk_on_messages(gateway):
    # anthropic 2.x accepts only httpx2 clients (older releases, httpx): the transport serves either.
    module = httpx
    if "httpx2" in anthropic._base_client.__dict__:
        import httpx2 as module
    client = anthropic.Anthropic(
        base_url="http://weir", api_key=KEY, max_retries=0, http_client=module.Client(transport=gateway.transport())
    )
    message = client.messages.create(model="gpt-test", max_tokens=64, messages=MESSAGES)
    assert message.content[0].text == "echo: hello from python", message
    assert message.usage.output_tokens > 0
    with client.messages.stream(model="gpt-test", max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
    assert text == "echo: hello from python", text


def test_httpx2_clients_work_too(gateway):
    # Newer openai and anthropic SDKs are built on httpx2; the same transport serves its clients.
    httpx2 = pytest.importorskip("httpx2")
    client = openai.OpenAI(
        base_url="http://weir/v1", api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=gateway.transport())
    )
    assert client.chat.completions.create(model="gpt-test", messages=MESSAGES).choices[0].message.content
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello from python"


def test_a_principal_the_app_vouches_for_needs_no_key_and_is_counted_as_its_own(mocks, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    with weir.Gateway(config=gateway_config(mocks, ledger)) as gw:
        with pytest.raises(openai.AuthenticationError):
            openai_client(gw, "not-a-key").chat.completions.create(model="gpt-test", messages=MESSAGES)

        def as_user(name: str) -> openai.OpenAI:
            transport = gw.transport(principal=(name, "web"))
            return openai.OpenAI(base_url="http://weir/v1", api_key="unused", max_retries=0, http_client=httpx.Client(transport=transport))

        alice, bob = as_user("alice"), as_user("bob")
        # `limited` admits one request a minute per key: each principal has its own.
        alice.chat.completions.create(model="limited", messages=MESSAGES)
        bob.chat.completions.create(model="limited", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            alice.chat.completions.create(model="limited", messages=MESSAGES)

        async def on_asyncio() -> str:
            transport = gw.async_transport(principal=("carol", "data"))
            async with openai.AsyncOpenAI(
                base_url="http://weir/v1", api_key="unused", max_retries=0, http_client=httpx.AsyncClient(transport=transport)
            ) as client:
                r = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
                return r.choices[0].message.content

        import asyncio

        assert asyncio.run(on_asyncio()) == "echo: hello from python"
        assert eventually(lambda: gw.spend(by=["key"])[-1]["requests"], 3) == 3
        rows = gw.spend(by=["key", "team"])
        assert [(r.get("key"), r.get("team")) for r in rows[:-1]] == [("alice", "web"), ("bob", "web"), ("carol", "data")], rows

        for bad in (("alice",), ("alice", ""), ["alice", "web"], ("alice", 3)):
            with pytest.raises(TypeError, match="key_name, team"):
                gw.transport(principal=bad)
