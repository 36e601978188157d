"""POST /v1/responses against a live server with the official `openai` SDK (raw httpx for the
SSE framing): the response object, its stream of events, structured outputs, tools and
reasoning, and what a stateless server refuses.

The server is test_tools_thinking's: the bundled model as itself, as `tooler` (a tools
template) and as `thinker` (a thinking template). Each input is checked against the
/v1/chat/completions request for the same conversation: at temperature 0 the same prompt gives
the same reply, so equal replies and equal prompt token counts prove the item mapping.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator, Iterator

import httpx
import jsonschema
import openai
import pytest

from aiohttp import web

from ollamalite.generation.reply import Delta
from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Event, Failed, Finished, TextChunk
from ollamalite.server import responses
from ollamalite.server.responses import ResponseBuilder, native_history, responses_request
from ollamalite.wire import load
from ollamalite.wire import openai as wire
from tests.conftest import MODEL, LiveServer, disconnect_mid_stream, module_server
from tests.scripted import post_once, scripted
from tests.test_tools_thinking import CONFIG, SHOTS

GREEDY: dict[str, Any] = {"temperature": 0}
QUESTION = "Name three colors."
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
WEATHER = {"type": "function", "name": "get_weather",
           "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta",
               "response.output_text.done", "response.content_part.done",
               "response.output_item.done", "response.completed"]


live = module_server("responses", CONFIG, {"OLLAMA_MAX_LOADED_MODELS": "3"})


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="ollama", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=300) as c:
        yield c


def chat_reply(client: openai.OpenAI, model: str, messages: list[dict[str, Any]],
               **extra: Any) -> Any:
    """The /v1/chat/completions answer to compare with."""
    return client.chat.completions.create(model=model, messages=messages, **GREEDY, **extra)


def sse(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, checking the framing: an `event:` line naming the
    payload's type, one `data:` line, a blank line; no `[DONE]`."""
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        raw = resp.read().decode()
    assert raw.endswith("\n\n")
    events = []
    for frame in raw[:-2].split("\n\n"):
        event_line, data_line = frame.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {payload['type']}"
        events.append(payload)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# -- the response object ------------------------------------------------------------------------

def test_string_input_is_one_user_message(client: openai.OpenAI) -> None:
    chat = chat_reply(client, MODEL, [{"role": "user", "content": QUESTION}], max_tokens=40)
    resp = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=40, **GREEDY)
    assert resp.object == "response" and resp.id.startswith("resp_")
    assert resp.model == MODEL and resp.status == "completed" and resp.error is None
    assert resp.incomplete_details is None and resp.store is False
    assert isinstance(resp.created_at, (int, float)) and resp.created_at > 1_700_000_000
    [message] = resp.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.id.startswith("msg_")
    [part] = message.content
    assert part.type == "output_text" and part.annotations == []
    assert resp.output_text == part.text == chat.choices[0].message.content
    assert resp.output_text.strip()
    usage = resp.usage
    assert usage.input_tokens == chat.usage.prompt_tokens
    assert usage.output_tokens == chat.usage.completion_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 <= usage.input_tokens_details.cached_tokens < usage.input_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_items_and_instructions_are_the_chat_history(client: openai.OpenAI) -> None:
    items = [{"role": "user", "content": "Hello!"},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "Hi! How can I help?",
                           "annotations": []}]},
             {"role": "developer", "content": "Use short sentences."},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": QUESTION}]}]
    resp = client.responses.create(model=MODEL, input=items, max_output_tokens=40,
                                   instructions="You are a painter.", **GREEDY)
    chat = chat_reply(client, MODEL, [
        {"role": "system", "content": "You are a painter."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "system", "content": "Use short sentences."},
        {"role": "user", "content": QUESTION}], max_tokens=40)
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.output_text == chat.choices[0].message.content and resp.output_text.strip()
    assert resp.instructions == "You are a painter."


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI,
                                               http: httpx.Client) -> None:
    resp = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=3, **GREEDY)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 3 and resp.output[0].status == "incomplete"
    events = sse(http, {"model": MODEL, "input": QUESTION, "max_output_tokens": 3, **GREEDY})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == resp.output_text


# -- streaming ------------------------------------------------------------------------------------

