"""Modelfiles: parse the text, then build the JSON `/api/create` body Ollama's CLI sends.

Grammar (Ollama's `parser/parser.go`): one instruction per line, `# comments`, instruction
names in any case, values either bare (to the end of the line), `"quoted"` or `\"\"\"triple
quoted\"\"\"` (both may span lines; the closing quote ends the value's last line).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marshmallow import fields as mf

from ollamalite.gguf_meta import file_digest
from ollamalite.options import IGNORED_KEYS, OptionsSchema

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
ROLES = ("system", "user", "assistant")
_NAME_RE = re.compile(r"[A-Za-z]+")
_PARAM_RE = re.compile(r"[A-Za-z0-9_]+")


class ModelfileError(ValueError):
    """A Modelfile that cannot be parsed or turned into a create request."""


@dataclass(frozen=True)
class Command:
    name: str  # lower case; PARAMETER lines carry the parameter's own name here
    args: str
    role: str = ""  # MESSAGE lines only


def parse(text: str) -> list[Command]:
    """Commands in file order; raises ModelfileError `(line N): ...` on bad input."""
    text = text.lstrip("\ufeff")
    commands: list[Command] = []
    pos, line = 0, 1
    while pos < len(text):
        char = text[pos]
        if char in " \t\r\n":
            line += char == "\n"
            pos += 1
            continue
        if char == "#":
            pos = _line_end(text, pos)
            continue
        command, pos, line = _command(text, pos, line)
        commands.append(command)
    if not any(c.name == "from" for c in commands):
        raise ModelfileError("no FROM line")
    return commands


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _word(pattern: re.Pattern[str], text: str, pos: int, line: int, what: str) -> tuple[str, int]:
    """A word followed by at least one space or tab; returns it and the value's start."""
    match = pattern.match(text, pos)
    end = match.end() if match else pos
    if not match or end >= len(text) or text[end] not in " \t":
        raise ModelfileError(f"(line {line}): {what}")
    while end < len(text) and text[end] in " \t":
        end += 1
    return match.group(), end


def _command(text: str, pos: int, line: int) -> tuple[Command, int, int]:
    must_be = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS)
    name, pos = _word(_NAME_RE, text, pos, line, must_be)
    name = name.lower()
    if name not in COMMANDS:
        raise ModelfileError(f"(line {line}): {must_be}")
    role = ""
    if name == "parameter":
        name, pos = _word(_PARAM_RE, text, pos, line, "missing parameter name or value")
    elif name == "message":
        role, pos = _word(_NAME_RE, text, pos, line, "missing message role or content")
        if role not in ROLES:
            raise ModelfileError(f'(line {line}): message role must be one of "system", '
                                 '"user", or "assistant"')
    value, end = _value(text, pos, line)
    return Command(name, value, role), end, line + text.count("\n", pos, end)


def _value(text: str, pos: int, line: int) -> tuple[str, int]:
    for quote in ('"""', '"'):
        if text.startswith(quote, pos):
            # the closing quote is the one that ends a line (or the file)
            pattern = re.compile(re.escape(quote) + r"[ \t]*(?=\r?\n|$)")
            match = pattern.search(text, pos + len(quote))
            if not match:
                raise ModelfileError(f"(line {line}): unexpected EOF: unterminated {quote}")
            return text[pos + len(quote):match.start()], match.end()
    end = _line_end(text, pos)
    value = text[pos:end].strip()
    if not value:
        raise ModelfileError(f"(line {line}): missing value")
    return value, end


# -- the /api/create body -----------------------------------------------------------------------

_OPTION_FIELDS = OptionsSchema().fields


def parameter_value(name: str, raw: str) -> Any:
    """A PARAMETER's text typed as the option is (Ollama's `FormatParams`)."""
    field = _OPTION_FIELDS.get(name)
    if field is None:
        raise ModelfileError(f"unknown parameter '{name}'")
    for kind, parse_as in ((mf.Integer, int), (mf.Float, float), (mf.Boolean, _go_bool)):
        if isinstance(field, kind):
            try:
                return parse_as(raw)
            except ValueError:
                word = {mf.Integer: "int", mf.Float: "float", mf.Boolean: "bool"}[kind]
                raise ModelfileError(f"invalid {word} value [{raw}]") from None
    return [raw] if name == "stop" else raw


def _go_bool(raw: str) -> bool:
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(raw)


def expand_path(value: str, base: Path) -> Path:
    """FROM/ADAPTER paths: `~` is the home folder; relative paths are from the Modelfile."""
    path = Path(os.path.expanduser(value))
    return (path if path.is_absolute() else base / path).resolve()


@dataclass
class CreatePlan:
    """The JSON body plus the local files to upload first (path -> `sha256:<hex>`)."""

    body: dict[str, Any]
    uploads: dict[Path, str]


def create_request(commands: list[Command], base: Path) -> CreatePlan:
    """What `ollama create` sends: `from` a model name, or `files` for a local GGUF."""
    body: dict[str, Any] = {}
    uploads: dict[Path, str] = {}
    params: dict[str, Any] = {}
    for cmd in commands:
        if cmd.name in ("from", "adapter"):
            _add_file(cmd, base, body, uploads)
        elif cmd.name in ("template", "system", "renderer", "parser", "requires"):
            body[cmd.name] = cmd.args
        elif cmd.name == "license":
            body.setdefault("license", []).append(cmd.args)
        elif cmd.name == "message":
            body.setdefault("messages", []).append({"role": cmd.role, "content": cmd.args})
        elif cmd.name == "draft":
            raise ModelfileError("DRAFT models are not supported by ollamalite")
        elif cmd.name in IGNORED_KEYS:
            print(f"warning: parameter {cmd.name} is deprecated")
        else:
            value = parameter_value(cmd.name, cmd.args)
            params[cmd.name] = params.get(cmd.name, []) + value if cmd.name == "stop" else value
    if params:
        body["parameters"] = params
    return CreatePlan(body, uploads)


def _add_file(cmd: Command, base: Path, body: dict[str, Any], uploads: dict[Path, str]) -> None:
    path = expand_path(cmd.args, base)
    if not path.exists():
        if cmd.name == "adapter":
            raise ModelfileError(f"adapter file not found: {path}")
        body["from"] = cmd.args
        return
    files = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    if not files:
        raise ModelfileError(f"no .gguf file in {path}")
    key = "files" if cmd.name == "from" else "adapters"
    for file in files:
        digest = "sha256:" + file_digest(file)
        uploads[file] = digest
        body.setdefault(key, {})[file.name] = digest

