"""The batched engine on the real bundled model, driven directly (no HTTP)."""

from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Iterator

import llama_cpp
import pytest

from ollamalite.generation.prompt import render_chat
from ollamalite.options import SamplingParams
from ollamalite.registry.gguf_header import read_header
from ollamalite.registry.models_file import bundled_model_path
from ollamalite.runtime.engine import draft
from ollamalite.runtime.engine.engine import BLOCK, PREFILL_BUDGET, SPLIT_KV_CELLS, Engine
from ollamalite.runtime.engine.jobs import Failed, Finished, Job, TextChunk
from ollamalite.runtime.engine.llama import LlamaModel
from tests.conftest import running

SLOT_CTX = 512


@pytest.fixture(scope="module")
def engine(model: LlamaModel) -> Iterator[Engine]:
    e = Engine(model, n_slots=4, slot_ctx=SLOT_CTX, n_batch=64)
    yield e
    e.close()


def chat_prompt(model: LlamaModel, text: str) -> list[int]:
    template = read_header(bundled_model_path()).chat_template
    rendered = render_chat(template, [{"role": "user", "content": text}], model.bos_text,
                           model.eos_text)
    return model.tokenize(rendered, add_special=False)


class Run:
    """Submits a job and collects its events from the engine thread."""

    def __init__(self, engine: Engine, prompt: list[int], **kw: object) -> None:
        self.events: queue.Queue = queue.Queue()
        self.job = Job(prompt=prompt, emit=self.emit,
                       sampling=kw.pop("sampling", SamplingParams(temperature=0)), **kw)
        engine.submit(self.job)

    def emit(self, event: object) -> None:
        """Called on the engine thread."""
        self.events.put(event)

    def chunks(self) -> Iterator[TextChunk]:
        while True:
            event = self.events.get(timeout=120)
            if isinstance(event, TextChunk):
                yield event
            else:
                self.final = event
                return

    def text(self) -> str:
        return "".join(c.text for c in self.chunks())


