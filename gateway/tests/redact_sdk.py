"""The example `stream-redact` plugin, checked with the official `openai` Python SDK: a card number
the mock upstream streams over four chunks, and an e-mail address, never reach the stream the SDK
reads, which still arrives chunk by chunk (the first text long before the last), with its finish
reason and usage; a whole answer is left alone (the plugin polices streams only).

Run by the Rust test `content::the_openai_sdk_reads_a_redacted_stream`, which starts the gateway with
`stream-redact` in front of a mock upstream that waits between chunks, and sets WEIR_BASE_URL,
WEIR_API_KEY and WEIR_MODEL.
"""

import os

import openai
from checks import chat_stream, check, run

client = openai.OpenAI(base_url=os.environ["WEIR_BASE_URL"], api_key=os.environ["WEIR_API_KEY"], max_retries=0, timeout=30)
MODEL = os.environ["WEIR_MODEL"]
PROMPT = "pay with 4111 1111 1111 1111 or mail bob@example.com today please"


@check
def a_streamed_answer_is_redacted_as_it_flows():
    pieces, finish, usage = chat_stream(client, model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    text = "".join(p for _, p in pieces)
    assert text == "echo: pay with [CARD] or mail [EMAIL] today please", text
    assert "4111" not in text and "example.com" not in text
    assert finish == ["stop"], finish
    assert usage is not None and usage.completion_tokens > 0, usage
    # Still a stream: several pieces, the first well before the last (the mock waits between chunks).
    assert len(pieces) >= 6, pieces
    assert pieces[-1][0] - pieces[0][0] > 0.2, pieces


@check
def a_whole_answer_is_not_policed():
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    assert answer.choices[0].message.content == f"echo: {PROMPT}", answer


if __name__ == "__main__":
    run()
