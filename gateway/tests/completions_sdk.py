"""Legacy completions through Weir with the official `openai` Python SDK, against the default
configuration's local worker (`weir-tiny-chat`, served in the gateway's own process).

Run by the Rust test `completions::the_default_configs_local_worker_answers_legacy_completions`.
"""

import os

import openai

from checks import check, raises, run

client = openai.OpenAI(base_url=os.environ["WEIR_BASE_URL"], api_key=os.environ["WEIR_API_KEY"], max_retries=0, timeout=120)


@check
def whole():
    c = client.completions.create(model="weir-tiny-chat", prompt="Phileas Fogg was", max_tokens=6, temperature=0, seed=1)
    assert c.object == "text_completion" and c.choices[0].text, c
    assert c.choices[0].finish_reason in ("length", "stop"), c
    assert c.usage.prompt_tokens > 0 and 0 < c.usage.completion_tokens <= 6, c.usage


@check
def echo_and_streaming_agree():
    whole = client.completions.create(model="weir-tiny-chat", prompt="Around the", max_tokens=5, temperature=0, seed=7, echo=True)
    assert whole.choices[0].text.startswith("Around the"), whole
    chunks = list(client.completions.create(model="weir-tiny-chat", prompt="Around the", max_tokens=5, temperature=0, seed=7,
                                            echo=True, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text, (text, whole.choices[0].text)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens, chunks[-1]


@check
def what_the_worker_cannot_do_is_refused_by_name():
    e = raises(openai.BadRequestError, lambda: client.completions.create(model="weir-tiny-chat", prompt="a", suffix="b", max_tokens=3))
    assert e.param == "suffix", e


if __name__ == "__main__":
    run("completions SDK checks")
