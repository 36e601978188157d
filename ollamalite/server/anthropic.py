"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens): an adapter over the
same generation core as /api and /v1.

A request becomes the one internal `TextRequest` directly: `system` (a string, text blocks, or
`system` turns inside `messages`, which Claude Code sends), text and image blocks, `tool_use`
and `tool_result` blocks as the chat history's tool calls and tool messages, `thinking` as
`think`. The core's `Delta`s become content blocks (thinking, text, tool_use) and, streamed,
Anthropic's named events. The query (`?beta=true`) and the `anthropic-version` and
`anthropic-beta` headers are accepted and not enforced; `x-api-key` is read by the gate.
"""

from __future__ import annotations

import json
import uuid
from contextlib import aclosing
from typing import Any

from aiohttp import web

from ollamalite.errors import BadRequest
from ollamalite.generation import run
from ollamalite.generation.reply import Delta, ToolCall
from ollamalite.generation.request import Message, TextRequest
from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Finished
from ollamalite.server import openai
from ollamalite.server.keys import SCHEDULER
from ollamalite.server.openapi import ANTHROPIC_PREFIX, RUN_ERRORS, SSE, Route
from ollamalite.server.request import read_body
from ollamalite.server.stream import EventStream, heartbeat, json_response
from ollamalite.wire import anthropic as wire
from ollamalite.wire import load

PREFIX = ANTHROPIC_PREFIX
PING_S = 10.0  # a keep-alive this often while no output comes (a long prompt evaluating)
PING = {"type": "ping"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}
_THINK = {"enabled": True, "disabled": False, "adaptive": None}  # adaptive: the model's default
# Our sampling options, by the Anthropic field that sets each.
_OPTIONS = {"max_tokens": "num_predict", "temperature": "temperature", "top_p": "top_p",
            "top_k": "top_k", "stop_sequences": "stop"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error envelope; a status it has no name for is a request error below 500
    and an `api_error` from 500 on."""
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else
                                        "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


# -- requests: Anthropic -> the internal request ------------------------------------------------

def _block(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A content block checked against its type's schema; an unknown type is a 400."""
    schema = wire.BLOCKS.get(block["type"])
    if schema is None:
        raise BadRequest(f"{where}: content block type {block['type']!r} is not supported")
    return {"type": block["type"], **load(schema, block)}


def _blocks(content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [_block(b, f"{where}.{i}") for i, b in enumerate(content)]


def _image(block: dict[str, Any]) -> str:
    """An image block's base64 data (the core then refuses it if the model has no vision)."""
    source = block["source"]
    if source["type"] != "base64" or not source["data"]:
        raise BadRequest("image URLs are not supported: send the image as base64 data")
    return openai.base64_image(source["data"])


def _text(blocks: list[dict[str, Any]], where: str) -> str:
    """Text-only content (a system prompt, a tool's result): text blocks joined by
    newlines."""
    for i, block in enumerate(blocks):
        if block["type"] != "text":
            raise BadRequest(f"{where}.{i}: only text blocks are allowed here")
    return "\n".join(b["text"] for b in blocks)


def _user(blocks: list[dict[str, Any]], where: str) -> list[Message]:
    """A user turn: each `tool_result` becomes a tool message (first, as Ollama orders them),
    the text and images one user message."""
    tools: list[Message] = []
    texts: list[str] = []
    images: list[str] = []
    for i, block in enumerate(blocks):
        if block["type"] == "tool_result":
            inner = f"{where}.{i}.content"
            result = _blocks(block["content"], inner)
            images += [_image(b) for b in result if b["type"] == "image"]
            tools.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content":
                          _text([b for b in result if b["type"] != "image"], inner)})
        elif block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "image":
            images.append(_image(block))
        elif block["type"] == "tool_use":
            raise BadRequest(f"{where}.{i}: tool_use blocks belong in assistant turns")
    if tools and not texts and not images:
        return tools
    user: Message = {"role": "user", "content": "\n".join(texts)}
    if images:
        user["images"] = images
    return [*tools, user]


