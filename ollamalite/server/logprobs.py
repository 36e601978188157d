"""Generated tokens' logprobs as each protocol spells them.

Ollama (`/api/generate`, `/api/chat`) and OpenAI's chat completions share one per-token object,
`{"token", "logprob", "bytes", "top_logprobs"}`; OpenAI's legacy completions use parallel lists.
A token that is part of a UTF-8 character reads as U+FFFD in `token`; `bytes` has it exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

from ollamalite.runtime.engine.jobs import Logprob


def _text(token: bytes) -> str:
    return token.decode("utf-8", errors="replace")


def _entry(token: bytes, logprob: float) -> dict[str, Any]:
    return {"token": _text(token), "logprob": logprob, "bytes": list(token)}


def token_objects(logprobs: Sequence[Logprob], always_top: bool = False) -> list[dict[str, Any]]:
    """One object per token; `top_logprobs` only when alternatives were asked for (Ollama
    omits it), or always, empty when none were (`always_top`: OpenAI chat)."""
    out = []
    for lp in logprobs:
        item = _entry(lp.token, lp.logprob)
        if lp.top or always_top:
            item["top_logprobs"] = [_entry(token, value) for token, value in lp.top]
        out.append(item)
    return out


class CompletionLogprobs:
    """OpenAI's legacy `/v1/completions` shape, chunk after chunk: `text_offset` counts the
    characters of the whole answer, so a stream keeps counting where the last chunk ended."""

    def __init__(self) -> None:
        self.offset = 0

    def lists(self, logprobs: Sequence[Logprob]) -> dict[str, Any]:
        tokens = [_text(lp.token) for lp in logprobs]
        offsets = []
        for token in tokens:
            offsets.append(self.offset)
            self.offset += len(token)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
                "top_logprobs": [{_text(t): v for t, v in lp.top} for lp in logprobs],
                "text_offset": offsets}
