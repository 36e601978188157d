"""One engine thread per loaded model: continuous batching over sequence slots.

Each step packs one token for every generating slot plus prompt chunks of newly admitted jobs
into a single `llama_batch` and calls `llama_decode` once (a batch llama.cpp refuses is decoded
again job by job, so a failure ends only the job that causes it). A generation that reaches the
end of its context shifts it, as Ollama does: the oldest half of what follows the kept start is
dropped from the KV cache and the rest moved back. A job goes to the free slot whose KV cache
shares the longest prefix with its prompt, so a chat's next turn evaluates only the new messages;
the cells a slot gives up go to the host-memory prompt cache (`prompt_cache.py`, with its disk
`prompt_disk.py`) and come back when a prompt continues them. Prompts are cut at fixed
positions and the batch ordered so that a prompt's numbers do not depend on the others (BLOCK,
`_ubatch_order`); the deterministic mode also keeps generated tokens' numbers apart and reuses
only exact cells. Embedding jobs run on the same thread, one batch after each generation step,
in a second context (`embedder.py`).

With speculation on, a generating slot may add a draft (`draft.py`) after its next token: the
batch asks logits at every drafted position, the job's own sampler picks at each in order, and
the drafted tokens are kept while they equal its picks; the cells after the first mismatch are
removed from the KV cache. One sampler call per emitted token, as without drafts, so sampling
is that of plain decoding (llama.cpp rounds a batch of one sequence's rows a little differently
from one row: docs/engine.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from ollamalite.runtime.engine.draft import (
    MAX_DRAFT,
    Candidate,
    Drafter,
    Memory,
    Prices,
    plan,
)
from ollamalite.runtime.engine.embedder import Embedder
from ollamalite.runtime.engine.jobs import (
    Embedded,
    EmbedJob,
    Event,
    Failed,
    Finished,
    Job,
    Logprob,
    TextChunk,
)
from ollamalite.runtime.engine.llama import (
    LlamaModel,
    new_context,
    put_token,
    restore_sequence,
    save_sequence,
    set_kv_cache,
)
from ollamalite.runtime.engine.prompt_cache import PromptCache, Saved, common_prefix, tokens_array
from ollamalite.runtime.engine.prompt_disk import engine_key
from ollamalite.runtime.engine.sampling import GrammarError, SamplerChain, log_softmax
from ollamalite.runtime.engine.text import TextAssembler

log = logging.getLogger(__name__)

# A cached tail longer than this is worth keeping (shorter ones are re-tokenizing noise): a
# new prompt sharing only the start of a slot's tokens gets a copy of that start elsewhere.
KEEP_TAIL = 8
# Fewer shared tokens than this are cheaper to evaluate again than to copy a slot's cache
# (a chat template's opening, shared by every conversation, is far shorter).
MIN_COPY = 64
# Restoring a saved prefix copies ~23 kB per token of this model's cells back in about 4 µs a
# token, while evaluating costs about 1 ms a token: a restore pays as soon as it brings a few
# tokens more than the slot already holds; fewer than this are not worth a lookup's risk of
# evicting the slot's own cells.
MIN_RESTORE = 16
# A slot's cells are saved to the host cache only when at least this many of them would be lost
# (shorter tails are a chat template's opening or a one-line prompt: cheap to evaluate again).
MIN_SAVE = 64
# Prompts are evaluated in blocks of this many positions (multiples of it from the start),
# the last, partial block on its own: llama.cpp's CPU flash attention computes a sequence's rows
# with a tiled kernel when a micro-batch holds 64 or more of them (GGML_FA_TILE_Q), with a
# per-row kernel below that, and the two round differently. Whole blocks always take the first,
# a last block the second, so a prompt's numbers never depend on how a step was cut.
BLOCK = 64
# Prompt tokens per step while other slots are generating. On this CPU a prompt row costs
# about 6 ms and a step of three generating slots 24 ms (bench/step_cost.py): a 512-token
# chunk holds the streams 3.1 s per token, two blocks 0.8 s, at the same prompt speed (about
# 160 tokens/s from 128 rows up; one block runs 30% slower, a few rows, which the streams'
# 2x would allow, far slower). Whole blocks either way (BLOCK).
PREFILL_BUDGET = 2 * BLOCK
# A lone row of a sequence holding more than this many cells takes llama.cpp's split-KV kernel
# (its KV view, padded to 256, reaches 512), which rounds differently from the per-row kernel
# that rows beside other sequences take: such a slot decodes in a micro-batch of its own.
SPLIT_KV_CELLS = 256
# `num_predict` -2 (Ollama's "fill the context"): generate until the context is full, no shift.
FILL_CONTEXT = -2
# A generation without `num_predict` ends after this many context lengths of tokens, shifts
# included.
UNBOUNDED_CONTEXTS = 10
# Draft prices are timed at load: a step of one row and one of 1 + PRICE_ROWS rows, each the
# fastest of PRICE_TRIES (after a warm-up round of one-row steps), under 0.1 s here.
PRICE_ROWS = 4
PRICE_TRIES = 3


class Slot:
    """One llama.cpp sequence: the tokens in its KV cache and the job it is serving."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []
        # The leading cells a cold evaluation of the same tokens computes bit for bit: whole
        # prompt blocks (a last block and generated tokens take other kernels: BLOCK).
        self.exact = 0
        self.last_used = 0.0
        self.job: Job | None = None

    def start(self, job: Job, n_keep: int, limit: int, sampler: SamplerChain,
              now: float, answers: Memory | None) -> None:
        """Serve `job`; `answers` (with speculation on) are the engine's earlier answers to
        draft from besides the job's own text."""
        self.job = job
        self.cached = self.cached[:n_keep]
        self.exact = len(job.prompt) - len(job.prompt) % BLOCK
        self.pending = job.prompt[n_keep:]
        self.prompt_eval_count = len(self.pending)
        self.limit = limit
        # Context shifts let a generation run past its context; one with no `num_predict` still
        # ends, so that a model that never says its end-of-turn cannot hold a slot for ever.
        self.ceiling = job.num_predict if job.num_predict > 0 else UNBOUNDED_CONTEXTS * limit
        self.sampler = sampler
        self.text = TextAssembler(job.stop)
        self.generated: list[int] = []
        self.next_token: int | None = None
        self.logit_index = -1
        self.unsent_tokens = 0
        self.unsent_logprobs: list[Logprob] = []
        # After a context shift: the leading cells that still match a fresh prompt (those after
        # them were computed beside tokens since dropped).
        self.kept: int | None = None
        self.admitted_at = now
        self.first_token_at: float | None = None
        self.drafter = Drafter(job.prompt, answers) if answers is not None else None
        self.drafted = 0
        self.accepted = 0

    def candidate(self, deterministic: bool) -> list[int]:
        """The tokens this slot could draft: what its lookup continues with, within the context
        (the next token and the draft fit before a shift is due), what the job may still
        generate (each drafted position yields a token) and, in deterministic mode, the cells
        a lone row computes with the per-row kernel too (SPLIT_KV_CELLS)."""
        if self.drafter is None:
            return []
        room = min(MAX_DRAFT, self.limit - len(self.cached) - 1,
                   self.ceiling - len(self.generated) - 1)
        if deterministic:
            room = min(room, SPLIT_KV_CELLS - len(self.cached) - 1)
        return self.drafter.continuation(room)

    def advance(self, tokens: list[int]) -> None:
        """`tokens` (its next token or the head of its pending prompt) are now in the cache
        (a draft's cells are too, but count only once a sample confirms them)."""
        self.cached.extend(tokens)
        if self.next_token is not None:
            self.next_token = None
        else:
            self.pending = self.pending[len(tokens):]

    def release(self, now: float) -> None:
        self.sampler.close()
        self.job = None
        self.last_used = now


