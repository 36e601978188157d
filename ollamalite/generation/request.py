"""One text generation in protocol-neutral terms: what every protocol adapter builds.

/api/chat, /api/generate, /v1/chat/completions, /v1/completions and /v1/messages each turn
their own wire request into a `TextRequest`; nothing below the adapters sees a protocol's field
names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]  # Ollama's message shape: role, content, thinking, tool_calls, ...


@dataclass
class TextRequest:
    """A chat (when `messages` is set) or a prompt completion, with validated values."""

    model: str
    messages: list[Message] | None = None
    prompt: str = ""
    suffix: str = ""  # fill-in-the-middle: the text after the gap (prompt completions only)
    system: str | None = None  # overrides the model's system prompt (prompt completions)
    template: str | None = None  # overrides the model's chat template (prompt completions)
    raw: bool = False  # the prompt goes to the model as it is, no template
    context: list[int] | None = None  # an earlier /api/generate's tokens to continue from
    images: list[str] | None = None  # base64 images of a prompt completion (chat: per message)
    tools: list[dict[str, Any]] | None = None
    force_tool: bool | str = False  # tool_choice: True, call one of `tools`; a name, that one
    think: bool | str | None = None
    format: Any = None  # "json", a JSON schema, or None
    options: dict[str, Any] = field(default_factory=dict)  # validated Ollama options
    keep_alive: float | None = None
    truncate: bool = True  # drop a chat's oldest turns to fit the context
    shift: bool = True  # a generation that fills the context drops older tokens and goes on
    logprobs: bool = False  # each generated token's logprob
    top_logprobs: int = 0  # and this many likeliest alternatives at each position (0-20)

    @property
    def chat(self) -> bool:
        return self.messages is not None

    @property
    def endpoint(self) -> str:
        """How Ollama names the capability in its errors (`does not support chat`)."""
        return "chat" if self.chat else "generate"

    @property
    def has_images(self) -> bool:
        """Whether any input carries images (refused: no vision models yet)."""
        return bool(self.images) or any(m.get("images") for m in self.messages or ())

    @property
    def empty(self) -> bool:
        """Nothing to generate from: Ollama then only loads (or unloads) the model."""
        return not self.messages if self.chat else not self.prompt
