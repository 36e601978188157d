"""Host-memory prompt cache: the KV state of prefixes that slots gave up, kept in RAM.

Slots hold the prefix cache only while nobody needs them: with 4 slots, a fifth conversation
evicts one. Before a slot's cells are overwritten its sequence state (llama.cpp's per-sequence
state copy) is saved here, and a later prompt that continues a saved prefix gets it restored
into a free slot instead of evaluated again: copying the cells back costs about 1/1000 of
computing them (docs/engine.md), as llama-server's `--cache-ram` does.

One cache serves every loaded model, so the bound holds for the whole process. Each entry
belongs to the engine that saved it: only that engine may restore it (another model's cells,
or a reloaded model's with other settings, would be garbage), and its entries go with it.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(eq=False)
class Saved:
    """The state of one sequence whose KV cells hold `tokens`, from `owner`'s context."""

    owner: object
    tokens: np.ndarray  # int32, compared in bulk: a prompt is matched against every entry
    state: ctypes.Array
    exact: int = 0  # the leading cells computed as a cold evaluation computes them (Slot.exact)

    @property
    def size(self) -> int:
        return ctypes.sizeof(self.state) + self.tokens.nbytes


class PromptCache:
    """A least-recently-used set of saved sequences, bounded by `capacity` bytes in all.

    Called from several engine threads; every method holds the lock while it runs.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, Saved] = OrderedDict()  # by id(); oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self.restored_tokens = 0  # in all: the prompt tokens restores spared evaluating

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, owner: object, prompt: list[int]) -> tuple[Saved | None, int]:
        """`owner`'s entry sharing the longest start with `prompt`, and that length."""
        best, shared = None, 0
        wanted = tokens_array(prompt)
        with self._lock:
            for saved in self._entries.values():
                if saved.owner is owner:
                    n = shared_start(saved.tokens, wanted)
                    if n > shared:
                        best, shared = saved, n
        return best, shared

    def holds(self, owner: object, tokens: list[int]) -> bool:
        """Whether an entry of `owner` already starts with all of `tokens` (saving them again
        would only spend memory); that entry counts as used."""
        wanted = tokens_array(tokens)
        with self._lock:
            for key, saved in self._entries.items():
                if saved.owner is owner and shared_start(saved.tokens, wanted) == len(wanted):
                    self._entries.move_to_end(key)
                    return True
        return False

    def add(self, saved: Saved) -> bool:
        """Keep `saved`, evicting the least recently used entries to stay within the bound; an
        entry whose tokens `saved` continues goes first, since `saved` holds all it held.
        False when `saved` alone is larger than the whole cache."""
        if saved.size > self.capacity:
            return False
        with self._lock:
            for key, old in list(self._entries.items()):
                if old.owner is saved.owner and shared_start(old.tokens, saved.tokens) == len(
                        old.tokens):
                    self._remove(key)
            while self._bytes + saved.size > self.capacity:
                self._remove(next(iter(self._entries)))
            self._entries[id(saved)] = saved
            self._bytes += saved.size
        return True

    def take(self, saved: Saved) -> None:
        """Remove `saved`: it is going back into a slot, which holds it from now on."""
        with self._lock:
            if id(saved) in self._entries:
                self._remove(id(saved))

    def count_restored(self, tokens: int) -> None:
        with self._lock:
            self.restored_tokens += tokens

    def drop(self, owner: object) -> None:
        """Forget every entry of `owner` (its engine is closing)."""
        with self._lock:
            for key in [k for k, s in self._entries.items() if s.owner is owner]:
                self._remove(key)

    def _remove(self, key: int) -> None:
        self._bytes -= self._entries.pop(key).size


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def tokens_array(tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


def shared_start(a: np.ndarray, b: np.ndarray) -> int:
    """`common_prefix` of two token arrays, compared in one vector operation."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n
