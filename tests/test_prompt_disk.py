"""The prompt cache's files: the format, its checks and the bound on real files; then on the real
model, a prefix that comes back from disk in a new engine, and over HTTP, across a restart."""

from __future__ import annotations

import ctypes
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from ollamalite.runtime.engine.engine import MIN_SAVE, Engine
from ollamalite.runtime.engine.jobs import Finished
from ollamalite.runtime.engine.llama import LlamaModel
from ollamalite.runtime.engine.prompt_cache import PromptCache, Saved, tokens_array
from ollamalite.runtime.engine.prompt_disk import MAGIC, PromptDisk, Spilled
from tests.conftest import MODEL, running, serving
from tests.test_prompt_cache import follow_up, logbook, metric, turn

OWNER = object()


def saved(tokens: list[int], key: str = "k", nbytes: int = 1000, seed: int = 0,
          used: float | None = None) -> Saved:
    state = (ctypes.c_uint8 * nbytes)()
    np.ctypeslib.as_array(state)[:] = np.random.default_rng(seed).integers(0, 256, nbytes)
    entry = Saved(OWNER, tokens_array(tokens), state, exact=len(tokens) // 2, key=key)
    if used is not None:
        entry.used = used
    return entry


def opened(folder: Path, capacity: int = 1 << 20) -> PromptDisk:
    disk = PromptDisk(folder, capacity)
    disk.flush()
    return disk


def written(disk: PromptDisk, *entries: Saved) -> None:
    for entry in entries:
        disk.put(entry)
    disk.flush()


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_entry_survives_a_new_instance_with_its_tokens_state_and_key(tmp_path: Path) -> None:
    disk = opened(tmp_path)
    mine, theirs = saved([1, 2, 3, 4], seed=1), saved([1, 2, 3, 4, 5], key="other", seed=2)
    written(disk, mine, theirs)
    disk.close()

    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o600}  # private
    again = opened(tmp_path)
    assert len(again) == 2 and again.bytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    entry, shared = again.longest("k", tokens_array([1, 2, 3, 4, 9]))
    assert isinstance(entry, Spilled) and shared == 4
    assert entry.tokens.tolist() == [1, 2, 3, 4] and entry.exact == 2
    assert bytes(again.load(entry)) == bytes(mine.state)
    assert again.longest("nobody", tokens_array([1, 2, 3, 4])) == (None, 0)
    again.close()


def test_a_damaged_state_is_a_miss_and_its_file_goes(tmp_path: Path) -> None:
    disk = opened(tmp_path)
    written(disk, saved([1, 2, 3]))
    entry, _ = disk.longest("k", tokens_array([1, 2, 3]))
    with open(entry.path, "r+b") as file:  # one bit of the state, as a failing disk would
        file.seek(entry.size - 10)
        byte = file.read(1)
        file.seek(entry.size - 10)
        file.write(bytes([byte[0] ^ 1]))
    assert disk.load(entry) is None
    assert len(disk) == 0 and disk.bytes == 0 and files(tmp_path) == []
    disk.close()


def test_the_scan_deletes_what_is_not_a_whole_entry_and_keeps_other_files(tmp_path: Path
                                                                          ) -> None:
    disk = opened(tmp_path)
    written(disk, saved([1, 2, 3]), saved([7, 8], seed=3))
    disk.close()
    whole, cut = sorted(tmp_path.iterdir())
    cut.write_bytes(cut.read_bytes()[:-1])  # a file cut short
    (tmp_path / "garbage.kv").write_bytes(MAGIC + b"\xff\xff\xff\xff{}")
    (tmp_path / "huge-header.kv").write_bytes(MAGIC + (1 << 20).to_bytes(4, "little"))
    claims = json.dumps({"key": "k", "tokens": 1 << 40, "exact": 0, "state": 8, "crc": 0})
    (tmp_path / "claims-too-much.kv").write_bytes(
        MAGIC + len(claims).to_bytes(4, "little") + claims.encode() + bytes(64))
    (tmp_path / "half-written.tmp").write_bytes(b"x" * 100)
    os.utime(tmp_path / "half-written.tmp", (0, 0))  # a crash long ago
    (tmp_path / "being-written.tmp").write_bytes(b"x" * 100)  # another server, right now
    (tmp_path / "notes.txt").write_text("not ours")

    again = opened(tmp_path)
    assert len(again) == 1
    assert files(tmp_path) == sorted([whole.name, "being-written.tmp", "notes.txt"])
    again.close()


