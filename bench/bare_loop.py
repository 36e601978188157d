"""The limit: llama.cpp's greedy decode loop through llama-cpp-python's low-level API, bare.

No server, no sampler chain, no text: a `llama_batch` holds one token per sequence, one
`llama_decode` per step, and numpy's argmax over each sequence's logits picks the next token.
Whatever a server adds on top of this (scheduling, sampling, detokenizing, JSON, sockets) can
only make it slower, so this is the ceiling a serving path is measured against.

The context is made as ollamalite's engine makes its own (`_new_context` in
ollamalite/engine/engine.py): `N_CTX` tokens per sequence times the number of sequences, one
KV cache per sequence (`kv_unified=False`), llama.cpp's default flash-attention setting
(automatic), `n_batch = n_ubatch = 512`, the same threads for prompt and decode. So a gap
between this loop and the server is the serving path, not a different attention kernel or
cache layout.

Each run starts from an empty KV cache (`llama_memory_clear`) and evaluates its prompts in
batches of `N_BATCH` tokens (one for the story openings; several for the code-edit prompts), so
its time to first token is that of a prompt no cache has seen, as in every system.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import llama_cpp
import numpy as np
from common import N_CTX, THREADS, Run, cpu_plan

N_BATCH = 512  # ollamalite's default (its engine uses max(n_batch, slots) for both sizes)


class BareModel:
    """Weights and vocabulary, loaded as ollamalite loads them (CPU, mmap, its extra buffer
    types decision)."""

    def __init__(self, path: Path, extra_bufts: bool | None = None) -> None:
        """`extra_bufts`: llama.cpp's extra CPU buffer types, by default as ollamalite decides."""
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load chatter
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = cpu_plan().extra_bufts if extra_bufts is None else extra_bufts
        self.ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        """With the start-of-text token, as the servers tokenize a raw prompt."""
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, True, True)
        if n < 0:
            raise RuntimeError(f"tokenizing needs {-n} tokens, more than {capacity}")
        return list(buf[:n])

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def close(self) -> None:
        llama_cpp.llama_model_free(self.ptr)


class BareLoop:
    """A context with `n_seq` sequences that decodes them together, one batch per step."""

    def __init__(self, model: BareModel, n_seq: int) -> None:
        self.model = model
        self.n_seq = n_seq
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = N_CTX * n_seq
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = THREADS
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} tokens")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def run(self, prompts: list[list[int]], n: int) -> list[Run]:
        """Greedy-decode `n` tokens for each prompt (one per sequence), all in one batch.

        A sequence that produces an end-of-generation token stops there."""
        if len(prompts) != self.n_seq:
            raise ValueError(f"need {self.n_seq} prompts")
        llama_cpp.llama_memory_clear(self.mem, True)
        pending = [list(p) for p in prompts]
        positions = [0] * self.n_seq
        arrivals: list[list[float]] = [[] for _ in prompts]
        finish = ["length"] * self.n_seq
        active = list(range(self.n_seq))
        started = time.perf_counter()
        while active:
            outputs = self._fill(active, pending, positions)
            if llama_cpp.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")
            tokens = {seq: self._argmax(i) for seq, i in outputs.items()}
            now = time.perf_counter()
            for seq, token in tokens.items():
                if self.model.is_eog(token):
                    finish[seq] = "stop"
                else:
                    arrivals[seq].append(now)
                    pending[seq] = [token]
            active = [seq for seq in active
                      if finish[seq] == "length" and len(arrivals[seq]) < n]
        return [Run(started, times, len(times), reason)
                for times, reason in zip(arrivals, finish, strict=True)]

    def _fill(self, active: list[int], pending: list[list[int]],
              positions: list[int]) -> dict[int, int]:
        """Put each active sequence's pending tokens in the batch, as many as fit (a long prompt
        takes several steps); logits for a sequence's last one.

        Returns the batch index of those logits for each sequence whose tokens are all in."""
        b = self.batch
        i = 0
        outputs: dict[int, int] = {}
        for seq in active:
            take = pending[seq][:N_BATCH - i]
            for j, token in enumerate(take):
                b.token[i] = token
                b.pos[i] = positions[seq]
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = j == len(pending[seq]) - 1
                positions[seq] += 1
                i += 1
            pending[seq] = pending[seq][len(take):]
            if take and not pending[seq]:
                outputs[seq] = i - 1
        b.n_tokens = i
        return outputs

    def _argmax(self, index: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))
        return int(np.argmax(logits))

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
