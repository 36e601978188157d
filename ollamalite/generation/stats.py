"""What one request's generation did — its model, token counts, time to first token, the gaps
between tokens — for the access log and the metrics.

The server opens a `RequestStats` per request (`track`); the generation core fills the current
one as the engine's events arrive. A context variable carries it, so every protocol adapter
(native, OpenAI, and any added later) is measured the same way without passing it along.
Outside a tracked request the core fills a throwaway object.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

from ollamalite.runtime.engine.jobs import Finished, TextChunk


@dataclass
class RequestStats:
    """Times are seconds from `started` (perf_counter() when the request arrived)."""

    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    prompt_tokens: int = 0  # evaluated: Ollama's prompt_eval_count
    reused_tokens: int = 0  # prompt tokens found in the slot's cache, not evaluated again
    generated_tokens: int = 0  # Ollama's eval_count
    drafted_tokens: int = 0  # speculative decoding: tokens drafted, and those the sampler kept
    accepted_tokens: int = 0
    ttft: float | None = None  # to the engine's first output (text or the end)
    token_gaps: list[float] = field(default_factory=list)  # per token, after the first output
    _last: float | None = field(default=None, repr=False)

    def record(self, event: TextChunk | Finished, now: float) -> None:
        """An engine event arrived at `now`. The first one, text or the end, is the first token
        (an answer may be empty); a chunk of several tokens (one multi-byte character) spreads
        its gap evenly over them."""
        n_tokens = event.n_tokens if isinstance(event, TextChunk) else 0
        if self._last is None:
            self.ttft = now - self.started
        elif n_tokens:
            self.token_gaps.extend([(now - self._last) / n_tokens] * n_tokens)
        self._last = now
        if isinstance(event, Finished):
            self.prompt_tokens += event.prompt_eval_count
            self.reused_tokens += event.prompt_tokens - event.prompt_eval_count
            self.generated_tokens += event.eval_count
            self.drafted_tokens += event.drafted_tokens
            self.accepted_tokens += event.accepted_tokens

    def embedded(self, model: str, prompt_tokens: int) -> None:
        self.model = model
        self.prompt_tokens += prompt_tokens


_CURRENT: ContextVar[RequestStats | None] = ContextVar("request_stats", default=None)


@contextmanager
def track() -> Iterator[RequestStats]:
    """Measure the request served inside the block (the server's middleware); a connection's
    task serves its requests one after another, so each is forgotten when it ends."""
    stats = RequestStats()
    token = _CURRENT.set(stats)
    try:
        yield stats
    finally:
        _CURRENT.reset(token)


def current() -> RequestStats:
    """The stats of the request being served, or a throwaway one outside a tracked request."""
    return _CURRENT.get() or RequestStats()
