"""What crosses between the event loop and the engine thread: a job in, events out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Union

from ollamalite.options import SamplingParams


@dataclass(frozen=True)
class TextChunk:
    """Newly generated text (whole UTF-8 characters) and how many tokens produced it."""

    text: str
    n_tokens: int


@dataclass(frozen=True)
class Finished:
    """The last event of a job; durations are nanoseconds, as Ollama reports them."""

    done_reason: str  # "stop" | "length" | "cancel"
    prompt_tokens: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    tokens: tuple[int, ...]  # prompt + generated, for /api/generate's `context`


@dataclass(frozen=True)
class Failed:
    message: str


Event = Union[TextChunk, Finished, Failed]


@dataclass(eq=False)
class Job:
    """One generation request as the engine sees it.

    `emit` is called from the engine thread for every event; the submitter makes it thread-safe.
    `cancelled` is set by the submitter and read by the engine at each step.
    """

    prompt: list[int]
    sampling: SamplingParams
    emit: Callable[[Event], None]
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    num_ctx: int | None = None
    num_batch: int | None = None
    grammar: str | None = None  # GBNF the output must follow (structured outputs)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True
