"""Prompt rendering: Ollama requests -> the text the model sees, through its chat template.

Templates are Jinja2 chat templates (the GGUF's `tokenizer.chat_template`, or an override from
models.yaml or the request's `template`), rendered with llama-cpp-python's Jinja2 formatter.
Ollama's Go templates are not interpreted: one given is rejected with a clear error.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jinja2

from ollamalite.errors import BadRequest
from ollamalite.registry import chat_template

Message = dict[str, Any]
_TEMPLATE_ERRORS = (jinja2.TemplateError, ValueError, TypeError, ArithmeticError)
TOO_LONG = ("the prompt is longer than the context length currently available to the model; "
            "shorten the prompt, adjust the context length in settings, or use a model with a "
            "longer context length")


def with_defaults(messages: Sequence[Message], system: str | None,
                  preset: Sequence[Message] = ()) -> list[Message]:
    """Ollama's order: the model's system prompt (unless the conversation opens with its own),
    the model's preset `messages` (from models.yaml / /api/create), then the conversation."""
    own_system = bool(messages) and messages[0].get("role") == "system"
    head = [{"role": "system", "content": system}] if system and not own_system else []
    return [*head, *preset, *messages]


def render_chat(template: str | None, messages: Sequence[Message], bos: str, eos: str,
                variables: Mapping[str, Any] | None = None) -> str:
    """Messages -> prompt text ending with the assistant's turn opening; `variables` are extra
    template variables (`tools`, `enable_thinking`, …)."""
    if template is None:
        return "".join(str(m.get("content", "")) for m in messages)
    render = chat_template.formatter(template, bos, eos)
    try:
        return render(list(messages), **(variables or {}))
    except _TEMPLATE_ERRORS as exc:
        folded = fold_system(messages)
        if folded is None:
            raise BadRequest(f"template error: {exc}") from None
    try:
        return render(folded, **(variables or {}))
    except _TEMPLATE_ERRORS as exc:
        raise BadRequest(f"template error: {exc}") from None


def fold_system(messages: Sequence[Message]) -> list[Message] | None:
    """System turns after the first message (Claude Code sends them) folded into the leading
    system message, for templates that refuse them anywhere else ("System message must be at
    the beginning"); None when there are none. Only then: in place, they keep the prompt's
    prefix (and a slot's cache) from one turn to the next."""
    later = [m for m in messages[1:] if m.get("role") == "system"]
    if not later:
        return None
    head = list(messages[:1]) if messages and messages[0].get("role") == "system" else []
    texts = [str(m.get("content") or "") for m in [*head, *later]]
    rest = [m for m in messages[len(head):] if m.get("role") != "system"]
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest]


def template_messages(messages: Sequence[Message]) -> list[Message]:
    """Request messages as chat templates read them (Hugging Face conventions): only the fields
    that are set; tool calls as `{"type": "function", "function": {"name", "arguments": {…}}}`;
    `thinking` also as `reasoning_content`; a tool result's `tool_name` also as `name`, found
    from its `tool_call_id` when only that is given (OpenAI style)."""
    called: dict[str, str] = {}
    out = []
    for m in messages:
        t: Message = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("thinking"):
            t["thinking"] = t["reasoning_content"] = m["thinking"]
        if m.get("tool_calls"):
            t["tool_calls"] = [{"type": "function", **c} for c in m["tool_calls"]]
            called.update((c["id"], c["function"]["name"]) for c in m["tool_calls"] if "id" in c)
        if m.get("tool_call_id"):
            t["tool_call_id"] = m["tool_call_id"]
        name = m.get("tool_name") or called.get(m.get("tool_call_id") or "")
        if name and m["role"] == "tool":
            t["tool_name"] = t["name"] = name
        out.append(t)
    return out


def fit_chat(messages: list[Message], render: Callable[[list[Message]], list[int]],
             limit: int, truncate: bool = True) -> list[int]:
    """Tokens of the conversation, dropping its oldest turns (never the system prompt or the
    last message) until it fits, as Ollama does; with `truncate` off, too long is an error.
    How many turns to drop is found by bisection: a render per halving, not one per turn
    dropped (each render is budgeted, but thousands of them would not be)."""
    head = [m for m in messages[:1] if m.get("role") == "system"]
    body = messages[len(head):]
    tokens = render(head + body)
    if len(tokens) < limit:
        return tokens
    if not truncate:
        raise BadRequest(TOO_LONG)
    fitting = None
    low, high = 1, len(body) - 1  # the fewest turns to drop lies between
    while low <= high:
        middle = (low + high) // 2
        tokens = render(head + body[middle:])
        if len(tokens) < limit:
            fitting, high = tokens, middle - 1
        else:
            low = middle + 1
    if fitting is None:
        raise BadRequest(TOO_LONG)
    return fitting
