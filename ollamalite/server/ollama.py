"""Ollama's native routes (/api/*): the native wire requests become the generation core's
requests (generation/run.py, generation/embedding.py), and its `Delta`s become Ollama's NDJSON
objects."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from aiohttp import web

from ollamalite.errors import ApiError, BadRequest
from ollamalite.generation import embedding, run, templates
from ollamalite.generation.embedding import EmbedRequest
from ollamalite.generation.reply import Delta
from ollamalite.generation.request import TextRequest
from ollamalite.generation.run import Generation
from ollamalite.pull import sources
from ollamalite.registry import chat_template
from ollamalite.registry.gguf_header import GGUFError, GGUFInfo, file_digest, read_header
from ollamalite.registry.models_file import ModelEntry
from ollamalite.server import show as show_fmt
from ollamalite.server.keys import PULLER
from ollamalite.server.logprobs import token_objects
from ollamalite.server.openapi import MODEL_ERRORS, RUN_ERRORS, STREAMED, TEXT, Reply, Route
from ollamalite.server.request import read_body, require_model, scheduler_of
from ollamalite.server.stream import NdjsonStream, created_at, json_response, local_time
from ollamalite.wire import load, native

log = logging.getLogger(__name__)

OLLAMA_API_VERSION = "0.12.0"


# -- simple routes ------------------------------------------------------------------------------

async def index(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(_: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_API_VERSION})


def _summary(entry: ModelEntry) -> dict[str, Any]:
    """Blocking (header and digest are cached after the first read)."""
    info, stat = read_header(entry.path), entry.path.stat()
    return {"name": entry.name, "model": entry.name, "modified_at": local_time(stat.st_mtime),
            "size": stat.st_size, "digest": entry.digest or file_digest(entry.path),
            "details": info.details(),
            "capabilities": show_fmt.capabilities(entry, info, _template_capabilities(entry, info))}


def _template_capabilities(entry: ModelEntry, info: GGUFInfo) -> list[str]:
    """What the model's template adds (`tools`, `thinking`): compiled once, then cached."""
    return templates.features(chat_template.pick(entry, info)).capabilities()


async def model_summary(entry: ModelEntry) -> dict[str, Any]:
    """One `/api/tags` row, read off the event loop."""
    return await asyncio.to_thread(_summary, entry)


async def available_models(request: web.Request) -> list[dict[str, Any]]:
    """`/api/tags` rows, newest first; models whose file went missing or broke since start-up
    are left out (and logged)."""
    entries = list(scheduler_of(request).registry.models.values())
    results = await asyncio.gather(*(model_summary(e) for e in entries), return_exceptions=True)
    rows = []
    for entry, result in zip(entries, results, strict=True):
        if isinstance(result, (OSError, GGUFError)):
            log.warning("%s: cannot read %s: %s", entry.name, entry.path, result)
        elif isinstance(result, BaseException):
            raise result
        else:
            rows.append(result)
    rows.sort(key=lambda r: r["modified_at"], reverse=True)
    return rows


async def tags(request: web.Request) -> web.Response:
    return json_response({"models": await available_models(request)})


async def ps(request: web.Request) -> web.Response:
    rows = []
    for runner in scheduler_of(request).loaded:
        row = await model_summary(runner.entry)
        del row["modified_at"], row["capabilities"]  # Ollama's /api/ps rows have neither
        expires = show_fmt.expiry(runner.keep_alive, runner.expires_at, runner.refs > 0)
        row.update(size=runner.size, expires_at=expires,
                   size_vram=0, context_length=runner.num_ctx)
        rows.append(row)
    return json_response({"models": rows})


async def show(request: web.Request) -> web.Response:
    req = load(native.SHOW, await read_body(request))
    entry = scheduler_of(request).entry(require_model(req))
    return json_response(await asyncio.to_thread(_show_body, entry, req))


def _show_body(entry: ModelEntry, req: dict[str, Any]) -> dict[str, Any]:
    """Blocking: the GGUF header (cached unless verbose, which reads the vocabulary too), the
    file's time, the template's features."""
    info = read_header(entry.path, arrays=req["verbose"])
    return show_fmt.show_body(entry, info, entry.path.stat().st_mtime, req["verbose"],
                              req.get("system"), _template_capabilities(entry, info))


