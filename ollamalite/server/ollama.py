"""Ollama's native routes (/api/*): thin handlers over the scheduler and completion core."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from ollamalite import completion, embedding, schemas
from ollamalite.config import ModelEntry
from ollamalite.engine.jobs import Event, Failed, Finished, TextChunk
from ollamalite.errors import ApiError, BadRequest, NotFound
from ollamalite.gguf_meta import GGUFError, file_digest, read_header
from ollamalite.options import RunOptions, merge, run_options
from ollamalite.scheduler import Runner, Scheduler
from ollamalite.server import show as show_fmt
from ollamalite.server.keys import SCHEDULER
from ollamalite.server.stream import NdjsonStream, created_at, json_response, local_time

log = logging.getLogger(__name__)

OLLAMA_API_VERSION = "0.12.0"


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def require_model(req: dict[str, Any]) -> str:
    name = req.get("model") or req.get("name")
    if not name:
        raise BadRequest("model is required")
    return name


def _scheduler(request: web.Request) -> Scheduler:
    return request.app[SCHEDULER]


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- simple routes ------------------------------------------------------------------------------

async def index(_: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def version(_: web.Request) -> web.Response:
    return json_response({"version": OLLAMA_API_VERSION})


async def model_summary(entry: ModelEntry) -> dict[str, Any]:
    """One `/api/tags` row; header and digest are read in a thread and cached."""
    info = await _in_thread(read_header, entry.path)
    digest = await _in_thread(file_digest, entry.path)
    stat = await _in_thread(entry.path.stat)
    return {"name": entry.name, "model": entry.name, "modified_at": local_time(stat.st_mtime),
            "size": stat.st_size, "digest": digest, "details": info.details()}


async def tags(request: web.Request) -> web.Response:
    """Models whose file went missing or broke since start-up are left out (and logged)."""
    entries = list(_scheduler(request).registry.models.values())
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
    return json_response({"models": rows})


async def ps(request: web.Request) -> web.Response:
    rows = []
    for runner in _scheduler(request).loaded:
        row = await model_summary(runner.entry)
        del row["modified_at"]
        expires = show_fmt.expiry(runner.keep_alive, runner.expires_at, runner.refs > 0)
        row.update(size=runner.model.size, expires_at=expires,
                   size_vram=0, context_length=runner.num_ctx)
        rows.append(row)
    return json_response({"models": rows})


async def show(request: web.Request) -> web.Response:
    req = schemas.load(schemas.SHOW, await read_body(request))
    entry = _scheduler(request).entry(require_model(req))
    info = await _in_thread(read_header, entry.path)
    stat = await _in_thread(entry.path.stat)
    return json_response(show_fmt.show_body(entry, info, stat.st_mtime, req["verbose"],
                                            req.get("system")))


async def pull(request: web.Request) -> web.StreamResponse:
    """Models are local files: a configured one is already "pulled"; others are not found."""
    req = schemas.load(schemas.PULL, await read_body(request))
    name = require_model(req)
    if _scheduler(request).registry.get(name) is None:
        raise NotFound("pull model manifest: file does not exist")
    if not req["stream"]:
        return json_response({"status": "success"})
    out = NdjsonStream(request)
    await out.send({"status": "success"})
    return await out.close()


async def push(request: web.Request) -> web.Response:
    req = schemas.load(schemas.PULL, await read_body(request))
    _scheduler(request).entry(require_model(req))
    raise BadRequest("push is not supported: ollamalite serves local GGUF files")


# -- generation ---------------------------------------------------------------------------------

class GenerateShape:
    """How /api/generate spells a text chunk and its final object."""

    endpoint = "generate"

    def __init__(self, model: str) -> None:
        self.model = model

    def chunk(self, text: str) -> dict[str, Any]:
        return {"model": self.model, "created_at": created_at(), "response": text, "done": False}

    def final(self, text: str, reason: str) -> dict[str, Any]:
        return {**self.chunk(text), "done": True, "done_reason": reason}

    def returns_context(self, req: dict[str, Any]) -> bool:
        """Token ids come back for templated generate calls, as in Ollama (not for raw)."""
        return not req["raw"]


class ChatShape(GenerateShape):
    """The same for /api/chat: text goes into an assistant `message`."""

    endpoint = "chat"

    def returns_context(self, req: dict[str, Any]) -> bool:
        return False

    def chunk(self, text: str) -> dict[str, Any]:
        return {"model": self.model, "created_at": created_at(),
                "message": {"role": "assistant", "content": text}, "done": False}


def _metrics(fin: Finished, started: float, load_s: float) -> dict[str, int]:
    return {
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": int(load_s * 1e9),
        "prompt_eval_count": fin.prompt_eval_count,
        "prompt_eval_duration": fin.prompt_eval_duration,
        "eval_count": fin.eval_count,
        "eval_duration": fin.eval_duration,
    }


def _final(shape: GenerateShape, text: str, fin: Finished, started: float, load_s: float,
           context: bool) -> dict[str, Any]:
    body = shape.final(text, fin.done_reason)
    if context:
        body["context"] = list(fin.tokens)
    body.update(_metrics(fin, started, load_s))
    return body


async def _respond(request: web.Request, shape: GenerateShape, events: AsyncIterator[Event],
                   stream: bool, started: float, load_s: float,
                   context: bool = False) -> web.StreamResponse:
    if not stream:
        parts: list[str] = []
        async for event in events:
            if isinstance(event, TextChunk):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise ApiError(event.message)
            else:
                return json_response(_final(shape, "".join(parts), event, started, load_s,
                                            context))
    out = NdjsonStream(request)
    async for event in events:
        if isinstance(event, TextChunk):
            await out.send(shape.chunk(event.text))
        elif isinstance(event, Failed):
            if not out.started:
                raise ApiError(event.message)
            await out.send({"error": event.message})
        else:
            await out.send(_final(shape, "", event, started, load_s, context))
    return await out.close()


def _check_capabilities(name: str, req: dict[str, Any]) -> None:
    """What this model (or this server, for now) cannot do is a 400, never silently ignored."""
    images = req.get("images") or [i for m in req.get("messages", []) for i in (m.get("images")
                                                                                 or [])]
    unsupported = [("images", bool(images)), ("insert", bool(req.get("suffix"))),
                   ("thinking", bool(req.get("think"))), ("tools", bool(req.get("tools")))]
    for capability, asked in unsupported:
        if asked:
            raise BadRequest(f'"{name}" does not support {capability}')
    if req.get("format") is not None:
        raise BadRequest("format (structured outputs) is not supported yet")
    if req.get("logprobs") or req.get("top_logprobs"):
        raise BadRequest("logprobs are not supported yet")


async def _require_completion(entry: ModelEntry, name: str, endpoint: str) -> None:
    """An embedding model cannot generate: Ollama's 400, before anything is loaded."""
    info = await _in_thread(read_header, entry.path)
    if "completion" not in info.capabilities(entry.embedding):
        raise BadRequest(f'"{name}" does not support {endpoint}')