def test_stream_events_in_order(client: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": MODEL, "input": QUESTION, "max_output_tokens": 40, **GREEDY}
    whole = client.responses.create(**body)
    events = sse(http, body)
    kinds = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1
    assert [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]] == TEXT_EVENTS
    created, in_progress, added, part_added, *_, text_done, part_done, done, completed = events
    for opening in (created, in_progress):
        assert opening["response"]["status"] == "in_progress"
        assert opening["response"]["output"] == [] and opening["response"]["usage"] is None
    ids = {e["response"]["id"] for e in (created, in_progress, completed)}
    assert len(ids) == 1 and ids.pop().startswith("resp_")
    item_id = added["item"]["id"]
    assert added["item"] == {"type": "message", "id": item_id, "status": "in_progress",
                             "role": "assistant", "content": []}
    assert part_added["part"] == {"type": "output_text", "text": "", "annotations": [],
                                  "logprobs": []}
    for e in (part_added, *deltas, text_done, part_done):
        assert (e["item_id"], e["output_index"], e["content_index"]) == (item_id, 0, 0)
    text = "".join(d["delta"] for d in deltas)
    assert text == text_done["text"] == part_done["part"]["text"] == whole.output_text
    assert done["item"]["status"] == "completed"
    assert done["item"]["content"] == [part_done["part"]]
    assert completed["response"]["status"] == "completed"
    assert completed["response"]["output"] == [done["item"]]
    assert completed["response"]["usage"]["output_tokens"] == whole.usage.output_tokens


def test_sdk_streams(client: openai.OpenAI) -> None:
    body = {"model": MODEL, "input": QUESTION, "max_output_tokens": 40, **GREEDY}
    whole = client.responses.create(**body)
    with client.responses.stream(**body) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == whole.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens
    events = list(client.responses.create(**body, stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_client_disconnect_stops_generation(live: LiveServer, http: httpx.Client) -> None:
    body = json.dumps({"model": MODEL, "input": "Write an endless story.", "stream": True,
                       "max_output_tokens": 2000}).encode()
    disconnect_mid_stream(live, "/v1/responses", body, b"event: response.output_text.delta")
    started = time.perf_counter()
    after = http.post("/v1/responses", json={"model": MODEL, "input": "Hi",
                                             "max_output_tokens": 4, **GREEDY}).json()
    assert after["status"] == "incomplete" and after["usage"]["output_tokens"] == 4
    assert time.perf_counter() - started < 10


# -- structured outputs ---------------------------------------------------------------------------

def test_text_format_json_schema_and_json_object(client: openai.OpenAI) -> None:
    ask = "Describe a person as JSON with a name and an age."
    resp = client.responses.create(model=MODEL, input=ask, max_output_tokens=80, **GREEDY, text={
        "format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    assert resp.status == "completed"
    jsonschema.validate(json.loads(resp.output_text), PERSON)
    assert resp.text.format.type == "json_schema" and resp.text.format.name == "person"
    loose = client.responses.create(model=MODEL, input=ask, max_output_tokens=80,
                                    text={"format": {"type": "json_object"}}, **GREEDY)
    assert isinstance(json.loads(loose.output_text), dict)


# -- tools ----------------------------------------------------------------------------------------

def weather_items(city: str, outputs: bool) -> tuple[list[dict[str, Any]],
                                                      list[dict[str, Any]]]:
    """Three earlier turns calling the tool (with its outputs, or not), then a question: as
    Responses input items and as the chat messages they stand for."""
    items: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for n, earlier in enumerate(("Paris", "Tokyo", "Rome")):
        question = f"What is the weather in {earlier}?"
        arguments = json.dumps({"city": earlier})
        items += [{"role": "user", "content": question},
                  {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}",
                   "name": "get_weather", "arguments": arguments}]
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": None, "tool_calls": [{
                         "id": f"call_{n}", "type": "function",
                         "function": {"name": "get_weather", "arguments": arguments}}]}]
        if outputs:
            items.append({"type": "function_call_output", "call_id": f"call_{n}",
                          "output": "sunny, 21 C"})
            messages.append({"role": "tool", "tool_call_id": f"call_{n}",
                             "content": "sunny, 21 C"})
    question = f"What is the weather in {city}?"
    return ([*items, {"role": "user", "content": question}],
            [*messages, {"role": "user", "content": question}])


def nested(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}


def test_function_call_output_items_are_tool_messages(client: openai.OpenAI) -> None:
    items, messages = weather_items("Madrid", outputs=True)
    resp = client.responses.create(model="tooler", input=items, tools=[WEATHER],
                                   max_output_tokens=40, **GREEDY)
    chat = chat_reply(client, "tooler", messages, tools=[nested(WEATHER)], max_tokens=40)
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.output_text == (chat.choices[0].message.content or "")
    calls = [i for i in resp.output if i.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in chat.choices[0].message.tool_calls or ()]


