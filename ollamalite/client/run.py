"""`ollamalite run MODEL [PROMPT]`: one answer streamed to stdout, or an interactive chat.

With a prompt (or piped stdin) it sends one /api/generate and exits, as `ollama run` does.
With neither, on a terminal, it keeps a conversation over /api/chat: `>>> ` prompts,
multi-line input between `\"\"\"` lines, and the `/set`, `/show`, `/clear`, `/bye` commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, TextIO

from ollamalite.client.api import Client, ClientError, ServerError
from ollamalite.client.commands import pull_model
from ollamalite.client.create import CreateError, parameter_value
from ollamalite.client.humanize import go_duration
from ollamalite.client.show_info import print_show
from ollamalite.durations import parse_go_duration

THINK_LEVELS = ("high", "medium", "low", "max")
GREY, BOLD, RESET = "\x1b[38;5;245m", "\x1b[1m", "\x1b[0m"


@dataclass
class Session:
    """What every request of this run sends; `/set` commands change it."""

    model: str
    format: Any = None
    think: bool | str | None = None
    keep_alive: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False
    hide_thinking: bool = False

    def body(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, **fields}
        extras = {"format": self.format, "think": self.think, "keep_alive": self.keep_alive,
                  "options": self.options or None}
        body.update({k: v for k, v in extras.items() if v is not None})
        return body


def session_from(args: argparse.Namespace) -> Session:
    return Session(model=args.model, format=format_value(args.format),
                   think=think_value(args.think), keep_alive=keep_alive_value(args.keepalive),
                   verbose=args.verbose, hide_thinking=args.hidethinking)


def format_value(text: str | None) -> Any:
    """`json`, or a JSON schema object given as JSON text."""
    if not text:
        return None
    if text == "json":
        return "json"
    try:
        schema = json.loads(text)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise ClientError(f'invalid format: "{text}"; expected "json" or a JSON schema object')
    return schema


def think_value(text: str | None) -> bool | str | None:
    if text is None:
        return None
    if text in ("true", "false"):
        return text == "true"
    return text


def keep_alive_value(text: str | None) -> str | None:
    """Checked here (a Go duration, as `ollama run --keepalive`), sent as the string."""
    if text is None:
        return None
    try:
        parse_go_duration(text)
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    return text


# -- printing an answer -------------------------------------------------------------------------

class AnswerPrinter:
    """Thinking (framed as `Thinking...` / `...done thinking.`), then the answer, each piece
    written and flushed as it arrives."""

    def __init__(self, out: TextIO, hide_thinking: bool) -> None:
        self.out = out
        self.hide_thinking = hide_thinking
        self.color = out.isatty()
        self.thinking_open = False
        self.last = ""

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.last = text

    def feed(self, thinking: str, content: str) -> None:
        if thinking and not self.hide_thinking:
            if not self.thinking_open:
                self._write(self._styled("Thinking...\n", GREY + BOLD) +
                            (GREY if self.color else ""))
                self.thinking_open = True
            self._write(thinking)
        if content and self.thinking_open:
            if not self.last.endswith("\n"):
                self._write("\n")
            self._write(self._styled("...done thinking.\n\n", GREY + BOLD))
            self.thinking_open = False
        self._write(content)

    def _styled(self, text: str, style: str) -> str:
        return f"{style}{text}{RESET}" if self.color else text


def print_stats(final: dict[str, Any], out: TextIO) -> None:
    """`--verbose` timings, in the words and units `ollama run --verbose` uses."""
    def line(label: str, value: str) -> None:
        out.write(f"{label + ':':<22}{value}\n")

    def rate(count: int, ns: int) -> str:
        return f"{count / (ns / 1e9):.2f} tokens/s"

    if final.get("total_duration"):
        line("total duration", go_duration(final["total_duration"]))
    if final.get("load_duration"):
        line("load duration", go_duration(final["load_duration"]))
    for kind in ("prompt eval", "eval"):
        key = kind.replace(" ", "_")
        count, ns = final.get(f"{key}_count", 0), final.get(f"{key}_duration", 0)
        if count:
            line(f"{kind} count", f"{count} token(s)")
        if ns:
            line(f"{kind} duration", go_duration(ns))
            line(f"{kind} rate", rate(count, ns))
    out.flush()


def stream_answer(session: Session, lines: Iterable[dict[str, Any]]) -> tuple[str, dict]:
    """Prints a generate or chat stream; returns the answer text and the final object."""
    printer = AnswerPrinter(sys.stdout, session.hide_thinking)
    parts: list[str] = []
    final: dict[str, Any] = {}
    for obj in lines:
        message = obj.get("message") or {}
        content = obj.get("response", message.get("content", "")) or ""
        printer.feed(obj.get("thinking", message.get("thinking", "")) or "", content)
        parts.append(content)
        final = obj
    return "".join(parts), final


def finish_answer(session: Session, final: dict[str, Any]) -> None:
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    if session.verbose and final.get("done"):
        print_stats(final, sys.stderr)


# -- the command --------------------------------------------------------------------------------

def show_or_pull(client: Client, name: str, insecure: bool) -> dict[str, Any]:
    """A model the server does not have is pulled first, as `ollama run` does."""
    try:
        return client.request("POST", "/api/show", {"model": name})
    except ServerError as exc:
        if exc.status != 404:
            raise
    pull_model(client, name, insecure)
    return client.request("POST", "/api/show", {"model": name})


def print_preset_messages(messages: list[dict[str, Any]]) -> None:
    """The model's own MESSAGE turns (the server puts them before every chat), shown first."""
    for message in messages:
        if message.get("role") == "user":
            print(f">>> {message.get('content', '')}")
        elif message.get("role") == "assistant":
            print(f"{message.get('content', '')}\n")


