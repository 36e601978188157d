"""The generation core every text route shares (/api/generate, /api/chat and their /v1
translations), and the embedding core of /api/embed and /v1/embeddings: check the request
against the model, load it, tokenize off the loop, run the engine, and spell the results as
Ollama's wire objects.

One way through: handler -> `completion_run` (checks, `Scheduler.use`, `completion.prepare`,
`completion.generate`) -> `NativeRun.objects()` -> the route's writer.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from ollamalite.errors import ApiError, BadRequest
from ollamalite.generation import embedding, grammar, prompt
from ollamalite.generation import run as completion
from ollamalite.generation import templates
from ollamalite.generation.reply import Delta, ReplyParser
from ollamalite.options import RunOptions, merge, run_options
from ollamalite.registry import chat_template
from ollamalite.registry.gguf_header import GGUFError, GGUFInfo, read_header
from ollamalite.registry.models_file import ModelEntry
from ollamalite.runtime.engine.jobs import Event, Failed, Finished, TextChunk
from ollamalite.runtime.scheduler import Runner
from ollamalite.server.request import require_model, scheduler_of
from ollamalite.server.stream import created_at
from ollamalite.wire import native


class GenerateShape:
    """How /api/generate spells a text chunk and its final object."""

    endpoint = "generate"

    def __init__(self, model: str) -> None:
        self.model = model

    def chunk(self, delta: Delta) -> dict[str, Any]:
        body = {"model": self.model, "created_at": created_at(), "response": delta.content}
        if delta.thinking:
            body["thinking"] = delta.thinking
        return {**body, "done": False}

    def final(self, delta: Delta, reason: str) -> dict[str, Any]:
        return {**self.chunk(delta), "done": True, "done_reason": reason}

    def returns_context(self, req: dict[str, Any]) -> bool:
        """Token ids come back for templated generate calls, as in Ollama (not for raw)."""
        return not req["raw"]


class ChatShape(GenerateShape):
    """The same for /api/chat: text goes into an assistant `message`."""

    endpoint = "chat"

    def returns_context(self, req: dict[str, Any]) -> bool:
        return False

    def chunk(self, delta: Delta) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": delta.content}
        if delta.thinking:
            message["thinking"] = delta.thinking
        if delta.tool_calls:
            message["tool_calls"] = delta.tool_calls
        return {"model": self.model, "created_at": created_at(), "message": message,
                "done": False}


def _metrics(fin: Finished, started: float, load_s: float) -> dict[str, int]:
    return {
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": int(load_s * 1e9),
        "prompt_eval_count": fin.prompt_eval_count,
        "prompt_eval_duration": fin.prompt_eval_duration,
        "eval_count": fin.eval_count,
        "eval_duration": fin.eval_duration,
    }


def _final(shape: GenerateShape, delta: Delta, fin: Finished, started: float, load_s: float,
           context: bool) -> dict[str, Any]:
    body = shape.final(delta, fin.done_reason)
    if context:
        body["context"] = list(fin.tokens)
    body.update(_metrics(fin, started, load_s))
    return body


class NativeRun:
    """One generation as Ollama's wire objects: the chunks (streaming) or one joined object,
    then the final one with metrics. /api routes write them as they are; /v1 routes translate
    them, as Ollama's OpenAI middleware does, so both always carry the same results."""

    def __init__(self, shape: GenerateShape, events: AsyncIterator[Event], stream: bool,
                 started: float, load_s: float, context: bool = False,
                 parser: ReplyParser | None = None) -> None:
        self.shape, self.events, self.stream = shape, events, stream
        self.started, self.load_s, self.context = started, load_s, context
        self.parser = parser or ReplyParser()  # without one, the text is all content
        self.finished: Finished | None = None  # the engine's last event, once it arrived

    async def objects(self) -> AsyncIterator[dict[str, Any]]:
        """Engine text goes through the reply parser; a chunk is sent only when the parser
        has something to say (a tool call is held back until complete). Raises ApiError when
        the engine fails."""
        whole = Delta()
        async for event in self.events:
            if isinstance(event, Failed):
                raise ApiError(event.message)
            text = event.text if isinstance(event, TextChunk) else None
            for delta in self.parser.feed(text) if text is not None else self.parser.finish():
                if self.stream:
                    yield self.shape.chunk(delta)
                else:
                    whole.add(delta)
            if isinstance(event, Finished):
                self.finished = event
                yield _final(self.shape, whole, event, self.started, self.load_s, self.context)


def _check_request(name: str, req: dict[str, Any]) -> None:
    """What no model served here can do yet is a 400, never silently ignored."""
    messages = req.get("messages") or []
    if req.get("images") or any(m.get("images") for m in messages):
        raise BadRequest(f'"{name}" does not support images')
    if req.get("logprobs") or req.get("top_logprobs"):
        raise BadRequest("logprobs are not supported yet")


def _check_model(name: str, entry: ModelEntry, req: dict[str, Any], endpoint: str) -> None:
    """What the GGUF itself must offer, read from its header before anything loads: an
    embedding model cannot generate (Ollama's 400), a `suffix` needs fill-in-the-middle
    tokens."""
    capabilities = read_header(entry.path).capabilities(entry.embedding)
    if "completion" not in capabilities:
        raise BadRequest(f'"{name}" does not support {endpoint}')
    if req.get("suffix") and "insert" not in capabilities:
        raise BadRequest(f'"{name}" does not support insert')


