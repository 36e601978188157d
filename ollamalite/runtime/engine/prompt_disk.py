"""Saved prefixes on disk: what the host-memory prompt cache lets go survives it, and a restart.

The host-memory cache (`prompt_cache.py`) evicts its least recently used entries, and loses
them all when the server stops. With a disk bound set (OLLAMALITE_CACHE_DISK) an evicted entry,
and every entry and slot of an engine that closes (an unload, a shutdown), is written to a file
under `OLLAMALITE_HOME/prompt-cache`; a prompt that continues one reads it back (tens of
milliseconds for a long history, where evaluating it again takes seconds on a CPU).

A file is trusted only as far as it proves itself: a fixed magic and format version, a header
whose sizes add up to the file's, and a CRC-32 of the KV state checked before llama.cpp sees
it. Anything else is deleted and counts as a miss. An entry is offered only to an engine with
the same key (`engine_key`): the same model file (path, size, modification time), llama.cpp
version and KV cache settings; another key's files stay (another model may want them) until
the size bound evicts them, least recently used first.

Writes happen on a thread of their own, so an engine step never waits for the disk; a restore
reads on the engine thread, which is what it would otherwise spend evaluating.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol, TypeVar

import llama_cpp
import numpy as np

if TYPE_CHECKING:  # prompt_cache builds on this module
    from ollamalite.runtime.engine.prompt_cache import Saved

log = logging.getLogger(__name__)


class _Tokens(Protocol):
    tokens: np.ndarray


E = TypeVar("E", bound=_Tokens)

MAGIC = b"OLPCKV\x00\x01"  # the last byte is the format version
SUFFIX = ".kv"
_HEAD = struct.Struct("<8sI")  # magic, header length
MAX_HEADER = 4096  # a header is a few short JSON fields; a longer one is not ours
# Entries waiting for the writer hold their state in memory: at most this many bytes of them
# (an eviction beyond it is dropped, as without a disk; an engine closing waits instead).
MAX_PENDING = 256 << 20
# A `.tmp` file older than this is a write a crash interrupted (any write takes seconds at most).
STALE_WRITE_S = 600.0


def engine_key(model_path: str, kv_cache_type: str, flash_attention: str) -> str:
    """What a saved state depends on besides its tokens: the model file as it is now, the
    llama.cpp that computed it and the cache layout (type, V transposed without flash
    attention). A changed or replaced model file gets a new key, so old cells are never used."""
    stat = os.stat(model_path)
    facts = [MAGIC.hex(), llama_cpp.__version__, os.path.realpath(model_path), stat.st_size,
             stat.st_mtime_ns, kv_cache_type, flash_attention]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


@dataclass(eq=False)
class Spilled:
    """One saved prefix on disk: its tokens are kept in memory for matching, its state is not."""

    key: str
    tokens: np.ndarray
    exact: int
    path: Path
    state_size: int
    crc: int
    size: int  # of the whole file
    used: int = 0  # last use, ns since the epoch (its file's modification time)


class PromptDisk:
    """A folder of saved prefixes bounded by `capacity` bytes, least recently used out first.

    `longest` and `load` run on engine threads, `put` on any; the folder is scanned and written
    only by the writer thread. Every method holds the lock while it touches the index.
    """

    def __init__(self, folder: Path, capacity: int) -> None:
        self.folder = folder
        self.capacity = capacity
        self._index: OrderedDict[Path, Spilled] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._pending: list[Saved] = []
        self._pending_bytes = 0
        self._closing = False
        self._scanned = False
        self._thread = threading.Thread(target=self._run, name="prompt-disk", daemon=True)
        self._thread.start()

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._index)

    # -- any thread -------------------------------------------------------------------------

    def put(self, saved: Saved, wait: bool = False) -> None:
        """Write `saved` (its `key` set) in the background. Beyond MAX_PENDING bytes waiting,
        drop it, or with `wait` block until the writer has room."""
        size = ctypes.sizeof(saved.state)
        if not saved.key or size + saved.tokens.nbytes > self.capacity:
            return
        with self._work:
            if wait:  # one entry at a time goes through, however large
                while (self._pending and self._pending_bytes + size > MAX_PENDING
                       and self._thread.is_alive()):
                    self._work.wait(1.0)
            elif self._pending_bytes + size > MAX_PENDING:
                return
            if self._closing or not self._thread.is_alive():
                return
            self._pending.append(saved)
            self._pending_bytes += size
            self._work.notify_all()

    def longest(self, key: str, wanted: np.ndarray) -> tuple[Spilled | None, int]:
        """The entry of `key` sharing the longest start with `wanted`, and that length."""
        with self._lock:
            return longest_match((e for e in self._index.values() if e.key == key), wanted)

    def load(self, entry: Spilled) -> ctypes.Array | None:
        """`entry`'s state, read and checked; None (and the file gone) when it is missing,
        short or corrupt."""
        state = (ctypes.c_uint8 * entry.state_size)()
        try:
            with open(entry.path, "rb") as file:
                file.seek(entry.size - entry.state_size)
                complete = file.readinto(memoryview(state)) == entry.state_size
            os.utime(entry.path)  # the order of use, for the next scan
            entry.used = time.time_ns()
        except OSError as exc:  # evicted meanwhile, or the folder went away
            log.warning("prompt cache file %s unreadable: %s", entry.path.name, exc)
            self._forget(entry, delete=False)
            return None
        if not complete or zlib.crc32(state) != entry.crc:
            log.warning("prompt cache file %s is damaged: deleted", entry.path.name)
            self._forget(entry, delete=True)
            return None
        with self._lock:
            if entry.path in self._index:
                self._index.move_to_end(entry.path)
        return state

    def flush(self) -> None:
        """Wait until the folder is indexed and what was put is written."""
        with self._work:
            while self._thread.is_alive() and (not self._scanned or self._pending_bytes):
                self._work.wait(0.1)

    def close(self) -> None:
        """Write what is waiting, then stop the writer."""
        with self._work:
            self._closing = True
            self._work.notify_all()
        self._thread.join()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        self._scan()
        with self._work:
            self._scanned = True
            self._work.notify_all()
        while True:
            with self._work:
                while not self._pending and not self._closing:
                    self._work.wait()
                if not self._pending:
                    return
                saved = self._pending.pop(0)
            try:
                self._write(saved)
            except OSError as exc:  # a full or read-only disk: the entry is simply not kept
                log.warning("prompt cache: could not write a saved prefix: %s", exc)
            except Exception:  # never let the writer die with entries waiting on it
                log.exception("prompt cache: writing a saved prefix failed")
            with self._work:
                self._pending_bytes -= ctypes.sizeof(saved.state)
                self._work.notify_all()

    def _scan(self) -> None:
        """Index the folder's valid files, oldest first; delete damaged and half-written ones."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            files = [p for p in self.folder.iterdir() if p.suffix in (SUFFIX, ".tmp")]
        except OSError as exc:
            log.warning("prompt cache folder %s unusable: %s", self.folder, exc)
            return
        found = []
        for path in files:
            if path.suffix != SUFFIX and not _stale(path):
                continue  # another server on this folder may be writing it now
            entry = _read_header(path) if path.suffix == SUFFIX else None
            if entry is None:
                log.warning("prompt cache file %s is not a valid entry: deleted", path.name)
                _unlink(path)
            else:
                found.append(entry)
        with self._lock:
            for entry in sorted(found, key=lambda e: e.used):
                self._index[entry.path] = entry
                self._bytes += entry.size
        self._evict(0)

    def _write(self, saved: Saved) -> None:
        """One file for `saved`, unless an entry already holds all its tokens or only entries
        used more recently could make room; entries it continues go, and the least recently
        used ones while the folder would exceed its bound."""
        if self.longest(saved.key, saved.tokens)[1] == len(saved.tokens):
            return
        used = int(saved.used * 1e9)
        crc = zlib.crc32(saved.state)
        header = json.dumps({"key": saved.key, "tokens": len(saved.tokens),
                             "exact": saved.exact, "state": ctypes.sizeof(saved.state),
                             "crc": crc}).encode()
        name = hashlib.sha256(saved.key.encode() + saved.tokens.tobytes()).hexdigest()[:32]
        path = self.folder / f"{name}{SUFFIX}"
        size = _HEAD.size + len(header) + saved.tokens.nbytes + ctypes.sizeof(saved.state)
        if not self._evict(size, saved, used):
            return
        # Written aside and renamed: a crash leaves a .tmp (deleted by the next scan), never
        # half an entry under an entry's name.
        temporary = path.with_suffix(".tmp")
        try:
            # Owner-only: the tokens are the conversation's text.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(descriptor, "wb") as file:
                file.write(_HEAD.pack(MAGIC, len(header)))
                file.write(header)
                file.write(saved.tokens.astype("<i4").tobytes())
                file.write(memoryview(saved.state))
            os.utime(temporary, ns=(used, used))  # its last use, for the order after a restart
            os.replace(temporary, path)
        except BaseException:
            _unlink(temporary)
            raise
        entry = Spilled(saved.key, saved.tokens.copy(), saved.exact, path,
                        ctypes.sizeof(saved.state), crc, size, used)
        with self._lock:
            self._index[path] = entry
            self._bytes += size
            if any(other.used > used for other in self._index.values()):  # written late
                self._index = OrderedDict(sorted(self._index.items(), key=lambda i: i[1].used))
        log.debug("prompt cache: wrote %d tokens to disk (%d bytes on disk)", len(entry.tokens),
                  self._bytes)

    def _evict(self, room: int, saved: Saved | None = None, used: int | None = None) -> bool:
        """Make `room` bytes: delete the entries `saved` continues, then the least recently
        used, those used before `used` only. False (and nothing deleted) when that is not
        enough."""
        with self._lock:
            doomed = {e.path: e for e in self._index.values()
                      if saved is not None and e.key == saved.key
                      and continues(saved.tokens, e.tokens)}
            left = self._bytes - sum(e.size for e in doomed.values())
            for oldest in self._index.values():
                if left + room <= self.capacity or (used is not None and oldest.used > used):
                    break
                if oldest.path not in doomed:
                    doomed[oldest.path] = oldest
                    left -= oldest.size
            if left + room > self.capacity:
                return False
        for entry in doomed.values():
            self._forget(entry, delete=True)
        return True

    def _forget(self, entry: Spilled, delete: bool) -> None:
        with self._lock:
            if self._index.pop(entry.path, None) is not None:
                self._bytes -= entry.size
        if delete:
            _unlink(entry.path)


