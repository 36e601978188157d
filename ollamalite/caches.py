"""A least-recently-used cache bounded by bytes, not by entries.

The keys of ollamalite's caches can come from requests (chat templates and grammars as large as
a request body) or from files (GGUF headers): bounded by count alone, a few dozen large
requests would pin gigabytes. Each entry is charged its key's size plus an estimate of its
value's, and the least recently used entries leave until the total fits again.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

V = TypeVar("V")
_MISSING = object()
# What an entry costs beyond its key and value (the dict slot, tuple and bookkeeping).
ENTRY_OVERHEAD = 128


def key_size(key: tuple[Any, ...]) -> int:
    """Bytes charged for a key: its strings (templates, grammars, paths) by their length."""
    return sum(len(part) if isinstance(part, (str, bytes)) else 8 for part in key)


class ByteLRU:
    """Thread-safe (callers run in worker threads); an entry larger than the whole budget is
    simply not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return default
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        size += ENTRY_OVERHEAD
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                return
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


def byte_lru(max_bytes: int, value_size: Callable[[Any], int] = lambda _: 0
             ) -> Callable[[Callable[..., V]], Callable[..., V]]:
    """`functools.lru_cache` for positional hashable arguments, bounded by bytes: each result
    costs `key_size(args) + value_size(result)`. Exceptions are not cached. The cache is the
    wrapper's `cache` attribute."""
    def decorate(fn: Callable[..., V]) -> Callable[..., V]:
        cache = ByteLRU(max_bytes)

        @functools.wraps(fn)
        def cached(*args: Any) -> V:
            value = cache.get(args, _MISSING)
            if value is _MISSING:
                value = fn(*args)
                cache.put(args, value, key_size(args) + value_size(value))
            return value

        cached.cache = cache  # type: ignore[attr-defined]
        return cached

    return decorate
