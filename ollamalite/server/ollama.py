"""Ollama's native routes (/api/*): thin handlers over the scheduler and the generation core
(server/generation.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from aiohttp import web

from ollamalite.errors import ApiError, BadRequest
from ollamalite.generation import templates
from ollamalite.generation.reply import Delta
from ollamalite.pull import sources
from ollamalite.registry import chat_template
from ollamalite.registry.gguf_header import GGUFError, file_digest, read_header
from ollamalite.registry.models_file import ModelEntry
from ollamalite.server import generation
from ollamalite.server import show as show_fmt
from ollamalite.server.generation import CHAT, GENERATE, CompletionKind, GenerateShape, NativeRun
from ollamalite.server.keys import PULLER
from ollamalite.server.request import read_body, require_model, scheduler_of
from ollamalite.server.stream import NdjsonStream, json_response, local_time
from ollamalite.wire import native

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
            "details": info.details()}


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
        del row["modified_at"]
        expires = show_fmt.expiry(runner.keep_alive, runner.expires_at, runner.refs > 0)
        row.update(size=runner.size, expires_at=expires,
                   size_vram=0, context_length=runner.num_ctx)
        rows.append(row)
    return json_response({"models": rows})


async def show(request: web.Request) -> web.Response:
    req = native.load(native.SHOW, await read_body(request))
    entry = scheduler_of(request).entry(require_model(req))
    return json_response(await asyncio.to_thread(_show_body, entry, req))


def _show_body(entry: ModelEntry, req: dict[str, Any]) -> dict[str, Any]:
    """Blocking: the GGUF header (cached), the file's time, the template's features."""
    info = read_header(entry.path)
    features = templates.features(chat_template.pick(entry, info))
    return show_fmt.show_body(entry, info, entry.path.stat().st_mtime, req["verbose"],
                              req.get("system"), features.capabilities())


async def pull(request: web.Request) -> web.StreamResponse:
    """A configured model is already "pulled"; hf.co repos and GGUF URLs are downloaded."""
    req = native.load(native.PULL, await read_body(request))
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
    req = native.load(native.PULL, await read_body(request))
    scheduler_of(request).entry(require_model(req))
    raise BadRequest("push is not supported: ollamalite serves local GGUF files")


# -- generation ---------------------------------------------------------------------------------

async def _respond(request: web.Request, run: NativeRun) -> web.StreamResponse:
    objects = run.objects()
    if not run.stream:
        async for obj in objects:
            return json_response(obj)
    out = NdjsonStream(request)
    try:
        async for obj in objects:
            await out.send(obj)
    except ApiError as exc:
        if not out.started:
            raise
        await out.send({"error": exc.message})
    return await out.close()


async def _load_or_unload(request: web.Request, shape: GenerateShape, name: str,
                          req: dict[str, Any]) -> web.Response:
    """An empty prompt loads the model, or unloads it with keep_alive 0 (one JSON object)."""
    scheduler = scheduler_of(request)
    if req["keep_alive"] == 0:
        await scheduler.unload(name)
        return json_response(shape.final(Delta(), "unload"))
    async with scheduler.use(name, keep_alive=req["keep_alive"]):
        return json_response(shape.final(Delta(), "load"))


async def _complete(request: web.Request, kind: CompletionKind) -> web.StreamResponse:
    """The common body of /api/generate and /api/chat."""
    req = native.load(kind.schema, await read_body(request))
    if not req[kind.input_key]:
        name = (await generation.validate(request, req, kind)).name
        return await _load_or_unload(request, kind.shape(name), name, req)
    async with generation.completion_run(request, req, kind) as run:
        return await _respond(request, run)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _complete(request, GENERATE)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _complete(request, CHAT)


# -- embeddings ---------------------------------------------------------------------------------

async def embed(request: web.Request) -> web.Response:
    """`/api/embed`: one unit-length vector per input; no input only loads the model."""
    started = time.perf_counter()
    req = native.load(native.EMBED, await read_body(request))
    vectors, prompt_eval_count, load_s = await generation.embed_request(request, req)
    body: dict[str, Any] = {"model": req["model"], "embeddings": vectors}
    if prompt_eval_count:
        body.update(total_duration=int((time.perf_counter() - started) * 1e9),
                    load_duration=int(load_s * 1e9), prompt_eval_count=prompt_eval_count)
    return json_response(body)


async def embeddings(request: web.Request) -> web.Response:
    """The legacy `/api/embeddings`: the raw pooled vector of `prompt`, not normalised."""
    req = native.load(native.EMBEDDINGS, await read_body(request))
    texts = [req["prompt"]] if req["prompt"] else []
    result, _ = await generation.embed_texts(request, req, texts)
    return json_response({"embedding": result.vectors[0].tolist() if texts else []})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings)
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
