"""OpenAI's Responses API (POST /v1/responses), stateless as Ollama's: an adapter over the same
generation core as /v1/chat/completions.

The request's `instructions` and `input` items become Ollama's chat messages, its flat function
tools chat's nested ones, `text.format` the structured-output `format`, `reasoning.effort` the
`think` value, all through the helpers /v1/chat/completions uses. The core's `Delta`s become
output items (reasoning, message, function calls) in the order they come, and the stream's
events are made by the same code that builds the whole response, so the two always agree.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any, Sequence

from aiohttp import web

from ollamalite.errors import ApiError, BadRequest
from ollamalite.generation import run
from ollamalite.generation.reply import Delta, ToolCall
from ollamalite.generation.request import Message, TextRequest
from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Finished, Logprob
from ollamalite.server.keys import SCHEDULER
from ollamalite.server.logprobs import token_objects
from ollamalite.server.openapi import RUN_ERRORS, SSE, Route
from ollamalite.server.openai import (IMAGE, TEXT, json_format, message_content, native_options,
                                      native_role, native_tool_call, native_tools, think_of)
from ollamalite.server.request import read_body
from ollamalite.server.stream import EventStream, json_response
from ollamalite.wire import load
from ollamalite.wire import openai as wire

# The content parts of input messages and function call outputs: what each holds, or why it
# is refused.
_PARTS = {"input_text": TEXT, "output_text": TEXT, "input_image": IMAGE,
          "input_file": "file inputs are not currently supported"}
# The `include` entry that asks for the answer's logprobs (with `top_logprobs` alternatives).
LOGPROBS = "message.output_text.logprobs"
_STATELESS = "is not supported: responses are not stored, send the whole conversation as input"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- requests: input items -> Ollama's chat messages ---------------------------------------------

class _History:
    """Input items -> chat messages, as Ollama and llama-server convert them: consecutive
    function calls join one assistant message (after its text, if any), an output is a `tool`
    message named after its call, a reasoning item is the next assistant turn's thinking."""

    def __init__(self, instructions: str | None) -> None:
        self.messages: list[Message] = ([{"role": "system", "content": instructions}]
                                        if instructions else [])
        self.tool_names: dict[str, str] = {}
        self.thinking = ""

    def add(self, item: dict[str, Any], where: str) -> None:
        kind = item["type"] or ("message" if item["role"] else None)
        if kind == "message":
            self._message(item, where)
        elif kind == "function_call":
            self._call(item, where)
        elif kind == "function_call_output":
            self._output(item, where)
        elif kind == "reasoning":
            self.thinking += "\n".join(p["text"] for p in item["summary"] or ()
                                       if isinstance(p.get("text"), str))
        elif kind == "item_reference":
            raise BadRequest(f"{where}: item_reference {_STATELESS}")
        else:
            raise BadRequest(f"{where}: unknown input item type: {json.dumps(kind)}")

    def _assistant(self, message: Message) -> Message:
        """An assistant turn takes the reasoning that came before it."""
        if self.thinking:
            message["thinking"], self.thinking = self.thinking, ""
        return message

    def _message(self, item: dict[str, Any], where: str) -> None:
        role = native_role(item["role"] or "", where)
        text, images = message_content(item["content"], _PARTS)
        message: Message = {"role": role, "content": text}
        if images:
            message["images"] = images
        self.messages.append(self._assistant(message) if role == "assistant" else message)

    def _call(self, item: dict[str, Any], where: str) -> None:
        if not item["name"] or not item["call_id"]:
            raise BadRequest(f"{where}: a function_call needs a name and a call_id")
        call = native_tool_call(item["call_id"], item["name"], item["arguments"])
        self.tool_names[item["call_id"]] = item["name"]
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "assistant":
            last = self._assistant({"role": "assistant", "content": ""})
            self.messages.append(last)
        last.setdefault("tool_calls", []).append(call)

    def _output(self, item: dict[str, Any], where: str) -> None:
        if not item["call_id"]:
            raise BadRequest(f"{where}: a function_call_output needs a call_id")
        text, images = message_content(item["output"], _PARTS)
        message: Message = {"role": "tool", "content": text, "tool_call_id": item["call_id"],
                            "tool_name": self.tool_names.get(item["call_id"])}
        if images:
            message["images"] = images
        self.messages.append(message)