def test_the_bound_holds_and_the_least_recently_used_go_first(tmp_path: Path) -> None:
    probe = opened(tmp_path / "probe")
    written(probe, saved([0]))
    size = probe.bytes
    probe.close()
    disk = opened(tmp_path / "disk", capacity=2 * size)
    first, second, third = saved([1]), saved([2]), saved([3])
    written(disk, first, second)
    assert disk.load(disk.longest("k", tokens_array([1]))[0]) is not None  # first: used now
    written(disk, third)
    assert len(disk) == 2 and disk.bytes == 2 * size <= disk.capacity
    assert len(list((tmp_path / "disk").iterdir())) == 2
    assert disk.longest("k", tokens_array([2])) == (None, 0)
    assert disk.longest("k", tokens_array([1]))[1] == 1
    written(disk, saved([4], nbytes=4 * size))  # larger than the whole bound: not written
    assert len(disk) == 2
    disk.close()
    smaller = opened(tmp_path / "disk", capacity=size)  # restarted with a lower bound
    assert len(smaller) == 1 and smaller.longest("k", tokens_array([1]))[1] == 1  # used last
    assert len(list((tmp_path / "disk").iterdir())) == 1
    written(smaller, saved([5], used=1.0))  # saved long ago: it does not evict a newer one
    assert len(smaller) == 1 and smaller.longest("k", tokens_array([5])) == (None, 0)
    smaller.close()


def test_an_engine_closing_writes_the_most_recently_used_first_and_keeps_their_order(
        tmp_path: Path) -> None:
    """Written newest first (a stop cut short keeps those), yet ordered by last use."""
    older, newer = saved([1], used=100.0), saved([2], used=200.0)
    probe = saved([0])
    cache = PromptCache(2 * probe.size, opened(tmp_path))
    cache.add(older)
    cache.add(newer)
    cache.drop(OWNER)
    cache.close()
    assert sorted(p.stat().st_mtime for p in tmp_path.iterdir()) == [100.0, 200.0]
    size = next(tmp_path.iterdir()).stat().st_size
    smaller = opened(tmp_path, capacity=size)
    assert smaller.longest("k", tokens_array([2]))[1] == 1 and len(smaller) == 1
    smaller.close()


def test_a_longer_prefix_replaces_the_shorter_and_a_covered_one_is_skipped(tmp_path: Path
                                                                           ) -> None:
    disk = opened(tmp_path)
    written(disk, saved([1, 2]), saved([1, 2], key="other"), saved([1, 2, 3, 4]))
    written(disk, saved([1, 2, 3]))  # the [1, 2, 3, 4] file holds all of it
    assert len(disk) == 2 and len(files(tmp_path)) == 2
    assert disk.longest("k", tokens_array([1, 2, 3, 4, 5]))[0].tokens.tolist() == [1, 2, 3, 4]
    written(disk, saved([1, 2, 7]))  # shares a start (a template's), shorter: a file of its own
    assert len(disk) == 3 and disk.longest("k", tokens_array([1, 2, 7]))[1] == 3
    disk.close()


def test_an_unwritable_folder_keeps_nothing_and_raises_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    disk = opened(blocker / "prompt-cache")
    written(disk, saved([1, 2, 3]))
    assert len(disk) == 0 and disk.longest("k", tokens_array([1, 2, 3])) == (None, 0)
    disk.close()


def test_host_memory_evicts_to_disk_and_takes_back_from_it(tmp_path: Path) -> None:
    first, second = saved([1, 2, 3], seed=4), saved([4, 5, 6], seed=5)
    cache = PromptCache(first.size, opened(tmp_path))
    assert cache.add(first) and cache.add(second)  # the first goes to disk
    cache.disk.flush()
    entry, shared = cache.longest(OWNER, [1, 2, 3, 7], key="k")
    assert isinstance(entry, Spilled) and shared == 3
    assert cache.holds(OWNER, [1, 2, 3], key="k") and not cache.holds(OWNER, [1, 2, 3])
    assert bytes(cache.take(entry)) == bytes(first.state)
    cache.drop(OWNER)  # the second, from memory to disk
    cache.close()
    assert len(cache) == 0 and len(opened(tmp_path)) == 2


# -- on the real model ----------------------------------------------------------------------

@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return tmp_path / "prompt-cache"


def one_slot(model: LlamaModel, cache: PromptCache, **kw: str) -> Engine:
    return Engine(model, n_slots=1, slot_ctx=1024, n_batch=256, prompt_cache=cache, **kw)


