"""The mailbox from engine threads to the event loop: one wake-up per batch, order kept, a
closed loop reported on every post."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest

from ollamalite.generation.mailbox import Mailbox, mailbox


class FakeLoop:
    """Records the callbacks `call_soon_threadsafe` was given, so a test runs them when it
    chooses (the loop's turn), or refuses them like a closed loop."""

    def __init__(self, closed: bool = False) -> None:
        self.closed = closed
        self.scheduled: list[Callable[[], None]] = []

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        if self.closed:
            raise RuntimeError("Event loop is closed")
        self.scheduled.append(callback)

    def run_scheduled(self) -> None:
        callbacks, self.scheduled = self.scheduled, []
        for callback in callbacks:
            callback()


def test_events_posted_before_the_loop_turns_share_one_wake_up_in_order() -> None:
    loop = FakeLoop()
    box = Mailbox(loop)  # type: ignore[arg-type]
    got: list[Any] = []
    for item in ("a", "b", "c"):
        box.post(got.append, item)
    assert len(loop.scheduled) == 1 and got == []
    loop.run_scheduled()
    assert got == ["a", "b", "c"]
    box.post(got.append, "d")  # the box is empty again: a new wake-up
    assert len(loop.scheduled) == 1
    loop.run_scheduled()
    assert got == ["a", "b", "c", "d"]


def test_a_closed_loop_raises_on_every_post() -> None:
    """The engine cancels a job whose loop is gone when a post raises: a post after the
    first must raise too, not wait for a wake-up that will never come."""
    box = Mailbox(FakeLoop(closed=True))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(RuntimeError):
            box.post(print, "lost")


def test_one_failing_receiver_does_not_lose_the_others_events() -> None:
    loop = FakeLoop()
    box = Mailbox(loop)  # type: ignore[arg-type]
    got: list[Any] = []

    def broken(item: Any) -> None:
        raise ValueError(item)

    box.post(got.append, 1)
    box.post(broken, 2)
    box.post(got.append, 3)
    loop.run_scheduled()
    assert got == [1, 3]


def test_a_thread_streams_into_the_running_loop_in_order() -> None:
    async def main() -> list[int]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        box = mailbox()
        assert mailbox() is box  # one per loop
        thread = threading.Thread(target=lambda: [box.post(queue.put_nowait, n)
                                                  for n in range(2000)])
        thread.start()
        got = [await queue.get() for _ in range(2000)]
        thread.join()
        return got

    assert asyncio.run(main()) == list(range(2000))