def native_history(instructions: str | None, items: str | list[dict[str, Any]]
                   ) -> list[Message]:
    """`instructions` (a leading system message) and `input` -> Ollama's chat messages."""
    history = _History(instructions)
    if isinstance(items, str):
        history.messages.append({"role": "user", "content": items})
    for i, item in enumerate(items if isinstance(items, list) else ()):
        history.add(item, f"input.{i}")
    return history.messages


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Flat function tools -> chat's nested ones. Other tool types (web_search, mcp, ...) need
    the server to run them: they are left out, as llama-server does."""
    nested = []
    for i, tool in enumerate(tools or ()):
        if tool.get("type") != "function":
            continue
        if not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools.{i}.name: a function tool needs a name")
        nested.append({"type": "function", "function": {
            k: tool[k] for k in ("name", "description", "parameters") if k in tool}})
    return nested or None


def responses_request(req: dict[str, Any]) -> TextRequest:
    """A loaded /v1/responses request -> the internal request /api/chat would make."""
    fmt = (req["text"] or {}).get("format")
    tools, force_tool = native_tools(chat_tools(req["tools"]), req["tool_choice"])
    return TextRequest(model=req["model"], messages=native_history(req["instructions"],
                                                                   req["input"]),
                       options=native_options(req, req["max_output_tokens"]),
                       format=json_format(fmt["type"], fmt["schema"]) if fmt else None,
                       tools=tools, force_tool=force_tool,
                       think=think_of((req["reasoning"] or {}).get("effort")),
                       logprobs=LOGPROBS in (req["include"] or ()),
                       top_logprobs=req["top_logprobs"] or 0)


# -- responses: core deltas -> output items and stream events ------------------------------------

def usage(fin: Finished) -> dict[str, Any]:
    """Token counts; `cached_tokens` is the prompt prefix the slot already held."""
    return {"input_tokens": fin.prompt_tokens,
            "input_tokens_details": {"cached_tokens": fin.prompt_tokens - fin.prompt_eval_count,
                                     "cache_write_tokens": 0},
            "output_tokens": fin.eval_count, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": fin.prompt_tokens + fin.eval_count}


class _Events:
    """Numbers a stream's events: `sequence_number` counts from 0 over the whole stream."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.count += 1
        return {"type": kind, **fields, "sequence_number": self.count - 1}


