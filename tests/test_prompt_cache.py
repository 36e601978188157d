"""The host-memory prompt cache: the bound and the LRU as pure logic, then on the real model
through the engine (a conversation evicted from its slot comes back from host memory)."""

from __future__ import annotations

import ctypes
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ollamalite.runtime.engine.engine import MIN_SAVE, Engine
from ollamalite.runtime.engine.jobs import Finished
from ollamalite.runtime.engine.llama import LlamaModel
from ollamalite.runtime.engine.prompt_cache import PromptCache, Saved, tokens_array
from ollamalite.runtime.scheduler import DEFAULT_CACHE_RAM, host_cache_size
from tests.conftest import MODEL, LiveServer, module_server
from tests.test_engine import Run, chat_prompt

OWNER, OTHER = object(), object()


def saved(tokens: list[int], nbytes: int = 1000, owner: object = OWNER) -> Saved:
    return Saved(owner, tokens_array(tokens), (ctypes.c_uint8 * nbytes)())


def test_longest_shared_start_of_the_owners_entries() -> None:
    cache = PromptCache(1 << 20)
    short, long_ = saved([1, 2, 3]), saved([1, 2, 9, 9, 9])
    for entry in (short, long_, saved([1, 2, 3, 4, 5, 6], owner=OTHER)):
        assert cache.add(entry)
    assert cache.longest(OWNER, [1, 2, 3, 4]) == (short, 3)
    assert cache.longest(OWNER, [1, 2, 9, 9]) == (long_, 4)
    assert cache.longest(OWNER, [7]) == (None, 0)


def test_bound_holds_by_evicting_the_least_recently_used() -> None:
    cache = PromptCache(3 * saved([0]).size)
    first, second, third = (saved([n]) for n in (1, 2, 3))
    for entry in (first, second, third):
        assert cache.add(entry)
    assert cache.holds(OWNER, [1])  # now the most recently used
    assert cache.add(saved([4]))
    assert cache.bytes == 3 * first.size <= cache.capacity and len(cache) == 3
    assert cache.longest(OWNER, [2]) == (None, 0)  # second went first
    assert cache.longest(OWNER, [1])[0] is first


def test_an_entry_larger_than_the_cache_is_refused() -> None:
    cache = PromptCache(500)
    assert not cache.add(saved([1], nbytes=600))
    assert cache.bytes == 0 and len(cache) == 0


def test_a_longer_save_of_the_same_conversation_replaces_the_shorter() -> None:
    cache = PromptCache(1 << 20)
    cache.add(saved([1, 2]))
    cache.add(saved([1, 2], owner=OTHER))
    longer = saved([1, 2, 3])
    cache.add(longer)
    assert len(cache) == 2 and cache.longest(OWNER, [1, 2]) == (longer, 2)
    assert cache.holds(OWNER, [1, 2, 3]) and not cache.holds(OWNER, [1, 2, 3, 4])


def test_take_and_drop_release_their_bytes() -> None:
    cache = PromptCache(1 << 20)
    mine, theirs = saved([1]), saved([2], owner=OTHER)
    cache.add(mine)
    cache.add(theirs)
    cache.take(mine)
    assert len(cache) == 1 and cache.bytes == theirs.size
    cache.drop(OTHER)
    assert len(cache) == 0 and cache.bytes == 0


def test_default_size_is_a_quarter_of_free_memory_at_most_8_gib() -> None:
    assert host_cache_size(0) == 0 and host_cache_size(5 << 20) == 5 << 20
    assert 0 < host_cache_size(None) <= DEFAULT_CACHE_RAM


# -- on the real model ----------------------------------------------------------------------

@pytest.fixture()
def cache() -> PromptCache:
    return PromptCache(256 << 20)


@pytest.fixture()
def one_slot(model: LlamaModel, cache: PromptCache) -> Iterator[Engine]:
    engine = Engine(model, n_slots=1, slot_ctx=1024, n_batch=256, prompt_cache=cache)
    yield engine
    engine.close()


def logbook(model: LlamaModel, name: str) -> list[int]:
    return chat_prompt(model, f"Logbook of {name}. " + "Wind north, sea calm, all well. " * 12
                       + "What was the weather?")


def follow_up(model: LlamaModel, finished: Finished, question: str) -> list[int]:
    return list(finished.tokens) + model.tokenize(
        f"<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
        add_special=False)


def turn(engine: Engine, prompt: list[int]) -> Run:
    run = Run(engine, prompt, num_predict=16)
    run.text()
    assert isinstance(run.final, Finished)
    return run