@dataclass(frozen=True)
class Part:
    """A slot's share of one batch: `tokens` go after its cache; `logits` asks for the last
    one's (its prompt is complete, or it is generating) and, when the tokens after the next
    one are a `draft`, for each drafted one's too."""

    slot: Slot
    tokens: list[int]
    logits: bool
    draft: int = 0  # how many of `tokens` are drafted (the last ones)

    @property
    def confirmed(self) -> list[int]:
        return self.tokens[:len(self.tokens) - self.draft]

    @property
    def drafted(self) -> list[int]:
        return self.tokens[len(self.tokens) - self.draft:]

    def wants_logits(self, i: int) -> bool:
        return self.logits and i >= len(self.tokens) - 1 - self.draft


class Engine:
    """Owns a llama.cpp context with `n_slots` sequences and the thread that decodes them."""

    def __init__(self, model: LlamaModel, n_slots: int, slot_ctx: int, n_batch: int = 512,
                 n_threads: int = 0, prefix_cache: bool = True, kv_cache_type: str = "f16",
                 flash_attention: str = "auto", speculative: bool = False,
                 prompt_cache: PromptCache | None = None, deterministic: bool = False) -> None:
        """`kv_cache_type` (a KV_TYPES key) and `flash_attention` (auto, on or off) as
        `set_kv_cache` takes them; `speculative` drafts tokens from each slot's own text;
        `prompt_cache` keeps prefixes the slots give up (shared with other engines);
        `deterministic` makes every job's tokens independent of the others and of the cache,
        at a cost (docs/engine.md)."""
        self.model = model
        self.deterministic = deterministic
        self.prompt_cache = prompt_cache
        # Which engines, now or after a restart, may restore this one's cells from disk.
        self.cache_key = engine_key(model.path, kv_cache_type, flash_attention)
        self.kv_cache_type = kv_cache_type
        self.prefix_cache = prefix_cache
        self.speculative = speculative
        self.answers = Memory()  # n-grams of finished answers, for the drafts of later ones
        self.n_slots = n_slots
        self.slot_ctx = slot_ctx
        self.n_batch = max(n_batch, BLOCK)  # prompt tokens per step; generated ones come on top
        self.n_threads = n_threads or (os.cpu_count() or 1)
        capacity = self.n_batch + n_slots + MAX_DRAFT
        self.ctx = _new_context(model, n_slots, slot_ctx, (capacity, self.n_batch),
                                self.n_threads, kv_cache_type, flash_attention)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.slots = [Slot(i) for i in range(n_slots)]
        self.prices = self._timed_prices() if speculative else Prices()
        self._queue: deque[Job] = deque()
        self._embeds: deque[EmbedJob] = deque()
        self._embedder: Embedder | None = None  # created by the engine thread when first needed
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"engine:{Path(model.path).stem}",
                                        daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self._enqueue(self._queue, job)

    def submit_embed(self, job: EmbedJob) -> None:
        self._enqueue(self._embeds, job)

    def _enqueue(self, queue: deque, job: Job | EmbedJob) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("engine is shutting down")
            queue.append(job)
            self._cond.notify()

    @property
    def busy_slots(self) -> int:
        """Slots serving a job now: a sample, read without the lock (for /metrics)."""
        return sum(slot.job is not None for slot in self.slots)

    @property
    def queued(self) -> int:
        """Jobs waiting for a free slot: a sample, read without the lock (for /metrics)."""
        return len(self._queue)

    @property
    def embed_ctx(self) -> int:
        """The longest input an embedding job may hold: one input must fit one batch."""
        return min(self.slot_ctx, self.n_batch)

    def close(self, reason: str = "model unloaded") -> None:
        """Stop the thread, fail whatever is still queued or running with `reason`, free
        llama.cpp memory."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        now = time.perf_counter()
        for slot in self.slots:
            if slot.job is not None:
                _emit(slot.job, Failed(reason))
                slot.release(now)
        for job in [*self._queue, *self._embeds]:
            _emit(job, Failed(reason))
        self._queue.clear()
        self._embeds.clear()
        if self._embedder is not None:
            self._embedder.close()
        if self.prompt_cache is not None:
            self._spill_slots()
            self.prompt_cache.drop(self)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

    # -- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (not self._closing and not self._queue and not self._embeds
                       and not self._active()):
                    self._cond.wait()
                if self._closing:
                    return
                admitted = self._dequeue()
                embed = self._embeds[0] if self._embeds else None
            for job in admitted:  # outside the lock: saving a slot's cells takes a while
                self._admit_safely(job)
            try:
                self._step()
            except Exception as exc:  # keep serving other models' requests and later jobs
                log.exception("engine step failed")
                self._fail_active(f"inference failed: {exc}")
            if embed is not None:
                self._embed_step(embed)

    def _active(self) -> list[Slot]:
        return [s for s in self.slots if s.job is not None]

    def _dequeue(self) -> list[Job]:
        """The oldest waiting jobs, as many as slots are free (cancelled ones are dropped)."""
        free = sum(s.job is None for s in self.slots)
        jobs = []
        while self._queue and len(jobs) < free:
            job = self._queue.popleft()
            if not job.cancelled:
                jobs.append(job)
        return jobs

    def _admit_safely(self, job: Job) -> None:
        """Admit `job`; an unexpected error fails it alone and keeps the thread serving."""
        try:
            self._admit(job, [s for s in self.slots if s.job is None])
        except Exception as exc:
            log.exception("admitting a job failed")
            _emit(job, Failed(f"inference failed: {exc}"))

    def _admit(self, job: Job, free: list[Slot]) -> None:
        limit = min(job.num_ctx or self.slot_ctx, self.slot_ctx)
        if not job.prompt or len(job.prompt) >= limit:
            _emit(job, Failed(f"prompt of {len(job.prompt)} tokens does not fit the context "
                              f"of {limit} tokens"))
            return
        try:
            sampler = SamplerChain(job.sampling, self.model.n_vocab, job.grammar,
                                   self.model.vocab)
        except GrammarError as exc:  # checked before submit; never let it stop the thread
            _emit(job, Failed(str(exc)))
            return
        slot = self._place(job, free)
        self._bring_back(slot, job)
        n_keep = self._reusable(slot, job)
        self._stash(slot, n_keep)
        if not llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, n_keep, -1):
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            n_keep = 0
        slot.start(job, n_keep, limit, sampler, time.perf_counter(),
                   self.answers if self.speculative else None)
        log.info("slot %d: %d prompt tokens, %d reused from its cache", slot.seq_id,
                 len(job.prompt), n_keep)

    def _place(self, job: Job, free: list[Slot]) -> Slot:
        """The free slot whose cache the prompt continues; otherwise the least recently used
        one, so a new conversation never cuts off another's cached history. When the prompt
        shares a long start with another slot (chats with one system prompt), that start is
        copied over rather than evaluated again."""
        best = max(free, key=lambda s: (self._reusable(s, job),
                                        common_prefix(s.cached, job.prompt), -s.last_used))
        shared = self._reusable(best, job)
        others = [s for s in free if s is not best]
        if len(best.cached) - common_prefix(best.cached, job.prompt) <= KEEP_TAIL or not others:
            log.debug("slot %d: chosen, its cache continues the prompt for %d of %d tokens",
                      best.seq_id, shared, len(best.cached))
            return best
        spare = min(others, key=lambda s: s.last_used)
        if shared < MIN_COPY or self._reusable(spare, job) >= shared:
            log.debug("slot %d: chosen, least recently used (slot %d keeps its %d tokens)",
                      spare.seq_id, best.seq_id, len(best.cached))
            return spare
        llama_cpp.llama_memory_seq_rm(self.mem, spare.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.mem, best.seq_id, spare.seq_id, -1, -1)
        spare.cached, spare.exact = list(best.cached), best.exact
        log.debug("slot %d: copied %d shared tokens from slot %d", spare.seq_id, shared,
                  best.seq_id)
        return spare

    def _bring_back(self, slot: Slot, job: Job) -> None:
        """Restore into `slot` the saved prefix that continues the prompt furthest, when it
        holds at least MIN_RESTORE tokens more than the slot itself (whose own cells are saved
        first, if worth it)."""
        if self.prompt_cache is None or not self.prefix_cache:
            return
        saved, shared = self.prompt_cache.longest(self, job.prompt, self.cache_key)
        if saved is None:
            return
        usable = self._usable(shared, saved.exact, job)
        if usable < self._reusable(slot, job) + MIN_RESTORE:
            return
        state = self.prompt_cache.take(saved)
        if state is None:  # a damaged file: evaluate the prompt
            return
        self._stash(slot, 0)
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        if restore_sequence(self.ctx, state, slot.seq_id):
            slot.cached, slot.exact = saved.tokens.tolist(), saved.exact
            self.prompt_cache.count_restored(usable)
            log.info("slot %d: restored %d cached tokens from %s", slot.seq_id,
                     len(slot.cached), "host memory" if isinstance(saved, Saved) else "disk")
        else:
            log.warning("slot %d: llama.cpp refused a saved prefix; evaluating it again",
                        slot.seq_id)
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            slot.cached = []

    def _stash(self, slot: Slot, keep: int) -> None:
        """Save the slot's cells to the host cache before all but `keep` of them go, unless
        too few would be lost or the cache holds them already."""
        cache = self.prompt_cache
        if (cache is None or not self.prefix_cache or len(slot.cached) - keep < MIN_SAVE
                or cache.holds(self, slot.cached, self.cache_key)):
            return
        saved = self._saved(slot)
        if saved is not None and cache.add(saved):
            log.debug("slot %d: saved %d tokens to host memory (%d bytes in the cache)",
                      slot.seq_id, len(slot.cached), cache.bytes)

    def _saved(self, slot: Slot) -> Saved | None:
        """A copy of the slot's cells for the prompt cache (None when llama.cpp gives none)."""
        state = save_sequence(self.ctx, slot.seq_id)
        return (None if state is None
                else Saved(self, tokens_array(slot.cached), state, slot.exact, self.cache_key))

    def _spill_slots(self) -> None:
        """The engine is closing: the slots' cells worth keeping go to the disk, if any, before
        the host-memory entries (they are the most recently used)."""
        if self.prompt_cache.disk is None or not self.prefix_cache:
            return
        for slot in sorted(self.slots, key=lambda s: -s.last_used):
            if (len(slot.cached) >= MIN_SAVE
                    and not self.prompt_cache.holds(self, slot.cached, self.cache_key)):
                saved = self._saved(slot)
                if saved is not None:
                    self.prompt_cache.spill(saved, wait=True)

    def _reusable(self, slot: Slot, job: Job) -> int:
        """Prompt tokens already in the slot's KV cache that may be kept (none when reuse is
        switched off)."""
        if not self.prefix_cache:
            return 0
        return self._usable(common_prefix(slot.cached, job.prompt), slot.exact, job)

    def _usable(self, shared: int, exact: int, job: Job) -> int:
        """Of `shared` cached prompt tokens (`exact` of them computed as a cold evaluation
        computes them), those to keep: all but the prompt's last (its logits are needed), and
        in deterministic mode only whole blocks of exact cells."""
        shared = min(shared, len(job.prompt) - 1)
        if not self.deterministic:
            return shared
        shared = min(shared, exact)
        return shared - shared % BLOCK

    def _step(self) -> None:
        now = time.perf_counter()
        for slot in self._active():
            if slot.job.cancelled:
                log.info("slot %d: client went away, generation cancelled", slot.seq_id)
                self._finish(slot, "cancel", now)
        parts = self._plan(self._active())
        if parts:
            self._decode(parts)

    def _plan(self, active: list[Slot]) -> list[Part]:
        """This step's tokens: one for every generating slot, prompt chunks within `n_batch`,
        or within PREFILL_BUDGET while slots are generating (each of them waits for the whole
        step), then the drafts that pay beside them (`_with_drafts`)."""
        generating = [Part(s, [s.next_token], True) for s in active if s.next_token is not None]
        prompts = []
        room = min(self.n_batch, PREFILL_BUDGET) if generating else self.n_batch
        for slot in active:
            take = self._prompt_take(slot, room) if slot.pending else 0
            if take:
                prompts.append(Part(slot, slot.pending[:take], take == len(slot.pending)))
                room -= take
        if self.speculative and generating:
            generating = self._with_drafts(generating, prompts)
        return generating + prompts

    def _with_drafts(self, generating: list[Part], prompts: list[Part]) -> list[Part]:
        """`generating` with the drafts `draft.plan` finds worth their rows, given the step's
        micro-batches (`_ubatch_order`) and rows without them."""
        runs = _ubatch_runs(generating + prompts, self.deterministic)
        shared = {part.slot.seq_id for run in runs if len(run) > 1 for part in run}
        rows = sum(len(part.tokens) for part in generating + prompts)
        candidates = [Candidate(part.slot.candidate(self.deterministic), part.slot.drafter.rate,
                                part.slot.seq_id in shared)
                      if part.slot.drafter is not None else Candidate([], 0.0, False)
                      for part in generating]
        lengths = plan(candidates, len(generating), self.prices.step(len(runs), rows),
                       self.prices)
        return [Part(part.slot, part.tokens + c.tokens[:k], True, k) if k else part
                for part, c, k in zip(generating, candidates, lengths)]

    def _timed_prices(self) -> Prices:
        """What a micro-batch costs against a row on this machine, timed on an empty sequence
        before any job runs (the defaults if llama.cpp refuses a batch)."""
        fastest = {}
        for rows in (1, 1, 1 + PRICE_ROWS):  # the first round of one-row steps is a warm-up
            times = []
            for _ in range(PRICE_TRIES):
                for i in range(rows):
                    put_token(self.batch, i, 0, i, 0, True)
                self.batch.n_tokens = rows
                started = time.perf_counter()
                rc = llama_cpp.llama_decode(self.ctx, self.batch)
                times.append(time.perf_counter() - started)
                llama_cpp.llama_memory_seq_rm(self.mem, 0, -1, -1)
                if rc != 0:
                    return Prices()
            fastest[rows] = min(times)
        prices = Prices.timed(fastest[1], fastest[1 + PRICE_ROWS], PRICE_ROWS)
        log.info("draft prices: a step of 1 row took %.1f ms, of %d rows %.1f ms: a micro-batch "
                 "is priced %.2f rows", fastest[1] * 1e3, 1 + PRICE_ROWS,
                 fastest[1 + PRICE_ROWS] * 1e3, prices.ubatch)
        return prices

    def _prompt_take(self, slot: Slot, room: int) -> int:
        """How many of the slot's pending prompt tokens fit this step: whole blocks within
        `room` and the job's `num_batch` (one block at least), or the last, partial block
        entire; none when they do not fit. So where a prompt is cut depends on the prompt
        alone (and the reused prefix, itself whole blocks), never on what else runs."""
        start = len(slot.cached)
        end = start + len(slot.pending)
        whole = end - end % BLOCK
        if start >= whole:
            return end - start if end - start <= room else 0
        cap = max(min(slot.job.num_batch or self.n_batch, self.n_batch), BLOCK)
        stop = min(whole, start + min(room, cap))
        return max(stop - stop % BLOCK - start, 0)

    def _decode(self, parts: list[Part]) -> None:
        """Decode `parts` in one batch, then sample the slots that asked for logits."""
        rc = llama_cpp.llama_decode(self.ctx, self._fill_batch(parts))
        if rc != 0:
            return self._recover(parts, rc)
        for part in parts:
            part.slot.advance(part.confirmed)
        for part in parts:
            if part.logits:
                self._on_logits(part)

    def _recover(self, parts: list[Part], rc: int) -> None:
        """llama.cpp refused a batch (`rc`: 1 no room in the cache, -1 an invalid batch, other
        values a failed computation): decode each part alone, so the one it refuses again fails
        its own job only and the others go on as if nothing happened."""
        for part in parts:  # what a failed call may leave in the cache (see llama_decode)
            llama_cpp.llama_memory_seq_rm(self.mem, part.slot.seq_id, len(part.slot.cached), -1)
        if len(parts) > 1:
            log.warning("llama_decode returned %d for %d slots: decoding them one by one", rc,
                        len(parts))
            for part in parts:
                self._decode([part])
            return
        log.error("slot %d: llama_decode returned %d", parts[0].slot.seq_id, rc)
        self._fail(parts[0].slot, f"inference failed: llama_decode returned {rc}",
                   time.perf_counter())

    def _fill_batch(self, parts: list[Part]) -> llama_cpp.llama_batch:
        """The batch of `parts`, each token after its slot's cache; notes in each slot the row
        of its first logits (the next token's; a draft's follow it)."""
        n = 0
        for part in _ubatch_order(parts, self.deterministic):
            slot = part.slot
            for i, token in enumerate(part.tokens):
                put_token(self.batch, n, token, len(slot.cached) + i, slot.seq_id,
                          part.wants_logits(i))
                n += 1
            slot.logit_index = n - 1 - part.draft if part.logits else -1
        self.batch.n_tokens = n
        return self.batch

    def _on_logits(self, part: Part) -> None:
        """Sample the slot's tokens from this batch: one, or one per drafted position while
        the draft holds (each picked as plain decoding would pick it, at the row of the token
        before it). Cells of the draft past the last confirmed token leave the cache."""
        slot, draft = part.slot, part.drafted
        now = time.perf_counter()
        if slot.first_token_at is None:
            slot.first_token_at = now
        if slot.job.num_predict == 0:
            return self._finish(slot, "length", now)
        slot.drafted += len(draft)
        for i in range(len(draft) + 1):  # after the loop, `i` drafted tokens were kept
            token = self._take(slot, slot.logit_index + i, now)
            if token is None:
                break
            if i == len(draft) or token != draft[i]:
                slot.next_token = token
                break
            slot.cached.append(token)  # its cell, decoded as a draft, is now the next token's
            slot.accepted += 1
        if draft:
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, len(slot.cached), -1)

    def _take(self, slot: Slot, row: int, now: float) -> int | None:
        """Sample a token at batch row `row` and pass it on (text, logprobs, limits): the token
        the slot continues with, or None when this ended its job."""
        job = slot.job
        try:
            token = slot.sampler.sample(self.ctx, row)
        except GrammarError as exc:  # a dead end of this job's grammar ends this job only
            _emit(job, Failed(str(exc)))
            return slot.release(now)
        if self.model.is_eog(token):
            return self._finish(slot, "stop", now)
        slot.generated.append(token)
        if slot.drafter is not None:
            slot.drafter.add(token)
        slot.unsent_tokens += 1
        if job.logprobs is not None:
            slot.unsent_logprobs.append(self._logprob(row, token, job.logprobs))
        text = slot.text.push(self.model.piece(token))
        if text:
            self._send(slot, text)
        if slot.text.stopped:
            return self._finish(slot, "stop", now)
        if len(slot.generated) >= slot.ceiling:
            return self._finish(slot, "length", now)
        if len(slot.cached) >= slot.limit and not self._shift(slot):
            return self._finish(slot, "length", now)
        return token

    def _logprob(self, index: int, token: int, top: int) -> Logprob:
        """`token`'s logprob at batch row `index`, with the `top` likeliest tokens there."""
        chosen, best = log_softmax(llama_cpp.llama_get_logits_ith(self.ctx, index),
                                   self.model.n_vocab, token, top)
        spell = self.model.spelling
        return Logprob(spell(token), chosen, tuple((spell(t), lp) for t, lp in best))

    def _send(self, slot: Slot, text: str) -> None:
        """Emit `text` with the tokens (and logprobs) generated since the last chunk."""
        _emit(slot.job, TextChunk(text, slot.unsent_tokens, tuple(slot.unsent_logprobs)))
        slot.unsent_tokens = 0
        slot.unsent_logprobs = []

    def _shift(self, slot: Slot) -> bool:
        """Make room in a full context (Ollama's context shift): keep the prompt's first
        `num_keep` tokens, drop the oldest half of the rest and move what follows back, so
        generation goes on. False when the job asked not to, or the cache cannot shift."""
        job = slot.job
        keep = len(job.prompt) if job.num_keep < 0 else min(job.num_keep, len(job.prompt))
        discard = (len(slot.cached) - keep) // 2
        if (not job.shift or job.num_predict == FILL_CONTEXT or discard <= 0
                or not llama_cpp.llama_memory_can_shift(self.mem)):
            return False
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, keep, keep + discard)
        llama_cpp.llama_memory_seq_add(self.mem, slot.seq_id, keep + discard, -1, -discard)
        del slot.cached[keep:keep + discard]
        slot.kept = keep
        slot.exact = min(slot.exact, keep)
        log.info("slot %d: context full, kept %d tokens and dropped %d", slot.seq_id, keep,
                 discard)
        return True

    def _finish(self, slot: Slot, reason: str, now: float) -> None:
        job = slot.job
        tail = slot.text.flush()
        if tail or slot.unsent_logprobs:
            self._send(slot, tail)
        if slot.kept is not None:
            del slot.cached[slot.kept:]
        # Before the job hears it is done: the cells past its tokens (a draft's rest, a shifted
        # tail) leave the cache, so that the slot holds exactly what it lists for the next job.
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, len(slot.cached), -1)
        first = slot.first_token_at or now
        log.debug("slot %d: %d tokens generated, %d drafted, %d of them accepted", slot.seq_id,
                  len(slot.generated), slot.drafted, slot.accepted)
        if slot.drafter is not None and slot.generated:
            self.answers.remember(slot.drafter.tokens, len(job.prompt))
        _emit(job, Finished(
            done_reason=reason,
            prompt_tokens=len(job.prompt),
            prompt_eval_count=slot.prompt_eval_count,
            prompt_eval_duration=int((first - slot.admitted_at) * 1e9),
            eval_count=len(slot.generated),
            eval_duration=int((now - first) * 1e9),
            tokens=tuple(job.prompt) + tuple(slot.generated),
            stop_sequence=slot.text.matched,
            drafted_tokens=slot.drafted,
            accepted_tokens=slot.accepted,
        ))
        slot.release(now)

    def _embed_step(self, job: EmbedJob) -> None:
        """One batch of the oldest embedding job: as much engine time as a generation step."""
        if job.cancelled:
            log.info("embedding cancelled: client went away")
        try:
            finished = job.cancelled or self._embed_batch(job)
        except Exception as exc:
            log.exception("embedding step failed")
            _emit(job, Failed(f"embedding failed: {exc}"))
            finished = True
        if finished:
            if self._embedder is not None:
                self._embedder.forget()
            with self._cond:
                self._embeds.popleft()

    def _embed_batch(self, job: EmbedJob) -> bool:
        """True once the job's last batch is done and its result emitted."""
        if self._embedder is None:
            self._embedder = Embedder(self.model, self.embed_ctx, self.n_threads)
        result = self._embedder.step(job)
        if result is not None:
            _emit(job, result)
        return result is not None

    def _fail_active(self, message: str) -> None:
        """After an unexpected error the state of every slot is unknown: fail them all."""
        now = time.perf_counter()
        for slot in self._active():
            self._fail(slot, message, now)

    def _fail(self, slot: Slot, message: str, now: float) -> None:
        """End the slot's job with `message` and forget its cache, which may be what broke."""
        _emit(slot.job, Failed(message))
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        slot.cached = []
        slot.release(now)