class _TextItem(ABC):
    """An output item with one streamed text part: a message's `output_text` or a reasoning
    item's `summary_text`. Subclasses name the events, the part and the item."""

    prefix = ""
    text_events = ""  # e.g. response.output_text, then .delta and .done
    part_events = ""  # e.g. response.content_part, then .added and .done
    index_key = ""  # the part's index field in those events

    def __init__(self, index: int, event: _Events) -> None:
        self.id = _new_id(self.prefix)
        self.index = index
        self.event = event
        self.text = ""

    @abstractmethod
    def item(self, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """The item with these parts."""

    @abstractmethod
    def part(self, text: str) -> dict[str, Any]:
        """The part holding this text."""

    def done(self, status: str) -> dict[str, Any]:
        return self.item(status, [self.part(self.text)])

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.event(kind, item_id=self.id, output_index=self.index, **{self.index_key: 0},
                          **fields)

    def start(self) -> list[dict[str, Any]]:
        return [self.event("response.output_item.added", output_index=self.index,
                           item=self.item("in_progress", [])),
                self._event(f"{self.part_events}.added", part=self.part(""))]

    def add(self, text: str, logprobs: Sequence[Logprob] = ()) -> list[dict[str, Any]]:
        self.text += text
        return [self._event(f"{self.text_events}.delta", delta=text,
                            **self.delta_extra(logprobs))]

    def finish(self, status: str) -> list[dict[str, Any]]:
        return [self._event(f"{self.text_events}.done", text=self.text, **self.done_extra()),
                self._event(f"{self.part_events}.done", part=self.part(self.text)),
                self.event("response.output_item.done", output_index=self.index,
                           item=self.done(status))]

    def delta_extra(self, logprobs: Sequence[Logprob]) -> dict[str, Any]:
        """Fields a text delta event carries besides the text (the delta's `logprobs`)."""
        return {}

    def done_extra(self) -> dict[str, Any]:
        """Fields the text's done event carries besides the text."""
        return {}


class _Message(_TextItem):
    prefix = "msg"
    text_events = "response.output_text"
    part_events = "response.content_part"
    index_key = "content_index"

    def __init__(self, index: int, event: _Events) -> None:
        super().__init__(index, event)
        self.logprobs: list[dict[str, Any]] = []  # empty unless the request `include`d them

    def item(self, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "message", "id": self.id, "status": status, "role": "assistant",
                "content": parts}

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [],
                "logprobs": list(self.logprobs)}

    def delta_extra(self, logprobs: Sequence[Logprob]) -> dict[str, Any]:
        new = token_objects(logprobs, always_top=True)
        self.logprobs.extend(new)
        return {"logprobs": new}

    def done_extra(self) -> dict[str, Any]:
        return {"logprobs": list(self.logprobs)}


class _Reasoning(_TextItem):
    """The model's thinking, as a reasoning item's summary (Ollama's choice)."""

    prefix = "rs"
    text_events = "response.reasoning_summary_text"
    part_events = "response.reasoning_summary_part"
    index_key = "summary_index"

    def item(self, status: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"type": "reasoning", "id": self.id, "status": status, "summary": parts}

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "summary_text", "text": text}