def test_generates_text_and_metrics(engine: Engine, model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Name three colours.")
    run = Run(engine, prompt, num_predict=12)
    text = run.text()
    fin = run.final
    assert isinstance(fin, Finished) and text.strip()
    assert fin.done_reason in ("stop", "length") and 0 < fin.eval_count <= 12
    assert fin.prompt_tokens == len(prompt)
    assert fin.prompt_eval_duration > 0 and fin.eval_duration > 0
    assert list(fin.tokens[:len(prompt)]) == prompt
    assert len(fin.tokens) == len(prompt) + fin.eval_count


def test_same_seed_same_text_alone_and_beside_others(engine: Engine, model: LlamaModel) -> None:
    prompts = [chat_prompt(model, q) for q in ("Tell me a story about a cat.",
                                               "Describe the moon.", "Write a poem about rain.",
                                               "What is bread made of?")]
    sampling = [SamplingParams(temperature=0.9, seed=100 + i) for i in range(4)]
    pairs = list(zip(prompts, sampling, strict=True))
    solo = [Run(engine, p, sampling=s, num_predict=24).text() for p, s in pairs]
    together = [Run(engine, p, sampling=s, num_predict=24) for p, s in pairs]
    assert [r.text() for r in together] == solo
    assert len(set(solo)) == 4


def test_cancelling_one_stream_leaves_the_others_intact(engine: Engine,
                                                        model: LlamaModel) -> None:
    prompts = [chat_prompt(model, f"Count from {n} upwards, one number per line.")
               for n in (1, 50, 100)]
    expected = [Run(engine, p, num_predict=30).text() for p in prompts]
    runs = [Run(engine, p, num_predict=30) for p in prompts]
    victim = runs[1]
    first = next(victim.chunks())
    victim.job.cancel()
    rest = list(victim.chunks())
    assert isinstance(victim.final, Finished) and victim.final.done_reason == "cancel"
    assert len(rest) <= 2 and first.text
    assert runs[0].text() == expected[0] and runs[2].text() == expected[2]


def test_long_prompt_admitted_mid_flight_does_not_corrupt_running_streams(
        engine: Engine, model: LlamaModel) -> None:
    short = chat_prompt(model, "List five fruits.")
    expected = Run(engine, short, num_predict=40).text()
    running = Run(engine, short, num_predict=40)
    chunks = running.chunks()
    head = next(chunks).text
    long_prompt = chat_prompt(model, "Summarise this. " + "The quick brown fox jumps. " * 50)
    assert len(long_prompt) > 3 * engine.n_batch  # admitted in several chunks
    late = Run(engine, long_prompt, num_predict=5)
    assert head + "".join(c.text for c in chunks) == expected
    late.text()
    assert isinstance(late.final, Finished)


def test_a_long_prompt_beside_a_stream_takes_at_most_the_prefill_budget_a_step(
        model: LlamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a slot generates, each step carries at most PREFILL_BUDGET prompt tokens, in
    whole blocks; once nothing generates, the prompt takes all of `n_batch`."""
    steps: list[tuple[int, int]] = []  # (sequences, tokens) of each batch
    real = llama_cpp.llama_decode

    def decode(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> int:
        n = batch.n_tokens
        steps.append((len({batch.seq_id[i][0] for i in range(n)}), n))
        return real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    wide = Engine(model, n_slots=2, slot_ctx=2048, n_batch=512)
    try:
        stream = Run(wide, chat_prompt(model, "Count from 1 to 100."), num_predict=60)
        chunks = stream.chunks()
        next(chunks)
        long_prompt = chat_prompt(model, "Summarise. " + "The quick brown fox jumps. " * 120)
        late = Run(wide, long_prompt, num_predict=1)
        list(chunks)
        late.text()
        Run(wide, long_prompt[:8] + long_prompt, num_predict=1).text()  # alone, not cached
    finally:
        wide.close()
    beside = [n - 1 for seqs, n in steps if seqs == 2]  # the prompt's rows beside the stream
    assert beside and max(beside) <= PREFILL_BUDGET
    assert all(rows % BLOCK == 0 or rows == beside[-1] for rows in beside)
    assert max(n for seqs, n in steps if seqs == 1) > PREFILL_BUDGET  # alone: whole batches


def test_second_turn_reuses_the_cached_prefix(engine: Engine, model: LlamaModel) -> None:
    first = chat_prompt(model, "Tell me about owls in one sentence.")
    run = Run(engine, first, num_predict=10)
    run.text()
    follow_up = list(run.final.tokens) + model.tokenize(
        "<|im_end|>\n<|im_start|>user\nAnd about bats?<|im_end|>\n<|im_start|>assistant\n",
        add_special=False)
    second = Run(engine, follow_up, num_predict=5)
    second.text()
    assert second.final.prompt_eval_count < len(follow_up) - len(first)
    assert second.final.prompt_tokens == len(follow_up)


def test_conversations_sharing_a_system_prompt_keep_their_own_caches(
        model: LlamaModel) -> None:
    """Two chats with one long system prompt alternate on two slots: the second copies the
    shared prefix instead of cutting the first's history, and copied KV gives the same text."""
    system = "You are a ship's logbook. " + "Wind north, sea calm, all well. " * 20

    def prompt(*turns: str) -> list[int]:
        text = f"<|im_start|>system\n{system}<|im_end|>\n"
        for turn in turns:
            text += f"<|im_start|>user\n{turn}<|im_end|>\n<|im_start|>assistant\n"
        return model.tokenize(text, add_special=False)

    fresh = Engine(model, n_slots=1, slot_ctx=SLOT_CTX, prefix_cache=False)
    cached = Engine(model, n_slots=2, slot_ctx=SLOT_CTX)
    try:
        a1 = Run(cached, prompt("What happened on Monday?"), num_predict=40)
        a1_text = a1.text()
        b1 = Run(cached, prompt("What happened on Tuesday?"), num_predict=8)
        b1_text = b1.text()
        assert b1.final.prompt_eval_count < 20  # the shared system prompt was copied
        assert b1_text == Run(fresh, prompt("What happened on Tuesday?"), num_predict=8).text()
        a2_prompt = list(a1.final.tokens) + prompt("x")[-1:]  # continue conversation A
        a2 = Run(cached, a2_prompt, num_predict=4)
        a2.text()
        assert a2.final.prompt_eval_count == 1  # A's history was still in its slot
        assert a1_text
    finally:
        fresh.close()
        cached.close()


def test_alternating_conversations_each_keep_their_slot(model: LlamaModel) -> None:
    """Different system prompts share only the template's opening tokens: a new conversation
    must take an unused slot, not the other conversation's."""
    engine = Engine(model, n_slots=3, slot_ctx=SLOT_CTX)

    def prompt(session: str, *turns: str) -> list[int]:
        text = f"<|im_start|>system\nSession {session}. " + "Keep notes. " * 40 + "<|im_end|>\n"
        text += "".join(f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n"
                        for t in turns)
        return model.tokenize(text, add_special=False)

    try:
        first = {}
        for s in ("A", "B", "C"):  # one after the other: every slot but one is free each time
            first[s] = Run(engine, prompt(s, "Hi"), num_predict=4)
            first[s].text()
        for s, run in first.items():
            follow = list(run.final.tokens) + prompt(s, "Hi", "More")[len(prompt(s, "Hi")):]
            again = Run(engine, follow, num_predict=2)
            again.text()
            assert again.final.prompt_eval_count < 20, s
    finally:
        engine.close()


def test_prefix_reuse_can_be_switched_off(model: LlamaModel) -> None:
    engine = Engine(model, n_slots=1, slot_ctx=SLOT_CTX, prefix_cache=False)
    try:
        prompt = chat_prompt(model, "Hello again")
        for _ in range(2):
            run = Run(engine, prompt, num_predict=2)
            run.text()
            assert run.final.prompt_eval_count == len(prompt)
    finally:
        engine.close()


def test_generation_that_fills_the_context_ends_with_length(engine: Engine,
                                                             model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Write a very long essay about the history of the world.")
    for job in ({"shift": False, "num_predict": -1}, {"num_predict": -2}):
        run = Run(engine, prompt, num_ctx=len(prompt) + 6, **job)
        run.text()
        assert run.final.done_reason == "length"
        assert 0 < run.final.eval_count <= 7


def test_context_shift_keeps_generating_as_a_fresh_prompt_over_the_kept_window(
        engine: Engine, model: LlamaModel) -> None:
    """Three contexts' worth of tokens from a 96-token context; after the first shift the
    stream goes on exactly as a fresh request over the tokens the shift kept."""
    prompt = chat_prompt(model, "Count upwards from 1, one number per line, and never stop.")
    limit, keep = 96, 4
    digits = 'root ::= [0-9\\n] root'  # the same at every point, and never ends
    run = Run(engine, prompt, num_ctx=limit, num_predict=3 * limit, num_keep=keep,
              grammar=digits)
    run.text()
    assert run.final.done_reason == "length" and run.final.eval_count == 3 * limit
    every = list(run.final.tokens)
    discard = (limit - keep) // 2
    window = every[:keep] + every[keep + discard:limit + 1]  # + the token sampled before it
    fresh = Run(engine, window, num_predict=12, grammar=digits)
    fresh.text()
    assert list(fresh.final.tokens[len(window):]) == every[limit + 1:limit + 13]


def test_unbounded_generation_ends_after_ten_contexts(engine: Engine, model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Repeat the word yes for ever.")
    run = Run(engine, prompt, num_ctx=len(prompt) + 8, num_predict=-1,
              grammar='root ::= "yes " root')  # never ends by itself
    run.text()
    assert run.final.done_reason == "length"
    assert run.final.eval_count == 10 * (len(prompt) + 8)


def test_logprobs_come_from_the_logits_the_sampler_saw(engine: Engine, model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Name three colours.")
    run = Run(engine, prompt, num_predict=16, logprobs=3)
    chunks = list(run.chunks())
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert [len(c.logprobs) for c in chunks] == [c.n_tokens for c in chunks]
    assert len(logprobs) == run.final.eval_count == 16
    generated = run.final.tokens[len(prompt):]
    assert [lp.token for lp in logprobs] == [model.spelling(t) for t in generated]
    for lp in logprobs:
        assert len(lp.top) == 3 and lp.logprob <= 0
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert lp.top[0] == (lp.token, lp.logprob)  # greedy: the likeliest token was chosen
        assert sum(math.exp(v) for _, v in lp.top) <= 1 + 1e-6
    plain = list(Run(engine, prompt, num_predict=16).chunks())
    assert "".join(c.text for c in plain) == "".join(c.text for c in chunks)
    assert all(c.logprobs == () for c in plain)


def test_overlong_prompt_fails_cleanly_and_engine_keeps_serving(engine: Engine,
                                                                 model: LlamaModel) -> None:
    run = Run(engine, [1] * (SLOT_CTX + 10), num_predict=3)
    assert run.text() == "" and isinstance(run.final, Failed)
    assert "does not fit" in run.final.message
    ok = Run(engine, chat_prompt(model, "Hi"), num_predict=3)
    ok.text()
    assert isinstance(ok.final, Finished)


def test_grammar_constrains_greedy_output_and_a_bad_one_fails_only_its_job(
        engine: Engine, model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Is the sky blue?")
    constrained = Run(engine, prompt, num_predict=20, grammar='root ::= "maybe" | "perhaps"')
    broken = Run(engine, prompt, num_predict=3, grammar="root ::= undefined-rule")
    assert constrained.text() in ("maybe", "perhaps")
    assert constrained.final.done_reason == "stop"  # grammar complete: only EOS was left
    assert broken.text() == "" and isinstance(broken.final, Failed)
    assert "could not parse the grammar" in broken.final.message
    ok = Run(engine, prompt, num_predict=3)
    ok.text()
    assert isinstance(ok.final, Finished)


def test_num_predict_zero_evaluates_prompt_only(engine: Engine, model: LlamaModel) -> None:
    run = Run(engine, chat_prompt(model, "Hello there"), num_predict=0)
    assert run.text() == ""
    assert run.final.done_reason == "length" and run.final.eval_count == 0


def test_stop_strings_end_generation_and_never_appear(engine: Engine, model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Count from 1 to 20 separated by commas.")
    full = Run(engine, prompt, num_predict=40).text()
    assert "5" in full
    run = Run(engine, prompt, num_predict=40, stop=("5",))
    text = run.text()
    assert run.final.done_reason == "stop"
    assert "5" not in text and full.startswith(text)


def test_submit_from_many_threads(engine: Engine, model: LlamaModel) -> None:
    prompt = chat_prompt(model, "Say hello.")
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(Run(engine, prompt,
                                                                  num_predict=6).text()))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 6 and len(set(results)) == 1


class Ordered(Run):
    """A run that notes its index in `started` when its first text arrives."""

    def __init__(self, engine: Engine, prompt: list[int], started: list[int], index: int,
                 **kw: object) -> None:
        self.started, self.index = started, index
        super().__init__(engine, prompt, **kw)

    def emit(self, event: object) -> None:
        if isinstance(event, TextChunk) and self.index not in self.started:
            self.started.append(self.index)
        super().emit(event)


def test_more_jobs_than_slots_start_first_come_first_served(model: LlamaModel) -> None:
    """Six jobs on one slot start in the order they came, although every other one repeats
    the prompt the slot has cached (admitting cache hits first would starve the others)."""
    single = Engine(model, n_slots=1, slot_ctx=SLOT_CTX, n_batch=64)
    try:
        cached = chat_prompt(model, "Say hello.")
        started: list[int] = []
        runs = [Ordered(single, chat_prompt(model, f"Count to {n}.") if n % 2 else cached,
                        started, n, num_predict=4) for n in range(6)]
        for run in runs:
            run.text()
        assert started == list(range(6))
    finally:
        single.close()


def test_an_error_admitting_one_job_fails_it_alone(model: LlamaModel,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs are admitted together, outside the queue's lock: one that breaks admission fails
    with the error, and the job admitted beside it is served."""
    pair = Engine(model, n_slots=2, slot_ctx=SLOT_CTX, n_batch=64)
    real = Engine._place
    broken = chat_prompt(model, "Break admission.")

    def place(self: Engine, job: Job, free: list) -> object:
        if job.prompt == broken:
            raise RuntimeError("no slot for you")
        return real(self, job, free)

    monkeypatch.setattr(Engine, "_place", place)
    try:
        bad, good = Run(pair, broken, num_predict=4), Run(pair, chat_prompt(model, "Hi."),
                                                            num_predict=4)
        assert bad.text() == "" and bad.final == Failed("inference failed: no slot for you")
        assert good.text() and isinstance(good.final, Finished)
    finally:
        pair.close()


# A token the prompts and replies below never hold: a batch with it is refused by the wrapper.
POISON = 40000  # " neoliberal"


class RefusingDecode:
    """`llama_decode` that answers `rc` for any batch holding POISON, as llama.cpp answers a
    batch it cannot take: `rc` < -1 (a failed computation) after filling the cache, other
    codes with the cache as it was. Records how many sequences each refused batch held."""

    def __init__(self, rc: int) -> None:
        self.rc = rc
        self.real = llama_cpp.llama_decode
        self.refused: list[int] = []

    def __call__(self, ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> int:
        n = batch.n_tokens
        if POISON not in batch.token[:n]:
            return self.real(ctx, batch)
        if self.rc < -1:
            self.real(ctx, batch)
        self.refused.append(len({batch.seq_id[i][0] for i in range(n)}))
        return self.rc


@pytest.mark.parametrize("which", ["engine", "drafting"])  # without and with speculation
@pytest.mark.parametrize("rc", [-1, -3])  # the cache as it was; the cache filled
def test_a_refused_batch_fails_only_the_job_that_caused_it(
        request: pytest.FixtureRequest, model: LlamaModel, monkeypatch: pytest.MonkeyPatch,
        rc: int, which: str) -> None:
    engine = request.getfixturevalue(which)
    prompt = code_edit(model) if which == "drafting" else \
        chat_prompt(model, "Count from 1 upwards, one number per line.")
    expected = Run(engine, prompt, num_predict=24)
    expected_text = expected.text()
    assert POISON not in expected.final.tokens
    poisoned = chat_prompt(model, "Hello") + [POISON]
    decode = RefusingDecode(rc)
    monkeypatch.setattr(llama_cpp, "llama_decode", decode)
    running = Run(engine, prompt, num_predict=24)
    chunks = running.chunks()
    head = next(chunks).text
    culprit = Run(engine, poisoned, num_predict=5)  # joins the batch at the next step
    assert culprit.text() == ""
    assert culprit.final == Failed(f"inference failed: llama_decode returned {rc}")
    assert head + "".join(c.text for c in chunks) == expected_text
    assert isinstance(running.final, Finished)
    assert (running.final.done_reason, running.final.tokens) == \
        (expected.final.done_reason, expected.final.tokens)
    assert (running.final.drafted_tokens > 0) == (which == "drafting")
    assert decode.refused == [2, 1]  # beside the stream, then alone
    assert all(POISON not in slot.cached for slot in engine.slots)
    after = Run(engine, prompt, num_predict=24)
    assert after.text() == expected_text


def test_outside_vocab_names_the_first_id_the_model_lacks(model: LlamaModel) -> None:
    n = model.n_vocab
    assert model.outside_vocab([]) is None and model.outside_vocab([0, 7, n - 1]) is None
    assert model.outside_vocab([5, n, -1]) == n and model.outside_vocab([3, -2, n]) == -2


# -- speculative decoding ------------------------------------------------------------------------

# A pasted file that an edit copies back: what n-gram drafts are for.
SOURCE = "".join(f"def scale_{i}(values):\n    total = [v * {i} for v in values]\n"
                 f"    return sum(total) + {i}\n\n" for i in range(10))


# Without prefix reuse, every prompt is evaluated from the start in the same chunks on both
# engines: llama.cpp rounds a batch's rows of one sequence a little differently from fewer rows,
# so KV cells computed in other chunks (a reused prefix) could tip a near-tie the other way.
@pytest.fixture(scope="module")
def plain(model: LlamaModel) -> Iterator[Engine]:
    e = Engine(model, n_slots=4, slot_ctx=SLOT_CTX, n_batch=64, prefix_cache=False)
    yield e
    e.close()


@pytest.fixture(scope="module")
def drafting(model: LlamaModel) -> Iterator[Engine]:
    e = Engine(model, n_slots=4, slot_ctx=SLOT_CTX, n_batch=64, prefix_cache=False,
               speculative=True)
    yield e
    e.close()


def code_edit(model: LlamaModel) -> list[int]:
    return chat_prompt(model, "Return this file unchanged:\n\n" + SOURCE)


def both(plain: Engine, drafting: Engine, prompt: list[int], **kw: object) -> tuple[Run, Run]:
    """The same job alone on an engine without and one with speculation, both run out."""
    runs = (Run(plain, prompt, **kw), Run(drafting, prompt, **kw))
    for run in runs:
        run.text()
    return runs


def test_greedy_drafting_gives_plain_decoding_tokens(plain: Engine, drafting: Engine,
                                                     model: LlamaModel) -> None:
    prompts = [code_edit(model), chat_prompt(model, "Count from 1 to 30, one per line."),
               chat_prompt(model, "Name three colours.")]
    accepted = []
    for prompt in prompts:
        base, spec = both(plain, drafting, prompt, num_predict=96)
        assert spec.final.tokens == base.final.tokens
        assert spec.final.eval_count == base.final.eval_count
        assert spec.final.done_reason == base.final.done_reason
        assert base.final.drafted_tokens == 0
        assert spec.final.accepted_tokens <= spec.final.drafted_tokens
        accepted.append(spec.final.accepted_tokens)
    assert accepted[0] > 0  # the copied file was drafted and kept


def test_stop_string_inside_an_accepted_run(plain: Engine, drafting: Engine,
                                            model: LlamaModel) -> None:
    """The stop string ends in a run drafted from the function before: the job ends there and
    the rest of the draft leaves the KV cache."""
    stop = "_2(values):\n    return sum("
    base, spec = both(plain, drafting, code_edit(model), num_predict=96, stop=(stop,))
    assert base.final.done_reason == spec.final.done_reason == "stop"
    assert spec.final.stop_sequence == stop
    assert spec.final.tokens == base.final.tokens
    assert spec.final.accepted_tokens > 0
    for slot in drafting.slots:  # each cache holds exactly the tokens its slot lists
        assert llama_cpp.llama_memory_seq_pos_max(drafting.mem, slot.seq_id) == \
            len(slot.cached) - 1
    assert any(slot.cached == list(spec.final.tokens[:len(slot.cached)])
               and len(slot.cached) >= len(spec.final.tokens) - 1 for slot in drafting.slots)


@pytest.mark.parametrize("num_predict", [40, 41, 43])
def test_num_predict_is_exact_with_drafts(plain: Engine, drafting: Engine, model: LlamaModel,
                                          num_predict: int) -> None:
    base, spec = both(plain, drafting, code_edit(model), num_predict=num_predict)
    assert spec.final.eval_count == base.final.eval_count == num_predict
    assert spec.final.tokens == base.final.tokens and spec.final.done_reason == "length"
    assert spec.final.accepted_tokens > 0


def test_grammar_sees_only_emitted_tokens(plain: Engine, drafting: Engine,
                                          model: LlamaModel) -> None:
    """A grammar that drafted-but-rejected tokens reached would be in a wrong state: it would
    refuse tokens or allow others than plain decoding."""
    prompt = chat_prompt(model, "List the functions of this file:\n\n" + SOURCE)
    base, spec = both(plain, drafting, prompt, num_predict=60,
                       grammar='root ::= ("def scale_" [0-9] "(values)\\n")+')
    assert spec.final.tokens == base.final.tokens
    assert spec.final.drafted_tokens > spec.final.accepted_tokens > 0


def test_logprobs_one_per_generated_token_with_drafts(drafting: Engine,
                                                      model: LlamaModel) -> None:
    run = Run(drafting, code_edit(model), num_predict=48, logprobs=1)
    chunks = list(run.chunks())
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert len(logprobs) == run.final.eval_count == 48
    generated = run.final.tokens[-48:]
    assert [lp.token for lp in logprobs] == [model.spelling(t) for t in generated]
    assert all(lp.top[0] == (lp.token, lp.logprob) for lp in logprobs)  # greedy
    assert run.final.accepted_tokens > 0


def test_context_shift_with_drafts(plain: Engine, drafting: Engine, model: LlamaModel) -> None:
    """Drafts never run past the context: the shifts fall where plain decoding has them."""
    prompt = chat_prompt(model, "Count upwards from 1, one number per line, and never stop.")
    limit = 96
    base, spec = both(plain, drafting, prompt, num_ctx=limit, num_predict=3 * limit,
                       grammar='root ::= [0-9\\n] root')
    assert spec.final.eval_count == 3 * limit
    assert spec.final.tokens == base.final.tokens
    assert spec.final.accepted_tokens > 0


def test_a_drafting_slot_leaves_its_neighbour_unchanged(plain: Engine, drafting: Engine,
                                                        model: LlamaModel) -> None:
    story = chat_prompt(model, "Tell me a story about a lighthouse.")
    alone = Run(plain, story, num_predict=48)
    alone.text()
    copying = Run(drafting, code_edit(model), num_predict=96)
    beside = Run(drafting, story, num_predict=48)
    beside.text()
    copying.text()
    assert beside.final.tokens == alone.final.tokens
    assert copying.final.accepted_tokens > 0


def test_a_request_asked_again_drafts_from_the_earlier_answer(plain: Engine, drafting: Engine,
                                                             model: LlamaModel) -> None:
    """Regenerating an answer: its text is not in the prompt, but the engine remembers it."""
    prompt = chat_prompt(model, "Describe a sunrise over the sea in two sentences.")
    base, first = both(plain, drafting, prompt, num_predict=48)
    again = Run(drafting, prompt, num_predict=48)
    again.text()
    assert again.final.tokens == first.final.tokens == base.final.tokens
    assert again.final.accepted_tokens > max(first.final.accepted_tokens,
                                             again.final.eval_count // 2)


def test_deterministic_mode_drafts_only_where_its_tokens_stay_exact(model: LlamaModel) -> None:
    """Past 256 cells a lone row takes another attention kernel than a drafted batch's rows: in
    deterministic mode a slot drafts while its sequence is shorter, then decodes plainly, so its
    tokens are those of the mode without drafts however long the answer grows."""
    source = SOURCE[:SOURCE.index("def scale_4")]
    prompt = chat_prompt(model, "Return this file unchanged, twice:\n\n" + source)
    assert len(prompt) < SPLIT_KV_CELLS - 64  # room to draft before the limit
    runs = []
    for speculative in (False, True):
        with running(model, n_slots=1, slot_ctx=SLOT_CTX, deterministic=True,
                     speculative=speculative) as engine:
            runs.append(Run(engine, prompt, num_predict=SPLIT_KV_CELLS - len(prompt) + 96))
            runs[-1].text()
    base, spec = runs
    assert len(prompt) + spec.final.eval_count > SPLIT_KV_CELLS + 32  # decoded past it too
    assert spec.final.tokens == base.final.tokens
    assert spec.final.accepted_tokens > 0 and base.final.drafted_tokens == 0


def test_an_engine_with_drafts_prices_them_on_this_machine(
        model: LlamaModel, caplog: pytest.LogCaptureFixture) -> None:
    """The prices come from timing this machine's steps at load, within sane bounds; an engine
    without drafts keeps the defaults, and timing leaves the cache empty (a first job
    evaluates its whole prompt and decodes as without it)."""
    prompt = chat_prompt(model, "Name three rivers.")
    with caplog.at_level(logging.INFO, logger="ollamalite.runtime.engine.engine"):
        with running(model, n_slots=1, slot_ctx=SLOT_CTX, speculative=True) as timed:
            prices = timed.prices
            first = Run(timed, prompt, num_predict=8)
            first.text()
    assert "draft prices: a step of 1 row took" in caplog.text
    assert draft.MIN_UBATCH <= prices.ubatch <= draft.MAX_UBATCH and prices.split > 0
    assert first.final.prompt_eval_count == len(prompt)
    with running(model, n_slots=1, slot_ctx=SLOT_CTX) as plain_engine:
        assert plain_engine.prices == draft.Prices()
        again = Run(plain_engine, prompt, num_predict=8)
        again.text()
    assert again.final.tokens == first.final.tokens