def test_an_evicted_conversation_comes_back_from_host_memory(
        model: LlamaModel, one_slot: Engine, cache: PromptCache) -> None:
    """One slot, two conversations: the second evicts the first, whose cells are saved; the
    first's next turn restores them and evaluates only its new tokens, with the same greedy
    tokens as when its cells never left the slot."""
    first = turn(one_slot, logbook(model, "the Mary Rose")).final
    assert len(first.tokens) > MIN_SAVE and len(cache) == 0
    turn(one_slot, logbook(model, "the Cutty Sark"))
    assert len(cache) == 1 and cache.bytes > 0
    again = follow_up(model, first, "And the day after?")
    restored = turn(one_slot, again).final
    assert restored.prompt_eval_count <= len(again) - len(first.tokens) + 1
    assert len(cache) == 1  # the restored entry left; the Cutty Sark's took its place

    kept = Engine(model, n_slots=1, slot_ctx=1024, n_batch=256)  # no eviction, no host cache
    try:
        assert turn(kept, logbook(model, "the Mary Rose")).final.tokens == first.tokens
        assert turn(kept, again).final.tokens == restored.tokens
    finally:
        kept.close()


def test_a_state_llama_cpp_refuses_is_evaluated_again(
        model: LlamaModel, one_slot: Engine, cache: PromptCache) -> None:
    """A saved state that does not fit this context (another model's, say) is refused by
    llama.cpp's checks: the prompt is evaluated in full and the answer is unchanged."""
    prompt = logbook(model, "the Endeavour")
    expected = turn(one_slot, prompt).final.tokens
    turn(one_slot, logbook(model, "the Beagle"))  # the Endeavour's cells go to the cache
    entry, shared = cache.longest(one_slot, prompt)
    assert entry is not None and shared == len(prompt)
    state = np.ctypeslib.as_array(entry.state)
    state[: len(state) // 2] = 0xFF
    again = turn(one_slot, prompt).final
    assert again.tokens == expected and again.prompt_eval_count == len(prompt)
    kept, shared = cache.longest(one_slot, prompt)  # the Beagle's, sharing the template's start
    assert kept is not entry and shared < len(prompt)


def test_closing_the_engine_forgets_its_entries(model: LlamaModel, cache: PromptCache) -> None:
    """A reloaded model is a new engine: what the old one saved is never offered to it."""
    engine = Engine(model, n_slots=1, slot_ctx=1024, n_batch=256, prompt_cache=cache)
    prompt = logbook(model, "the Golden Hind")
    turn(engine, prompt)
    turn(engine, logbook(model, "the Victory"))
    assert len(cache) == 1
    engine.close()
    assert len(cache) == 0 and cache.bytes == 0
    reloaded = Engine(model, n_slots=1, slot_ctx=1024, n_batch=256, prompt_cache=cache)
    try:
        assert turn(reloaded, prompt).final.prompt_eval_count == len(prompt)
    finally:
        reloaded.close()


def test_bound_holds_over_many_conversations(model: LlamaModel) -> None:
    """Twelve conversations through two slots into a cache that fits about three of them."""
    cache = PromptCache(3 * 160 * model.kv_bytes_per_token("f16"))
    engine = Engine(model, n_slots=2, slot_ctx=1024, n_batch=256, prompt_cache=cache)
    try:
        for n in range(12):
            turn(engine, logbook(model, f"ship number {n}"))
            assert cache.bytes <= cache.capacity
        assert 1 <= len(cache) <= 3
    finally:
        engine.close()


# -- over HTTP ------------------------------------------------------------------------------

one_slot_server = module_server("prompt-cache", f"models:\n  {MODEL}:\n    path: bundled\n"
                                "    num_ctx: 1024\n",
                                {"OLLAMA_NUM_PARALLEL": "1", "OLLAMALITE_CACHE_RAM": "64"})


def chat(url: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "stream": False,
            "options": {"temperature": 0, "num_predict": 12}}
    reply = httpx.post(f"{url}/api/chat", json=body, timeout=180)
    assert reply.status_code == 200, reply.text
    return reply.json()


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return next(sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == name)


def test_two_chats_on_one_slot_take_turns_through_host_memory(one_slot_server: LiveServer
                                                              ) -> None:
    """The `ollama` CLI's pattern with more conversations than slots: each follow-up finds
    its history in host memory and evaluates only the new message."""
    url = one_slot_server.url
    history = {name: [{"role": "system", "content": f"You keep the logbook of the {name}. "
                       + "Wind north, sea calm, all well. " * 12},
                      {"role": "user", "content": "What was the weather?"}]
               for name in ("Mary Rose", "Cutty Sark")}
    for name, messages in history.items():
        reply = chat(url, messages)
        assert reply["prompt_eval_count"] > MIN_SAVE
        messages += [reply["message"], {"role": "user", "content": "And the next day?"}]
    assert metric(url, "ollamalite_prompt_cache_entries") == 1  # the Mary Rose's, evicted
    follow = chat(url, history["Mary Rose"])
    assert 0 < follow["prompt_eval_count"] < 24  # the new turn only
    restored = metric(url, "ollamalite_prompt_cache_restored_tokens_total")
    assert restored > MIN_SAVE
    assert 0 < metric(url, "ollamalite_prompt_cache_bytes") <= 64 << 20
    assert metric(url, "ollamalite_prompt_cache_capacity_bytes") == 64 << 20