def _function_call(call: ToolCall, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": _new_id("fc"), "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": json.dumps(call["function"].get("arguments") or {}), "status": status}


def _echoed(req: dict[str, Any], text: TextRequest) -> dict[str, Any]:
    """The request's settings as a response repeats them (the sampling values as used);
    nothing is stored, whatever `store` asked."""
    reasoning = req["reasoning"] or {}
    return {"instructions": req["instructions"], "max_output_tokens": req["max_output_tokens"],
            "model": req["model"], "parallel_tool_calls": req["parallel_tool_calls"] is not False,
            "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "store": False, "temperature": text.options["temperature"],
            "top_p": text.options["top_p"],
            "text": {"format": (req["text"] or {}).get("format") or {"type": "text"}},
            "tool_choice": req["tool_choice"] or "auto",
            "tools": [t for t in req["tools"] or () if t.get("type") == "function"],
            "truncation": "disabled", "metadata": req["metadata"] or {}}


def status_of(fin: Finished) -> str:
    """A reply cut at its token limit is `incomplete`."""
    return "incomplete" if fin.done_reason == "length" else "completed"


class ResponseBuilder:
    """One response: its identity, the request fields it echoes, and its output items as the
    deltas build them. Each step returns the stream events it makes; a non-streamed response
    takes only the items."""

    def __init__(self, req: dict[str, Any], text: TextRequest) -> None:
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.event = _Events()
        self.items: list[dict[str, Any]] = []
        self.open: _TextItem | None = None
        self.echo = _echoed(req, text)

    def response(self, status: str, fin: Finished | None = None, error: str | None = None
                 ) -> dict[str, Any]:
        """The response object as it stands (`output` holds the finished items)."""
        cut = status == "incomplete"
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "status": status, "error": {"code": "server_error", "message": error}
                if error else None,
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
                **self.echo, "output": list(self.items),
                "usage": usage(fin) if fin else None}

    def opening(self) -> list[dict[str, Any]]:
        body = self.response("in_progress")
        return [self.event("response.created", response=body),
                self.event("response.in_progress", response=body)]

    def feed(self, delta: Delta) -> list[dict[str, Any]]:
        """A delta's thinking, content and tool calls, each continuing or opening its item."""
        out: list[dict[str, Any]] = []
        for kind, text in ((_Reasoning, delta.thinking), (_Message, delta.content)):
            if text:
                if not isinstance(self.open, kind):
                    out += self._close("completed")
                    self.open = kind(len(self.items), self.event)
                    out += self.open.start()
                # the tokens' logprobs go with the answer's text (none for reasoning)
                out += self.open.add(text, delta.logprobs if kind is _Message else ())
        for call in delta.tool_calls:
            out += self._close("completed") + self._call(call)
        return out

    def _close(self, status: str) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        item, self.open = self.open, None
        self.items.append(item.done(status))
        return item.finish(status)

    def _call(self, call: ToolCall) -> list[dict[str, Any]]:
        """A call arrives whole: its arguments are one delta."""
        item, index = _function_call(call, "completed"), len(self.items)
        self.items.append(item)
        ids = {"item_id": item["id"], "output_index": index}
        return [self.event("response.output_item.added", output_index=index,
                           item={**item, "arguments": "", "status": "in_progress"}),
                self.event("response.function_call_arguments.delta", **ids,
                           delta=item["arguments"]),
                self.event("response.function_call_arguments.done", **ids, name=item["name"],
                           arguments=item["arguments"]),
                self.event("response.output_item.done", output_index=index, item=item)]

    def finish(self, fin: Finished) -> list[dict[str, Any]]:
        """The last events: the open item closes, then `response.completed` (or
        `.incomplete` when cut at max_output_tokens). An answer with no output at all still
        has its (empty) message, so `output_text` is "" rather than missing."""
        status = status_of(fin)
        out: list[dict[str, Any]] = []
        if not (self.items or self.open):
            self.open = _Message(len(self.items), self.event)
            out += self.open.start()
        out += self._close(status)
        return out + [self.event(f"response.{status}", response=self.response(status, fin))]

    def failed(self, message: str) -> list[dict[str, Any]]:
        """An engine failure mid-stream: what was streamed is closed, the response failed."""
        out = self._close("incomplete")
        return out + [self.event("response.failed", response=self.response("failed",
                                                                            error=message))]


# -- handler ----------------------------------------------------------------------------------

async def stream_events(request: web.Request, gen: Generation, builder: ResponseBuilder
                  ) -> web.StreamResponse:
    """SSE with `event:` lines; no `[DONE]`, as OpenAI sends none. A client gone away raises
    out of `send`, which ends the generation."""
    out = EventStream(request)
    for event in builder.opening():
        await out.send(event)
    try:
        async for delta in gen.deltas():
            for event in builder.feed(delta):
                await out.send(event)
    except ApiError as exc:
        for event in builder.failed(exc.message):
            await out.send(event)
        return await out.close()
    for event in builder.finish(gen.result):
        await out.send(event)
    return await out.close()


async def responses(request: web.Request) -> web.StreamResponse:
    req = load(wire.RESPONSES, await read_body(request))
    text = responses_request(req)
    builder = ResponseBuilder(req, text)
    async with run.generate(request.app[SCHEDULER], text) as gen:
        if req["stream"]:
            return await stream_events(request, gen, builder)
        async for delta in gen.deltas():
            builder.feed(delta)
        builder.finish(gen.result)
        return json_response(builder.response(status_of(gen.result), gen.result))


ROUTES = (
    Route("POST", "/v1/responses", responses, "The model's response to the input items "
          "(OpenAI's Responses API, stateless).", wire.RESPONSES, SSE, RUN_ERRORS),
)
