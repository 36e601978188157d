"""The one text generation run, whatever protocol asked for it: check, load, tokenize, generate.

A protocol adapter (server/ollama.py, openai.py, anthropic.py) turns its wire request into a
`TextRequest`, opens `generate(scheduler, req)` and turns the `Delta`s of the `Generation` it
gets into its own chunks. The request's registry entry is looked up once, so a models.yaml
reload in between cannot validate one entry and load another. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ollamalite.errors import ApiError, BadRequest
from ollamalite.generation import forced, stats, templates
from ollamalite.generation.mailbox import mailbox
from ollamalite.generation.reply import Delta, ReplyParser
from ollamalite.generation.request import TextRequest
from ollamalite.generation.tokens import prompt_tail, prompt_tokens
from ollamalite.options import RunOptions, merge, run_options
from ollamalite.registry import chat_template
from ollamalite.registry.gguf_header import read_header
from ollamalite.registry.models_file import ModelEntry
from ollamalite.runtime.engine.jobs import Event, Failed, Finished, Job, Logprob, TextChunk
from ollamalite.runtime.scheduler import Runner, Scheduler


@dataclass(frozen=True)
class Checked:
    """What the checks before loading settled: the entry, the grammar `format` asks for, what
    the chat template can do, and the `think` value to run with."""

    entry: ModelEntry
    grammar: str | None
    features: templates.TemplateFeatures
    think: bool | str | None


class Generation:
    """A generation under way: `deltas()` yields the reply as the parser splits it (content,
    thinking, tool calls); then `finished` holds the engine's counts and tokens."""

    def __init__(self, name: str, events: AsyncIterator[Event], started: float,
                 load_duration: float, parser: ReplyParser | None = None,
                 prompt_tokens: int = 0) -> None:
        self.name = name
        self.prompt_tokens = prompt_tokens  # the prompt's length, known before the first event
        self.events = events
        self.started = started  # perf_counter() when the request arrived
        self.load_duration = load_duration  # seconds this request waited for a load
        self.parser = parser or ReplyParser()  # without one, the text is all content
        self.finished: Finished | None = None
        self.stats = stats.current()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Raises ApiError when the engine fails; a tool call is held back until complete.
        Logprobs ride on the first delta after their tokens (text the parser holds back
        keeps them waiting; the last ones come with the end even when it adds no text)."""
        logprobs: list[Logprob] = []
        async for event in self.events:
            if isinstance(event, Failed):
                raise ApiError(event.message)
            self.stats.record(event, time.perf_counter())
            if isinstance(event, TextChunk):
                logprobs.extend(event.logprobs)
                deltas = self.parser.feed(event.text)
            else:
                deltas = self.parser.finish() or ([Delta()] if logprobs else [])
            if deltas and logprobs:
                deltas[0].logprobs, logprobs = logprobs, []
            for delta in deltas:
                yield delta
            if isinstance(event, Finished):
                self.finished = event

    async def whole(self) -> Delta:
        """The reply joined into one delta: a non-streamed answer."""
        joined = Delta()
        async for delta in self.deltas():
            joined.add(delta)
        return joined

    @property
    def result(self) -> Finished:
        """The engine's last event, once `deltas()` ended without an error."""
        if self.finished is None:
            raise RuntimeError("the generation has not finished")
        return self.finished

    @property
    def total_duration(self) -> float:
        return time.perf_counter() - self.started


async def check(scheduler: Scheduler, req: TextRequest) -> Checked:
    """Everything that can be refused before a model loads is refused here."""
    if not req.model:
        raise BadRequest("model is required")
    entry = scheduler.entry(req.model)
    if req.has_images:
        raise BadRequest(f'"{req.model}" does not support images')
    grammar_text, features = await asyncio.to_thread(_inspect, entry, req)
    constraint = "tool_choice" if req.force_tool else "format" if grammar_text else ""
    think = templates.check_request(req.model, features, req.tools, req.think, constraint)
    return Checked(entry, grammar_text, features, think)