def _generate_prompt(runner: Runner, req: dict[str, Any], opts: RunOptions) -> list[int]:
    if req["suffix"]:
        return completion.infill_tokens(runner, req["prompt"], req["suffix"], opts,
                                        req["context"])
    return completion.generate_tokens(runner, req["prompt"], opts, system=req["system"],
                                      template=req["template"], raw=req["raw"],
                                      context=req["context"],
                                      variables=templates.variables(None, req["think"]))


def _chat_prompt(runner: Runner, req: dict[str, Any], opts: RunOptions) -> list[int]:
    messages = prompt.template_messages(req["messages"])
    return completion.chat_tokens(runner, messages, opts, req["truncate"],
                                  templates.variables(req["tools"], req["think"]))


def _features(entry: ModelEntry, override: str | None) -> templates.TemplateFeatures:
    """What the template this request will use can do (blocking: header read, template
    probe). A model file that cannot be read fails later, when it loads."""
    try:
        info: GGUFInfo | None = read_header(entry.path)
    except (OSError, GGUFError):
        info = None
    return templates.features(chat_template.pick(entry, info, override))


@dataclass(frozen=True)
class CompletionKind:
    """What tells /api/generate from /api/chat: request schema, input field, wire shape and
    how the request becomes prompt tokens. The /v1 routes reuse these."""

    schema: native.Schema
    input_key: str
    shape: type[GenerateShape]
    tokenize: Callable[[Runner, dict, RunOptions], list[int]]


GENERATE = CompletionKind(native.GENERATE, "prompt", GenerateShape, _generate_prompt)
CHAT = CompletionKind(native.CHAT, "messages", ChatShape, _chat_prompt)


@dataclass(frozen=True)
class Checked:
    """What the checks before loading found: the model, the grammar its `format` asks for
    and what the request's chat template can do."""

    name: str
    grammar: str | None
    features: templates.TemplateFeatures


def _inspect(name: str, entry: ModelEntry, req: dict[str, Any],
             endpoint: str) -> tuple[str | None, templates.TemplateFeatures]:
    """The blocking checks in one trip off the event loop (each is cached, so it is short;
    a trip per check cost a request milliseconds of time to first token)."""
    _check_model(name, entry, req, endpoint)
    return grammar.grammar_for(req["format"]), _features(entry, req.get("template"))


async def validate(request: web.Request, req: dict[str, Any], kind: CompletionKind) -> Checked:
    """Everything that can be refused before a model loads is refused here."""
    name = require_model(req)
    entry = scheduler_of(request).entry(name)
    _check_request(name, req)
    grammar, features = await asyncio.to_thread(_inspect, name, entry, req, kind.shape.endpoint)
    return Checked(name, grammar, features)


@asynccontextmanager
async def completion_run(request: web.Request, req: dict[str, Any],
                         kind: CompletionKind) -> AsyncIterator[NativeRun]:
    """THE body of every text route (/api and /v1): check, load, tokenize, generate.

    `req` is a request loaded by `kind.schema`; the model stays held while the run is used.
    """
    started = time.perf_counter()
    checked = await validate(request, req, kind)
    name, features = checked.name, checked.features
    req["think"] = templates.check_request(name, features, req.get("tools"), req["think"],
                                               constrained=checked.grammar is not None)
    scheduler = scheduler_of(request)
    opts = run_options(merge(scheduler.entry(name).options, req["options"]))
    async with scheduler.use(name, opts.num_ctx, req["keep_alive"]) as lease:
        tokens = await completion.prepare(kind.tokenize, lease.runner, req, opts)
        parser = templates.reply_parser(features, req.get("tools"), req["think"],
                                            completion.prompt_tail(lease.runner, tokens))
        shape = kind.shape(name)
        events = completion.generate(lease.runner, tokens, opts, checked.grammar)
        yield NativeRun(shape, events, req["stream"], started, lease.load_duration,
                        shape.returns_context(req), parser)


async def embed_texts(request: web.Request, req: dict[str, Any], texts: list[str],
                 truncate: bool = True, dimensions: int | None = None,
                 ) -> tuple[embedding.Embeddings, float]:
    """Embed `texts` with the requested model; also the seconds spent loading it. A larger
    `num_ctx` does not reload the model: inputs are bounded by its embedding context."""
    name = require_model(req)
    scheduler = scheduler_of(request)
    opts = run_options(merge(scheduler.entry(name).options, req["options"]))
    async with scheduler.use(name, keep_alive=req["keep_alive"]) as lease:
        embedding.check_dimensions(dimensions, lease.runner.model.n_embd)
        result = await embedding.embed(lease.runner, texts, opts, truncate)
    return result, lease.load_duration


async def embed_request(request: web.Request, req: dict[str, Any]
                        ) -> tuple[list[list[float]], int, float]:
    """A loaded /api/embed request -> unit-length vectors (cut to `dimensions`), the prompt
    tokens evaluated and the seconds spent loading; /v1/embeddings uses it too."""
    result, load_s = await embed_texts(request, req, req["input"] or [], req["truncate"],
                                  req["dimensions"])
    vectors = embedding.shorten(embedding.normalize(result.vectors), req["dimensions"])
    return vectors.tolist(), result.prompt_eval_count, load_s


