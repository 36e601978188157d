"""Turning generated token bytes into text chunks that are safe to send.

Chunks split only on whole UTF-8 characters, and text that might be the start of a stop string
is held back until it is known not to be one, so stop strings never reach the client.
"""

from __future__ import annotations

import codecs


class TextAssembler:
    """Feed token bytes in, get sendable text out; `stopped` turns true at a stop string."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, data: bytes) -> str:
        """Text that can be sent now (possibly empty)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        hit = self._first_stop()
        if hit is not None:
            cut, self.matched = hit
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._partial_stop_len()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(out):]
        return out

    def flush(self) -> str:
        """What is left at the end of generation (held-back text that turned out harmless)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _first_stop(self) -> tuple[int, str] | None:
        """Where the earliest stop string starts, and which one it is."""
        hits = [(i, s) for s, i in ((s, self._held.find(s)) for s in self._stops) if i >= 0]
        return min(hits, key=lambda hit: hit[0]) if hits else None

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the held text that begins some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:n]):
                    best = n
                    break
        return best
