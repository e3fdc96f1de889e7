"""Mid-stream failover as the official `openai` Python SDK reads it: a stream that broke off and was
continued on another target is one ordinary answer to the client; one that could not be continued
raises.

Run by the Rust test `python::the_openai_sdk_reads_a_continued_stream_as_one_answer`, which starts
the gateway in front of mock upstreams that break mid-stream and sets WEIR_BASE_URL and WEIR_API_KEY.
"""

import os

import openai
from checks import check, run

BASE_URL = os.environ["WEIR_BASE_URL"]
KEY = os.environ["WEIR_API_KEY"]
client = openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=30)
WORDS = "one two three four five six seven eight"
ANSWER = "echo: " + WORDS
MESSAGES = [{"role": "user", "content": WORDS}]

def read(model, **kwargs):
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **kwargs)
    return list(stream)


def assert_one_answer(chunks):
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER, text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    assert len({c.id for c in chunks}) == 1, {c.id for c in chunks}


@check
def a_broken_stream_continued_with_a_prefill_reads_as_one_answer():
    chunks = read("continues", stream_options={"include_usage": True})
    assert_one_answer(chunks)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None, chunks[-1]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    assert usage.completion_tokens == 9, usage


@check
def a_stalled_stream_restarted_where_prefill_is_refused_reads_as_one_answer():
    chunks = read("restarts")
    assert_one_answer(chunks)
    assert all(c.usage is None for c in chunks), "no usage chunk unless asked for"


@check
def the_sdks_accumulator_gets_the_whole_message():
    with client.beta.chat.completions.stream(model="continues", messages=MESSAGES) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == ANSWER, final
    assert final.choices[0].finish_reason == "stop"


@check
def a_stream_that_cannot_be_continued_raises():
    received = []
    try:
        for chunk in client.chat.completions.create(model="differs", messages=MESSAGES, stream=True):
            received.append(chunk)
    except openai.APIError as e:
        assert "continued" in str(e.message), e.message
    else:
        raise AssertionError("expected an APIError")
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "echo: one", f"nothing duplicated: {text!r}"


if __name__ == "__main__":
    run()