def longest_match(entries: Iterable[E], wanted: np.ndarray) -> tuple[E | None, int]:
    """Of `entries` (with `tokens`), the one sharing the longest start with `wanted`, and
    that length; (None, 0) when none shares a token."""
    best, shared = None, 0
    for entry in entries:
        n = shared_start(entry.tokens, wanted)
        if n > shared:
            best, shared = entry, n
    return best, shared


def continues(tokens: np.ndarray, prefix: np.ndarray) -> bool:
    """Whether `tokens` start with all of `prefix`."""
    return len(prefix) <= len(tokens) and shared_start(tokens, prefix) == len(prefix)


def shared_start(a: np.ndarray, b: np.ndarray) -> int:
    """How many tokens two token arrays share from their start, compared in one vector
    operation (a prompt is matched against every entry)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def _read_header(path: Path) -> Spilled | None:
    """The entry `path` holds, judged by its header, tokens and size; None when it is not a
    whole file of this format. The sizes are checked before the tokens are read."""
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            head = file.read(_HEAD.size)
            if len(head) != _HEAD.size:
                return None
            magic, length = _HEAD.unpack(head)
            if magic != MAGIC or length > MAX_HEADER:
                return None
            fields = json.loads(file.read(length))
            key, count, exact = fields["key"], fields["tokens"], fields["exact"]
            state, crc = fields["state"], fields["crc"]
            if not (isinstance(key, str) and all(isinstance(v, int) and v >= 0
                                                 for v in (count, exact, state, crc))):
                return None
            size = _HEAD.size + length + 4 * count + state
            if stat.st_size != size or not state:
                return None
            tokens = np.frombuffer(file.read(4 * count), dtype="<i4").astype(np.int32)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(tokens) != count:
        return None
    return Spilled(key, tokens, exact, path, state, crc, size, stat.st_mtime_ns)


def _stale(path: Path) -> bool:
    """Whether a half-written file is old enough to be nobody's write in progress."""
    try:
        return time.time() - path.stat().st_mtime > STALE_WRITE_S
    except OSError:
        return False


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
