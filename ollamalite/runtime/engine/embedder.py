"""Pooled embeddings on a second llama.cpp context of an engine's model.

Only the engine thread may call llama_decode (llama.cpp here uses OpenMP: a second calling
thread would start a second thread team), so the engine creates this context on its first
embedding job and runs one batch of it per loop turn, between generation steps. The
generation slots' KV caches are never touched.
"""

from __future__ import annotations

import logging

import llama_cpp
import numpy as np

from ollamalite.runtime.engine.jobs import Embedded, EmbedJob
from ollamalite.runtime.engine.llama import LlamaModel, new_context, put_token

log = logging.getLogger(__name__)

# Sequences (inputs) decoded together in one batch; more inputs take several batches.
MAX_SEQS = 64
# Pooling an embedding model's GGUF may ask for; anything else (none: a chat model; rank: a
# reranker) is pooled by the mean of the token states.
_POOLED = {llama_cpp.LLAMA_POOLING_TYPE_MEAN, llama_cpp.LLAMA_POOLING_TYPE_CLS,
           llama_cpp.LLAMA_POOLING_TYPE_LAST}


def pooling_for(model: LlamaModel) -> int:
    """The GGUF's own pooling for an embedding model; mean pooling for a chat model."""
    pooling = model.pooling_type
    return pooling if pooling in _POOLED else llama_cpp.LLAMA_POOLING_TYPE_MEAN


def pack(inputs: list[list[int]], start: int, capacity: int, max_seqs: int = MAX_SEQS) -> int:
    """How many inputs from `start` on fit one batch of `capacity` tokens (at least one)."""
    used = 0
    end = start
    while end < len(inputs) and end - start < max_seqs:
        if end > start and used + len(inputs[end]) > capacity:
            break
        used += len(inputs[end])
        end += 1
    return end - start


class Embedder:
    """A context with `embeddings = true` whose batches hold whole inputs, one sequence each.

    llama.cpp pools per micro-batch, so a sequence must never be split across two: the batch
    and micro-batch sizes both equal the context size, and every input is at most that long.
    """

    def __init__(self, model: LlamaModel, n_ctx: int, n_threads: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.n_embd = model.n_embd
        self.pooling = pooling_for(model)
        self.ctx = _new_context(model, n_ctx, self.pooling, n_threads)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        self._job: EmbedJob | None = None
        self._rows: list[np.ndarray] = []
        self._tokens = 0
        log.info("embedding context: %d tokens, pooling %d", n_ctx, self.pooling)

    def step(self, job: EmbedJob) -> Embedded | None:
        """Embed the job's next batch of inputs; the result once all of them are done."""
        if self._job is not job:
            self._job, self._rows, self._tokens = job, [], 0
        start = len(self._rows)
        count = pack(job.inputs, start, self.n_ctx)
        chunk = job.inputs[start:start + count]
        self._rows.extend(self._decode(chunk))
        self._tokens += sum(len(tokens) for tokens in chunk)
        if len(self._rows) < len(job.inputs):
            return None
        result = Embedded(np.stack(self._rows), self._tokens)
        self.forget()
        return result

    def forget(self) -> None:
        """Drop a job's partial results (it finished, failed or was cancelled)."""
        self._job, self._rows, self._tokens = None, [], 0

    def _decode(self, chunk: list[list[int]]) -> list[np.ndarray]:
        n = 0
        for seq_id, tokens in enumerate(chunk):
            if not tokens or len(tokens) > self.n_ctx:
                raise ValueError(f"an input of {len(tokens)} tokens cannot be embedded in a "
                                 f"context of {self.n_ctx} tokens")
            for pos, token in enumerate(tokens):
                # every token is an output: llama.cpp's mean pooling averages all of them
                put_token(self.batch, n, token, pos, seq_id, True)
                n += 1
        self.batch.n_tokens = n
        if self.mem:  # encoder-only models (BERT) keep no KV cache
            llama_cpp.llama_memory_clear(self.mem, True)
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for an embedding batch")
        return [self._pooled(seq_id) for seq_id in range(len(chunk))]

    def _pooled(self, seq_id: int) -> np.ndarray:
        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq_id)
        if not ptr:
            raise RuntimeError(f"llama.cpp returned no pooled embedding for sequence {seq_id}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def _new_context(model: LlamaModel, n_ctx: int, pooling: int,
                 n_threads: int) -> llama_cpp.llama_context_p:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = n_ctx
    params.n_seq_max = MAX_SEQS
    # Unified: a split cache would give each sequence n_ctx / n_seq_max cells and make
    # llama.cpp cut the batch into equal-length micro-batches, splitting sequences.
    params.kv_unified = True
    params.embeddings = True
    # Batch neighbours change an input's vector only through summation order, which the
    # 8-bit activation quantisation of the next layer can amplify. Measured over 24 mixed
    # inputs (unit vectors): flash attention moved them by 3e-3 (median; cosine to the solo
    # vector >= 0.9997); plain attention by 6e-8 (median; worst 1.6e-3, cosine >= 0.99998).
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.pooling_type = pooling
    return new_context(model, params, n_threads, "an embedding context")
