"""Prompt-lookup (n-gram) drafts for speculative decoding, and how long a draft pays.

An answer that rewrites pasted code repeats long runs of its prompt: when the last `NGRAM`
tokens of the sequence (prompt and generated text) occurred before, the tokens that followed
them then are a cheap guess at what comes next. The engine decodes the guess with the slot's
next token and keeps the drafted tokens its own sampler would have picked anyway. The engine's
recent answers are a second source (`Memory`): a request asked again (regenerate, the same edit
of a file) drafts from the earlier answer.

A drafted row is not free on a CPU: here each costs about 0.7 of a token of decoding
(`Prices`; an engine on a machine whose timing differs far from that drafts by its own), so a
draft pays only where it is likely to be kept. Each slot estimates how often its lookup guesses
the next token right, from every token it generates (a guess is made and checked whether or not
it was drafted, so a slot that stopped drafting keeps learning), and `plan` gives each slot the
draft length that most raises the step's expected tokens per unit of time, given what else the
step decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tokens matched to find a continuation, and at most MAX_DRAFT drafted tokens per step, all slots
# together (the context's batch is sized for them). bench/draft_replay.py on the bundled model's
# greedy answers (8 code edits, 8 stories, 320 tokens): n = 3 to 6 and 8 or 12 drafted tokens
# all save 9-13% of code-edit decoding and 25-27% of stories; 4 keeps as many tokens as 3 with
# 15% fewer drafted (fewer wasted rows beside other slots), 12 keeps 1% more than 8. Asked again
# (bench/speculative.py --again), stories decoded 1.42-1.59x plain with up to 16, 1.28-1.40x
# with 8; `plan` itself keeps drafts short unless the slot's guesses are nearly always right.
NGRAM = 4
MAX_DRAFT = 16
# Cost of a step, in units of one row: UBATCH for each llama.cpp micro-batch it runs (graph
# set-up, one pass over the weights) plus ROW for each token row. Measured on this CPU inside
# the engine, one slot drafting on the code-edit workload (430-750 cells): llama_decode of 1, 2,
# 3, 4, 5 rows with logits took 10.3, 17.5, 24.7, 31.5, 37.6 ms, so each row ~7 ms and the rest
# ~3.3 ms (bench/step_cost.py, at 500 cells: 10.0 ms, then ~6 ms a row). Alone, a slot drafts
# only if its guesses are right more than 1/1.5 = 67% of the time: first-request code edits
# (~61% kept) drafted at the 0.9 once used ran 0.90-0.96x. A draft beside other generating
# slots has more rows than they do, so llama.cpp runs its extra rows in a micro-batch of their
# own, which costs SPLIT more than their rows (step_cost.py --streams 3: a fourth slot's first
# row 5.9 ms, its second 10.6, further ones 5.3-6.2).
ROW = 1.0
UBATCH = 0.5
SPLIT = 0.75
# A timed micro-batch price outside these bounds is a measurement gone wrong (a busy machine):
# from rows that cost a whole step each (memory-bound decoding is far cheaper per extra row) to
# rows nearly free beside a step's fixed cost (a wide machine with a small model).
MIN_UBATCH = 0.05
MAX_UBATCH = 8.0
# The load-time timing is a rough probe (an empty sequence, a few tries): on the machine the
# defaults were tuned on end to end (in-engine 0.46) it gave 0.59, 0.76 and 1.02 in three loads.
# Only a price beyond NOISE times the default or below its 1/NOISE is taken: a machine that
# differs that much (rows nearly free beside a step's fixed cost) drafts by its own prices.
NOISE = 3.0
# Where the current n-gram occurred in both the job's own text and the engine's earlier answers,
# the occurrence whose preceding tokens agree longer with the current ones wins (up to AGREE).
AGREE = 16
# N-grams of finished answers the engine remembers; past this it forgets them all and starts
# again (a bound on memory, ~15 MB, and on stale answers).
MEMORY_NGRAMS = 1 << 16
# The hit-rate estimate: decayed counts of right and wrong guesses, starting from a prior worth
# PRIOR observations at PRIOR_RATE; DECAY per observation forgets old text (an edit's answer
# alternates between copied runs and new lines).
PRIOR = 4.0
PRIOR_RATE = 0.6
DECAY = 0.9


Occurrence = tuple[list[int], int]  # a token sequence, and where a continuation starts in it


class Memory:
    """The engine's recent answers (each with the prompt tokens just before it): for each
    n-gram, where its latest continuation starts. Only the engine thread touches it."""

    def __init__(self) -> None:
        self._next_after: dict[tuple[int, ...], Occurrence] = {}

    def remember(self, sequence: list[int], answer_start: int) -> None:
        """Index the answer that starts at `answer_start` of `sequence`, with the n-gram
        before it (what the next request's answer starts after)."""
        tokens = sequence[max(answer_start - NGRAM, len(sequence) - MEMORY_NGRAMS, 0):]
        if len(self._next_after) + len(tokens) > MEMORY_NGRAMS:
            self._next_after.clear()
        for end in range(NGRAM, len(tokens)):
            self._next_after[tuple(tokens[end - NGRAM:end])] = (tokens, end)

    def get(self, ngram: tuple[int, ...]) -> Occurrence | None:
        return self._next_after.get(ngram)


class Drafter:
    """One job's sequence, an index from each n-gram to where its latest continuation starts,
    and how often the lookup's guess was the token generated next."""

    def __init__(self, prompt: list[int], memory: Memory | None = None) -> None:
        self.tokens: list[int] = []
        self._next_after: dict[tuple[int, ...], int] = {}
        self._memory = memory
        self._hits = PRIOR * PRIOR_RATE
        self._seen = PRIOR
        for token in prompt:
            self._append(token)

    @property
    def rate(self) -> float:
        """The estimated chance that the lookup's guess is the next token."""
        return self._hits / self._seen

    def add(self, token: int) -> None:
        """Append a generated token, first scoring the guess the lookup had for it."""
        guess = self.continuation(1)
        if guess:
            self._hits = self._hits * DECAY + (guess[0] == token)
            self._seen = self._seen * DECAY + 1
        self._append(token)

    def continuation(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the best earlier occurrence of the last n-gram
        (the job's own latest one, or an earlier answer's whose context agrees longer); none
        without a match."""
        if limit <= 0 or len(self.tokens) < NGRAM:
            return []
        ngram = tuple(self.tokens[-NGRAM:])
        start = self._next_after.get(ngram)
        found = None if start is None else (self.tokens, start)
        earlier = self._memory.get(ngram) if self._memory is not None else None
        if earlier is not None and (found is None
                                    or self._agreement(earlier) > self._agreement(found)):
            found = earlier
        return [] if found is None else found[0][found[1]:found[1] + limit]

    def _agreement(self, occurrence: Occurrence) -> int:
        """How many tokens before the occurrence's n-gram equal those before the current one."""
        tokens, start = occurrence
        n = 0
        while (n < AGREE and start - NGRAM - n > 0 and len(self.tokens) > NGRAM + n
               and tokens[start - NGRAM - n - 1] == self.tokens[-NGRAM - n - 1]):
            n += 1
        return n

    def _append(self, token: int) -> None:
        """The n-gram before `token` now has a known continuation (indexing here keeps each
        lookup a dictionary read, not a scan)."""
        self.tokens.append(token)
        if len(self.tokens) > NGRAM:
            self._next_after[tuple(self.tokens[-NGRAM - 1:-1])] = len(self.tokens) - 1


@dataclass(frozen=True)
class Candidate:
    """A slot's possible draft: the `tokens` it may check, its lookup's hit `rate`, and whether
    drafting gives it a micro-batch of its own (other generating slots share its one)."""

    tokens: list[int]
    rate: float
    shared: bool


@dataclass(frozen=True)
class Prices:
    """A step's cost in rows: `ubatch` for each micro-batch, ROW for each row, and `split` more
    for a draft's rows run in a micro-batch of their own beside other slots. The defaults are
    this project's measuring machine's (above); `timed` fits them to another."""

    ubatch: float = UBATCH
    split: float = SPLIT

    @classmethod
    def timed(cls, one_row: float, more_rows: float, extra: int) -> Prices:
        """From the time of a one-row step and of one with `extra` more rows of the same
        sequence: a row costs their difference over `extra`, the micro-batch what is left of
        the first (the defaults unless that is far from them: NOISE). A split draft's
        micro-batch keeps its measured share of that price."""
        row = (more_rows - one_row) / extra
        if row <= 0:
            return cls()
        ubatch = min(max((one_row - row) / row, MIN_UBATCH), MAX_UBATCH)
        if UBATCH / NOISE <= ubatch <= UBATCH * NOISE:
            return cls()
        return cls(ubatch, ubatch * SPLIT / UBATCH)

    def step(self, ubatches: int, rows: int) -> float:
        return ubatches * self.ubatch + rows * ROW


def plan(candidates: list[Candidate], tokens: float, cost: float,
         prices: Prices = Prices()) -> list[int]:
    """How many of each candidate's tokens to draft, given that the step without drafts yields
    `tokens` tokens for `cost` (in `prices`' units). The i-th drafted token of a slot
    is kept with chance rate**i (every one before it must be kept too); each slot in turn,
    likeliest first, takes the length that most raises the step's expected tokens per unit of
    cost, within MAX_DRAFT for the whole step. A step already long with prompt rows makes
    drafting cheap; one alone with a poor guesser makes it not worth a row."""
    lengths = [0] * len(candidates)
    room = MAX_DRAFT
    for i in sorted(range(len(candidates)), key=lambda i: -candidates[i].rate):
        candidate = candidates[i]
        best, gain, kept = tokens / cost, 0.0, 1.0
        for k in range(1, min(len(candidate.tokens), room) + 1):
            kept *= candidate.rate
            gain += kept
            extra = k * ROW + (prices.split if candidate.shared else 0.0)
            if (tokens + gain) / (cost + extra) > best:
                best, lengths[i], chosen = (tokens + gain) / (cost + extra), k, (gain, extra)
        if lengths[i]:
            tokens, cost = tokens + chosen[0], cost + chosen[1]
            room -= lengths[i]
    return lengths
