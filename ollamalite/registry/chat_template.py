"""A model's chat template: which one is in use, and its one compiled form.

Templates are Jinja2 chat templates (the GGUF's `tokenizer.chat_template`, or an override from
models.yaml, /api/create or a request's `template`), compiled with llama-cpp-python's Jinja2
formatter. Ollama's Go templates are not interpreted: one given is refused with a clear error,
when a model is created and when a request brings one.
"""

from __future__ import annotations

import re
from functools import lru_cache

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ollamalite.errors import BadRequest
from ollamalite.registry.gguf_header import GGUFInfo
from ollamalite.registry.models_file import ModelEntry

_GO_TEMPLATE = re.compile(r"\{\{-?\s*(\.|if \.|range \.)")


def pick(entry: ModelEntry, info: GGUFInfo, override: str | None = None) -> str | None:
    """The template a request renders with: its own `override`, else models.yaml's, else the
    GGUF's; None means no template at all."""
    return override or entry.template or info.chat_template


@lru_cache(maxsize=32)
def formatter(template: str, bos: str, eos: str) -> Jinja2ChatFormatter:
    """The compiled template (cached: compiling costs more than rendering)."""
    if _GO_TEMPLATE.search(template):
        raise BadRequest("Go templates are not supported: `template` must be a Jinja2 chat "
                         "template (like a GGUF's tokenizer.chat_template)")
    try:
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    except jinja2.TemplateError as exc:
        raise BadRequest(f"template error: {exc}") from None


def check(template: str) -> None:
    """Refuse a template that cannot be rendered (a Go template, a Jinja2 syntax error)."""
    formatter(template, "", "")
