"""Same request, same tokens: alone, beside other requests, or continuing a cached turn.

llama.cpp's CPU kernels round a sequence's rows differently by how many of them share a
micro-batch and with whom (docs/engine.md, "Same tokens alone or beside others"); these tests
hold the engine to tokens that do not depend on it, on the real bundled model: in deterministic
mode always, by default for requests whose cells stay within SPLIT_KV_CELLS.
"""

from __future__ import annotations

import random
from typing import Iterator

import pytest

from ollamalite.options import SamplingParams
from ollamalite.runtime.engine.engine import BLOCK, SPLIT_KV_CELLS, Engine
from ollamalite.runtime.engine.llama import LlamaModel
from tests.conftest import running
from tests.test_engine import Run, chat_prompt

N_BATCH = 128
NUM_PREDICT = 24
TOPICS = ["Name three colours.", "Why is the sky blue?", "What is 12 times 13?",
          "Write a haiku about rain.", "Explain recursion briefly.",
          "Give me a Python function that adds two numbers.", "Define entropy.",
          "Translate 'good morning' to French.", "How do I boil an egg?",
          "Describe a cat in one sentence.", "Write a JSON object describing a joke.",
          "List five prime numbers."]
LONG = ["Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * n
        for n in (8, 20, 33)] + [
    "Continue the list: " + ", ".join(f"item {i}" for i in range(n)) for n in (40, 90)] + [
    "Suggest a name for a bakery. " * n for n in (9, 25, 45)]
FOLLOW_UP = "<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def engine(model: LlamaModel) -> Iterator[Engine]:
    with running(model, n_slots=4, slot_ctx=1024, n_batch=N_BATCH, deterministic=True) as e:
        yield e


@pytest.fixture(scope="module")
def default(model: LlamaModel) -> Iterator[Engine]:
    with running(model, n_slots=4, slot_ctx=1024, n_batch=N_BATCH) as e:
        yield e


@pytest.fixture(scope="module")
def cold(model: LlamaModel) -> Iterator[Engine]:
    with running(model, n_slots=1, slot_ctx=1024, n_batch=N_BATCH, prefix_cache=False) as e:
        yield e


def tokens(run: Run) -> list[int]:
    run.text()
    return list(run.final.tokens)


def traffic(engine: Engine, model: LlamaModel, rng: random.Random) -> list[Run]:
    """A few other requests of random lengths, some generating for a while, some sampling."""
    runs = []
    for _ in range(rng.randint(0, 2)):
        text = rng.choice(TOPICS + LONG) + " " * rng.randint(0, 9)
        sampling = SamplingParams(temperature=rng.choice([0, 0.8]), seed=rng.randint(0, 99))
        runs.append(Run(engine, chat_prompt(model, text), sampling=sampling,
                        num_predict=rng.randint(1, 30)))
    return runs


def drain(runs: list[Run]) -> None:
    for run in runs:
        run.text()


def test_prompts_cover_every_kernel_case(model: LlamaModel) -> None:
    lengths = [len(chat_prompt(model, t)) for t in TOPICS + LONG]
    assert min(lengths) < BLOCK and max(lengths) > 2 * N_BATCH
    assert sum(n + NUM_PREDICT > SPLIT_KV_CELLS for n in lengths) >= 3


def alone_and_beside_traffic(engine: Engine, model: LlamaModel, texts: list[str]) -> None:
    """Each text's greedy tokens alone, then submitted among random other requests: equal."""
    prompts = [chat_prompt(model, t) for t in texts]
    alone = [tokens(Run(engine, p, num_predict=NUM_PREDICT)) for p in prompts]
    rng = random.Random(7)
    busy, others = [], []
    for prompt in rng.sample(prompts, len(prompts)):
        others += traffic(engine, model, rng)
        busy.append((prompt, Run(engine, prompt, num_predict=NUM_PREDICT)))
    assert {tuple(p): tokens(r) for p, r in busy} == {tuple(p): t for p, t in zip(prompts, alone)}
    drain(others)


def test_greedy_tokens_alone_and_beside_random_traffic(engine: Engine,
                                                       model: LlamaModel) -> None:
    alone_and_beside_traffic(engine, model, TOPICS + LONG)


def test_by_default_short_requests_alone_and_beside_random_traffic(
        default: Engine, model: LlamaModel) -> None:
    """Without the deterministic mode, prompts still get micro-batches of their own and whole
    blocks; generated rows share theirs, which changes nothing while a slot's cells stay
    within SPLIT_KV_CELLS."""
    assert all(len(chat_prompt(model, t)) + NUM_PREDICT <= SPLIT_KV_CELLS for t in TOPICS)
    alone_and_beside_traffic(default, model, TOPICS)


def test_follow_up_turn_gives_the_tokens_of_a_cold_run(engine: Engine, cold: Engine,
                                                       model: LlamaModel) -> None:
    suffix = model.tokenize(FOLLOW_UP, add_special=False)
    for text in ("Write a JSON object describing a joke.", LONG[1], LONG[6]):
        turn = Run(engine, chat_prompt(model, text), num_predict=40)
        follow = tokens(turn) + suffix
        warm = Run(engine, follow, num_predict=NUM_PREDICT)
        assert tokens(warm) == tokens(Run(cold, follow, num_predict=NUM_PREDICT))
        reused = len(follow) - warm.final.prompt_eval_count
        assert reused == turn.final.prompt_tokens // BLOCK * BLOCK  # its prompt's whole blocks


def test_seeded_sampling_alone_and_beside_others(engine: Engine,
                                                 model: LlamaModel) -> None:
    prompts = [chat_prompt(model, t) for t in (TOPICS[0], LONG[2], LONG[7])]
    seeded = {"sampling": SamplingParams(temperature=0.8, seed=42), "num_predict": NUM_PREDICT}
    alone = [tokens(Run(engine, p, **seeded)) for p in prompts]
    rng = random.Random(3)
    beside, others = [], []
    for prompt in prompts:
        others += traffic(engine, model, rng) + [Run(engine, prompts[0], num_predict=30)]
        beside.append(Run(engine, prompt, **seeded))
        others += traffic(engine, model, rng)
    assert [tokens(r) for r in beside] == alone
    drain(others)