async def pull(request: web.Request) -> web.StreamResponse:
    """A configured model is already "pulled"; hf.co repos and GGUF URLs are downloaded."""
    req = load(native.PULL, await read_body(request))
    model = require_model(req)
    progress: AsyncIterator[dict[str, Any]] = _done()
    if scheduler_of(request).registry.get(sources.model_name(model)) is None:
        sources.check(model, req["insecure"])
        progress = request.app[PULLER].pull(model, req["insecure"])
    if not req["stream"]:
        async for line in progress:
            last = line
        return json_response(last)
    out = NdjsonStream(request)
    try:
        async for line in progress:
            await out.send(line)
    except ApiError as exc:
        await out.send({"error": exc.message})
    return await out.close()


async def _done() -> AsyncIterator[dict[str, Any]]:
    yield {"status": "success"}


async def push(request: web.Request) -> web.Response:
    req = load(native.PULL, await read_body(request))
    scheduler_of(request).entry(require_model(req))
    raise BadRequest("push is not supported: ollamalite serves local GGUF files")


# -- generation ---------------------------------------------------------------------------------

def text_request(req: dict[str, Any], chat: bool) -> TextRequest:
    """A loaded /api/chat or /api/generate body -> the one internal request."""
    common: dict[str, Any] = dict(
        model=require_model(req), format=req["format"], think=req["think"],
        options=req["options"], keep_alive=req["keep_alive"], truncate=req["truncate"],
        shift=req["shift"], logprobs=bool(req["logprobs"] or req["top_logprobs"]),
        top_logprobs=req["top_logprobs"])
    if chat:
        return TextRequest(messages=req["messages"], tools=req["tools"], **common)
    return TextRequest(prompt=req["prompt"], suffix=req["suffix"], system=req["system"],
                       template=req["template"], raw=req["raw"], context=req["context"],
                       images=req["images"], **common)


class GenerateShape:
    """How /api/generate spells a text chunk and its final object."""

    def __init__(self, model: str) -> None:
        self.model = model

    def chunk(self, delta: Delta) -> dict[str, Any]:
        body = {"model": self.model, "created_at": created_at(), "response": delta.content}
        if delta.thinking:
            body["thinking"] = delta.thinking
        return {**body, "done": False}

    def done(self, delta: Delta, reason: str) -> dict[str, Any]:
        return {**self.chunk(delta), "done": True, "done_reason": reason}


class ChatShape(GenerateShape):
    """The same for /api/chat: text goes into an assistant `message`."""

    def chunk(self, delta: Delta) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": delta.content}
        if delta.thinking:
            message["thinking"] = delta.thinking
        if delta.tool_calls:
            message["tool_calls"] = delta.tool_calls
        return {"model": self.model, "created_at": created_at(), "message": message,
                "done": False}


def with_logprobs(body: dict[str, Any], delta: Delta) -> dict[str, Any]:
    """`logprobs` goes last, as Ollama orders it, and only when there are some."""
    if delta.logprobs:
        body["logprobs"] = token_objects(delta.logprobs)
    return body


def final(shape: GenerateShape, whole: Delta, gen: Generation, context: bool) -> dict[str, Any]:
    """The last object: the reason, the token ids (templated /api/generate, as Ollama), the
    timings in nanoseconds, and a non-streamed answer's logprobs."""
    fin = gen.result
    body = shape.done(whole, fin.done_reason)
    if context:
        body["context"] = list(fin.tokens)
    body.update(total_duration=int(gen.total_duration * 1e9),
                load_duration=int(gen.load_duration * 1e9),
                prompt_eval_count=fin.prompt_eval_count,
                prompt_eval_duration=fin.prompt_eval_duration, eval_count=fin.eval_count,
                eval_duration=fin.eval_duration)
    return with_logprobs(body, whole)