def run(client: Client, args: argparse.Namespace) -> int:
    session = session_from(args)
    words = list(args.prompt)
    interactive = not words and sys.stdin.isatty()
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        words = [piped, *words] if piped else words
    info = show_or_pull(client, session.model, args.insecure)
    if interactive:
        client.request("POST", "/api/generate", session.body())  # load it before the prompt
        print_preset_messages(info.get("messages") or [])
        return Conversation(client, session).loop()
    prompt = " ".join(words)
    try:
        _, final = stream_answer(session, client.stream("/api/generate",
                                                        session.body(prompt=prompt)))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    if prompt:
        finish_answer(session, final)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a model: one answer, or an interactive chat")
    p.add_argument("model", help="the model's name (pulled first if the server has none)")
    p.add_argument("prompt", nargs="*", help="the prompt (else stdin, else interactive)")
    p.add_argument("--format", help='response format: "json" or a JSON schema')
    p.add_argument("--think", nargs="?", const="true", choices=("true", "false", *THINK_LEVELS),
                   help="thinking for models that support it: true/false or high/medium/low")
    p.add_argument("--hidethinking", action="store_true", help="do not print the thinking")
    p.add_argument("--keepalive", help="how long the model stays loaded (e.g. 5m)")
    p.add_argument("--verbose", action="store_true", help="print timings after each answer")
    p.add_argument("--insecure", action="store_true", help="pull from an insecure registry")
    p.set_defaults(handler=run)


# -- interactive --------------------------------------------------------------------------------

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""
HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""
HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""
TRIPLE = '"""'


