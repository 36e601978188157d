"""A text request becomes the token ids the model sees: through its chat template (a chat, a
templated prompt), as it is (raw), or in fill-in-the-middle order (a suffix); always within
the context. Blocking (template rendering, tokenizing): run off the event loop.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ollamalite.errors import BadRequest
from ollamalite.generation import prompt as prompts
from ollamalite.generation import templates
from ollamalite.generation.request import TextRequest
from ollamalite.options import RunOptions
from ollamalite.registry import chat_template
from ollamalite.registry.models_file import ModelEntry
from ollamalite.runtime.scheduler import Runner

log = logging.getLogger(__name__)

PROMPT_LOG_CHARS = 2000  # OLLAMA_DEBUG logs a prompt's first and last 1000 characters


def _limit(runner: Runner, opts: RunOptions) -> int:
    return min(opts.num_ctx or runner.num_ctx, runner.num_ctx)


def _tokenize(runner: Runner, text: str, after: Sequence[int] = ()) -> list[int]:
    """BOS is added only when the model wants it and the template did not write it already."""
    model = runner.model
    bos = model.bos_text
    add_special = not after and not (bos and text.startswith(bos))
    return list(after) + model.tokenize(text, add_special=add_special)


def chat_tokens(runner: Runner, entry: ModelEntry, messages: list[dict[str, Any]],
                opts: RunOptions, truncate: bool = True,
                variables: dict[str, Any] | None = None) -> list[int]:
    """Render a conversation (with extra template `variables`); unless `truncate` is off, drop
    its oldest turns to fit it (blocking: CPU)."""
    template = chat_template.pick(entry, runner.info)
    model = runner.model
    messages = prompts.with_defaults(messages, entry.system, entry.messages)

    def render(msgs: list[dict[str, Any]]) -> list[int]:
        return _tokenize(runner, prompts.render_chat(template, msgs, model.bos_text,
                                                     model.eos_text, variables))

    return prompts.fit_chat(messages, render, _limit(runner, opts), truncate)


def generate_tokens(runner: Runner, entry: ModelEntry, text: str, opts: RunOptions, *,
                    system: str | None,
                    template: str | None, raw: bool, context: Sequence[int] | None,
                    variables: dict[str, Any] | None = None) -> list[int]:
    """`/api/generate`'s prompt: templated as one user turn unless `raw` (blocking: CPU)."""
    if not raw:
        preset = entry.messages if context is None else ()  # as Ollama
        messages = prompts.with_defaults([{"role": "user", "content": text}],
                                         system or entry.system, preset)
        text = prompts.render_chat(chat_template.pick(entry, runner.info, template),
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


def infill_tokens(runner: Runner, entry: ModelEntry, prefix: str, suffix: str,
                  opts: RunOptions, context: Sequence[int] | None) -> list[int]:
    """Fill-in-the-middle, built as llama.cpp's server builds an infill prompt (PSM order):
    [BOS] <PRE> prefix <SUF> suffix <MID>, the user's text tokenized without parsing special
    tokens; no chat template (blocking: CPU)."""
    model = runner.model
    fim = model.fim_tokens
    if fim is None:
        raise BadRequest(f'"{entry.name}" does not support insert')
    pre, suf, mid = fim
    head = list(context or ()) or (model.tokenize("", add_special=True) if model.adds_bos else [])
    tokens = [*head, pre, *model.tokenize(prefix, add_special=False, parse_special=False),
              suf, *model.tokenize(suffix, add_special=False, parse_special=False), mid]
    if len(tokens) >= _limit(runner, opts):
        raise BadRequest(prompts.TOO_LONG)
    return tokens


def check_vocab(runner: Runner, tokens: Sequence[int], field: str) -> None:
    """Refuse token ids a client sent that are not in the loaded model's vocabulary: they would
    fail the engine's batch or abort the process inside llama.cpp."""
    bad = runner.model.outside_vocab(tokens)
    if bad is not None:
        raise BadRequest(f"{field} contains token id {bad} outside the model's vocabulary "
                         f"(0..{runner.model.n_vocab - 1})")


def prompt_tokens(runner: Runner, entry: ModelEntry, req: TextRequest,
                  think: bool | str | None, opts: RunOptions) -> list[int]:
    """The tokens of any text request, with the settings of `entry` (the one the request was
    checked against) and `think` as the checks settled it."""
    check_vocab(runner, req.context or (), "context")
    if req.chat:
        messages = prompts.template_messages(req.messages or [])
        tokens = chat_tokens(runner, entry, messages, opts, req.truncate,
                             templates.variables(req.tools, think))
    elif req.suffix:
        tokens = infill_tokens(runner, entry, req.prompt, req.suffix, opts, req.context)
    else:
        tokens = generate_tokens(runner, entry, req.prompt, opts, system=req.system,
                                 template=req.template, raw=req.raw, context=req.context,
                                 variables=templates.variables(None, think))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: prompt of %d tokens: %r", entry.name, len(tokens),
                  _shortened(prompt_tail(runner, tokens, len(tokens))))
    return tokens


def _shortened(text: str) -> str:
    if len(text) <= PROMPT_LOG_CHARS:
        return text
    half = PROMPT_LOG_CHARS // 2
    return f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"