def _ubatch_order(parts: list[Part], deterministic: bool) -> list[Part]:
    """`parts` in the order `_ubatch_runs` groups them."""
    return [part for run in _ubatch_runs(parts, deterministic) for part in run]


def _ubatch_runs(parts: list[Part], deterministic: bool) -> list[list[Part]]:
    """`parts` grouped so that each gets a llama.cpp micro-batch of its own, except runs of
    generating slots with consecutive ids, which share one (in deterministic mode, only those
    with short caches). With a split KV cache llama.cpp cuts a batch into micro-batches of
    sequences with consecutive ascending ids, the same number of rows of each, so a part beside
    others would be cut, and its rows' attention kernel chosen, by its neighbours (see BLOCK,
    SPLIT_KV_CELLS). Rows of short generating slots take the per-row kernel however they are
    grouped; a long one alone takes another, which only the deterministic mode pays for."""
    def shares(part: Part) -> bool:
        return part.slot.next_token is not None and (
            not deterministic or len(part.slot.cached) + len(part.tokens) <= SPLIT_KV_CELLS)

    runs: list[list[Part]] = []
    for part in sorted(parts, key=lambda p: -p.slot.seq_id):
        last = runs[-1][-1] if runs else None
        if (last is not None and shares(last) and shares(part)
                and last.slot.seq_id == part.slot.seq_id + 1):
            runs[-1].append(part)
        else:
            runs.append([part])
    return [list(reversed(run)) for run in runs]


def _emit(job: Job | EmbedJob, event: Event | Embedded) -> None:
    try:
        job.emit(event)
    except RuntimeError:  # the submitter's event loop is gone: nobody is listening
        job.cancel()


def _new_context(model: LlamaModel, n_slots: int, slot_ctx: int, batch: tuple[int, int],
                 n_threads: int, kv_cache_type: str, flash_attention: str,
                 ) -> llama_cpp.llama_context_p:
    """`batch`: the tokens of one `llama_decode`, and of one micro-batch."""
    params = llama_cpp.llama_context_default_params()
    set_kv_cache(params, kv_cache_type, flash_attention)
    params.n_ctx = slot_ctx * n_slots
    params.n_batch, params.n_ubatch = batch
    params.n_seq_max = n_slots
    params.kv_unified = False  # per-slot KV: a slot's numerics do not depend on its neighbours
    return new_context(model, params, n_threads, "a context")
