"""A model's chat template: which one is in use, and its one compiled form.

Templates are Jinja2 chat templates (the GGUF's `tokenizer.chat_template`, or an override from
models.yaml, /api/create or a request's `template`), compiled and rendered as llama-cpp-python's
Jinja2 formatter does (same options, extensions and variables), in a sandbox that meters each
render (template_sandbox.py). Ollama's Go templates are not interpreted: one given is refused
with a clear error, when a model is created and when a request brings one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ollamalite.caches import byte_lru
from ollamalite.errors import BadRequest
from ollamalite.registry import template_sandbox
from ollamalite.registry.gguf_header import GGUFInfo
from ollamalite.registry.models_file import ModelEntry

_GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.|if \.|range \.)")
EXTENSIONS = (Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols)
# Compiled templates kept: request templates can be large, so the bound is in bytes. A compiled
# template holds up to 16 times its source (measured: plain text 1x, `{% if %}` blocks 4.5x,
# `{{ x }}` after `{{ x }}` 16x).
CACHE_BYTES = 64 * 2**20
COMPILED_RATIO = 16


class ChatTemplate:
    """A compiled chat template; calling it renders a conversation within a budget."""

    def __init__(self, source: str, bos: str, eos: str) -> None:
        self.source, self.bos, self.eos = source, bos, eos
        env = template_sandbox.BudgetedEnvironment(
            filters={"tojson": Jinja2ChatFormatter.tojson}, loader=jinja2.BaseLoader(),
            trim_blocks=True, lstrip_blocks=True, extensions=list(EXTENSIONS))
        self.compiled = env.from_string(source)

    def __call__(self, messages: list[dict[str, Any]], **variables: Any) -> str:
        """The prompt, with the variables llama-cpp-python's formatter passes."""
        return template_sandbox.render(self.compiled, {
            "messages": messages, "eos_token": self.eos, "bos_token": self.bos,
            "raise_exception": _raise, "add_generation_prompt": True, "functions": None,
            "function_call": None, "tools": None, "tool_choice": None,
            "strftime_now": _strftime_now, **variables})


def _raise(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def pick(entry: ModelEntry, info: GGUFInfo, override: str | None = None) -> str | None:
    """The template a request renders with: its own `override`, else models.yaml's, else the
    GGUF's; None means no template at all."""
    return override or entry.template or info.chat_template


@byte_lru(CACHE_BYTES, lambda found: len(found.source) * COMPILED_RATIO)
def formatter(template: str, bos: str, eos: str) -> ChatTemplate:
    """The compiled template (cached: compiling costs more than rendering)."""
    template_sandbox.check_size(template)
    if _GO_TEMPLATE.search(template):
        raise BadRequest("Go templates are not supported: `template` must be a Jinja2 chat "
                         "template (like a GGUF's tokenizer.chat_template)")
    try:
        with template_sandbox.parsing():
            return ChatTemplate(template, bos, eos)
    except jinja2.TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def check(template: str) -> None:
    """Refuse a template that cannot be rendered (a Go template, a Jinja2 syntax error)."""
    formatter(template, "", "")
