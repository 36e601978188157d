"""The chat/generate wire shapes with the reply parser, fed by a scripted event source
(pure logic: no model): thinking, content and a tool call split across engine chunks."""

from __future__ import annotations

import json

from aiohttp import web

from ollamalite.generation.reply import ReplyParser, ThinkingSplitter, ToolCallParser
from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Finished, TextChunk
from ollamalite.server.ollama import ChatShape, GenerateShape, respond
from tests.scripted import post_once, scripted

PIECES = ["<thi", "nk>Weather", " needed.</th", "ink>\n\nChecking", ". <tool", "_call>\n",
          '{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}\n</tool_call>']
DONE = Finished("stop", 5, 5, 1, len(PIECES), 1, ())


def parser() -> ReplyParser:
    return ReplyParser(ThinkingSplitter("<think>", "</think>"),
                       ToolCallParser("<tool_call>", "</tool_call>", {"get_weather": {}}))


async def lines(shape: GenerateShape, stream: bool) -> list[dict]:
    async def write(request: web.Request) -> web.StreamResponse:
        events = [*(TextChunk(piece, 1) for piece in PIECES), DONE]
        return await respond(request, Generation("m", scripted(events), 0.0, 0.0, parser()),
                             shape, stream)
    _, _, body = await post_once(write)
    return [json.loads(line) for line in body.splitlines()]


async def test_chat_stream() -> None:
    got = [line["message"] for line in await lines(ChatShape("m"), True)]
    assert [m.get("thinking") for m in got[:2]] == ["Weather", " needed."]
    assert "".join(m["content"] for m in got) == "Checking. "
    [call_line] = [m for m in got if "tool_calls" in m]
    assert call_line["content"] == "" and "thinking" not in call_line
    assert call_line["tool_calls"][0]["function"] == {
        "index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}
    assert got.index(call_line) == len(got) - 2  # then the final line
    assert got[-1] == {"role": "assistant", "content": ""}


async def test_chat_whole() -> None:
    [whole] = await lines(ChatShape("m"), False)
    message = whole["message"]
    assert message["thinking"] == "Weather needed." and message["content"] == "Checking. "
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather"]
    assert whole["done"] and whole["done_reason"] == "stop"


async def test_generate_fields_in_order() -> None:
    [whole] = await lines(GenerateShape("m"), False)
    assert list(whole)[:5] == ["model", "created_at", "response", "thinking", "done"]
    assert whole["thinking"] == "Weather needed." and "tool_calls" not in whole
