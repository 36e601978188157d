"""The one embedding path shared by every embedding route: texts -> tokens -> pooled vectors.

/api/embed, /api/embeddings and /v1/embeddings call `embed_texts` (raw pooled vectors) or
`embed_unit` (unit length, optionally shortened); nothing here knows HTTP.

Tokenizing runs in an executor, inference on the model's engine thread (one batch per engine
step, between generation steps); the event loop only waits for the result and normalises it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from ollamalite.errors import ApiError, BadRequest
from ollamalite.generation import stats
from ollamalite.options import RunOptions, merge, run_options
from ollamalite.runtime.engine.jobs import Embedded, EmbedEvent, EmbedJob, Failed
from ollamalite.runtime.scheduler import Runner, Scheduler

TOO_LONG = "the input length exceeds the context length"


@dataclass(frozen=True)
class Embeddings:
    """One row per input, in input order; `prompt_eval_count` sums their tokens."""

    vectors: np.ndarray
    prompt_eval_count: int


def context_limit(runner: Runner, opts: RunOptions) -> int:
    """Tokens one input may have: the engine's embedding context, or a smaller `num_ctx`."""
    limit = runner.engine.embed_ctx
    return min(opts.num_ctx, limit) if opts.num_ctx else limit


def fit(tokens: list[int], limit: int, keep_last: bool, truncate: bool) -> list[int]:
    """Cut an input to `limit` tokens (keeping a closing separator), or refuse it."""
    if len(tokens) <= limit:
        return tokens
    if not truncate:
        raise BadRequest(TOO_LONG)
    return tokens[:limit - 1] + tokens[-1:] if keep_last and limit > 1 else tokens[:limit]


def input_tokens(runner: Runner, texts: list[str], limit: int, truncate: bool) -> list[list[int]]:
    """Tokenize every input with the model's own BOS/EOS (blocking: CPU)."""
    model = runner.model
    result = []
    for i, text in enumerate(texts):
        tokens = model.tokenize(text, add_special=True)
        if not tokens:
            raise BadRequest(f"input {i} is empty: nothing to embed")
        result.append(fit(tokens, limit, model.adds_eos, truncate))
    return result


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows to unit length (all-zero rows stay zero), as Ollama does; NaN/Inf are refused."""
    if not np.all(np.isfinite(vectors)):
        raise BadRequest("embedding contains NaN or Inf values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def check_dimensions(dimensions: int | None, n_embd: int) -> None:
    """`dimensions` may shorten a vector, never lengthen it (checked before any inference)."""
    if dimensions is not None and not 1 <= dimensions <= n_embd:
        raise BadRequest(f"dimensions must be between 1 and {n_embd}, the model's "
                         "embedding size")


def shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first `dimensions` values of each normalised row and normalise again."""
    check_dimensions(dimensions, vectors.shape[1])
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    return normalize(vectors[:, :dimensions])


async def embed(runner: Runner, texts: list[str], opts: RunOptions,
                truncate: bool = True) -> Embeddings:
    """Raw (not normalised) pooled vectors of `texts` from the runner's engine."""
    if not texts:
        return Embeddings(np.zeros((0, runner.model.n_embd), np.float32), 0)
    loop = asyncio.get_running_loop()
    limit = context_limit(runner, opts)
    inputs = await loop.run_in_executor(None, input_tokens, runner, texts, limit, truncate)
    done: asyncio.Future[EmbedEvent] = loop.create_future()

    def settle(event: EmbedEvent) -> None:
        if not done.done():
            done.set_result(event)

    job = EmbedJob(inputs=inputs, emit=lambda event: loop.call_soon_threadsafe(settle, event))
    runner.engine.submit_embed(job)
    try:
        event = await done
    finally:
        job.cancel()  # a no-op once finished; drops the job if the client went away
    if isinstance(event, Failed):
        raise ApiError(event.message)
    assert isinstance(event, Embedded)
    return Embeddings(event.vectors, event.prompt_eval_count)


@dataclass(frozen=True)
class EmbedRequest:
    """One embedding request in protocol-neutral terms."""

    model: str
    texts: list[str]
    options: dict[str, Any]  # validated Ollama options
    keep_alive: float | None = None
    truncate: bool = True
    dimensions: int | None = None


async def embed_texts(scheduler: Scheduler, req: EmbedRequest) -> tuple[Embeddings, float]:
    """Raw pooled vectors of the request's texts, and the seconds spent loading the model. A
    larger `num_ctx` does not reload the model: inputs are bounded by its embedding context."""
    if not req.model:
        raise BadRequest("model is required")
    entry = scheduler.entry(req.model)
    opts = run_options(merge(entry.options, req.options))
    async with scheduler.use(entry.name, keep_alive=req.keep_alive) as lease:
        check_dimensions(req.dimensions, lease.runner.model.n_embd)
        result = await embed(lease.runner, req.texts, opts, req.truncate)
    stats.current().embedded(entry.name, result.prompt_eval_count)
    return result, lease.load_duration


async def embed_unit(scheduler: Scheduler, req: EmbedRequest
                     ) -> tuple[list[list[float]], int, float]:
    """Unit-length vectors (cut to `dimensions`), the prompt tokens evaluated and the seconds
    spent loading: /api/embed's and /v1/embeddings' results."""
    result, load_s = await embed_texts(scheduler, req)
    vectors = shorten(normalize(result.vectors), req.dimensions)
    return vectors.tolist(), result.prompt_eval_count, load_s
