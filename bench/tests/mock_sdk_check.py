"""The mock upstreams checked by each provider's own SDK, so that they cannot drift from the real
protocols: boto3 for Bedrock (SigV4, event-stream frames, exceptions, InvokeModel for Claude) and
SageMaker Runtime (InvokeEndpoint: JSON and CSV, variants, ModelError),
google-genai for the Gemini API and Vertex AI (with google-auth's service-account flow against the
mock's token endpoint), the `openai` package's AzureOpenAI for Azure OpenAI and its Responses and
legacy Completions clients, and the `anthropic` package for the Anthropic API.

Run by the Rust test `bench/tests/sdk.rs`, which starts the mock and sets MOCK_URL, MOCK_KEY,
MOCK_AWS_KEY_ID and MOCK_SA_KEY (a PEM file).
"""

import json
import os
import urllib.request

from checks import check, raises, run

URL = os.environ["MOCK_URL"]
KEY = os.environ["MOCK_KEY"]
AWS_KEY_ID = os.environ["MOCK_AWS_KEY_ID"]
SA_KEY = open(os.environ["MOCK_SA_KEY"]).read()

# ---------------------------------------------------------------------------------------------
# Bedrock, with boto3

import boto3
import botocore.config
import botocore.exceptions


def aws(service, key_id, secret):
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=URL,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def bedrock(key_id=AWS_KEY_ID, secret="mock-secret"):
    return aws("bedrock-runtime", key_id, secret)


CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
TOOLS = {"tools": [
    {"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object", "properties": {"location": {"type": "string"}}}}}},
    {"toolSpec": {"name": "get_time", "inputSchema": {"json": {"type": "object"}}}},
]}


@check
def bedrock_converse():
    r = bedrock().converse(modelId=CLAUDE, system=[{"text": "be brief"}], messages=[{"role": "user", "content": [{"text": "hello"}]}])
    assert r["output"]["message"]["content"] == [{"text": "echo: hello"}], r
    assert r["stopReason"] == "end_turn"
    assert r["usage"]["inputTokens"] == 1 and r["usage"]["cacheReadInputTokens"] == 3, r["usage"]


@check
def bedrock_converse_stream():
    r = bedrock().converse_stream(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "one two"}]}], inferenceConfig={"maxTokens": 100})
    events = list(r["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"], kinds
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == "echo: one two", text
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 3


@check
def bedrock_tool_use_and_results():
    client = bedrock()
    first = client.converse(modelId=CLAUDE, toolConfig=TOOLS, messages=[{"role": "user", "content": [{"text": "weather?"}]}])
    assert first["stopReason"] == "tool_use"
    uses = [b["toolUse"] for b in first["output"]["message"]["content"]]
    assert [u["name"] for u in uses] == ["get_weather", "get_time"] and uses[0]["input"] == {"location": "Paris"}
    results = [{"toolResult": {"toolUseId": u["toolUseId"], "content": [{"text": "sunny"}]}} for u in uses]
    second = client.converse(modelId=CLAUDE, toolConfig=TOOLS, messages=[
        {"role": "user", "content": [{"text": "weather?"}]}, first["output"]["message"], {"role": "user", "content": results}])
    assert second["output"]["message"]["content"][0]["text"] == "tool said: sunny", second
    stream = client.converse_stream(modelId=CLAUDE, toolConfig=TOOLS, messages=[{"role": "user", "content": [{"text": "weather?"}]}])["stream"]
    starts = [e["contentBlockStart"]["start"]["toolUse"]["name"] for e in stream if "contentBlockStart" in e]
    assert starts == ["get_weather", "get_time"], starts


@check
def bedrock_exception_mid_stream():
    stream = bedrock().converse_stream(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "trigger-stream-exception"}]}])["stream"]
    # The exception frame must raise.
    e = raises(botocore.exceptions.EventStreamError, lambda: list(stream))
    assert e.response["Error"]["Code"] == "modelStreamErrorException", e.response


@check
def bedrock_validation_and_auth_errors():
    e = raises(botocore.exceptions.ClientError, lambda: bedrock().converse(modelId=CLAUDE, messages=[{"role": "assistant", "content": [{"text": "hi"}]}]))
    assert e.response["Error"]["Code"] == "ValidationException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    e = raises(botocore.exceptions.ClientError, lambda: bedrock(key_id="AKIDWRONG").converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "hi"}]}]))
    assert e.response["Error"]["Code"] == "UnrecognizedClientException", e.response
    # The mock recomputes the signature: the right key id with the wrong secret fails.
    e = raises(botocore.exceptions.ClientError, lambda: bedrock(secret="not-the-secret").converse(modelId=CLAUDE, messages=[{"role": "user", "content": [{"text": "hi"}]}]))
    assert e.response["Error"]["Code"] == "InvalidSignatureException", e.response


