"""Weir's Responses API surface, checked with the official `openai` Python SDK against an upstream
that speaks Responses itself (relayed natively) and a Bedrock model (translated through the
canonical chat form), with the gateway holding the conversation state.

Run by the Rust test `responses::the_openai_sdk_responses_api_works_natively_and_translated`, which
starts the gateway in front of the mocks and sets WEIR_BASE_URL, WEIR_API_KEY, WEIR_OTHER_KEY (a
key of another team) and WEIR_TARGETS. For each target T the gateway serves T and T-break (its
streams break after a few events).
"""

import json
import os

import openai

from checks import check, raises, run

BASE_URL = os.environ["WEIR_BASE_URL"]
TARGETS = os.environ["WEIR_TARGETS"].split(",")
client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["WEIR_API_KEY"], max_retries=0, timeout=30)
other_team = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["WEIR_OTHER_KEY"], max_retries=0, timeout=30)
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]
PLACE = {"format": {"type": "json_schema", "name": "place", "strict": True,
                    "schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": False}}}


@check
def create_retrieve_delete(t):
    r = client.responses.create(model=t, instructions="be brief", input="hello from python")
    assert r.object == "response" and r.status == "completed", r
    assert r.output_text == "echo: hello from python", r.output_text
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text, got
    items = client.responses.input_items.list(r.id)
    assert [i.content[0].text for i in items.data] == ["hello from python"], items
    client.responses.delete(r.id)
    raises(openai.NotFoundError, lambda: client.responses.retrieve(r.id))


@check
def stream_events_and_final_response(t):
    with client.responses.stream(model=t, input="one two three") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds, kinds
    assert final.output_text == "echo: one two three", final
    assert client.responses.retrieve(final.id).output_text == final.output_text, "a streamed response is stored too"


@check
def function_calling_across_two_turns(t):
    first = client.responses.create(model=t, input="weather?", tools=TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"location": "Paris"}, first
    second = client.responses.create(model=t, previous_response_id=first.id, tools=TOOLS,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}])
    assert second.output_text == "tool said: 21C", second
    assert second.previous_response_id == first.id, second


@check
def streamed_function_call(t):
    with client.responses.stream(model=t, input="weather?", tools=TOOLS) as stream:
        final = stream.get_final_response()
    call = next(item for item in final.output if item.type == "function_call")
    assert json.loads(call.arguments) == {"location": "Paris"}, final


@check
def json_schema_output(t):
    r = client.responses.create(model=t, input="where?", text=PLACE)
    assert json.loads(r.output_text) == {"location": "Paris"}, r.output_text


@check
def another_team_can_neither_read_nor_continue(t):
    mine = client.responses.create(model=t, input="secret plans")
    raises(openai.NotFoundError, lambda: other_team.responses.retrieve(mine.id))
    raises(openai.NotFoundError, lambda: other_team.responses.create(model=t, previous_response_id=mine.id, input="and?"))
    raises(openai.NotFoundError, lambda: other_team.responses.delete(mine.id))
    assert client.responses.retrieve(mine.id).output_text == "echo: secret plans", "still there for its own team"


@check
def bad_input_names_the_field(t):
    e = raises(openai.BadRequestError, lambda: client.responses.create(model=t, input=[{"role": "wizard", "content": "x"}]))
    assert e.param == "input[0].role", e
    e = raises(openai.BadRequestError, lambda: client.responses.create(model=t, input="x", max_output_tokens=2))
    assert e.param == "max_output_tokens", e


@check
def a_broken_stream_raises(t):
    def read():
        with client.responses.stream(model=f"{t}-break", input="a b c d e f g h i j") as stream:
            for _ in stream:
                pass
    raises(openai.APIError, read)


if __name__ == "__main__":
    run("responses SDK checks", TARGETS)
