"""Ollama's native routes (/api/*): thin handlers over the scheduler and completion core."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from ollamalite import completion, embedding, prompt, schemas, sources, structured, template_info
from ollamalite.config import ModelEntry
from ollamalite.engine.jobs import Event, Failed, Finished, TextChunk
from ollamalite.errors import ApiError, BadRequest
from ollamalite.gguf_meta import GGUFError, file_digest, read_header
from ollamalite.options import RunOptions, merge, run_options
from ollamalite.output import Delta, ReplyParser
from ollamalite.scheduler import Runner, Scheduler
from ollamalite.server import show as show_fmt
from ollamalite.server.keys import PULLER, SCHEDULER
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
    digest = entry.digest or await _in_thread(file_digest, entry.path)
    stat = await _in_thread(entry.path.stat)
    return {"name": entry.name, "model": entry.name, "modified_at": local_time(stat.st_mtime),
            "size": stat.st_size, "digest": digest, "details": info.details()}


async def available_models(request: web.Request) -> list[dict[str, Any]]:
    """`/api/tags` rows, newest first; models whose file went missing or broke since start-up
    are left out (and logged)."""
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
    return rows


async def tags(request: web.Request) -> web.Response:
    return json_response({"models": await available_models(request)})


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
    features = await _in_thread(template_info.features, show_fmt.active_template(entry, info))
    return json_response(show_fmt.show_body(entry, info, stat.st_mtime, req["verbose"],
                                            req.get("system"), features.capabilities()))


async def pull(request: web.Request) -> web.StreamResponse:
    """A configured model is already "pulled"; hf.co repos and GGUF URLs are downloaded."""
    req = schemas.load(schemas.PULL, await read_body(request))
    model = require_model(req)
    progress: AsyncIterator[dict[str, Any]] = _done()
    if _scheduler(request).registry.get(sources.model_name(model)) is None:
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
    req = schemas.load(schemas.PULL, await read_body(request))
    _scheduler(request).entry(require_model(req))
    raise BadRequest("push is not supported: ollamalite serves local GGUF files")


# -- generation ---------------------------------------------------------------------------------

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


def _check_capabilities(name: str, req: dict[str, Any]) -> None:
    """What this model (or this server, for now) cannot do is a 400, never silently ignored."""
    images = req.get("images") or [i for m in req.get("messages", []) for i in (m.get("images")
                                                                                 or [])]
    unsupported = [("images", bool(images))]
    for capability, asked in unsupported:
        if asked:
            raise BadRequest(f'"{name}" does not support {capability}')
    if req.get("logprobs") or req.get("top_logprobs"):
        raise BadRequest("logprobs are not supported yet")


async def _check_model(name: str, entry: ModelEntry, req: dict[str, Any],
                       endpoint: str) -> None:
    """What the GGUF itself must offer, read from its header before anything loads: an
    embedding model cannot generate (Ollama's 400), a `suffix` needs fill-in-the-middle
    tokens."""
    info = await _in_thread(read_header, entry.path)
    capabilities = info.capabilities(entry.embedding)
    if "completion" not in capabilities:
        raise BadRequest(f'"{name}" does not support {endpoint}')
    if req.get("suffix") and "insert" not in capabilities:
        raise BadRequest(f'"{name}" does not support insert')


async def _load_or_unload(request: web.Request, shape: GenerateShape, name: str,
                          req: dict[str, Any]) -> web.Response:
    """An empty prompt loads the model, or unloads it with keep_alive 0 (one JSON object)."""
    scheduler = _scheduler(request)
    if req["keep_alive"] == 0:
        await scheduler.unload(name)
        return json_response(shape.final(Delta(), "unload"))
    async with scheduler.use(name, keep_alive=req["keep_alive"]):
        return json_response(shape.final(Delta(), "load"))


def _generate_prompt(runner: Runner, req: dict[str, Any], opts: RunOptions) -> list[int]:
    if req["suffix"]:
        return completion.infill_tokens(runner, req["prompt"], req["suffix"], opts,
                                        req["context"])
    return completion.generate_tokens(runner, req["prompt"], opts, system=req["system"],
                                      template=req["template"], raw=req["raw"],
                                      context=req["context"],
                                      variables=template_info.variables(None, req["think"]))


def _chat_prompt(runner: Runner, req: dict[str, Any], opts: RunOptions) -> list[int]:
    messages = prompt.template_messages(req["messages"])
    return completion.chat_tokens(runner, messages, opts, req["truncate"],
                                  template_info.variables(req["tools"], req["think"]))


def _features(entry: ModelEntry, override: str | None) -> template_info.TemplateFeatures:
    """What the template this request will use can do (blocking: header read, template
    probe). A model file that cannot be read fails later, when it loads."""
    try:
        template = override or entry.template or read_header(entry.path).chat_template
    except (OSError, GGUFError):
        template = override or entry.template
    return template_info.features(template)


@dataclass(frozen=True)
class CompletionKind:
    """What tells /api/generate from /api/chat: request schema, input field, wire shape and
    how the request becomes prompt tokens. The /v1 routes reuse these."""

    schema: schemas.Schema
    input_key: str
    shape: type[GenerateShape]
    tokenize: Callable[[Runner, dict, RunOptions], list[int]]


GENERATE = CompletionKind(schemas.GENERATE, "prompt", GenerateShape, _generate_prompt)
CHAT = CompletionKind(schemas.CHAT, "messages", ChatShape, _chat_prompt)


async def _validate(request: web.Request, req: dict[str, Any],
                    kind: CompletionKind) -> tuple[str, str | None]:
    """The requested model name and the grammar its `format` asks for, once the model exists
    and can serve this request (all checked before anything loads)."""
    name = require_model(req)
    entry = _scheduler(request).entry(name)
    _check_capabilities(name, req)
    await _check_model(name, entry, req, kind.shape.endpoint)
    return name, await _in_thread(structured.grammar_for, req["format"])


@asynccontextmanager
async def completion_run(request: web.Request, req: dict[str, Any],
                         kind: CompletionKind) -> AsyncIterator[NativeRun]:
    """THE body of every text route (/api and /v1): check, load, tokenize, generate.

    `req` is a request loaded by `kind.schema`; the model stays held while the run is used.
    """
    started = time.perf_counter()
    name, grammar = await _validate(request, req, kind)
    scheduler = _scheduler(request)
    entry = scheduler.entry(name)
    features = await _in_thread(_features, entry, req.get("template"))
    req["think"] = template_info.check_request(name, features, req.get("tools"), req["think"],
                                               constrained=grammar is not None)
    opts = run_options(merge(entry.options, req["options"]))
    async with scheduler.use(name, opts.num_ctx, req["keep_alive"]) as lease:
        tokens = await completion.prepare(kind.tokenize, lease.runner, req, opts)
        parser = template_info.reply_parser(features, req.get("tools"), req["think"],
                                            completion.prompt_tail(lease.runner, tokens))
        shape = kind.shape(name)
        events = completion.generate(lease.runner, tokens, opts, grammar)
        yield NativeRun(shape, events, req["stream"], started, lease.load_duration,
                        shape.returns_context(req), parser)


async def _complete(request: web.Request, kind: CompletionKind) -> web.StreamResponse:
    """The common body of /api/generate and /api/chat."""
    req = schemas.load(kind.schema, await read_body(request))
    if not req[kind.input_key]:
        name, _ = await _validate(request, req, kind)
        return await _load_or_unload(request, kind.shape(name), name, req)
    async with completion_run(request, req, kind) as run:
        return await _respond(request, run)


async def generate(request: web.Request) -> web.StreamResponse:
    return await _complete(request, GENERATE)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _complete(request, CHAT)


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


async def embed_request(request: web.Request, req: dict[str, Any]
                        ) -> tuple[list[list[float]], int, float]:
    """A loaded /api/embed request -> unit-length vectors (cut to `dimensions`), the prompt
    tokens evaluated and the seconds spent loading; /v1/embeddings uses it too."""
    result, load_s = await _embed(request, req, req["input"] or [], req["truncate"],
                                  req["dimensions"])
    vectors = embedding.shorten(embedding.normalize(result.vectors), req["dimensions"])
    return vectors.tolist(), result.prompt_eval_count, load_s


async def embed(request: web.Request) -> web.Response:
    """`/api/embed`: one unit-length vector per input; no input only loads the model."""
    started = time.perf_counter()
    req = schemas.load(schemas.EMBED, await read_body(request))
    vectors, prompt_eval_count, load_s = await embed_request(request, req)
    body: dict[str, Any] = {"model": req["model"], "embeddings": vectors}
    if prompt_eval_count:
        body.update(total_duration=int((time.perf_counter() - started) * 1e9),
                    load_duration=int(load_s * 1e9), prompt_eval_count=prompt_eval_count)
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
