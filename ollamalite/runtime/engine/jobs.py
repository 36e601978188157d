"""What crosses between the event loop and the engine thread: a job in, events out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from ollamalite.options import SamplingParams


@dataclass(frozen=True)
class Logprob:
    """A generated token's log-probability: the log-softmax of the raw logits the sampler saw
    (before penalties, temperature or grammar, as Ollama and OpenAI report it), and the most
    likely tokens at that position when asked for. Tokens are their bytes as the model spells
    them (special tokens included), which may be part of a UTF-8 character."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class TextChunk:
    """Newly generated text (whole UTF-8 characters), how many tokens produced it and, when the
    job asked, their logprobs (one per token, in order)."""

    text: str
    n_tokens: int
    logprobs: tuple[Logprob, ...] = ()


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
    stop_sequence: str | None = None  # the stop string that ended it (Anthropic reports it)
    # Speculative decoding: tokens drafted, and those of them kept (eval_count counts them too).
    drafted_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(frozen=True)
class Failed:
    message: str


@dataclass(frozen=True, eq=False)
class Embedded:
    """The one result of an embedding job: a pooled vector per input (rows, in input order,
    not normalised) and the tokens evaluated for them."""

    vectors: np.ndarray  # float32, shape (len(inputs), n_embd)
    prompt_eval_count: int


Event = Union[TextChunk, Finished, Failed]
EmbedEvent = Union[Embedded, Failed]


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
    logprobs: int | None = None  # None: none; n: each token's logprob and its n likeliest rivals
    shift: bool = True  # at the context's end, drop older tokens and go on (else "length")
    num_keep: int = 4  # prompt tokens a shift never drops (-1: the whole prompt)
    cancelled: bool = False
    submitted_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class EmbedJob:
    """Inputs (token ids, already cut to the embedding context) to embed in one request.

    The engine thread runs them in batches between generation steps and emits one `Embedded`
    or `Failed`; `cancelled` drops the job at its next batch.
    """

    inputs: list[list[int]]
    emit: Callable[[EmbedEvent], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
