"""Prompt-lookup (n-gram) drafts for speculative decoding, and when a slot should draft.

An answer that rewrites pasted code repeats long runs of its prompt: when the last `NGRAM`
tokens of the sequence (prompt and generated text) occurred before, the tokens that followed
them then are a cheap guess at what comes next. The engine decodes the guess with the slot's
next token and keeps the drafted tokens its own sampler would have picked anyway.
"""

from __future__ import annotations

# Provisional until measured on the code-edit benchmark: the tokens to match, and the most to
# draft at once (drafting far costs a whole batch per rejected run: llama-server's settings that
# draft 16 fell to 0.25x its plain decoding here).
NGRAM = 3
MAX_DRAFT = 8
# Acceptance estimate: an exponential average of each draft's accepted fraction, starting at
# RATE_START. Below MIN_RATE the slot stops drafting for BACKOFF_STEPS decode steps (plain text
# rarely repeats its prompt; each rejected draft is paid for in batch time), then tries again.
RATE_START = 0.5
RATE_WEIGHT = 0.3
MIN_RATE = 0.3
BACKOFF_STEPS = 16


class Drafter:
    """One job's sequence, an index from each n-gram to where its latest continuation starts,
    and the acceptance rate of the drafts taken from it."""

    def __init__(self, prompt: list[int]) -> None:
        self.tokens: list[int] = []
        self._next_after: dict[tuple[int, ...], int] = {}
        self.rate = RATE_START
        self._paused = 0
        for token in prompt:
            self.add(token)

    def add(self, token: int) -> None:
        """Append a token; the n-gram before it now has a known continuation (updating the
        index here keeps each lookup a dictionary read, not a scan)."""
        self.tokens.append(token)
        if len(self.tokens) > NGRAM:
            self._next_after[tuple(self.tokens[-NGRAM - 1:-1])] = len(self.tokens) - 1

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the last
        n-gram; none while backing off or without a match."""
        if self._paused:
            self._paused -= 1
            return []
        if limit <= 0 or len(self.tokens) < NGRAM:
            return []
        start = self._next_after.get(tuple(self.tokens[-NGRAM:]))
        return [] if start is None else self.tokens[start:start + min(limit, MAX_DRAFT)]

    def record(self, drafted: int, accepted: int) -> None:
        """A draft of `drafted` tokens was checked and `accepted` of them kept."""
        self.rate += RATE_WEIGHT * (accepted / drafted - self.rate)
        if self.rate < MIN_RATE:
            self._paused = BACKOFF_STEPS
            self.rate = RATE_START


def draft_budget(generating: int) -> int:
    """The most tokens a slot may draft in a step where `generating` slots decode: on this CPU
    a step with one slot mostly reads the weights, so a few more rows are cheap (a batch of 4
    tokens costs ~2.8x one); with several slots the batch is already compute-bound and a
    rejected draft slows every one of them, so two share MAX_DRAFT and more do not draft."""
    return MAX_DRAFT // generating if 0 < generating <= 2 else 0