async def _load_or_unload(request: web.Request, shape: GenerateShape, name: str,
                          req: dict[str, Any]) -> web.Response:
    """An empty prompt loads the model, or unloads it with keep_alive 0 (one JSON object)."""
    scheduler = _scheduler(request)
    if req["keep_alive"] == 0:
        await scheduler.unload(name)
        return json_response(shape.final("", "unload"))
    async with scheduler.use(name, keep_alive=req["keep_alive"]):
        return json_response(shape.final("", "load"))


def _generate_prompt(runner: Runner, req: dict[str, Any], opts: RunOptions) -> list[int]:
    return completion.generate_tokens(runner, req["prompt"], opts, system=req["system"],
                                      template=req["template"], raw=req["raw"],
                                      context=req["context"])


def _chat_prompt(runner: Runner, req: dict[str, Any], opts: RunOptions) -> list[int]:
    messages = [{"role": m["role"], "content": m["content"] or ""} for m in req["messages"]]
    return completion.chat_tokens(runner, messages, opts, req["truncate"])


async def _complete(request: web.Request, schema: schemas.Schema, shape_type: type[GenerateShape],
                    input_key: str, tokenize: Callable[[Runner, dict, RunOptions], list[int]],
                    ) -> web.StreamResponse:
    """The common body of /api/generate and /api/chat: validate, load, tokenize, stream."""
    started = time.perf_counter()
    req = schemas.load(schema, await read_body(request))
    name = require_model(req)
    scheduler = _scheduler(request)
    entry = scheduler.entry(name)
    await _require_completion(entry, name, shape_type.endpoint)
    _check_capabilities(name, req)
    shape = shape_type(name)
    if not req[input_key]:
        return await _load_or_unload(request, shape, name, req)
    opts = run_options(merge(entry.options, req["options"]))
    async with scheduler.use(name, opts.num_ctx, req["keep_alive"]) as lease:
        tokens = await completion.prepare(tokenize, lease.runner, req, opts)
        events = completion.generate(lease.runner, tokens, opts)
        return await _respond(request, shape, events, req["stream"], started,
                              lease.load_duration, context=shape.returns_context(req))


async def generate(request: web.Request) -> web.StreamResponse:
    return await _complete(request, schemas.GENERATE, GenerateShape, "prompt", _generate_prompt)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _complete(request, schemas.CHAT, ChatShape, "messages", _chat_prompt)


# -- embeddings ---------------------------------------------------------------------------------

async def _embed(request: web.Request, req: dict[str, Any], texts: list[str],
                 truncate: bool = True, dimensions: int | None = None,
                 ) -> tuple[embedding.Embeddings, float]:
    """Embed `texts` with the requested model; also the seconds spent loading it. A larger
    `num_ctx` does not reload the model: inputs are bounded by its embedding context."""
    name = require_model(req)
    scheduler = _scheduler(request)
    opts = run_options(merge(scheduler.entry(name).options, req["options"]))
    async with scheduler.use(name, keep_alive=req["keep_alive"]) as lease:
        embedding.check_dimensions(dimensions, lease.runner.model.n_embd)
        result = await embedding.embed(lease.runner, texts, opts, truncate)
    return result, lease.load_duration


async def embed(request: web.Request) -> web.Response:
    """`/api/embed`: one unit-length vector per input; no input only loads the model."""
    started = time.perf_counter()
    req = schemas.load(schemas.EMBED, await read_body(request))
    result, load_s = await _embed(request, req, req["input"] or [], req["truncate"],
                                  req["dimensions"])
    vectors = embedding.shorten(embedding.normalize(result.vectors), req["dimensions"])
    body: dict[str, Any] = {"model": req["model"], "embeddings": vectors.tolist()}
    if result.prompt_eval_count:
        body.update(total_duration=int((time.perf_counter() - started) * 1e9),
                    load_duration=int(load_s * 1e9), prompt_eval_count=result.prompt_eval_count)
    return json_response(body)


async def embeddings(request: web.Request) -> web.Response:
    """The legacy `/api/embeddings`: the raw pooled vector of `prompt`, not normalised."""
    req = schemas.load(schemas.EMBEDDINGS, await read_body(request))
    texts = [req["prompt"]] if req["prompt"] else []
    result, _ = await _embed(request, req, texts)
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