@check
def bedrock_invoke_model_embeddings():
    r = bedrock().invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "a b", "dimensions": 4}))
    body = json.loads(r["body"].read())
    assert len(body["embedding"]) == 4 and body["inputTextTokenCount"] == 2, body
    r = bedrock().invoke_model(modelId="cohere.embed-english-v3", body=json.dumps({"texts": ["a", "b"], "input_type": "search_document"}))
    assert len(json.loads(r["body"].read())["embeddings"]) == 2


# ---------------------------------------------------------------------------------------------
# SageMaker real-time endpoints, with boto3's sagemaker-runtime


def sagemaker(key_id=AWS_KEY_ID, secret="mock-secret"):
    return aws("sagemaker-runtime", key_id, secret)


def score(features):
    import math
    return round(1 / (1 + math.exp(-sum(features) / 100)) * 1e6) / 1e6


@check
def sagemaker_invoke_endpoint_json_and_csv():
    r = sagemaker().invoke_endpoint(EndpointName="fraud", ContentType="application/json", Accept="application/json",
                                    Body=json.dumps({"instances": [[10, 20], [-50, 0]]}), CustomAttributes="trace=1")
    assert json.loads(r["Body"].read()) == {"predictions": [score([10, 20]), score([-50, 0])]}, r
    assert r["InvokedProductionVariant"] == "primary" and r["CustomAttributes"] == "trace=1", r
    r = sagemaker().invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Accept="text/csv",
                                    Body="1,2,3\n4,5,6\n", TargetVariant="canary")
    assert r["Body"].read().decode().split() == [str(score([1, 2, 3])), str(score([4, 5, 6]))], r
    assert r["ContentType"] == "text/csv" and r["InvokedProductionVariant"] == "canary", r


@check
def sagemaker_model_and_validation_errors():
    client = sagemaker()
    e = raises(client.exceptions.ModelError, lambda: client.invoke_endpoint(
        EndpointName="fraud", ContentType="application/json", Body=json.dumps({"instances": [["x"]]})))
    assert e.response["OriginalStatusCode"] == 400 and "not numbers" in e.response["OriginalMessage"], e.response
    e = raises(client.exceptions.ModelError, lambda: client.invoke_endpoint(EndpointName="fraud", ContentType="image/png", Body=b"png"))
    assert e.response["OriginalStatusCode"] == 415, e.response
    e = raises(client.exceptions.ValidationError, lambda: client.invoke_endpoint(
        EndpointName="fraud", ContentType="text/csv", Body="1", TargetVariant="blue"))
    assert "invalid for endpoint" in e.response["Error"]["Message"], e.response
    e = raises(botocore.exceptions.ClientError, lambda: sagemaker(secret="not-the-secret").invoke_endpoint(
        EndpointName="fraud", ContentType="text/csv", Body="1"))
    assert e.response["Error"]["Code"] == "InvalidSignatureException", e.response


# ---------------------------------------------------------------------------------------------
# Gemini API and Vertex AI, with google-genai

from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.oauth2 import service_account

GEMINI = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=URL))
WEATHER = types.Tool(function_declarations=[
    types.FunctionDeclaration(name="get_weather", parameters={"type": "object", "properties": {"location": {"type": "string"}}}),
    types.FunctionDeclaration(name="get_time", parameters={"type": "object", "properties": {}}),
])


def vertex():
    creds = service_account.Credentials.from_service_account_info({
        "type": "service_account", "project_id": "proj-1", "private_key_id": "test", "private_key": SA_KEY,
        "client_email": "check@proj-1.iam.gserviceaccount.com", "client_id": "1", "token_uri": URL + "/token",
    }, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    return genai.Client(vertexai=True, project="proj-1", location="us-central1", credentials=creds, http_options=types.HttpOptions(base_url=URL))


@check
def gemini_generate_content():
    r = GEMINI.models.generate_content(model="gemini-2.5-flash", contents="hello", config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=50))
    assert r.text == "echo: hello", r
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata.thoughts_token_count == 2 and r.usage_metadata.candidates_token_count == 2


@check
def gemini_stream():
    chunks = list(GEMINI.models.generate_content_stream(model="gemini-2.5-flash", contents="one two three"))
    assert "".join(c.text or "" for c in chunks) == "echo: one two three"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.prompt_token_count == 3