def _assistant(blocks: list[dict[str, Any]], where: str) -> Message:
    """An assistant turn: text, reasoning (`thinking` blocks) and tool calls."""
    for i, block in enumerate(blocks):
        if block["type"] in ("image", "tool_result"):
            raise BadRequest(f"{where}.{i}: {block['type']} blocks belong in user turns")
    msg: Message = {"role": "assistant", "content": "\n".join(
        b["text"] for b in blocks if b["type"] == "text")}
    thinking = "".join(b["thinking"] for b in blocks if b["type"] == "thinking")
    if thinking:
        msg["thinking"] = thinking
    calls = [{"id": b["id"], "function": {"name": b["name"], "arguments": b["input"]}}
             for b in blocks if b["type"] == "tool_use"]
    if calls:
        msg["tool_calls"] = calls
    return msg


def chat_messages(req: dict[str, Any]) -> list[Message]:
    """`system` first, then the turns; a `system` turn inside `messages` stays where it is
    (hoisting it would change the prompt's prefix each turn and defeat the prefix cache)."""
    out: list[Message] = []
    if req["system"]:
        out.append({"role": "system", "content": _text(_blocks(req["system"], "system"),
                                                       "system")})
    for i, msg in enumerate(req["messages"]):
        where = f"messages.{i}.content"
        blocks = _blocks(msg["content"], where)
        if msg["role"] == "user":
            out += _user(blocks, where)
        elif msg["role"] == "assistant":
            out.append(_assistant(blocks, where))
        else:
            out.append({"role": "system", "content": _text(blocks, where)})
    return out


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    """A client tool as the chat template takes it; a server tool (dated `type`) runs on
    Anthropic's side, so it cannot run here."""
    if tool["type"] not in (None, "custom"):
        raise BadRequest(f"tools.{index}: server tool type {tool['type']!r} is not supported")
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool["description"]:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tools(req: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, bool | str]:
    """The tools and the core's `force_tool`: `tool_choice` auto and none as /v1's, `any`
    forces a call to one of the tools, `tool` a call to the one it names."""
    tools = [_tool(t, i) for i, t in enumerate(req["tools"] or ())] or None
    choice = req["tool_choice"] or {"type": "auto"}
    if choice["type"] in ("auto", "none"):
        return openai.native_tools(tools, choice["type"])
    if choice["type"] == "any":
        return tools, True
    if not choice["name"]:
        raise BadRequest("tool_choice.name: a tool_choice of type tool names the tool")
    return tools, choice["name"]


def text_request(req: dict[str, Any]) -> TextRequest:
    """A loaded /v1/messages (or count_tokens) request -> the internal chat request; only the
    sampling fields sent are set, so the model's own defaults apply to the rest."""
    options = {ours: req[theirs] for theirs, ours in _OPTIONS.items()
               if req.get(theirs) is not None}
    thinking = req["thinking"]
    tools, force_tool = _tools(req)
    return TextRequest(model=req["model"], messages=chat_messages(req),
                       options=openai.checked_options(options), tools=tools,
                       force_tool=force_tool,
                       think=_THINK[thinking["type"]] if thinking else None)


# -- responses: core deltas -> Anthropic ---------------------------------------------------------

def tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
            "name": call["function"]["name"], "input": call["function"].get("arguments") or {}}


def content_blocks(whole: Delta) -> list[dict[str, Any]]:
    """Anthropic's order: thinking, text, tool calls."""
    blocks: list[dict[str, Any]] = []
    if whole.thinking:
        blocks.append({"type": "thinking", "thinking": whole.thinking, "signature": ""})
    if whole.content:
        blocks.append({"type": "text", "text": whole.content})
    return blocks + [tool_use_block(c) for c in whole.tool_calls]


def stop_reason(fin: Finished, called_tools: bool) -> str:
    if fin.done_reason == "length":
        return "max_tokens"
    if called_tools:
        return "tool_use"
    return "stop_sequence" if fin.stop_sequence else "end_turn"


def usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    """`input_tokens` is the whole prompt, cached prefix included (what count_tokens says)."""
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


