"""The one generation path shared by every text route: prompt -> tokens -> engine events.

Route modules only decide how a request becomes messages or a prompt and how events become
their wire format; tokenizing, context fitting and the thread hand-off live here once.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

from ollamalite.errors import BadRequest
from ollamalite.generation import prompt as prompts
from ollamalite.options import RunOptions
from ollamalite.registry import chat_template
from ollamalite.runtime.engine.jobs import Event, Failed, Finished, Job
from ollamalite.runtime.scheduler import Runner


def _limit(runner: Runner, opts: RunOptions) -> int:
    return min(opts.num_ctx or runner.num_ctx, runner.num_ctx)


def _tokenize(runner: Runner, text: str, after: Sequence[int] = ()) -> list[int]:
    """BOS is added only when the model wants it and the template did not write it already."""
    model = runner.model
    bos = model.bos_text
    add_special = not after and not (bos and text.startswith(bos))
    return list(after) + model.tokenize(text, add_special=add_special)


def chat_tokens(runner: Runner, messages: list[dict[str, Any]], opts: RunOptions,
                truncate: bool = True, variables: dict[str, Any] | None = None) -> list[int]:
    """Render a conversation (with extra template `variables`); unless `truncate` is off, drop
    its oldest turns to fit it (blocking: CPU)."""
    template = chat_template.pick(runner.entry, runner.info)
    model = runner.model
    entry = runner.entry
    messages = prompts.with_defaults(messages, entry.system, entry.messages)

    def render(msgs: list[dict[str, Any]]) -> list[int]:
        return _tokenize(runner, prompts.render_chat(template, msgs, model.bos_text,
                                                     model.eos_text, variables))

    return prompts.fit_chat(messages, render, _limit(runner, opts), truncate)


def generate_tokens(runner: Runner, text: str, opts: RunOptions, *, system: str | None,
                    template: str | None, raw: bool, context: Sequence[int] | None,
                    variables: dict[str, Any] | None = None) -> list[int]:
    """`/api/generate`'s prompt: templated as one user turn unless `raw` (blocking: CPU)."""
    if not raw:
        preset = runner.entry.messages if context is None else ()  # as Ollama
        messages = prompts.with_defaults([{"role": "user", "content": text}],
                                         system or runner.entry.system, preset)
        text = prompts.render_chat(chat_template.pick(runner.entry, runner.info, template),
                                   messages, runner.model.bos_text, runner.model.eos_text,
                                   variables)
    tokens = _tokenize(runner, text, context or ())
    if len(tokens) >= _limit(runner, opts):
        raise BadRequest(prompts.TOO_LONG)
    return tokens


def prompt_tail(runner: Runner, tokens: Sequence[int], n: int = 16) -> str:
    """The last tokens of a prompt as text, special tokens spelled out: what a reply continues
    (e.g. a template that already opened `<think>`)."""
    return "".join(runner.model.token_text(t) for t in tokens[-n:])


def infill_tokens(runner: Runner, prefix: str, suffix: str, opts: RunOptions,
                  context: Sequence[int] | None) -> list[int]:
    """Fill-in-the-middle, built as llama.cpp's server builds an infill prompt (PSM order):
    [BOS] <PRE> prefix <SUF> suffix <MID>, the user's text tokenized without parsing special
    tokens; no chat template (blocking: CPU)."""
    model = runner.model
    fim = model.fim_tokens
    if fim is None:
        raise BadRequest(f'"{runner.entry.name}" does not support insert')
    pre, suf, mid = fim
    head = list(context or ()) or (model.tokenize("", add_special=True) if model.adds_bos else [])
    tokens = [*head, pre, *model.tokenize(prefix, add_special=False, parse_special=False),
              suf, *model.tokenize(suffix, add_special=False, parse_special=False), mid]
    if len(tokens) >= _limit(runner, opts):
        raise BadRequest(prompts.TOO_LONG)
    return tokens


async def prepare(fn: Any, *args: Any, **kwargs: Any) -> list[int]:
    """Run a tokenizing function off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: fn(*args, **kwargs))


async def generate(runner: Runner, tokens: list[int], opts: RunOptions,
                   grammar: str | None = None) -> AsyncIterator[Event]:
    """Submit to the model's engine and yield its events; leaving early cancels the job.
    `grammar` (GBNF, from `structured.grammar_for`) constrains the output."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    job = Job(prompt=tokens, sampling=opts.sampling, num_predict=opts.num_predict, stop=opts.stop,
              num_ctx=opts.num_ctx, num_batch=opts.num_batch, grammar=grammar,
              emit=lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
    runner.engine.submit(job)
    try:
        while True:
            event = await queue.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return
    finally:
        job.cancel()