@check
def gemini_function_calls_with_thought_signatures():
    config = types.GenerateContentConfig(tools=[WEATHER], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    first = GEMINI.models.generate_content(model="gemini-2.5-flash", contents="weather?", config=config)
    calls = first.function_calls
    assert [c.name for c in calls] == ["get_weather", "get_time"] and calls[0].args == {"location": "Paris"}
    call_parts = [p for p in first.candidates[0].content.parts if p.function_call]
    assert call_parts[0].thought_signature and not call_parts[1].thought_signature, "Gemini signs the first call"
    history = [
        types.Content(role="user", parts=[types.Part(text="weather?")]),
        first.candidates[0].content,
        types.Content(role="user", parts=[types.Part.from_function_response(name=c.name, response={"result": "sunny"}) for c in calls]),
    ]
    second = GEMINI.models.generate_content(model="gemini-2.5-flash", contents=history, config=config)
    assert second.text == 'tool said: {"result":"sunny"}', second.text
    # Without the signature the mock refuses, as Gemini does.
    unsigned = types.Content(role="model", parts=[types.Part(function_call=p.function_call) for p in call_parts])
    e = raises(genai_errors.ClientError, lambda: GEMINI.models.generate_content(model="gemini-2.5-flash", contents=[history[0], unsigned, history[2]], config=config))
    assert e.code == 400 and "thought_signature" in e.message, e


@check
def gemini_errors():
    bad = genai.Client(api_key="wrong-key", http_options=types.HttpOptions(base_url=URL))
    e = raises(genai_errors.ClientError, lambda: bad.models.generate_content(model="gemini-2.5-flash", contents="hi"))
    assert e.code == 400 and e.status == "INVALID_ARGUMENT", e


@check
def gemini_embeddings():
    r = GEMINI.models.embed_content(model="gemini-embedding-001", contents=["a b", "c"], config=types.EmbedContentConfig(output_dimensionality=4))
    assert [len(e.values) for e in r.embeddings] == [4, 4], r


@check
def vertex_with_a_service_account():
    client = vertex()
    r = client.models.generate_content(model="gemini-2.5-pro", contents="hello vertex")
    assert r.text == "echo: hello vertex", r
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="a b"))
    assert "".join(c.text or "" for c in chunks) == "echo: a b"
    r = client.models.embed_content(model="text-embedding-005", contents=["x", "y"])
    assert len(r.embeddings) == 2 and r.embeddings[0].statistics.token_count == 1, r


# ---------------------------------------------------------------------------------------------
# Azure OpenAI, with the openai package

import openai

AZURE = openai.AzureOpenAI(azure_endpoint=URL, api_key=KEY, api_version="2024-10-21", max_retries=0)


def entra_token():
    form = "grant_type=client_credentials&client_id=c&client_secret=s&scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default"
    request = urllib.request.Request(URL + "/tenant-1/oauth2/v2.0/token", data=form.encode(), method="POST")
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["access_token"]


@check
def azure_chat_and_filters():
    r = AZURE.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "hello"}])
    assert r.choices[0].message.content == "echo: hello"
    assert r.model_extra["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    assert r.choices[0].model_extra["content_filter_results"]["violence"]["severity"] == "safe"


@check
def azure_stream_with_an_empty_first_chunk():
    chunks = list(AZURE.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"], chunks[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a b"


@check
def azure_content_filter_error():
    e = raises(openai.BadRequestError, lambda: AZURE.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "trigger-content-filter"}]))
    assert e.code == "content_filter", e


@check
def azure_entra_and_v1():
    client = openai.AzureOpenAI(azure_endpoint=URL, azure_ad_token_provider=entra_token, api_version="2024-10-21", max_retries=0)
    assert client.embeddings.create(model="embeddings", input=["a", "b"]).data[1].index == 1
    v1 = openai.OpenAI(base_url=URL + "/openai/v1/", api_key=KEY, max_retries=0)
    assert v1.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content == "echo: hi"
    raises(openai.AuthenticationError, lambda: openai.AzureOpenAI(azure_endpoint=URL, api_key="wrong", api_version="2024-10-21", max_retries=0).chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "hi"}]))


@check
def bedrock_invoke_model_claude_messages():
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": [{"role": "user", "content": "one two"}]}
    r = bedrock().invoke_model(modelId=CLAUDE, body=json.dumps(body))
    message = json.loads(r["body"].read())
    assert message["type"] == "message" and message["content"] == [{"type": "text", "text": "echo: one two"}], message
    stream = bedrock().invoke_model_with_response_stream(modelId=CLAUDE, body=json.dumps(body))
    events = [json.loads(e["chunk"]["bytes"]) for e in stream["body"]]
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"] and events[-1]["type"] == "message_stop", events
    assert "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta") == "echo: one two"
    e = raises(botocore.exceptions.ClientError, lambda: bedrock().invoke_model(modelId=CLAUDE, body=json.dumps({**body, "model": "claude"})))
    assert e.response["Error"]["Code"] == "ValidationException", e.response


# ---------------------------------------------------------------------------------------------
# The Anthropic API, with the anthropic SDK

import anthropic

CLAUDE_API = anthropic.Anthropic(base_url=URL, api_key=KEY, max_retries=0)
CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}]


