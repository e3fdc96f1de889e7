"""The built-in `guard` policy, checked with the official `openai` Python SDK: an e-mail address and
a phone number that the mock upstream streams in pieces of four bytes never reach the stream the SDK
reads, which still arrives piece by piece with its finish reason and usage; a prompt carrying a US
SSN is refused with a `BadRequestError` whose code names the rule and whose message does not echo
the number.

Run by the Rust test `guard::an_email_streamed_over_several_events_is_redacted_as_the_stream_flows`,
which starts the gateway with `guard` in front of a mock upstream that waits between pieces, and
sets WEIR_BASE_URL, WEIR_API_KEY and WEIR_MODEL.
"""

import os

import openai
from checks import chat_stream, check, raises, run

client = openai.OpenAI(base_url=os.environ["WEIR_BASE_URL"], api_key=os.environ["WEIR_API_KEY"], max_retries=0, timeout=30)
MODEL = os.environ["WEIR_MODEL"]
PROMPT = "write to jo@example.com or call +1 555 123 4567 today"


@check
def a_streamed_answer_is_redacted_as_it_flows():
    pieces, finish, usage = chat_stream(client, model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    text = "".join(p for _, p in pieces)
    assert text == "echo: write to [EMAIL] or call [PHONE] today", text
    assert finish == ["stop"], finish
    assert usage is not None and usage.completion_tokens > 0, usage
    assert len(pieces) >= 6, pieces
    assert pieces[-1][0] - pieces[0][0] > 0.2, pieces


@check
def a_blocked_prompt_is_a_bad_request_naming_the_rule():
    ssn = [{"role": "user", "content": "my ssn is 123-45-6789"}]
    e = raises(openai.BadRequestError, lambda: client.chat.completions.create(model=MODEL, messages=ssn))
    assert e.status_code == 400, e
    assert e.code == "guard_ssn", e.body
    assert "6789" not in str(e.body), e.body


if __name__ == "__main__":
    run()
