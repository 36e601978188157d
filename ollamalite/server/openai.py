"""The OpenAI-compatible routes (/v1/*): an adapter over the same generation core as /api.

A /v1 request becomes the one internal request (`TextRequest`, `EmbedRequest`) directly, with
Ollama's meanings where OpenAI's differ (as Ollama's OpenAI middleware maps them); the core's
`Delta`s become OpenAI's chunks. So whatever the core learns (formats, tools, thinking), /v1
gets too, without passing through the native schema or native wire objects.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import struct
import time
import uuid
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, Mapping, Sequence

from aiohttp import web
from marshmallow import ValidationError

from ollamalite.errors import ApiError, BadRequest, ModelNotFound, describe
from ollamalite.generation import embedding, run
from ollamalite.generation.embedding import EmbedRequest
from ollamalite.generation.reply import Delta
from ollamalite.generation.request import TextRequest
from ollamalite.generation.run import Generation
from ollamalite.generation.templates import Effort
from ollamalite.options import validate_options
from ollamalite.runtime.engine.jobs import Finished
from ollamalite.server import ollama
from ollamalite.server.keys import SCHEDULER
from ollamalite.server.logprobs import CompletionLogprobs, token_objects
from ollamalite.server.openapi import MODEL_ERRORS, RUN_ERRORS, SSE, Route
from ollamalite.server.request import read_body
from ollamalite.server.stream import SseStream, json_response
from ollamalite.wire import load
from ollamalite.wire import openai as wire
from ollamalite.wire.native import ROLES

FINGERPRINT = "fp_ollama"
# OpenAI answers a missing or wrong key as a request error (code invalid_api_key).
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                404: "not_found_error"}
_IMAGE_PREFIXES = ("data:;base64,", *(f"data:image/{t};base64," for t in
                                      ("jpeg", "jpg", "png", "webp")))
# OpenAI's reasoning efforts as Ollama's `think` values (Ollama clamps the ends of the scale).
_THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
          "max": "max", "xhigh": "max", "ultra": "max"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error envelope, with the `type` Ollama gives each status."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                      "param": None, "code": None}}


# -- requests: OpenAI -> the internal requests ------------------------------------------------

def _image(value: Any) -> str:
    """An `image_url` part (a base64 data URI, as Ollama accepts) -> the bare base64 data."""
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise BadRequest("invalid message format: image_url needs a url")
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not currently supported, please use base64 encoded "
                         "data instead")
    prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
    if prefix is None:
        raise BadRequest("invalid image input")
    return base64_image(url[len(prefix):])


def base64_image(data: str) -> str:
    """An image's base64 data, checked (Ollama's `invalid image input` when it is not)."""
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise BadRequest("invalid image input") from None
    return data


TEXT, IMAGE = "text", "image"  # what a content part holds, in `message_content`'s tables
# Chat's content parts: what each holds, or why it is refused.
_CHAT_PARTS = {"text": TEXT, "image_url": IMAGE,
               "input_audio": "input_audio content is not supported"}


def message_content(content: str | list[dict] | None, kinds: Mapping[str, str]
                    ) -> tuple[str, list[str]]:
    """A message's content -> its text (text parts joined by newlines) and its images.
    `kinds` maps each part type a protocol accepts to TEXT, IMAGE or the reason it is
    refused; both keep an image in `image_url` (chat's object or the Responses string)."""
    if not isinstance(content, list):
        return content or "", []
    texts, images = [], []
    for part in content:
        kind = kinds.get(part.get("type"))
        if kind == TEXT and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == IMAGE:
            images.append(_image(part.get("image_url")))
        elif kind in (None, TEXT):
            raise BadRequest(f"invalid message format: unsupported content part "
                             f"{part.get('type')!r}")
        else:
            raise BadRequest(kind)
    return "\n".join(texts), images


def native_tool_call(call_id: str | None, name: str, arguments: str | None
                     ) -> dict[str, Any]:
    """OpenAI's tool call (arguments as a JSON string) -> Ollama's (arguments as an object)."""
    try:
        parsed = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise BadRequest("invalid tool call arguments")
    native: dict[str, Any] = {"function": {"name": name, "arguments": parsed}}
    if call_id:
        native["id"] = call_id
    return native


def native_role(role: str, where: str) -> str:
    """A message's role as Ollama names it (`developer` is OpenAI's newer `system`)."""
    role = role.lower()
    if role not in wire.ROLES:
        raise BadRequest(f"{where}.role: role must be one of {', '.join(ROLES)}")
    return "system" if role == "developer" else role


def _native_message(msg: dict[str, Any], tool_names: dict[str, str], index: int
                    ) -> dict[str, Any]:
    role = native_role(msg["role"], f"messages.{index}")
    if msg["content"] is None and not msg["tool_calls"]:
        raise BadRequest("invalid message content: null content needs tool_calls")
    text, images = message_content(msg["content"], _CHAT_PARTS)
    native: dict[str, Any] = {"role": role, "content": text}
    if images:
        native["images"] = images
    if msg["reasoning"]:
        native["thinking"] = msg["reasoning"]
    if msg["tool_calls"]:
        native["tool_calls"] = [native_tool_call(c["id"], c["function"]["name"],
                                                 c["function"]["arguments"])
                                for c in msg["tool_calls"]]
    if role == "tool":
        native["tool_name"] = msg["name"] or tool_names.get(msg["tool_call_id"] or "")
        native["tool_call_id"] = msg["tool_call_id"]
    return native


def native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as /api/chat takes them; a tool result is named after the call it answers."""
    tool_names = {c["id"]: c["function"]["name"] for m in messages
                  for c in (m["tool_calls"] or []) if c["id"]}
    return [_native_message(m, tool_names, i) for i, m in enumerate(messages)]


def native_options(req: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """Ollama's `options` from the sampling fields a request has; as Ollama does,
    temperature and top_p default to OpenAI's 1.0."""
    opts: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
    for key in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        if req.get(key) is not None:
            opts[key] = req[key]
    if req.get("stop") is not None:
        opts["stop"] = list(req["stop"])
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    return checked_options(opts)


def checked_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Ollama's `options` as the core takes them; what it refuses is a 400."""
    try:
        return validate_options(opts)
    except ValidationError as exc:
        raise BadRequest(describe(exc.messages)) from None


def _max_tokens(req: dict[str, Any]) -> int | None:
    old, new = req["max_tokens"], req["max_completion_tokens"]
    if old is not None and new is not None and old != new:
        raise BadRequest("max_tokens and max_completion_tokens differ: send one of them")
    return new if new is not None else old


def json_format(kind: str, schema: dict[str, Any] | None) -> Any:
    """An OpenAI output format -> Ollama's `format`: "json", a JSON schema, or None for
    text."""
    if kind == "text":
        return None
    return schema if kind == "json_schema" and schema is not None else "json"


def native_format(response_format: dict[str, Any] | None) -> Any:
    """`response_format` (the schema nested under `json_schema`) -> Ollama's `format`."""
    if response_format is None:
        return None
    spec = response_format["json_schema"] or {}
    return json_format(response_format["type"], spec.get("schema"))


def native_tools(tools: list[dict] | None, tool_choice: Any
                 ) -> tuple[list[dict] | None, bool | str]:
    """`tools` and the core's `force_tool` for a `tool_choice`: "auto" leaves the call to the
    model, "none" withholds the tools, "required" forces a call to one of them and a named
    function (chat's `{"type": "function", "function": {"name"}}` or the Responses API's flat
    `{"type": "function", "name"}`) a call to that one."""
    if tool_choice in (None, "auto"):
        return tools, False
    if tool_choice == "none":
        return None, False
    if tool_choice == "required":
        return tools, True
    return tools, _named_tool(tool_choice)


def _named_tool(tool_choice: Any) -> str:
    choice = tool_choice if isinstance(tool_choice, dict) else {}
    named = choice["function"] if isinstance(choice.get("function"), dict) else choice
    name = named.get("name")
    if choice.get("type") == "function" and isinstance(name, str) and name:
        return name
    raise BadRequest(f"invalid tool_choice {json.dumps(tool_choice)}: send \"auto\", \"none\", "
                     '"required" or {"type": "function", "function": {"name": ...}}')


def think_of(effort: str | None) -> bool | str | None:
    """A reasoning effort as Ollama's `think` (a level only as a hint, see `Effort`); None
    leaves it to the model."""
    think = _THINK[effort] if effort else None
    return Effort(think) if isinstance(think, str) else think


def chat_request(req: dict[str, Any]) -> TextRequest:
    """A loaded /v1/chat/completions request -> the internal request /api/chat would make."""
    messages = native_messages(req["messages"])
    tools, force_tool = native_tools(req["tools"], req["tool_choice"])
    return TextRequest(model=req["model"], messages=messages,
                       options=native_options(req, _max_tokens(req)),
                       format=native_format(req["response_format"]),
                       tools=tools, force_tool=force_tool,
                       think=think_of((req["reasoning"] or {}).get("effort")
                                      or req["reasoning_effort"]),
                       logprobs=bool(req["logprobs"] or req["top_logprobs"]),
                       top_logprobs=req["top_logprobs"] or 0)


def text_request(req: dict[str, Any]) -> TextRequest:
    """A loaded /v1/completions request -> the internal request /api/generate would make
    (templated, as Ollama does)."""
    return TextRequest(model=req["model"], prompt=req["prompt"][0] if req["prompt"] else "",
                       suffix=req["suffix"] or "",
                       options=native_options(req, req["max_tokens"]),
                       logprobs=req["logprobs"] is not None, top_logprobs=req["logprobs"] or 0)


# -- responses: core deltas -> OpenAI ----------------------------------------------------------

def usage(fin: Finished | None) -> dict[str, int]:
    """Token counts; `prompt_tokens` is the whole prompt, cached prefix included (OpenAI's
    meaning), where Ollama reports only the tokens it evaluated."""
    prompt, completion = (fin.prompt_tokens, fin.eval_count) if fin else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def openai_tool_calls(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's tool calls -> OpenAI's: arguments as a JSON string, plus `index`."""
    return [{"id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}",
             "index": c["function"].get("index", i), "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"].get("arguments") or {})}}
            for i, c in enumerate(calls)]


def _delta(delta: Delta) -> dict[str, Any]:
    """What a core delta adds, in OpenAI's words: content, reasoning (thinking), tool calls."""
    out: dict[str, Any] = {"content": delta.content}
    if delta.thinking:
        out["reasoning"] = delta.thinking
    if delta.tool_calls:
        out["tool_calls"] = openai_tool_calls(delta.tool_calls)
    return out


def finish_reason(done_reason: str, called_tools: bool) -> str:
    return "tool_calls" if called_tools and done_reason == "stop" else done_reason


class _Formatter(ABC):
    """One response's identity: every object of a stream shares its id and `created`."""

    prefix = ""
    obj = ""  # the `object` of the whole answer; chunks add `.chunk` where OpenAI does

    def __init__(self, model: str, logprobs: bool = False) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.logprobs = logprobs  # choices carry them (else `logprobs: null`)

    def envelope(self, obj: str, choices: list[dict[str, Any]],
                 usage: dict[str, int] | None = None) -> dict[str, Any]:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    @abstractmethod
    def completion(self, whole: Delta, done_reason: str, usage: dict[str, int]
                   ) -> dict[str, Any]:
        """The whole answer of a non-streamed run."""

    @abstractmethod
    def chunk(self, delta: Delta) -> dict[str, Any]:
        """The stream chunk of one delta."""

    @abstractmethod
    def finish(self, done_reason: str) -> list[dict[str, Any]]:
        """The chunks that end a stream (its finish reason)."""

    @abstractmethod
    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        """`stream_options.include_usage`: the chunk after the last, with no choices."""


class ChatFormatter(_Formatter):
    """chat.completion / chat.completion.chunk, as Ollama streams them: `role` in the first
    delta only (an empty answer still opens with it), then a finish chunk with an empty
    delta."""

    prefix = "chatcmpl"
    obj = "chat.completion"

    def __init__(self, model: str, logprobs: bool = False) -> None:
        super().__init__(model, logprobs)
        self.started = False
        self.called_tools = False

    def completion(self, whole: Delta, done_reason: str, usage: dict[str, int]
                   ) -> dict[str, Any]:
        message = {"role": "assistant", **_delta(whole)}
        reason = finish_reason(done_reason, "tool_calls" in message)
        return self.envelope(self.obj, [{"index": 0, "message": message,
                                         "logprobs": self._logprobs(whole),
                                         "finish_reason": reason}], usage)

    def chunk(self, delta: Delta) -> dict[str, Any]:
        out = _delta(delta)
        self.called_tools = self.called_tools or "tool_calls" in out
        if not self.started:
            out = {"role": "assistant", **out}
            self.started = True
        return self._chunk(out, None, self._logprobs(delta))

    def finish(self, done_reason: str) -> list[dict[str, Any]]:
        opening = [] if self.started else [self.chunk(Delta())]
        return [*opening, self._chunk({}, finish_reason(done_reason, self.called_tools))]

    def _logprobs(self, delta: Delta) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return {"content": token_objects(delta.logprobs, always_top=True)}

    def _chunk(self, delta: dict[str, Any], reason: str | None,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.envelope(f"{self.obj}.chunk", [{"index": 0, "delta": delta,
                                                    "logprobs": logprobs,
                                                    "finish_reason": reason}])

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return self.envelope(f"{self.obj}.chunk", [], usage)


class TextFormatter(_Formatter):
    """text_completion objects: a chunk per delta; the last one has the reason."""

    prefix = "cmpl"
    obj = "text_completion"

    def __init__(self, model: str, logprobs: bool = False) -> None:
        super().__init__(model, logprobs)
        self.lists = CompletionLogprobs()

    def _choice(self, delta: Delta, reason: str | None) -> dict[str, Any]:
        logprobs = self.lists.lists(delta.logprobs) if self.logprobs else None
        return {"text": delta.content, "index": 0, "logprobs": logprobs,
                "finish_reason": reason}

    def completion(self, whole: Delta, done_reason: str, usage: dict[str, int]
                   ) -> dict[str, Any]:
        return self.envelope(self.obj, [self._choice(whole, done_reason)], usage)

    def chunk(self, delta: Delta) -> dict[str, Any]:
        return self.envelope(self.obj, [self._choice(delta, None)])

    def finish(self, done_reason: str) -> list[dict[str, Any]]:
        return [self.envelope(self.obj, [self._choice(Delta(), done_reason)])]

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return self.envelope(self.obj, [], usage)


def embedding_list(model: str, vectors: list[list[float]], prompt_tokens: int,
                   encoding_format: str) -> dict[str, Any]:
    """OpenAI's embeddings list; base64 is little-endian float32, as OpenAI encodes it."""
    def encode(vector: list[float]) -> list[float] | str:
        if encoding_format != "base64":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "embedding": encode(v), "index": i}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_object(name: str, mtime: float) -> dict[str, Any]:
    """`owned_by` is the name's namespace (`library` for plain names), as in Ollama."""
    parts = name.split("/")
    return {"id": name, "object": "model", "created": int(mtime),
            "owned_by": parts[-2] if len(parts) > 1 else "library"}


# -- handlers -------------------------------------------------------------------------------------

async def _stream(request: web.Request, gen: Generation, fmt: _Formatter,
                  include_usage: bool) -> web.StreamResponse:
    """SSE; an engine failure after the first event is sent as an error event (the OpenAI
    clients raise it) and the stream ends without `[DONE]`."""
    out = SseStream(request)
    try:
        async for delta in gen.deltas():
            await out.send(fmt.chunk(delta))
        for chunk in fmt.finish(gen.result.done_reason):
            await out.send(chunk)
    except ApiError as exc:
        if not out.started:
            raise
        await out.send(error_body(exc.status, exc.message))
        return await out.close()
    if include_usage:
        await out.send(fmt.usage_chunk(usage(gen.finished)))
    return await out.done()


async def _complete(request: web.Request, text: TextRequest, fmt: _Formatter, stream: bool,
                    stream_options: dict[str, Any] | None) -> web.StreamResponse:
    async with run.generate(request.app[SCHEDULER], text) as gen:
        if stream:
            return await _stream(request, gen, fmt, bool(stream_options and
                                                         stream_options["include_usage"]))
        whole = await gen.whole()
        return json_response(fmt.completion(whole, gen.result.done_reason, usage(gen.result)))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = load(wire.CHAT, await read_body(request))
    text = chat_request(req)
    return await _complete(request, text, ChatFormatter(req["model"], text.logprobs),
                           bool(req["stream"]), req["stream_options"])


async def completions(request: web.Request) -> web.StreamResponse:
    req = load(wire.COMPLETION, await read_body(request))
    text = text_request(req)
    return await _complete(request, text, TextFormatter(req["model"], text.logprobs),
                           bool(req["stream"]), req["stream_options"])


async def embeddings(request: web.Request) -> web.Response:
    req = load(wire.EMBEDDING, await read_body(request))
    vectors, prompt_tokens, _ = await embedding.embed_unit(
        request.app[SCHEDULER],
        EmbedRequest(req["model"], req["input"], {}, dimensions=req["dimensions"]))
    return json_response(embedding_list(req["model"], vectors, prompt_tokens,
                                        req["encoding_format"]))


async def models(request: web.Request) -> web.Response:
    """The models /api/tags lists; `created` is the file's modification time."""
    rows = await ollama.available_models(request)
    return json_response({"object": "list", "data": [
        model_object(r["name"], datetime.fromisoformat(r["modified_at"]).timestamp())
        for r in rows]})


async def model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    entry = request.app[SCHEDULER].entry(name)
    try:
        stat = await asyncio.to_thread(entry.path.stat)
    except OSError:
        raise ModelNotFound(name) from None
    return json_response(model_object(entry.name, stat.st_mtime))


ROUTES = (
    Route("POST", "/v1/chat/completions", chat_completions, "The next message of a chat.",
          wire.CHAT, SSE, RUN_ERRORS),
    Route("POST", "/v1/completions", completions, "Completes a prompt.", wire.COMPLETION, SSE,
          RUN_ERRORS),
    Route("POST", "/v1/embeddings", embeddings, "Unit-length embeddings of the inputs.",
          wire.EMBEDDING, errors=RUN_ERRORS),
    Route("GET", "/v1/models", models, "The models this server offers."),
    Route("GET", "/v1/models/{model:.+}", model, "One model.", errors=MODEL_ERRORS),
)
