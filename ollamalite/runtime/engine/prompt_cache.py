"""Host-memory prompt cache: the KV state of prefixes that slots gave up, kept in RAM.

Slots hold the prefix cache only while nobody needs them: with 4 slots, a fifth conversation
evicts one. Before a slot's cells are overwritten its sequence state (llama.cpp's per-sequence
state copy) is saved here, and a later prompt that continues a saved prefix gets it restored
into a free slot instead of evaluated again: copying the cells back costs about 1/1000 of
computing them (docs/engine.md), as llama-server's `--cache-ram` does.

One cache serves every loaded model, so the bound holds for the whole process. Each entry
belongs to the engine that saved it: only that engine may restore it (another model's cells,
or a reloaded model's with other settings, would be garbage), and its entries go with it.
With a disk behind it (`prompt_disk.py`), what leaves by eviction or with its engine is
written there, offered again to any engine of the same key, within the disk's own bound.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ollamalite.runtime.engine.prompt_disk import PromptDisk, Spilled, continues, longest_match


@dataclass(eq=False)
class Saved:
    """The state of one sequence whose KV cells hold `tokens`, from `owner`'s context."""

    owner: object
    tokens: np.ndarray  # int32, compared in bulk: a prompt is matched against every entry
    state: ctypes.Array
    exact: int = 0  # the leading cells computed as a cold evaluation computes them (Slot.exact)
    key: str = ""  # `prompt_disk.engine_key` of `owner`: which engines a disk copy fits
    used: float = field(default_factory=time.time)  # last saved or matched (wall clock: a disk
    # copy keeps it across restarts)

    @property
    def size(self) -> int:
        return ctypes.sizeof(self.state) + self.tokens.nbytes


class PromptCache:
    """A least-recently-used set of saved sequences, bounded by `capacity` bytes in all, in
    front of an optional `disk`.

    Called from several engine threads; every method holds the lock while it runs.
    """

    def __init__(self, capacity: int, disk: PromptDisk | None = None) -> None:
        self.capacity = capacity
        self.disk = disk
        self._entries: OrderedDict[int, Saved] = OrderedDict()  # by id(); oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self.restored_tokens = 0  # in all: the prompt tokens restores spared evaluating

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, owner: object, prompt: list[int], key: str = ""
                ) -> tuple[Saved | Spilled | None, int]:
        """`owner`'s entry sharing the longest start with `prompt`, or the disk's of `key`
        when that shares more, and that length."""
        wanted = tokens_array(prompt)
        best: Saved | Spilled | None
        with self._lock:
            best, shared = longest_match(
                (s for s in self._entries.values() if s.owner is owner), wanted)
        if self.disk is not None and key:
            spilled, n = self.disk.longest(key, wanted)
            if n > shared:
                best, shared = spilled, n
        return best, shared

    def holds(self, owner: object, tokens: list[int], key: str = "") -> bool:
        """Whether an entry of `owner`, or the disk's of `key`, already starts with all of
        `tokens` (saving them again would only spend memory); that entry counts as used."""
        wanted = tokens_array(tokens)
        with self._lock:
            for entry_id, saved in self._entries.items():
                if saved.owner is owner and continues(saved.tokens, wanted):
                    self._entries.move_to_end(entry_id)
                    saved.used = time.time()
                    return True
        return (self.disk is not None and bool(key)
                and self.disk.longest(key, wanted)[1] == len(wanted))

    def add(self, saved: Saved) -> bool:
        """Keep `saved`, evicting the least recently used entries (to the disk, if any) to
        stay within the bound; an entry whose tokens `saved` continues goes first, since
        `saved` holds all it held. False when `saved` alone is larger than the whole cache
        (it goes straight to the disk, if any)."""
        if saved.size > self.capacity:
            self.spill(saved)
            return False
        evicted = []
        with self._lock:
            for key, old in list(self._entries.items()):
                if old.owner is saved.owner and continues(saved.tokens, old.tokens):
                    self._remove(key)
            while self._bytes + saved.size > self.capacity:
                evicted.append(self._remove(next(iter(self._entries))))
            self._entries[id(saved)] = saved
            self._bytes += saved.size
        for old in evicted:
            self.spill(old)
        return True

    def spill(self, saved: Saved, wait: bool = False) -> None:
        """Hand `saved` to the disk, if any (`PromptDisk.put`)."""
        if self.disk is not None:
            self.disk.put(saved, wait)

    def take(self, entry: Saved | Spilled) -> ctypes.Array | None:
        """`entry`'s state, to go back into a slot: a host-memory entry leaves the cache (the
        slot holds it from now on), a disk entry is read (None when its file is damaged)."""
        if isinstance(entry, Spilled):
            return self.disk.load(entry) if self.disk is not None else None
        with self._lock:
            if id(entry) in self._entries:
                self._remove(id(entry))
        return entry.state

    def count_restored(self, tokens: int) -> None:
        with self._lock:
            self.restored_tokens += tokens

    def drop(self, owner: object) -> None:
        """Forget every entry of `owner` (its engine is closing), after writing them to the
        disk, if any, most recently used first (a stop cut short keeps those)."""
        with self._lock:
            dropped = [self._remove(k) for k, s in list(self._entries.items())
                       if s.owner is owner]
        for saved in reversed(dropped):
            self.spill(saved, wait=True)

    def close(self) -> None:
        """Finish writing to the disk (the server is stopping)."""
        if self.disk is not None:
            self.disk.close()

    def _remove(self, key: int) -> Saved:
        saved = self._entries.pop(key)
        self._bytes -= saved.size
        return saved


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def tokens_array(tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)