def test_the_model_calls_the_tool(client: openai.OpenAI, http: httpx.Client) -> None:
    items, _ = weather_items("Madrid", outputs=False)
    body = {"model": "tooler", "input": items, "tools": [WEATHER], "max_output_tokens": 40,
            **GREEDY}
    resp = client.responses.create(**body)
    assert resp.status == "completed" and resp.output_text == ""
    [call] = resp.output
    assert call.type == "function_call" and call.status == "completed"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Madrid"}
    assert resp.tools[0].name == "get_weather"

    events = sse(http, body)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    added, delta, args_done, done = events[2:6]
    item = done["item"]
    assert added["item"] == {**item, "arguments": "", "status": "in_progress"}
    assert delta["delta"] == args_done["arguments"] == item["arguments"]
    assert args_done["name"] == "get_weather" and json.loads(item["arguments"]) == {
        "city": "Madrid"}
    assert {e["item_id"] for e in (delta, args_done)} == {item["id"]}
    assert events[-1]["response"]["output"] == [item]


# -- reasoning ------------------------------------------------------------------------------------

def shots(reasoning: bool) -> list[dict[str, Any]]:
    """Two answers that thought first (as reasoning items, or without them), then a question."""
    items: list[dict[str, Any]] = []
    for question, thought, answer in SHOTS:
        items.append({"role": "user", "content": question})
        if reasoning:
            items.append({"type": "reasoning", "id": "rs_1",
                          "summary": [{"type": "summary_text", "text": thought}]})
        items.append({"role": "assistant", "content": answer})
    return [*items, {"role": "user", "content": "What is 1+1?"}]


def test_reasoning_items(client: openai.OpenAI, http: httpx.Client) -> None:
    resp = client.responses.create(model="thinker", input=shots(True), max_output_tokens=40,
                                   **GREEDY)
    chat = chat_reply(client, "thinker", [
        {"role": "user", "content": q} if i % 2 == 0 else
        {"role": "assistant", "content": a, "reasoning": t}
        for q, t, a in SHOTS for i in range(2)] + [{"role": "user", "content": "What is 1+1?"}],
        max_tokens=40)
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    reasoning, message = resp.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    [summary] = reasoning.summary
    assert summary.type == "summary_text"
    assert summary.text == chat.choices[0].message.model_extra["reasoning"]
    assert resp.output_text == chat.choices[0].message.content and resp.output_text.strip()

    events = sse(http, {"model": "thinker", "input": shots(True), "max_output_tokens": 40,
                        **GREEDY})
    kinds = [k for i, k in enumerate(e["type"] for e in events)
             if i == 0 or k != events[i - 1]["type"]]
    assert kinds[:9] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done", "response.output_item.added"]
    summary_deltas = [e for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    assert {(e["output_index"], e["summary_index"]) for e in summary_deltas} == {(0, 0)}
    assert "".join(e["delta"] for e in summary_deltas) == summary.text
    text_deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert {e["output_index"] for e in text_deltas} == {1}
    assert events[-1]["response"]["output"][0]["summary"] == [
        {"type": "summary_text", "text": summary.text}]

    plain = client.responses.create(model="thinker", input=shots(False), max_output_tokens=40,
                                    reasoning={"effort": "none"}, **GREEDY)
    assert [item.type for item in plain.output] == ["message"]


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ({"previous_response_id": "resp_123"},
     "previous_response_id: not supported: responses are not stored, send the whole "
     "conversation as input"),
    ({"input": []}, r"input: \[\] is too short - 'input'"),
    ({"conversation": "conv_1"}, "conversation: not supported: responses are not stored"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]},
     "input.0: item_reference is not supported: responses are not stored"),
    ({"input": [{"type": "computer_call"}]}, 'input.0: unknown input item type: "computer_call"'),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input.0.role: role must be one of"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "file inputs are not currently supported"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]},
     "image URLs are not currently supported"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]},
     f'"{MODEL}" does not support images'),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
     "invalid tool call arguments"),
    ({"input": [{"type": "function_call_output", "output": "x"}]},
     "input.0: a function_call_output needs a call_id"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "f"}},
     'tool_choice names the tool "f", which is not in tools: "get_weather"'),
    ({"tools": [WEATHER]}, f'"{MODEL}" does not support tools'),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type: Must be one of"),
    ({"reasoning": {"effort": "high"}}, f'"{MODEL}" does not support thinking'),
    ({"background": True}, "background: not supported"),
    ({"temperature": 3}, "temperature: Must be"),
])
def test_refusals(client: openai.OpenAI, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(openai.BadRequestError, match=message) as err:
        client.responses.create(**{"model": MODEL, "input": "x", **extra})
    assert err.value.status_code == 400 and err.value.type == "invalid_request_error"


def test_accepted_and_echoed(client: openai.OpenAI) -> None:
    """What a stateless server can honour or harmlessly ignore: store, metadata, user,
    parallel_tool_calls, tool_choice "auto", tools the server would have to run."""
    resp = client.responses.create(
        model=MODEL, input=QUESTION, max_output_tokens=2, store=True, user="u1",
        metadata={"k": "v"}, parallel_tool_calls=False, tool_choice="auto", top_p=0.5,
        tools=[{"type": "web_search"}], truncation="auto", **GREEDY)
    assert resp.status == "incomplete" and resp.store is False
    assert resp.metadata == {"k": "v"} and resp.parallel_tool_calls is False
    assert resp.tool_choice == "auto" and resp.tools == [] and resp.top_p == 0.5


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match='model "ghost" not found'):
        client.responses.create(model="ghost", input="x")