def _inspect(entry: ModelEntry, req: TextRequest
             ) -> tuple[str | None, templates.TemplateFeatures]:
    """The blocking checks in one trip off the event loop (each is cached, so it is short;
    a trip per check cost a request milliseconds of time to first token): what the GGUF
    offers (an embedding model cannot generate, a suffix needs fill-in-the-middle tokens),
    the grammar, the template's features."""
    info = read_header(entry.path)
    capabilities = info.capabilities(entry.embedding)
    if "completion" not in capabilities:
        raise BadRequest(f'"{req.model}" does not support {req.endpoint}')
    if req.suffix and "insert" not in capabilities:
        raise BadRequest(f'"{req.model}" does not support insert')
    features = templates.features(chat_template.pick(entry, info, req.template))
    return forced.reply_grammar(req, features), features


@dataclass(frozen=True)
class _Prepared:
    checked: Checked
    opts: RunOptions
    runner: Runner
    load_duration: float
    tokens: list[int]


@asynccontextmanager
async def _prepare(scheduler: Scheduler, req: TextRequest) -> AsyncIterator[_Prepared]:
    """Check, load (the model stays held while the block runs) and tokenize off the event
    loop: what a generation and a token count share."""
    checked = await check(scheduler, req)
    stats.current().model = checked.entry.name
    opts = run_options(merge(checked.entry.options, req.options))
    async with scheduler.use(checked.entry.name, opts.num_ctx, req.keep_alive) as lease:
        tokens = await asyncio.to_thread(prompt_tokens, lease.runner, checked.entry, req,
                                         checked.think, opts)
        yield _Prepared(checked, opts, lease.runner, lease.load_duration, tokens)


@asynccontextmanager
async def generate(scheduler: Scheduler, req: TextRequest) -> AsyncIterator[Generation]:
    """Prepare the prompt and start the engine; leaving the block early cancels the job."""
    started = time.perf_counter()
    async with _prepare(scheduler, req) as ready:
        checked = ready.checked
        parser = templates.reply_parser(checked.features, req.tools, checked.think,
                                        prompt_tail(ready.runner, ready.tokens))
        events = _events(ready.runner, req, ready.tokens, ready.opts, checked.grammar)
        try:
            yield Generation(checked.entry.name, events, started, ready.load_duration, parser,
                             prompt_tokens=len(ready.tokens))
        finally:
            # Close the job now, not whenever the garbage collector finalizes the generator:
            # a client that went away mid-stream must stop its generation at once.
            await events.aclose()


async def count_tokens(scheduler: Scheduler, req: TextRequest) -> int:
    """How many tokens `generate` would submit for `req` (the model loads: it holds the
    tokenizer), without generating."""
    async with _prepare(scheduler, req) as ready:
        return len(ready.tokens)


async def load_or_unload(scheduler: Scheduler, req: TextRequest) -> str:
    """Ollama's request with nothing to generate: keep_alive 0 unloads the model, anything
    else loads it. Returns the `done_reason` Ollama reports (`unload`, `load`)."""
    name = (await check(scheduler, req)).entry.name
    stats.current().model = name
    if req.keep_alive == 0:
        await scheduler.unload(name)
        return "unload"
    async with scheduler.use(name, keep_alive=req.keep_alive):
        return "load"


def _job(req: TextRequest, tokens: list[int], opts: RunOptions, grammar_text: str | None,
         emit: Callable[[Event], None]) -> Job:
    """The engine's job for `tokens`; `grammar_text` (GBNF) constrains the output."""
    return Job(prompt=tokens, sampling=opts.sampling, emit=emit, num_predict=opts.num_predict,
               stop=opts.stop, num_ctx=opts.num_ctx, num_batch=opts.num_batch,
               grammar=grammar_text, logprobs=req.top_logprobs if req.logprobs else None,
               shift=req.shift, num_keep=opts.num_keep)


async def _events(runner: Runner, req: TextRequest, tokens: list[int], opts: RunOptions,
                  grammar_text: str | None) -> AsyncIterator[Event]:
    """Submit the job to the model's engine and yield its events until the last; leaving
    early cancels the job."""
    queue: asyncio.Queue[Event] = asyncio.Queue()
    box = mailbox()
    job = _job(req, tokens, opts, grammar_text, lambda event: box.post(queue.put_nowait, event))
    runner.engine.submit(job)
    try:
        while True:
            event = await queue.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return
    finally:
        job.cancel()