async def respond(request: web.Request, gen: Generation, shape: GenerateShape, stream: bool,
                  context: bool = False) -> web.StreamResponse:
    """One JSON object, or NDJSON: a chunk per delta, then the final object. An engine failure
    before any output is a real status; after it, a last `{"error"}` line."""
    if not stream:
        return json_response(final(shape, await gen.whole(), gen, context))
    out = NdjsonStream(request)
    try:
        async for delta in gen.deltas():
            await out.send(with_logprobs(shape.chunk(delta), delta))
        await out.send(final(shape, Delta(), gen, context))
    except ApiError as exc:
        if not out.started:
            raise
        await out.send({"error": exc.message})
    return await out.close()


async def _complete(request: web.Request, schema: native.Schema, chat: bool
                    ) -> web.StreamResponse:
    """The common body of /api/generate and /api/chat."""
    req = load(schema, await read_body(request))
    text = text_request(req, chat)
    shape = ChatShape(text.model) if chat else GenerateShape(text.model)
    scheduler = scheduler_of(request)
    if text.empty:
        reason = await run.load_or_unload(scheduler, text)
        return json_response(shape.done(Delta(), reason))
    async with run.generate(scheduler, text) as gen:
        return await respond(request, gen, shape, req["stream"], not chat and not text.raw)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _complete(request, native.GENERATE, chat=False)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _complete(request, native.CHAT, chat=True)


# -- embeddings ---------------------------------------------------------------------------------

def _embed_request(req: dict[str, Any], texts: list[str]) -> EmbedRequest:
    return EmbedRequest(require_model(req), texts, req["options"], req["keep_alive"],
                        req.get("truncate", True), req.get("dimensions"))


async def embed(request: web.Request) -> web.Response:
    """`/api/embed`: one unit-length vector per input; no input only loads the model."""
    started = time.perf_counter()
    req = load(native.EMBED, await read_body(request))
    vectors, prompt_eval_count, load_s = await embedding.embed_unit(
        scheduler_of(request), _embed_request(req, req["input"] or []))
    body: dict[str, Any] = {"model": req["model"], "embeddings": vectors}
    if prompt_eval_count:
        body.update(total_duration=int((time.perf_counter() - started) * 1e9),
                    load_duration=int(load_s * 1e9), prompt_eval_count=prompt_eval_count)
    return json_response(body)


async def embeddings(request: web.Request) -> web.Response:
    """The legacy `/api/embeddings`: the raw pooled vector of `prompt`, not normalised."""
    req = load(native.EMBEDDINGS, await read_body(request))
    texts = [req["prompt"]] if req["prompt"] else []
    result, _ = await embedding.embed_texts(scheduler_of(request), _embed_request(req, texts))
    return json_response({"embedding": result.vectors[0].tolist() if texts else []})


ROUTES = (
    Route("GET", "/", index, "Whether the server is up.",
          replies=(Reply(200, "`Ollama is running`.", (TEXT,)),)),
    Route("GET", "/api/version", version, "The Ollama API version this server follows."),
    Route("GET", "/api/tags", tags, "The models this server offers, newest first."),
    Route("GET", "/api/ps", ps, "The models in memory."),
    Route("POST", "/api/show", show, "A model's details, template, parameters and "
          "capabilities.", native.SHOW, errors=MODEL_ERRORS),
    Route("POST", "/api/generate", generate, "Completes a prompt.", native.GENERATE, STREAMED,
          RUN_ERRORS),
    Route("POST", "/api/chat", chat, "The next message of a conversation.", native.CHAT,
          STREAMED, RUN_ERRORS),
    Route("POST", "/api/embed", embed, "Unit-length embeddings of the inputs.", native.EMBED,
          errors=RUN_ERRORS),
    Route("POST", "/api/embeddings", embeddings, "The raw embedding of one prompt (legacy).",
          native.EMBEDDINGS, errors=RUN_ERRORS),
    Route("POST", "/api/pull", pull, "Downloads a model from hf.co or a GGUF URL (a configured "
          "model is already pulled).", native.PULL, STREAMED, (*MODEL_ERRORS, 502)),
    Route("POST", "/api/push", push, "Refused: there is no registry to push to.", native.PULL,
          (), MODEL_ERRORS),
)