@contextmanager
def restarted(model: LlamaModel, folder: Path, **kw: str) -> Iterator[tuple[Engine, PromptCache]]:
    """A new cache on `folder` and a one-slot engine over it (Engine's keywords), as after a
    restart; both closed when the block ends."""
    cache = PromptCache(256 << 20, opened(folder, 64 << 20))
    engine = one_slot(model, cache, **kw)
    try:
        yield engine, cache
    finally:
        engine.close()
        cache.close()


@pytest.fixture()
def first_session(model: LlamaModel, folder: Path) -> Finished:
    """An engine that answers a logbook's question and closes (its slot goes to disk): the
    answer's final event."""
    cache = PromptCache(0, opened(folder, 64 << 20))  # no host memory: the disk alone
    engine = one_slot(model, cache)
    finished = turn(engine, logbook(model, "the Mary Rose")).final
    engine.close()
    cache.close()
    assert len(finished.tokens) > MIN_SAVE and len(os.listdir(folder)) == 1
    return finished


def test_a_new_engine_restores_a_closed_ones_prefix_from_disk(
        model: LlamaModel, folder: Path, first_session: Finished) -> None:
    """After a restart (a new cache and engine on the same folder) the follow-up evaluates
    only its new tokens, with the same greedy answer as an engine that never let go."""
    prompt = follow_up(model, first_session, "And the day after?")
    with restarted(model, folder) as (engine, cache):
        restored = turn(engine, prompt).final
    answered = len(first_session.tokens)
    assert restored.prompt_eval_count <= len(prompt) - answered + 1
    assert cache.restored_tokens >= answered - 1
    with running(model, n_slots=1, slot_ctx=1024, n_batch=256) as kept:
        assert turn(kept, logbook(model, "the Mary Rose")).final.tokens == first_session.tokens
        assert turn(kept, prompt).final.tokens == restored.tokens


def test_an_engine_with_other_kv_settings_is_not_offered_the_file(
        model: LlamaModel, folder: Path, first_session: Finished) -> None:
    """Another KV cache type lays its cells out otherwise: its engine evaluates in full."""
    prompt = follow_up(model, first_session, "And the day after?")
    with restarted(model, folder, kv_cache_type="q8_0", flash_attention="on") as (engine, _):
        assert turn(engine, prompt).final.prompt_eval_count == len(prompt)


def test_a_damaged_file_is_evaluated_again_with_the_same_answer(
        model: LlamaModel, folder: Path, first_session: Finished) -> None:
    (path,) = folder.iterdir()
    data = bytearray(path.read_bytes())
    data[-100:] = bytes(100)
    path.write_bytes(bytes(data))
    prompt = follow_up(model, first_session, "And the day after?")
    with restarted(model, folder) as (engine, cache):
        again = turn(engine, prompt).final
        assert again.prompt_eval_count == len(prompt) and cache.restored_tokens == 0
        assert not path.exists()


# -- over HTTP, across a restart --------------------------------------------------------------

CONFIG = f"models:\n  {MODEL}:\n    path: bundled\n    num_ctx: 1024\n"


def test_a_conversation_continues_warm_after_the_server_restarts(tmp_path: Path) -> None:
    """`serve` stops (SIGTERM) with a conversation in its slot; the next `serve` on the same
    OLLAMALITE_HOME answers its follow-up evaluating only the new message."""
    env = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMALITE_CACHE_DISK": "64"}
    messages = [{"role": "system", "content": "You keep the logbook of the Endeavour. "
                 + "Wind north, sea calm, all well. " * 12},
                {"role": "user", "content": "What was the weather?"}]
    body = {"model": MODEL, "stream": False, "options": {"temperature": 0, "num_predict": 12}}
    with serving(tmp_path, CONFIG, env) as server:
        reply = httpx.post(f"{server.url}/api/chat", json={**body, "messages": messages},
                           timeout=180).json()
        assert reply["prompt_eval_count"] > MIN_SAVE
    assert len(list((tmp_path / "home" / "prompt-cache").glob("*.kv"))) == 1
    messages += [reply["message"], {"role": "user", "content": "And the next day?"}]
    with serving(tmp_path, CONFIG, env) as server:
        again = httpx.post(f"{server.url}/api/chat", json={**body, "messages": messages},
                           timeout=180).json()
        assert 0 < again["prompt_eval_count"] < 24, again
        assert metric(server.url, "ollamalite_prompt_cache_restored_tokens_total") > MIN_SAVE
        assert metric(server.url, "ollamalite_prompt_cache_disk_entries") == 1
        assert 0 < metric(server.url, "ollamalite_prompt_cache_disk_bytes") <= 64 << 20
    assert "restored" in server.log() and "from disk" in server.log()