@check
def anthropic_messages_whole_and_streamed():
    m = CLAUDE_API.messages.create(model="claude-x", max_tokens=50, system="be brief", messages=[{"role": "user", "content": "hello there"}])
    assert m.content[0].text == "echo: hello there" and m.stop_reason == "end_turn", m
    assert m.usage.input_tokens == 4 and m.usage.output_tokens == 3, m.usage
    with CLAUDE_API.messages.stream(model="claude-x", max_tokens=50, messages=[{"role": "user", "content": "a b c"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: a b c" and final.usage.output_tokens == 4, final


@check
def anthropic_tool_use_round_trip():
    first = CLAUDE_API.messages.create(model="claude-x", max_tokens=50, tools=CLAUDE_TOOLS, messages=[{"role": "user", "content": "weather?"}])
    use = first.content[0]
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"location": "Paris"}, first
    second = CLAUDE_API.messages.create(model="claude-x", max_tokens=50, tools=CLAUDE_TOOLS, messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]},
    ])
    assert second.content[0].text == "tool said: 21C", second


@check
def anthropic_recorded_streams_replay():
    with CLAUDE_API.messages.stream(model="fixture:thinking", max_tokens=50, messages=[{"role": "user", "content": "x"}]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].signature, final


@check
def anthropic_count_tokens_and_errors():
    assert CLAUDE_API.messages.count_tokens(model="claude-x", messages=[{"role": "user", "content": "one two three"}]).input_tokens == 3
    for call, error in [
        (lambda: anthropic.Anthropic(base_url=URL, api_key="wrong", max_retries=0).messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}]), anthropic.AuthenticationError),
        (lambda: CLAUDE_API.messages.create(model="c", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_body={"x_unknown": 1}), anthropic.BadRequestError),
        (lambda: CLAUDE_API.messages.create(model="c", max_tokens=5, messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}, {"role": "user", "content": "no result"}]), anthropic.BadRequestError),
    ]:
        raises(error, call)


@check
def anthropic_mid_stream_error_raises():
    def read():
        with CLAUDE_API.messages.stream(model="c", max_tokens=50, messages=[{"role": "user", "content": "trigger-stream-exception a b c"}]) as stream:
            for _ in stream:
                pass
    e = raises(anthropic.APIStatusError, read)
    assert "overloaded_error" in str(e), e


# ---------------------------------------------------------------------------------------------
# OpenAI's Responses API and legacy Completions, with the openai SDK

OPENAI = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0)
FUNCTIONS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}]


@check
def responses_create_stream_retrieve_delete():
    r = OPENAI.responses.create(model="gpt-5", input="hello there")
    assert r.output_text == "echo: hello there" and r.status == "completed", r
    assert OPENAI.responses.retrieve(r.id).output_text == "echo: hello there"
    with OPENAI.responses.stream(model="gpt-5", input="a b") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed" and final.output_text == "echo: a b", kinds
    assert OPENAI.responses.delete(r.id) is None
    raises(openai.NotFoundError, lambda: OPENAI.responses.retrieve(r.id))


@check
def responses_function_calls_across_turns():
    first = OPENAI.responses.create(model="gpt-5", input="weather?", tools=FUNCTIONS)
    call = first.output[0]
    assert call.type == "function_call" and call.arguments == '{"location":"Paris"}', first
    second = OPENAI.responses.create(model="gpt-5", previous_response_id=first.id, tools=FUNCTIONS,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}])
    assert second.output_text == "tool said: 21C", second
    e = raises(openai.BadRequestError, lambda: OPENAI.responses.create(model="gpt-5", previous_response_id="resp_unknown", input="x"))
    assert e.param == "previous_response_id", e


@check
def responses_recorded_streams_replay_and_errors_raise():
    with OPENAI.responses.stream(model="fixture:function_call", input="x") as stream:
        final = stream.get_final_response()
    assert final.output[-1].type == "function_call", final
    def read():
        with OPENAI.responses.stream(model="fixture:error_mid_stream", input="x") as stream:
            for _ in stream:
                pass
    e = raises(openai.APIError, read)
    assert "quota" in str(e), e
    raises(openai.BadRequestError, lambda: OPENAI.responses.create(model="gpt-5", input="x", extra_body={"messages": []}))


@check
def completions_whole_and_streamed():
    c = OPENAI.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say", echo=True, max_tokens=5)
    assert c.choices[0].text == "Sayecho: Say" and c.usage.completion_tokens == 2, c
    chunks = list(OPENAI.completions.create(model="gpt-3.5-turbo-instruct", prompt="a b", stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == "echo: a b"
    assert chunks[-1].usage.total_tokens == 5, chunks[-1]


if __name__ == "__main__":
    run("mock SDK checks")
