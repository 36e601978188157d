"""Events from engine threads to an event loop, one wake-up per batch rather than per event.

`loop.call_soon_threadsafe` writes to the loop's self-pipe on every call: with four slots
streaming, the engine thread made a system call per token per slot, about 3% of its time in the
profile of four clients (bench/profile_http.py). A mailbox wakes the loop only when it was
empty, and the loop then delivers everything that came meanwhile, in arrival order, so one
wake-up serves every event of an engine step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any, Callable

log = logging.getLogger(__name__)

_boxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = (
    weakref.WeakKeyDictionary())


class Mailbox:
    """Deliveries for one event loop, posted from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # held by its key in `_boxes`: a strong one would leak
        self._lock = threading.Lock()
        self._waiting: list[tuple[Callable[[Any], None], Any]] = []

    def post(self, deliver: Callable[[Any], None], item: Any) -> None:
        """Call `deliver(item)` on the loop. Raises RuntimeError when the loop is closed (as
        `call_soon_threadsafe` does), however often it is called after that."""
        with self._lock:
            self._waiting.append((deliver, item))
            if len(self._waiting) > 1:  # a wake-up is on its way and will take this too
                return
            try:
                loop = self._loop()
                if loop is None:
                    raise RuntimeError("the event loop is gone")
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                self._waiting.clear()  # nobody will drain them: the next post raises too
                raise

    def _drain(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for deliver, item in waiting:
            try:
                deliver(item)
            except Exception:  # one receiver's failure must not lose the others' events
                log.exception("delivering an engine event failed")


def mailbox() -> Mailbox:
    """The running loop's mailbox (called on the loop)."""
    loop = asyncio.get_running_loop()
    box = _boxes.get(loop)
    if box is None:
        box = _boxes[loop] = Mailbox(loop)
    return box