def test_items_become_ollama_messages() -> None:
    """Calls after assistant text join its message, one message for consecutive calls; an
    output is a tool message named after its call; reasoning is the next turn's thinking."""
    req = load(wire.RESPONSES, {"model": MODEL, "instructions": "Be brief.", "input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Two"},
                                                        {"type": "summary_text", "text": "calls"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather",
         "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c2", "output": "rain"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_text", "text": "sun"}]},
        {"role": "developer", "content": [{"type": "input_text", "text": "a"},
                                          {"type": "input_text", "text": "b"}]}]})
    assert native_history(req["instructions"], req["input"]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "thinking": "Two\ncalls", "tool_calls": [
            {"id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "c2", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "content": "rain", "tool_call_id": "c2", "tool_name": "get_weather"},
        {"role": "tool", "content": "sun", "tool_call_id": "c1", "tool_name": "get_weather"},
        {"role": "system", "content": "a\nb"}]


# -- the builder on its own: item order and a failure mid-stream --------------------------------

def test_builder_orders_items_and_fails_cleanly() -> None:
    req = load(wire.RESPONSES, {"model": MODEL, "input": "x"})
    builder = ResponseBuilder(req, responses_request(req))
    events = builder.opening()
    for delta in (Delta(thinking="hm"), Delta(content="a"),
                  Delta(tool_calls=[{"id": "call_1", "function": {
                      "name": "f", "arguments": {"x": 1}}}]),
                  Delta(content="b")):
        events += builder.feed(delta)
    events += builder.failed("the engine failed")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [(e["output_index"], e["item"]["type"]) for e in events
             if e["type"] == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message"), (2, "function_call"), (3, "message")]
    last = events[-1]
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "server_error", "message": "the engine failed"}
    output = last["response"]["output"]
    assert [i["type"] for i in output] == ["reasoning", "message", "function_call", "message"]
    assert output[2]["arguments"] == '{"x": 1}' and output[3]["status"] == "incomplete"


def test_builder_empty_reply_is_an_empty_message() -> None:
    req = load(wire.RESPONSES, {"model": MODEL, "input": "x"})
    builder = ResponseBuilder(req, responses_request(req))
    fin = Finished("stop", 5, 5, 0, 0, 0, ())
    events = builder.finish(fin)
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.content_part.added",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    [message] = events[-1]["response"]["output"]
    assert message["content"][0]["text"] == "" and message["status"] == "completed"


async def scripted_stream(events: AsyncIterator[Event]) -> list[tuple[str | None, Any]]:
    """A streamed response over scripted engine events, behind the real error middleware:
    each SSE frame's `event:` name (None when absent) and its data."""
    async def respond(request: web.Request) -> web.StreamResponse:
        req = load(wire.RESPONSES, {"model": "m", "input": "x"})
        return await responses.stream_events(
            request, Generation("m", events, 0.0, 0.0),
            ResponseBuilder(req, responses_request(req)))

    status, ctype, body = await post_once(respond, "/v1/responses")
    assert (status, ctype) == (200, "text/event-stream")
    frames = []
    for frame in body.removesuffix("\n\n").split("\n\n"):
        lines = frame.split("\n")
        name = lines[0].removeprefix("event: ") if len(lines) == 2 else None
        frames.append((name, json.loads(lines[-1].removeprefix("data: "))))
    return frames


async def test_an_engine_failure_mid_stream_is_response_failed() -> None:
    frames = await scripted_stream(scripted([TextChunk("Hel", 1), Failed("boom")]))
    assert [name for name, _ in frames] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.failed"]
    failed = frames[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "boom"}
    assert failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "Hel"


async def test_an_unexpected_error_mid_stream_is_a_bare_error_event() -> None:
    """The middleware ends a started stream with OpenAI's error object, which has no `type`:
    a `data:` line alone, which the SDK raises as an APIError."""
    async def broken() -> AsyncIterator[Event]:
        yield TextChunk("Hel", 1)
        raise RuntimeError("bug")

    frames = await scripted_stream(broken())
    assert frames[-1] == (None, {"error": {"message": "internal error", "type": "api_error",
                                           "param": None, "code": None}})
    assert frames[-2][0] == "response.output_text.delta"
