"""Progress of pull/create/blob uploads on stderr, without any dependency.

On a terminal the current line is redrawn in place with `\\r` (a status, or a bar with
percentage and bytes); a new status or layer starts a new line. Elsewhere (a pipe, a log
file) each status is printed once, and a bar only when its layer starts and completes.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any, Iterable, TextIO

from ollamalite.client.humanize import human_bytes

_BAR_WIDTH = 25


class Progress:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.key: str | None = None  # what the last line shows: a status or a layer digest
        self.finished: set[str] = set()
        self.open = False

    def status(self, text: str) -> None:
        self._show(text, text, done=False)

    def bar(self, key: str, label: str, completed: int, total: int) -> None:
        percent = 100 * completed / total if total > 0 else 0.0
        filled = int(_BAR_WIDTH * min(percent, 100) / 100)
        text = (f"{label} {percent:3.0f}% ▕{'█' * filled}{' ' * (_BAR_WIDTH - filled)}▏ "
                f"{human_bytes(completed)}/{human_bytes(total)}")
        self._show(key, text, done=completed >= total)

    def _show(self, key: str, text: str, done: bool) -> None:
        new = key != self.key
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.out.write(("\n" if new and self.open else "\r") + text[:width] + "\x1b[K")
            self.open = True
        elif new or (done and key not in self.finished):
            self.out.write(text + "\n")
        if done:
            self.finished.add(key)
        self.key = key
        self.out.flush()

    def close(self) -> None:
        if self.open:
            self.out.write("\n")
            self.out.flush()
            self.open = False


def follow(lines: Iterable[dict[str, Any]], progress: Progress) -> None:
    """Render /api/pull and /api/create progress lines until the stream ends."""
    for line in lines:
        status = str(line.get("status", ""))
        digest = line.get("digest")
        if digest and line.get("total"):
            if not line.get("completed"):
                continue  # the announcement of a layer before its download starts
            label = status or f"pulling {digest.removeprefix('sha256:')[:12]}"
            progress.bar(digest, label, int(line["completed"]), int(line["total"]))
        elif status:
            progress.status(status)
