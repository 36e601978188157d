"""Model output -> (content, thinking, tool calls), incrementally, for every text route.

The engine streams plain text. A reply may open with reasoning between thinking tags
(`<think>…</think>`) and may contain tool calls spelled the way the chat template taught the
model (`<tool_call>{json}</tool_call>`, `[TOOL_CALLS][…]`, a bare JSON object, or Qwen3-Coder's
`<tool_call><function=…><parameter=…>` XML). `ReplyParser`
is fed each text chunk and returns `Delta`s ready to send: thinking and content stream as they
come, a tool call is held back until it is complete and arrives whole, and text that only looks
like the start of a tag is released as soon as it proves not to be one. Nothing here knows about
HTTP or a particular route.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from ollamalite.runtime.engine.jobs import Logprob

ToolCall = dict[str, Any]
_ID_ALPHABET = string.ascii_lowercase + string.digits
_XML_FUNCTION = re.compile(r"\s*<function=([^>\s]+)>(.*)</function>\s*", re.S)
_XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)


@dataclass
class Delta:
    """What one step of the reply adds. A delta with tool calls carries no text; `logprobs`
    are those of the tokens generated since the previous delta (when they were asked for)."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[Logprob] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls or self.logprobs)

    def add(self, other: Delta) -> None:
        self.content += other.content
        self.thinking += other.thinking
        self.tool_calls.extend(other.tool_calls)
        self.logprobs.extend(other.logprobs)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`: held back until
    the next chunk shows whether the tag follows."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ThinkingSplitter:
    """Reasoning at the very start of a reply (`<open>…<close>`) vs. the answer after it.

    As in Ollama, the opening tag counts only before any other text (leading whitespace aside);
    `opened` says the prompt already ended with it. Whitespace right after either tag is
    dropped. Returns (thinking, content) for each chunk.
    """

    _BEFORE, _THINKING, _AFTER, _DONE = range(4)

    def __init__(self, open_tag: str, close_tag: str, opened: bool = False) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self._state = self._THINKING if opened else self._BEFORE
        self._skip_space = opened
        self._buf = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        thinking: list[str] = []
        while self._step(thinking):
            pass
        if self._state == self._DONE:
            content, self._buf = self._buf, ""
            return "".join(thinking), content
        return "".join(thinking), ""

    def _step(self, thinking: list[str]) -> bool:
        """Advance one state on the buffer; False when more text is needed."""
        if self._state == self._BEFORE:
            head = self._buf.lstrip()
            if head.startswith(self.open_tag):
                self._buf = head[len(self.open_tag):]
                self._state, self._skip_space = self._THINKING, True
                return True
            if not head or self.open_tag.startswith(head):
                return False
            self._state = self._DONE
            return False
        if self._state == self._THINKING:
            if self._skip_space:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    return False
                self._skip_space = False
            end = self._buf.find(self.close_tag)
            if end >= 0:
                thinking.append(self._buf[:end])
                self._buf = self._buf[end + len(self.close_tag):]
                self._state = self._AFTER
                return True
            keep = _partial_suffix(self._buf, self.close_tag)
            thinking.append(self._buf[:len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            return False
        if self._state == self._AFTER:
            self._buf = self._buf.lstrip()
            if self._buf:
                self._state = self._DONE
            return False
        return False

    def finish(self) -> tuple[str, str]:
        """The reply ended: whatever is held back goes where it was heading."""
        rest, self._buf = self._buf, ""
        if self._state == self._THINKING:
            return ("" if self._skip_space else rest), ""
        return "", ("" if self._state == self._AFTER else rest)


def json_end(text: str, start: int) -> int | None:
    """Index just past the JSON object/array opening at `start`, None if not closed yet."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def call_of(obj: Any, names: Collection[str]) -> tuple[str, dict[str, Any]] | None:
    """`{"name", "arguments"|"parameters"}` (optionally under `function`), arguments an object
    or a JSON string of one, naming an offered tool."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return name, args


def xml_call(text: str, tools: Mapping[str, Mapping[str, Any]]
             ) -> tuple[str, dict[str, Any]] | None:
    """`<function=NAME><parameter=KEY>value</parameter>…</function>` (Qwen3-Coder, Qwen3.5).
    Values are text; a parameter whose schema type is not `string` is read as JSON when it
    parses (`42`, `true`, `[1, 2]`), as the tool's schema says it should be."""
    found = _XML_FUNCTION.fullmatch(text)
    if not found or found.group(1) not in tools:
        return None
    properties = tools[found.group(1)]
    args = {}
    for key, raw in _XML_PARAMETER.findall(found.group(2)):
        kind = (properties.get(key) or {}).get("type", "string")
        args[key] = raw if "string" in (kind if isinstance(kind, list) else [kind]) else (
            _json_or_text(raw))
    return found.group(1), args


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def new_call_id() -> str:
    """`call_` and 8 random lowercase letters/digits, as Ollama spells tool call ids."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class ToolCallParser:
    """Finds tool calls in reply text, in the format the template asked for.

    `open_tag` (e.g. `<tool_call>`) starts a call anywhere in the text and `close_tag` (may be
    empty) ends it; between them one JSON object or a list of them, or with `xml` one
    `<function=…>` block. `tools` maps each offered tool to its parameters' `properties` (the
    XML syntax needs their types). A reply, or what follows a call, that starts with such JSON
    is tried as a call too, without tags: templates like Llama 3.x ask for bare JSON (no
    `open_tag`), and some tags are control tokens that never reach the text. A call that does
    not parse or names a tool that was not offered stays text.
    """

    _START, _SCAN, _CALL, _TEXT = range(4)

    def __init__(self, open_tag: str, close_tag: str, tools: Mapping[str, Mapping[str, Any]],
                 xml: bool = False) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.tools = tools
        self.xml = xml and bool(close_tag)
        self._state = self._START
        self._bare = False  # the call being read came without tags
        self._after_call = False
        self._buf = ""
        self._index = 0

    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        out: list[Delta] = []
        while self._buf:
            if self._state == self._TEXT:
                out.append(Delta(content=self._buf))
                self._buf = ""
            elif self._state == self._START:
                if not self._start():
                    break
            elif self._state == self._SCAN:
                if not self._scan(out):
                    break
            elif not self._parse_call(out, final=False):
                break
        return out

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._state == self._CALL:
            self._parse_call(out, final=True)
        if self._buf and not (self._after_call and self._state == self._START):
            out.append(Delta(content=self._buf))
        self._buf = ""
        return out

    def _start(self) -> bool:
        """At the start of the reply or after a call: JSON there is tried as a bare call.
        Whitespace right after a call is dropped."""
        head = self._buf.lstrip()
        if not head:
            return False
        if head[0] in "{[":
            self._state, self._bare = self._CALL, True
        else:
            self._state = self._SCAN if self.open_tag else self._TEXT
            if self._after_call:
                self._buf = head
        self._after_call = False
        return True

    def _scan(self, out: list[Delta]) -> bool:
        """Text up to the next opening tag; False when the rest must wait for more text."""
        at = self._buf.find(self.open_tag)
        if at < 0:
            keep = _partial_suffix(self._buf, self.open_tag)
            if len(self._buf) > keep:
                out.append(Delta(content=self._buf[:len(self._buf) - keep]))
                self._buf = self._buf[len(self._buf) - keep:]
            return False
        if at:
            out.append(Delta(content=self._buf[:at]))
        self._buf = self._buf[at + len(self.open_tag):]
        self._state, self._bare = self._CALL, False
        return True

    def _parse_call(self, out: list[Delta], final: bool) -> bool:
        """The JSON of a call (and its closing tag): a call, not known yet (False), or not a
        call, given back as text."""
        if self.xml and not self._bare:
            return self._parse_xml_call(out, final)
        head = self._buf.lstrip()
        if not head:
            if final:
                self._not_a_call(out)
            return False
        start = len(self._buf) - len(head)
        end = json_end(self._buf, start) if head[0] in "{[" else -1
        if end is None:
            if final:
                self._not_a_call(out)
            return False
        calls = self._calls(self._buf[start:end]) if end > 0 else None
        if calls is None:
            self._not_a_call(out)
            return True
        rest = self._buf[end:]
        tail = rest.lstrip()
        if self.close_tag and not self._bare:
            if tail.startswith(self.close_tag):
                rest = tail[len(self.close_tag):]
            elif self.close_tag.startswith(tail) and not final:
                return False  # the closing tag may still be coming
        self._emit(out, calls, rest)
        return True

    def _parse_xml_call(self, out: list[Delta], final: bool) -> bool:
        end = self._buf.find(self.close_tag)
        if end < 0:
            if final:
                self._not_a_call(out)
            return False
        call = xml_call(self._buf[:end], self.tools)
        if call is None:
            self._not_a_call(out)
        else:
            self._emit(out, [call], self._buf[end + len(self.close_tag):])
        return True

    def _emit(self, out: list[Delta], calls: list[tuple[str, dict[str, Any]]], rest: str) -> None:
        out.append(Delta(tool_calls=[self._numbered(name, args) for name, args in calls]))
        self._buf, self._state, self._after_call = rest, self._START, True

    def _calls(self, text: str) -> list[tuple[str, dict[str, Any]]] | None:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        found = [call_of(v, self.tools) for v in (value if isinstance(value, list) else [value])]
        calls = [f for f in found if f is not None]
        return calls if calls and len(calls) == len(found) else None

    def _numbered(self, name: str, args: dict[str, Any]) -> ToolCall:
        """Ollama's wire shape: an id, and the call's position in the reply."""
        self._index += 1
        return {"id": new_call_id(),
                "function": {"index": self._index - 1, "name": name, "arguments": args}}

    def _not_a_call(self, out: list[Delta]) -> None:
        """Give the text back: after a tag, the tag is text and scanning goes on after it;
        untagged JSON is scanned as text."""
        if not self._bare:
            out.append(Delta(content=self.open_tag))
        self._state = self._SCAN if self.open_tag else self._TEXT


class ReplyParser:
    """Thinking first, then tool calls in what remains; either part may be absent."""

    def __init__(self, thinking: ThinkingSplitter | None = None,
                 tools: ToolCallParser | None = None) -> None:
        self.thinking = thinking
        self.tools = tools

    def feed(self, text: str) -> list[Delta]:
        thought, content = self.thinking.feed(text) if self.thinking else ("", text)
        return self._join(thought, self.tools.feed(content) if self.tools else
                          [Delta(content=content)])

    def finish(self) -> list[Delta]:
        thought, content = self.thinking.finish() if self.thinking else ("", "")
        parts = self.tools.feed(content) + self.tools.finish() if self.tools else [
            Delta(content=content)]
        return self._join(thought, parts)

    @staticmethod
    def _join(thought: str, parts: list[Delta]) -> list[Delta]:
        """Adjacent text parts become one delta (thinking before content, as they came)."""
        out: list[Delta] = []
        for part in [Delta(thinking=thought), *parts]:
            if not part:
                continue
            if out and not out[-1].tool_calls and not part.tool_calls:
                out[-1].add(part)
            else:
                out.append(part)
        return out
