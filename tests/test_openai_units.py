"""Pure logic of the /v1 adapters: OpenAI requests -> the core's requests, the core's deltas ->
OpenAI objects, and the SSE writer's failure handling (the engine replaced by scripted
events)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ollamalite.errors import BadRequest, Busy
from ollamalite.generation.reply import Delta
from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Event, Failed, Finished, TextChunk
from ollamalite.server import openai as oa
from ollamalite.server.app import errors_middleware
from ollamalite.wire import load
from ollamalite.wire import openai as wire
from tests.scripted import post_once, scripted

PNG = "iVBORw0KGgo="


def chat(**body: Any) -> dict[str, Any]:
    """A /v1/chat/completions body as the route loads it, as the core's request (its fields)."""
    req = load(wire.CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                           **body})
    return vars(oa.chat_request(req))


def test_chat_maps_sampling_fields_onto_ollama_options() -> None:
    req = chat(temperature=0.2, top_p=0.5, seed=7, frequency_penalty=0.1,
               presence_penalty=-0.3, stop="END", max_tokens=9)
    assert req["options"] == {"temperature": 0.2, "top_p": 0.5, "seed": 7,
                              "frequency_penalty": 0.1, "presence_penalty": -0.3,
                              "stop": ("END",), "num_predict": 9}
    assert chat()["options"] == {"temperature": 1.0, "top_p": 1.0}
    assert chat(max_completion_tokens=3, stop=["a", "b"])["options"]["num_predict"] == 3
    assert chat(stop=["a", "b"])["options"]["stop"] == ("a", "b")
    assert chat(stream=None, stop=None, max_tokens=None, temperature=None, tools=None,
                n=None, seed=None)["options"] == {"temperature": 1.0, "top_p": 1.0}


@pytest.mark.parametrize(("response_format", "native"), [
    (None, None), ({"type": "text"}, None), ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
     {"type": "object"}),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json"),
])
def test_response_format_becomes_format(response_format: Any, native: Any) -> None:
    assert chat(response_format=response_format)["format"] == native


def test_tools_and_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert (chat(tools=tools)["tools"], chat(tools=tools)["force_tool"]) == (tools, False)
    assert chat(tools=tools, tool_choice="auto")["tools"] == tools
    assert chat(tools=tools, tool_choice="none")["tools"] is None
    assert chat(tools=tools, tool_choice="required")["force_tool"] is True
    named = chat(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})
    assert (named["tools"], named["force_tool"]) == (tools, "f")
    with pytest.raises(BadRequest, match='invalid tool_choice "any"'):
        chat(tools=tools, tool_choice="any")


@pytest.mark.parametrize(("body", "think"), [
    ({}, None), ({"reasoning_effort": "none"}, False), ({"reasoning_effort": "minimal"}, "low"),
    ({"reasoning_effort": "high"}, "high"), ({"reasoning": {"effort": "xhigh"}}, "max"),
])
def test_reasoning_effort_becomes_think(body: dict, think: Any) -> None:
    assert chat(**body)["think"] == think


def test_logprobs_are_asked_for() -> None:
    assert chat(logprobs=True, top_logprobs=3)["logprobs"] is True
    assert chat()["logprobs"] is False


def test_messages_parts_images_roles_and_tool_turns() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    req = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url",
                                      "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                     {"type": "text", "text": "here"}]},
        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "hmm"},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ])
    system, user, assistant, tool = req["messages"]
    assert (system["role"], system["content"]) == ("system", "be brief")
    assert (user["content"], user["images"]) == ("look\nhere", [PNG])
    assert assistant["tool_calls"] == [{"id": "call_1", "function": {
        "name": "weather", "arguments": {"city": "Paris"}}}]
    assert assistant["thinking"] == "hmm" and assistant["content"] == ""
    assert (tool["tool_name"], tool["tool_call_id"]) == ("weather", "call_1")