class MessageFormatter:
    """One message's identity and envelope, whole or streamed."""

    def __init__(self, model: str) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.model = model

    def message(self, content: list[dict[str, Any]], reason: str | None,
                stop_sequence: str | None, counts: dict[str, int]) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": reason, "stop_sequence": stop_sequence,
                "usage": counts}

    def whole(self, whole: Delta, fin: Finished) -> dict[str, Any]:
        return self.message(content_blocks(whole), stop_reason(fin, bool(whole.tool_calls)),
                            fin.stop_sequence, usage(fin.prompt_tokens, fin.eval_count))

    def start(self, input_tokens: int) -> dict[str, Any]:
        return {"type": "message_start",
                "message": self.message([], None, None, usage(input_tokens, 0))}


class BlockEvents:
    """A stream's content blocks as events: one block open at a time, indexed from 0, each
    started with its empty value (clients append the deltas to it) and stopped before the
    next starts. A tool call arrives whole, so its input is one `input_json_delta`."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self.called_tools = False

    def of(self, delta: Delta) -> list[dict[str, Any]]:
        events = []
        if delta.thinking:
            events += self._into({"type": "thinking", "thinking": "", "signature": ""},
                                 {"type": "thinking_delta", "thinking": delta.thinking})
        if delta.content:
            events += self._into({"type": "text", "text": ""},
                                 {"type": "text_delta", "text": delta.content})
        for call in delta.tool_calls:
            block = tool_use_block(call)
            events += self._into({**block, "input": {}}, {
                "type": "input_json_delta", "partial_json": json.dumps(block["input"])})
            events += self.close()
            self.called_tools = True
        return events

    def _into(self, block: dict[str, Any], delta: dict[str, Any]) -> list[dict[str, Any]]:
        """`delta` into the open block of its kind, or into a new one."""
        events = []
        if self.open != block["type"]:
            events = self.close()
            self.index += 1
            self.open = block["type"]
            events.append({"type": "content_block_start", "index": self.index,
                           "content_block": block})
        return [*events, {"type": "content_block_delta", "index": self.index, "delta": delta}]

    def close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.index}]


# -- handlers -------------------------------------------------------------------------------------

async def _stream(request: web.Request, gen: Generation, fmt: MessageFormatter
                  ) -> web.StreamResponse:
    """Anthropic's event order, with a ping after message_start and whenever no output came
    for PING_S. An error after the first event leaves as an `error` event (the errors
    middleware writes it: the stream is started) and the SDK raises it."""
    out = EventStream(request)
    blocks = BlockEvents()
    await out.send(fmt.start(gen.prompt_tokens))
    await out.send(PING)
    async with aclosing(heartbeat(gen.deltas(), PING_S)) as deltas:
        async for delta in deltas:
            for event in blocks.of(delta) if delta is not None else [PING]:
                await out.send(event)
    fin = gen.result
    ending = [*blocks.close(),
              {"type": "message_delta",
               "delta": {"stop_reason": stop_reason(fin, blocks.called_tools),
                         "stop_sequence": fin.stop_sequence},
               "usage": usage(fin.prompt_tokens, fin.eval_count)},
              {"type": "message_stop"}]
    for event in ending:
        await out.send(event)
    return await out.close()


async def messages(request: web.Request) -> web.StreamResponse:
    req = load(wire.MESSAGES, await read_body(request))
    fmt = MessageFormatter(req["model"])
    async with run.generate(request.app[SCHEDULER], text_request(req)) as gen:
        if req["stream"]:
            return await _stream(request, gen, fmt)
        whole = await gen.whole()
        return json_response(fmt.whole(whole, gen.result))


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt as the chat template renders it, tokenized by the model: the number a
    message's `usage.input_tokens` reports for the same request."""
    req = load(wire.COUNT_TOKENS, await read_body(request))
    count = await run.count_tokens(request.app[SCHEDULER], text_request(req))
    return json_response({"input_tokens": count})


ROUTES = (
    Route("POST", PREFIX, messages, "The next message of a conversation (Anthropic's Messages "
          "API).", wire.MESSAGES, SSE, RUN_ERRORS),
    Route("POST", f"{PREFIX}/count_tokens", count_tokens, "The prompt's length in tokens, as "
          "the message's usage.input_tokens counts it.", wire.COUNT_TOKENS, errors=RUN_ERRORS),
)