class Conversation:
    """The `>>> ` loop; the chat history is kept across turns and sent whole each time."""

    def __init__(self, client: Client, session: Session) -> None:
        self.client = client
        self.session = session
        self.messages: list[dict[str, str]] = []
        self.system = ""

    def loop(self) -> int:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        pending: list[str] | None = None  # lines of a """ block being typed
        target = "prompt"  # what that block becomes: a prompt or the system message
        while True:
            try:
                line = input("... " if pending is not None else ">>> ")
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                pending = None
                continue
            if pending is not None:
                closed = line.endswith(TRIPLE)
                pending.append(line[:-3] if closed else line)
                if closed:
                    self._submit(target, "\n".join(pending))
                    pending, target = None, "prompt"
                continue
            if line.startswith(TRIPLE):
                body = line[3:]
                if len(body) >= 3 and body.endswith(TRIPLE):
                    self.send(body[:-3])
                else:
                    pending = [body]
                continue
            if line.startswith("/"):
                action = self.command(line)
                if action == "bye":
                    return 0
                if action == "system-block":
                    pending, target = [line.split(TRIPLE, 1)[1]], "system"
                continue
            if line.strip():
                self.send(line)

    def _submit(self, target: str, text: str) -> None:
        if target == "system":
            self.set_system(text)
        else:
            self.send(text)

    def send(self, text: str) -> None:
        """One turn; an interrupted or failed turn leaves the history as it was."""
        if not text.strip():
            return
        self.messages.append({"role": "user", "content": text})
        try:
            answer, final = stream_answer(self.session, self.client.stream(
                "/api/chat", self.session.body(messages=self.messages)))
        except KeyboardInterrupt:
            print()
            self.messages.pop()
            return
        except ServerError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            self.messages.pop()
            return
        self.messages.append({"role": "assistant", "content": answer})
        finish_answer(self.session, final)

    def set_system(self, text: str) -> None:
        self.system = text
        message = {"role": "system", "content": text}
        if self.messages and self.messages[-1]["role"] == "system":
            self.messages[-1] = message
        else:
            self.messages.append(message)
        print("Set system message.")

    def command(self, line: str) -> str | None:
        words = line.split()
        name = words[0]
        if name in ("/bye", "/exit"):
            return "bye"
        if name in ("/?", "/help"):
            topic = words[1].lstrip("/") if len(words) > 1 else ""
            sys.stderr.write({"set": HELP_SET, "show": HELP_SHOW}.get(topic, HELP) + "\n")
        elif name == "/clear":
            self.messages = [{"role": "system", "content": self.system}] if self.system else []
            print("Cleared session context")
        elif name == "/set":
            return self.set(line, words[1:])
        elif name == "/show":
            self.show(words[1] if len(words) > 1 else "")
        else:
            print(f"Unknown command '{name}'. Type /? for help")
        return None

    def set(self, line: str, words: list[str]) -> str | None:
        what = words[0] if words else ""
        s = self.session
        if what == "parameter" and len(words) >= 3:
            try:
                values = [parameter_value(words[1], v) for v in words[2:]]
            except CreateError as exc:
                print(f"Couldn't set parameter: {exc}")
                return None
            s.options[words[1]] = sum(values, []) if words[1] == "stop" else values[0]
            print(f"Set parameter '{words[1]}' to '{', '.join(words[2:])}'")
        elif what == "system" and len(words) >= 2:
            text = line.split(None, 2)[2]
            if not text.startswith(TRIPLE):
                self.set_system(text)
            elif len(text) >= 6 and text.endswith(TRIPLE):
                self.set_system(text[3:-3])
            else:
                return "system-block"
        elif what in ("verbose", "quiet"):
            s.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what == "format" and words[1:] == ["json"]:
            s.format = "json"
            print("Set format to 'json' mode.")
        elif what == "noformat":
            s.format = None
            print("Disabled format.")
        elif what in ("think", "nothink"):
            s.think = (words[1] if len(words) > 1 else True) if what == "think" else False
            print(f"Set '{what}' mode.")
        elif what in ("parameter", "system", "format", ""):
            sys.stderr.write(HELP_SET + "\n")
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")
        return None

    def show(self, what: str) -> None:
        if what not in ("info", "license", "modelfile", "parameters", "system", "template"):
            if what:
                print(f"Unknown command '/show {what}'. Type /? for help")
            else:
                sys.stderr.write(HELP_SHOW + "\n")
            return
        body: dict[str, Any] = {"model": self.session.model}
        if self.system:
            body["system"] = self.system
        resp = self.client.request("POST", "/api/show", body)
        if what == "info":
            print_show(resp, False, sys.stderr)
        elif what == "parameters":
            print(resp.get("parameters") or "No additional parameters were specified.")
            for key, value in self.session.options.items():
                print(f"{key:<30} {value}")
        else:
            print(resp.get(what) or f"No {what} was specified for this model.")