@pytest.mark.parametrize(("message", "error"), [
    ({"role": "user", "content": None}, "null content needs tool_calls"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": "data:image/gif;base64,"
                                                                     "R0lG"}]},
     "invalid image input"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:;base64,"
                                                                            "!!"}}]},
     "invalid image input"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y"}}]},
     "image URLs are not currently supported"),
    ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
     "input_audio content is not supported"),
    ({"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]},
     "invalid tool call arguments"),
])
def test_bad_messages(message: dict, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        chat(messages=[message])


def test_completion_request_maps_to_a_templated_generate() -> None:
    req = load(wire.COMPLETION, {"model": "m", "prompt": ["Hi"], "suffix": "end",
                                 "max_tokens": 4, "logprobs": 2})
    text = oa.text_request(req)
    assert (text.prompt, text.suffix, text.raw, text.chat) == ("Hi", "end", False, False)
    assert text.options == {"temperature": 1.0, "top_p": 1.0, "num_predict": 4}
    assert text.logprobs is True


def test_embedding_list() -> None:
    vectors = [[0.5, -1.25], [2.0, 0.0]]
    floats = oa.embedding_list("m", vectors, 3, "float")
    assert floats == {"object": "list", "model": "m", "usage": {"prompt_tokens": 3,
                                                                "total_tokens": 3},
                      "data": [{"object": "embedding", "embedding": v, "index": i}
                               for i, v in enumerate(vectors)]}
    encoded = oa.embedding_list("m", vectors, 3, "base64")["data"][1]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (2.0, 0.0)


def test_tool_calls_become_openai_calls_and_finish_reason() -> None:
    fmt = oa.ChatFormatter("m")
    whole = Delta(tool_calls=[{"function": {"name": "f", "arguments": {"x": 1}}}])
    body = fmt.completion(whole, "stop", oa.usage(None))
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "f", "arguments": '{"x": 1}'} and call["index"] == 0
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert oa.finish_reason("length", True) == "length"


def test_chat_chunks_role_first_no_empty_trailer_then_finish() -> None:
    fmt = oa.ChatFormatter("m")
    first = fmt.chunk(Delta(content="Hel"))
    second = fmt.chunk(Delta(content="lo"))
    last = fmt.finish("length")
    assert [c["choices"][0]["delta"] for c in [first, second, *last]] == [
        {"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert last[0]["choices"][0]["finish_reason"] == "length"
    assert {c["id"] for c in [first, second, *last]} == {fmt.id}
    # An empty answer still opens with the role.
    empty = oa.ChatFormatter("m").finish("stop")
    assert [c["choices"][0]["delta"] for c in empty] == [{"role": "assistant", "content": ""},
                                                         {}]


def test_thinking_is_sent_as_reasoning() -> None:
    chunk = oa.ChatFormatter("m").chunk(Delta(thinking="why"))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                            "reasoning": "why"}


def test_model_object_owner_is_the_namespace() -> None:
    assert oa.model_object("llama3:latest", 1.9)["owned_by"] == "library"
    assert oa.model_object("bob/llama3:latest", 1)["owned_by"] == "bob"
    assert oa.model_object("hf.co/bob/llama3:q4", 1) == {
        "id": "hf.co/bob/llama3:q4", "object": "model", "created": 1, "owned_by": "bob"}


FIN = Finished("stop", 5, 5, 1, 2, 1, ())


async def fetch(events: list[Event]) -> tuple[int, str, str]:
    async def respond(request: web.Request) -> web.StreamResponse:
        gen = Generation("m", scripted(events), 0.0, 0.0)
        return await oa._stream(request, gen, oa.ChatFormatter("m"), True)
    return await post_once(respond, "/v1/chat/completions")


async def test_sse_stream_ends_with_usage_and_done() -> None:
    status, ctype, body = await fetch([TextChunk("Hi", 2), FIN])
    events = body.split("\n\n")
    assert (status, ctype, events[-2:]) == (200, "text/event-stream", ["data: [DONE]", ""])
    usage = json.loads(events[-3][len("data: "):])
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


async def test_sse_failure_after_first_event_is_an_error_event() -> None:
    status, _, body = await fetch([TextChunk("Hel", 1), Failed("boom")])
    events = [e for e in body.split("\n\n") if e]
    assert status == 200 and json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "Hel"
    assert json.loads(events[-1][6:]) == oa.error_body(500, "boom")
    assert "[DONE]" not in body


async def test_sse_failure_before_any_output_is_a_real_status() -> None:
    status, ctype, body = await fetch([Failed("boom")])
    assert (status, json.loads(body)) == (500, {"error": {
        "message": "boom", "type": "api_error", "param": None, "code": None}})
    assert ctype.startswith("application/json")


async def test_error_shape_follows_the_path_and_keeps_headers() -> None:
    async def busy(request: web.Request) -> web.Response:
        raise Busy("server busy", retry_after=3)

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_post("/v1/chat/completions", busy)
    app.router.add_post("/api/chat", busy)
    async with TestClient(TestServer(app)) as client:
        v1 = await client.post("/v1/chat/completions")
        native = await client.post("/api/chat")
        assert (v1.status, v1.headers["Retry-After"]) == (503, "3")
        assert await v1.json() == oa.error_body(503, "server busy")
        assert oa.error_body(503, "x")["error"]["type"] == "api_error"
        assert (native.status, native.headers["Retry-After"]) == (503, "3")
        assert await native.json() == {"error": "server busy"}
