"""What a chat template can do (tools, thinking) and how it tells the model to spell them.

Ollama reads this from the structure of its Go templates; for Jinja2 chat templates we ask the
template itself. Rules (documented in docs/api.md):
- tools: the template uses the `tools` variable (jinja2's undeclared variables).
- tool-call format: a probe conversation whose assistant turn holds one tool call is rendered
  next to the same turn holding plain text; what the template writes around the call's JSON
  is the opening tag (`<tool_call>`, `[TOOL_CALLS]`) and closing tag (`</tool_call>`) the
  model is expected to emit; a call written as `<function=…><parameter=…>` XML inside them
  (Qwen3-Coder, Qwen3.5) selects that syntax instead of JSON. No tag (the call is bare JSON,
  as Llama 3.x templates write it) or a template that cannot render the probe means bare JSON.
- thinking: an assistant turn with reasoning renders it between a pair of tags (`<x>…</x>`,
  usually `<think>…</think>`), or the template text contains both `<think>` and `</think>`
  (Ollama's rule for GGUF templates).
- thinking levels: the prompt rendered with `reasoning_effort` "low" differs from the one with
  "high" (gpt-oss style). Rendering, not the variable's name alone: a template may name it
  and ignore it, or set its own default before reading it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import jinja2
import jinja2.meta

from ollamalite.caches import byte_lru
from ollamalite.errors import BadRequest
from ollamalite.generation import prompt
from ollamalite.registry import chat_template, template_sandbox
from ollamalite.generation.reply import (
    ReplyParser,
    ThinkingSplitter,
    ToolCallParser,
    call_of,
    json_end,
    xml_call,
)

_TOOL = "zqx_probe_tool"
_ARGS = {"zqx_key": "zqx_value"}
_TEXT = "Zqx9 answer"
_REASONING = "Zqx9 reasoning"
_USER = {"role": "user", "content": "Zqx9 question"}
_TOOLS = [{"type": "function", "function": {
    "name": _TOOL, "description": "probe",
    "parameters": {"type": "object", "properties": {"zqx_key": {"type": "string"}},
                   "required": ["zqx_key"]}}}]
_TAG_AROUND = re.compile(r"(<[^<>\s]+>)\s*" + re.escape(_REASONING) + r"\s*(<[^<>\s]+>)")
# Templates whose features are kept, by their size (request templates can be large).
CACHE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class TemplateFeatures:
    tools: bool = False
    tool_open: str = ""  # "" means bare JSON at the start of the reply
    tool_close: str = ""
    tool_xml: bool = False  # <function=…><parameter=…> inside the tags, not JSON
    think_tags: tuple[str, str] | None = None
    think_levels: bool = False  # reads `reasoning_effort`: "low"/"medium"/"high" change the prompt

    @property
    def thinking(self) -> bool:
        return self.think_tags is not None

    def capabilities(self) -> list[str]:
        """The template's part of /api/show `capabilities`, in Ollama's order."""
        return [name for name, has in (("tools", self.tools), ("thinking", self.thinking))
                if has]


@byte_lru(CACHE_BYTES)
def features(template: str | None) -> TemplateFeatures:
    """Inspect a template (CPU: a parse and up to five renders; cached, call off the event
    loop). A template too long, or one that exceeds its render budget on a probe, is a 400."""
    if not template:
        return TemplateFeatures()
    try:
        names = _variables(template)
    except jinja2.TemplateError:
        return TemplateFeatures()
    has_tools = "tools" in names
    opening, closing, xml = _tool_tags(template) if has_tools else ("", "", False)
    levels = "reasoning_effort" in template and _think_levels(template)
    return TemplateFeatures(has_tools, opening, closing, xml, _think_tags(template), levels)


def _variables(template: str) -> set[str]:
    template_sandbox.check_size(template)
    env = jinja2.Environment(extensions=list(chat_template.EXTENSIONS))
    with template_sandbox.parsing():
        return jinja2.meta.find_undeclared_variables(env.parse(template))


def _render(template: str, messages: list[dict[str, Any]], **variables: Any) -> str | None:
    """A probe render; a template that fails on it (whatever it raises but its budget) just
    lacks the feature probed."""
    try:
        return prompt.render_chat(template, messages, "", "", variables)
    except template_sandbox.BudgetExceeded:
        raise
    except Exception:
        return None


def _tool_tags(template: str) -> tuple[str, str, bool]:
    call = {"type": "function", "function": {"name": _TOOL, "arguments": _ARGS}}
    with_call = _render(template, [_USER, {"role": "assistant", "content": "",
                                           "tool_calls": [call]}], tools=_TOOLS)
    with_text = _render(template, [_USER, {"role": "assistant", "content": _TEXT}],
                        tools=_TOOLS)
    if not with_call or not with_text or _TOOL not in with_call:
        return "", "", False
    body = _difference(with_call, with_text)
    xml = re.search(rf"<function={_TOOL}>.*</function>", body, re.S)
    if xml and xml_call(xml.group(0), {_TOOL: {}}) == (_TOOL, _ARGS):
        return body[:xml.start()].strip(), body[xml.end():].strip(), True
    for start in (i for i, c in enumerate(body) if c in "{["):
        end = json_end(body, start)
        if end is not None and _is_probe_call(body[start:end]):
            return body[:start].strip(), body[end:].strip(), False
    return "", "", False


def _difference(a: str, b: str) -> str:
    """`a` without the beginning and end it shares with `b`."""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return a[head:len(a) - tail]


def _is_probe_call(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    values = value if isinstance(value, list) else [value]
    return any(call_of(v, {_TOOL}) for v in values)


def _think_tags(template: str) -> tuple[str, str] | None:
    turn = {"role": "assistant", "content": _TEXT, "thinking": _REASONING,
            "reasoning_content": _REASONING}
    text = _render(template, [_USER, turn], enable_thinking=True)
    found = _TAG_AROUND.search(text or "")
    if found and found.group(2) == "</" + found.group(1)[1:]:
        return found.group(1), found.group(2)
    if "<think>" in template and "</think>" in template:
        return "<think>", "</think>"
    return None


def _think_levels(template: str) -> bool:
    low, high = (_render(template, [_USER], enable_thinking=True, reasoning_effort=effort)
                 for effort in ("low", "high"))
    return low is not None and high is not None and low != high


class Effort(str):
    """A thinking level that is only a hint (OpenAI's reasoning effort, which clients send by
    habit): a template without levels thinks at its one level instead of refusing."""


def check_request(name: str, found: TemplateFeatures, tools: Sequence[Any] | None,
                  think: bool | str | None, constrained: str = "") -> bool | str | None:
    """400 for what the model's template cannot do; returns the `think` to use: on by default
    for a model that can think (as Ollama since 0.12.4), None for one that cannot. A reply
    `constrained` by a grammar (the field that asks for it: `format`, `tool_choice`) is held to
    it from its first token, so there is no reasoning to split off: thinking is off by default
    then, and asking for it is a 400 (Ollama runs a `format` request twice, thinking first;
    ollamalite does not yet). A level (`"high"`…) needs a template with levels; an `Effort`
    there means just "think"."""
    if tools and not found.tools:
        raise BadRequest(f'"{name}" does not support tools')
    if not found.thinking:
        if think:
            raise BadRequest(f'"{name}" does not support thinking')
        return None
    if isinstance(think, str) and not found.think_levels:
        if not isinstance(think, Effort):
            raise BadRequest(f'"{name}" does not support thinking levels: send think true or '
                             "false")
        think = True
    if constrained and think:
        raise BadRequest(f"think together with {constrained} is not supported yet: leave "
                         "think out or send false")
    return (not constrained) if think is None else think


def variables(tools: Sequence[Any] | None, think: bool | str | None) -> dict[str, Any]:
    """Template variables for a request: `tools`, `enable_thinking` (Qwen3 and others) and, for
    a level (`"high"`…), `reasoning_effort` (gpt-oss)."""
    found: dict[str, Any] = {}
    if tools:
        found["tools"] = list(tools)
    if think is not None:
        found["enable_thinking"] = bool(think)
        if isinstance(think, str):
            found["reasoning_effort"] = think
    return found


def reply_parser(found: TemplateFeatures, tools: Sequence[dict[str, Any]] | None,
                 think: bool | str | None, prompt_tail: str) -> ReplyParser:
    """The parser for one reply; `prompt_tail` (the prompt's last characters) tells whether the
    template already opened the thinking block."""
    thinking = None
    if think and found.think_tags:
        opening, closing = found.think_tags
        thinking = ThinkingSplitter(opening, closing, prompt_tail.rstrip().endswith(opening))
    calls = None
    if tools:
        offered = {t["function"]["name"]: _properties(t["function"]) for t in tools}
        calls = ToolCallParser(found.tool_open, found.tool_close, offered, found.tool_xml)
    return ReplyParser(thinking, calls)


def _properties(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    return properties if isinstance(properties, dict) else {}
