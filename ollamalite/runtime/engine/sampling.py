"""Per-request llama.cpp sampler chains built from Ollama's sampling options."""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import numpy as np

from ollamalite.options import SamplingParams


class GrammarError(ValueError):
    """llama.cpp could not parse a GBNF grammar (its parser prints why on stderr)."""


def grammar_sampler(vocab: ctypes.c_void_p | None, grammar: str) -> ctypes.c_void_p:
    """A grammar stage over `vocab`. With no vocab it only parses: the check done before a
    request reaches the engine, so that a bad grammar is a client error, not an engine one."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar")
    return sampler


def check_grammar(grammar: str) -> None:
    """Raise GrammarError unless llama.cpp parses `grammar` (no model needed)."""
    llama_cpp.llama_sampler_free(grammar_sampler(None, grammar))


def seed_value(seed: int) -> int:
    """Ollama's -1 (random) is llama.cpp's LLAMA_DEFAULT_SEED; others wrap to 32 bits."""
    return llama_cpp.LLAMA_DEFAULT_SEED if seed < 0 else seed & 0xFFFFFFFF


class SamplerChain:
    """Owns one `llama_sampler` chain; the order follows llama.cpp's common sampler.

    A `grammar` (GBNF over `vocab`) is checked the way llama.cpp's common sampler does it:
    the chain first picks from the unconstrained logits; only when the grammar rejects that
    token is the grammar applied to the whole vocabulary before the chain picks again. Greedy
    picks are what a grammar-first chain picks, at about half the cost per token."""

    def __init__(self, params: SamplingParams, n_vocab: int, grammar: str | None = None,
                 vocab: ctypes.c_void_p | None = None) -> None:
        """Raises GrammarError if `grammar` does not parse."""
        self.grammar = grammar_sampler(vocab, grammar) if grammar else None
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.ptr = llama_cpp.llama_sampler_chain_init(chain_params)
        for sampler in _stages(params, n_vocab):
            llama_cpp.llama_sampler_chain_add(self.ptr, sampler)
        self._candidates = Candidates(n_vocab) if grammar else None

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Pick a token from the logits at batch position `index` (and record it)."""
        if self.grammar is None:
            return llama_cpp.llama_sampler_sample(self.ptr, ctx, index)
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        token = self._candidates.pick(logits, [self.ptr])
        if not self._allowed(token):
            token = self._candidates.pick(logits, [self.grammar, self.ptr])
            if not self._allowed(token):  # accepting it would abort the process in llama.cpp
                raise GrammarError("no token of the vocabulary continues the grammar")
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def _allowed(self, token: int) -> bool:
        one = llama_cpp.llama_token_data(token, 1.0, 0.0)
        array = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return math.isfinite(one.logit)

    def close(self) -> None:
        for sampler in (self.ptr, self.grammar):
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
        self.ptr = self.grammar = None


def log_softmax(logits: ctypes.POINTER(ctypes.c_float), n_vocab: int, token: int, top: int
                ) -> tuple[float, list[tuple[int, float]]]:
    """`token`'s log-probability under raw `logits`, and the `top` likeliest tokens with
    theirs, most likely first (float64 sums: a 150k-entry vocabulary loses digits in float32)."""
    row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
    peak = row.max()
    norm = peak + math.log(np.exp(row - peak).sum())
    best = np.argpartition(row, -top)[-top:] if top else np.empty(0, dtype=np.intp)
    best = best[np.argsort(-row[best], kind="stable")]
    return float(row[token] - norm), [(int(t), float(row[t] - norm)) for t in best]


class Candidates:
    """A reusable `llama_token_data_array` over the whole vocabulary, filled with numpy."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.array = llama_cpp.llama_token_data_array(
            self.data.ctypes.data_as(llama_cpp.llama_token_data_p), n_vocab, -1, False)

    def pick(self, logits: ctypes.POINTER(ctypes.c_float), samplers: list) -> int:
        """Apply `samplers` in order to fresh candidates from `logits`; the chosen token."""
        self.data["id"] = self.ids
        self.data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.data["p"] = 0.0
        self.array.size, self.array.selected, self.array.sorted = self.n_vocab, -1, False
        for sampler in samplers:
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self.array))
        return int(self.data["id"][self.array.selected])


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _stages(p: SamplingParams, n_vocab: int) -> list[ctypes.c_void_p]:
    seed = seed_value(p.seed)
    stages = []
    if p.repeat_last_n != 0 and (p.repeat_penalty != 1.0 or p.frequency_penalty or
                                 p.presence_penalty):
        last_n = n_vocab if p.repeat_last_n < 0 else p.repeat_last_n
        stages.append(llama_cpp.llama_sampler_init_penalties(
            n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty))
    if p.temperature <= 0:
        return stages + [llama_cpp.llama_sampler_init_greedy()]
    if p.mirostat == 1:
        return stages + [llama_cpp.llama_sampler_init_temp(p.temperature),
                         llama_cpp.llama_sampler_init_mirostat(
                             n_vocab, seed, p.mirostat_tau, p.mirostat_eta, 100)]
    if p.mirostat == 2:
        return stages + [llama_cpp.llama_sampler_init_temp(p.temperature),
                         llama_cpp.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau,
                                                                  p.mirostat_eta)]
    if p.top_k > 0:
        stages.append(llama_cpp.llama_sampler_init_top_k(p.top_k))
    if p.typical_p < 1.0:
        stages.append(llama_cpp.llama_sampler_init_typical(p.typical_p, 1))
    if p.top_p < 1.0:
        stages.append(llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
    if p.min_p > 0.0:
        stages.append(llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
    stages.append(llama_cpp.llama_sampler_init_temp(p.temperature))
    stages.append(llama_cpp.llama_sampler_init_dist(seed))
    return stages
