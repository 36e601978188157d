"""Ollama's Modelfile text (the legacy `modelfile` field of /api/create) -> create fields.

FROM, PARAMETER, SYSTEM, TEMPLATE, MESSAGE and LICENSE are understood; ADAPTER and the other
commands Ollama knows are refused (nothing is silently dropped). Values are bare to the end of
the line, "quoted", or \"\"\"triple-quoted\"\"\" across lines; `#` starts a comment line.
"""

from __future__ import annotations

import re
from typing import Any

from ollamalite.errors import BadRequest

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
UNSUPPORTED = frozenset({"adapter", "draft", "renderer", "parser", "requires"})
MESSAGE_ROLES = ("system", "user", "assistant")
_COMMAND = re.compile(r"[ \t]*([A-Za-z]+)[ \t]+")
_WORD = re.compile(r"(\S+)[ \t]+")


def parse(text: str) -> dict[str, Any]:
    """Fields in /api/create's JSON shape: from, parameters, system, template, messages,
    license (a list)."""
    out: dict[str, Any] = {"parameters": {}, "messages": [], "license": []}
    pos = 0
    while pos < len(text):
        line_end = _line_end(text, pos)
        stripped = text[pos:line_end].strip()
        if not stripped or stripped.startswith("#"):
            pos = line_end + 1
            continue
        match = _COMMAND.match(text, pos)
        command = match.group(1).lower() if match else ""
        if command not in COMMANDS:
            raise BadRequest('command must be one of "' + '", "'.join(COMMANDS[:-1])
                             + f'", or "{COMMANDS[-1]}"')
        if command in UNSUPPORTED:
            raise BadRequest(f"{command.upper()} is not supported by ollamalite")
        pos = match.end()
        argument = ""
        if command in ("parameter", "message"):
            word = _WORD.match(text, pos)
            if word is None:
                raise BadRequest(f"{command.upper()} needs a name and a value")
            argument, pos = word.group(1).lower(), word.end()
        value, pos = _value(text, pos)
        _apply(out, command, argument, value)
    if "from" not in out:
        raise BadRequest("no FROM line")
    return out


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _value(text: str, pos: int) -> tuple[str, int]:
    """One value starting at `pos`, and where the next line starts."""
    if text.startswith('"""', pos):
        end = text.find('"""', pos + 3)
        if end < 0:
            raise BadRequest('unterminated """ string')
        return text[pos + 3:end], _line_end(text, end + 3) + 1
    line_end = _line_end(text, pos)
    value = text[pos:line_end].strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"')
    return value, line_end + 1


def _apply(out: dict[str, Any], command: str, argument: str, value: str) -> None:
    if command == "parameter":
        params = out["parameters"]
        if argument in params:  # repeated keys (`stop`) collect into a list
            previous = params[argument]
            params[argument] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            params[argument] = value
    elif command == "message":
        if argument not in MESSAGE_ROLES:
            raise BadRequest('message role must be one of "system", "user", or "assistant"')
        out["messages"].append({"role": argument, "content": value})
    elif command == "license":
        out["license"].append(value)
    else:
        out[command] = value
