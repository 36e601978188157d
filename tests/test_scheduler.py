"""The scheduler's concurrency contract, with a fake loader and runners (no llama.cpp): one
model never waits for another, a load is shared by the requests that want it, retired runners
stay accounted for, and num_ctx only grows a model's context up to what it was trained for.

Races are pinned with events the test controls: the fake loader reports each load it starts
and waits at a gate the test opens. `settle()` yields loop turns until every task waits on
something the test controls (no time passes); closes run in a thread, so `freed()` awaits them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import pytest

from ollamalite.durations import keep_alive_seconds
from ollamalite.errors import Busy
from ollamalite.registry.gguf_header import GGUFInfo
from ollamalite.registry.models_file import ModelEntry, Registry
from ollamalite.runtime.scheduler import (
    QUEUE_FULL,
    SHUTTING_DOWN,
    Lease,
    Runner,
    Scheduler,
    context_size,
)
from ollamalite.settings import Settings

TRAINED = 8192  # the fake GGUF's context_length
A, B, C = "alpha:latest", "beta:latest", "gamma:latest"
T = TypeVar("T")


class FakeModel:
    size = 1000

    def __init__(self) -> None:
        self.closed = False

    def kv_bytes_per_token(self, kv_type: str) -> int:
        return 1

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """Closes at once, or (in its thread) when the test sets `may_close`."""

    n_slots = 1
    kv_cache_type = "f16"
    queued = 0  # jobs waiting for a slot

    def __init__(self) -> None:
        self.closed_with: str | None = None
        self.may_close = threading.Event()
        self.may_close.set()

    def close(self, reason: str) -> None:
        self.may_close.wait(5)
        self.closed_with = reason


class FakeLoader:
    """Builds runners as the real loader sizes them. Each load is reported on `started`; a
    model with a gate waits there until the test opens it; an error in `errors` fails the
    model's next load."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.started: asyncio.Queue[str] = asyncio.Queue()
        self.gates: dict[str, asyncio.Event] = {}
        self.errors: dict[str, Exception] = {}

    def gate(self, name: str) -> asyncio.Event:
        self.gates[name] = asyncio.Event()
        return self.gates[name]

    async def __call__(self, entry: ModelEntry, num_ctx: int | None) -> Runner:
        self.calls.append((entry.name, num_ctx))
        self.started.put_nowait(entry.name)
        if entry.name in self.gates:
            await self.gates[entry.name].wait()
        if entry.name in self.errors:
            raise self.errors.pop(entry.name)
        info = GGUFInfo(3, 0, {"general.architecture": "llama",
                               "llama.context_length": TRAINED})
        return Runner(entry, info, FakeModel(), FakeEngine(),  # type: ignore[arg-type]
                      context_size(entry, info, num_ctx))


class Held:
    """A request inside `Scheduler.use` until the test lets it go."""

    def __init__(self, scheduler: Scheduler, name: str, num_ctx: int | None = None,
                 keep_alive: float | None = None) -> None:
        self.entered = asyncio.Event()
        self._leave = asyncio.Event()
        self.lease: Lease | None = None
        self.task = asyncio.create_task(self._run(scheduler, name, num_ctx, keep_alive))

    async def _run(self, scheduler: Scheduler, name: str, num_ctx: int | None,
                   keep_alive: float | None) -> Lease:
        async with scheduler.use(name, num_ctx, keep_alive) as lease:
            self.lease = lease
            self.entered.set()
            await self._leave.wait()
        return lease

    async def runner(self) -> Runner:
        await within(self.entered.wait())
        assert self.lease is not None
        return self.lease.runner

    async def finish(self) -> Lease:
        self._leave.set()
        return await within(self.task)


def entry(name: str, **fields: object) -> ModelEntry:
    return ModelEntry(name=name, path=Path(f"/models/{name}.gguf"), **fields)  # type: ignore


def registry(*entries: ModelEntry) -> Registry:
    return Registry(Path("models.yaml"), {e.name: e for e in entries})


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    """A safety net so a broken contract fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, seconds)


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def freed(scheduler: Scheduler) -> None:
    await within(asyncio.gather(*scheduler._closes.values()))


async def use_once(scheduler: Scheduler, name: str, num_ctx: int | None = None,
                   keep_alive: float | None = None) -> Lease:
    async def request() -> Lease:
        async with scheduler.use(name, num_ctx, keep_alive) as lease:
            return lease

    return await within(request())


Make = Callable[..., tuple[Scheduler, FakeLoader]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """A scheduler on a fake loader: models A, B, C (num_ctx 2048) unless given entries."""
    made: list[Scheduler] = []

    def build(*entries: ModelEntry, **settings: object) -> tuple[Scheduler, FakeLoader]:
        loader = FakeLoader()
        models = entries or tuple(entry(name, num_ctx=2048) for name in (A, B, C))
        scheduler = Scheduler(Settings(**{"max_loaded_models": 2, **settings}),  # type: ignore
                              registry(*models), loader=loader)
        made.append(scheduler)
        return scheduler, loader

    yield build
    for scheduler in made:
        await scheduler.close(grace=0)


def names(scheduler: Scheduler) -> list[str]:
    return [runner.entry.name for runner in scheduler.loaded]


# -- one load per model, shared -------------------------------------------------------------

async def test_requests_for_a_loading_model_share_its_load(make: Make) -> None:
    scheduler, loader = make()
    gate = loader.gate(A)
    first, second = Held(scheduler, A), Held(scheduler, A)
    assert await within(loader.started.get()) == A
    gate.set()
    runner = await first.runner()
    assert await second.runner() is runner and runner.refs == 2
    assert loader.calls == [(A, None)]
    leases = [await first.finish(), await second.finish()]
    assert all(lease.load_duration > 0 for lease in leases)
    warm = await use_once(scheduler, A)
    assert warm.runner is runner and warm.load_duration == 0.0
    assert runner.refs == 0 and len(loader.calls) == 1


async def test_requests_behind_a_load_are_waiting_and_the_load_time_is_reported(
        make: Make) -> None:
    scheduler, loader = make()
    loads: list[tuple[str, float]] = []
    scheduler.on_load = lambda name, seconds: loads.append((name, seconds))
    gate = loader.gate(A)
    first, second = Held(scheduler, A), Held(scheduler, A)
    assert await within(loader.started.get()) == A
    await settle()
    assert scheduler.waiting == 2 and loads == []
    gate.set()
    await first.runner()
    await second.runner()
    assert scheduler.waiting == 0
    assert [name for name, _ in loads] == [A] and loads[0][1] > 0
    await first.finish()
    await second.finish()


async def test_a_failed_load_fails_every_waiter_alike_and_the_next_request_loads_again(
        make: Make) -> None:
    scheduler, loader = make()
    gate = loader.gate(A)
    loader.errors[A] = error = RuntimeError("not a GGUF file")
    waiters = [asyncio.create_task(use_once(scheduler, A)) for _ in range(2)]
    await within(loader.started.get())
    gate.set()
    results = await within(asyncio.gather(*waiters, return_exceptions=True))
    assert results == [error, error] and all(result is error for result in results)
    assert scheduler.loaded == [] and scheduler._requests == 0
    lease = await use_once(scheduler, A)
    assert loader.calls == [(A, None), (A, None)]
    assert scheduler.loaded == [lease.runner] and lease.load_duration > 0


async def test_a_request_leaving_during_the_load_does_not_cancel_it_for_the_others(
        make: Make) -> None:
    scheduler, loader = make()
    gate = loader.gate(A)
    leaving, staying = Held(scheduler, A), Held(scheduler, A)
    await within(loader.started.get())
    leaving.task.cancel()
    gate.set()
    runner = await staying.runner()
    assert leaving.task.cancelled() and runner.refs == 1  # no reference left to the leaver
    await staying.finish()
    assert runner.refs == 0 and scheduler.loaded == [runner] and len(loader.calls) == 1


async def test_a_load_nobody_waits_for_any_more_ends_under_the_keep_alive_rules(
        make: Make) -> None:
    scheduler, loader = make(entry(A, num_ctx=2048), entry(B, num_ctx=2048, keep_alive=0.0))
    gates = {name: loader.gate(name) for name in (A, B)}
    leavers = [Held(scheduler, A), Held(scheduler, B)]
    assert {await within(loader.started.get()) for _ in leavers} == {A, B}
    for held in leavers:
        held.task.cancel()
    for gate in gates.values():
        gate.set()
    await settle()
    await freed(scheduler)
    [kept] = scheduler.loaded  # B (keep_alive 0) was freed as soon as it loaded
    assert kept.entry.name == A and kept.refs == 0 and kept._timer is not None
    assert kept.expires_at == pytest.approx(time.time() + 300, abs=5)


async def test_a_request_leaving_just_after_its_load_releases_the_reference_it_was_handed(
        make: Make) -> None:
    scheduler, loader = make()
    gate = loader.gate(A)
    leaver = Held(scheduler, A)
    await within(loader.started.get())
    gate.set()
    while scheduler._loads:  # the load is over; its waiter has not resumed yet
        await asyncio.sleep(0)
    leaver.task.cancel()
    await settle()
    [runner] = scheduler.loaded
    assert leaver.task.cancelled() and runner.refs == 0 and runner._timer is not None


async def test_a_load_failing_after_its_last_waiter_left_is_forgotten_quietly(
        make: Make, caplog: pytest.LogCaptureFixture) -> None:
    scheduler, loader = make()
    gate = loader.gate(A)
    loader.errors[A] = RuntimeError("not a GGUF file")
    leaver = Held(scheduler, A)
    await within(loader.started.get())
    leaver.task.cancel()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gate.set()
        await settle()
        del leaver  # its cancellation's traceback leads to the load's task
        gc.collect()  # an unretrieved error is reported when its task is collected
    assert "never retrieved" not in caplog.text and scheduler.loaded == []
    del loader.gates[A]
    assert (await use_once(scheduler, A)).load_duration > 0 and len(loader.calls) == 2


async def test_a_load_still_waiting_for_room_is_dropped_when_its_request_leaves(
        make: Make) -> None:
    scheduler, loader = make(max_loaded_models=1)
    busy = Held(scheduler, A)
    runner_a = await busy.runner()
    await within(loader.started.get())
    leaver = Held(scheduler, B)
    await settle()
    assert loader.calls == [(A, None)]  # B waits for room: A is busy
    leaver.task.cancel()
    await settle()
    await busy.finish()
    await settle()
    assert scheduler.loaded == [runner_a] and runner_a.engine.closed_with is None
    assert loader.calls == [(A, None)] and not scheduler._loads


# -- one model never waits for another --------------------------------------------------------

async def test_two_models_load_at_once_and_a_loaded_one_serves_while_another_loads(
        make: Make) -> None:
    scheduler, loader = make(max_loaded_models=3)
    runner_a = (await use_once(scheduler, A)).runner
    await within(loader.started.get())
    gate_b, gate_c = loader.gate(B), loader.gate(C)
    wants_b, wants_c = Held(scheduler, B), Held(scheduler, C)
    assert {await within(loader.started.get()) for _ in range(2)} == {B, C}  # both loading
    warm = await within(use_once(scheduler, A))
    assert warm.runner is runner_a and warm.load_duration == 0.0
    gate_c.set()
    assert (await wants_c.runner()).entry.name == C and not wants_b.entered.is_set()
    gate_b.set()
    assert (await wants_b.runner()).entry.name == B
    await wants_b.finish()
    await wants_c.finish()


async def test_loaded_unload_and_set_registry_answer_while_another_model_loads(
        make: Make) -> None:
    scheduler, loader = make()
    runner_a = (await use_once(scheduler, A)).runner
    assert await within(loader.started.get()) == A
    gate = loader.gate(B)
    wants_b = Held(scheduler, B)
    assert await within(loader.started.get()) == B
    assert scheduler.loaded == [runner_a]
    await within(scheduler.unload(A))
    assert scheduler.loaded == [] and runner_a.engine.closed_with == "model unloaded"
    await within(scheduler.set_registry(registry(entry(B, num_ctx=2048, system="new"))))
    gate.set()
    runner_b = await wants_b.runner()
    assert runner_b.entry.system == "new" and not runner_b.retired  # loads alike: kept
    await wants_b.finish()


async def test_a_busy_model_gets_busy_after_the_load_timeout_and_is_not_evicted(
        make: Make) -> None:
    scheduler, loader = make(max_loaded_models=1, load_timeout=0.0)
    busy = Held(scheduler, A)
    runner_a = await busy.runner()
    with pytest.raises(Busy) as refused:
        await within(use_once(scheduler, B))
    assert "busy model" in refused.value.message
    assert refused.value.headers == {"Retry-After": "5"}
    assert scheduler.loaded == [runner_a] and runner_a.refs == 1
    assert [name for name, _ in loader.calls] == [A]
    await busy.finish()


async def test_room_is_made_by_freeing_the_least_recently_used_idle_model(make: Make) -> None:
    scheduler, loader = make()
    runner_a = (await use_once(scheduler, A)).runner
    runner_b = (await use_once(scheduler, B)).runner
    await use_once(scheduler, A)  # A is now the most recently used
    runner_c = (await within(use_once(scheduler, C))).runner
    assert runner_b.engine.closed_with == "model unloaded" and runner_b.model.closed
    assert scheduler.loaded == [runner_a, runner_c]


async def test_room_is_made_by_freeing_no_more_models_than_needed(make: Make) -> None:
    """While an evicted model is still being freed, another change must not evict more."""
    scheduler, loader = make()
    idle = (await use_once(scheduler, A)).runner
    idle.engine.may_close.clear()
    busy = Held(scheduler, B)
    runner_b = await busy.runner()
    wants_c = Held(scheduler, C)
    await settle()
    assert idle in scheduler._closes  # being freed for C, slowly
    await busy.finish()  # B is idle now: a change that re-checks for room
    await settle()
    assert scheduler.loaded == [runner_b, idle] and runner_b.engine.closed_with is None
    idle.engine.may_close.set()
    runner_c = await wants_c.runner()
    assert scheduler.loaded == [runner_b, runner_c] and [n for n, _ in loader.calls] == [A, B, C]
    await wants_c.finish()


async def test_requests_beyond_the_queue_limit_get_queue_full(make: Make) -> None:
    scheduler, _ = make(max_loaded_models=1, num_parallel=1, max_queue=1)
    held = [Held(scheduler, A), Held(scheduler, A)]
    await held[1].runner()
    with pytest.raises(Busy) as refused:
        await use_once(scheduler, A)
    assert refused.value.message == QUEUE_FULL and refused.value.headers == {"Retry-After": "1"}
    for request in held:
        await request.finish()
    assert (await use_once(scheduler, A)).runner.refs == 0


# -- num_ctx -------------------------------------------------------------------------------------

async def test_num_ctx_above_the_trained_context_loads_once_at_the_trained_context(
        make: Make) -> None:
    scheduler, loader = make(entry(A, options={"num_ctx": 32768}))
    first = await use_once(scheduler, A, 32768)  # as the server passes options.num_ctx
    again = await use_once(scheduler, A, 100000)
    assert first.runner.num_ctx == TRAINED and again.runner is first.runner
    assert len(loader.calls) == 1 and again.load_duration == 0.0


async def test_a_tiny_num_ctx_loads_the_configured_size_and_only_a_larger_one_reloads(
        make: Make) -> None:
    scheduler, loader = make(entry(A), entry(B, num_ctx=2048), max_loaded_models=3)
    assert (await use_once(scheduler, A, 16)).runner.num_ctx == 4096  # DEFAULT_NUM_CTX
    small = (await use_once(scheduler, B, 16)).runner
    assert small.num_ctx == 2048
    assert (await use_once(scheduler, B, 2048)).runner is small
    old_request = Held(scheduler, B)
    assert await old_request.runner() is small
    grown = await use_once(scheduler, B, 4096)
    assert grown.runner.num_ctx == 4096 and grown.load_duration > 0
    assert small.retired and small.refs == 1 and small in scheduler.loaded
    assert (await use_once(scheduler, B)).runner is grown.runner  # new requests: the new one
    await old_request.finish()
    await freed(scheduler)
    assert small.engine.closed_with == "model unloaded"
    assert names(scheduler) == [A, B] and len(loader.calls) == 3


# -- models.yaml edits ----------------------------------------------------------------------------

async def test_a_retired_runner_stays_visible_until_its_last_request_ends(make: Make) -> None:
    scheduler, loader = make()
    old_request = Held(scheduler, A)
    old = await old_request.runner()
    await within(scheduler.set_registry(registry(entry(A, num_ctx=1024))))
    assert old.retired and scheduler.loaded == [old] and old.engine.closed_with is None
    new = (await within(use_once(scheduler, A))).runner
    assert new is not old and new.num_ctx == 1024 and scheduler.loaded == [old, new]
    await old_request.finish()
    await freed(scheduler)
    assert old.engine.closed_with == "model unloaded" and scheduler.loaded == [new]
    assert loader.calls == [(A, None), (A, None)]


async def test_a_retired_runner_still_counts_against_max_loaded_models(make: Make) -> None:
    scheduler, loader = make(max_loaded_models=1)
    old_request = Held(scheduler, A)
    old = await old_request.runner()
    await within(loader.started.get())
    await within(scheduler.set_registry(registry(entry(A, num_ctx=1024))))
    new_request = Held(scheduler, A)
    await settle()
    assert len(loader.calls) == 1 and scheduler.loaded == [old]  # no room while it runs
    await old_request.finish()
    new = await new_request.runner()
    assert old.engine.closed_with == "model unloaded" and scheduler.loaded == [new]
    await new_request.finish()


async def test_set_registry_during_a_load_retires_what_that_load_brings(make: Make) -> None:
    scheduler, loader = make()
    gate = loader.gate(A)
    before = Held(scheduler, A)
    await within(loader.started.get())
    await within(scheduler.set_registry(registry(entry(A, num_ctx=1024))))
    del loader.gates[A]
    after = Held(scheduler, A)  # loads the new entry, not joining the stale load
    fresh = await after.runner()
    assert fresh.num_ctx == 1024 and len(loader.calls) == 2
    gate.set()
    stale = await before.runner()
    assert stale.num_ctx == 2048 and stale.retired and scheduler.loaded == [fresh, stale]
    await before.finish()
    await freed(scheduler)
    assert stale.engine.closed_with == "model unloaded" and scheduler.loaded == [fresh]
    assert (await use_once(scheduler, A)).runner is fresh
    await after.finish()


# -- keep-alive and unload ------------------------------------------------------------------------

async def test_keep_alive_zero_frees_when_idle_negative_keeps_forever_and_timers_restart(
        make: Make) -> None:
    scheduler, _ = make()
    gone = (await use_once(scheduler, A, keep_alive=0.0)).runner
    # Freed before the request ends, so /api/ps right after its reply no longer lists it.
    assert gone.engine.closed_with == "model unloaded" and scheduler.loaded == []
    forever = (await use_once(scheduler, B, keep_alive=keep_alive_seconds(-1))).runner
    assert forever.expires_at == math.inf and forever._timer is None
    timed = (await use_once(scheduler, B, keep_alive=60.0)).runner
    assert timed is forever and timed._timer is not None
    assert timed.expires_at == pytest.approx(time.time() + 60, abs=5)


async def test_unload_of_a_busy_model_frees_it_when_its_request_ends(make: Make) -> None:
    scheduler, _ = make()
    request = Held(scheduler, A)
    runner = await request.runner()
    await within(scheduler.unload(A))
    assert scheduler.loaded == [runner] and runner.engine.closed_with is None
    await request.finish()
    await freed(scheduler)
    assert runner.engine.closed_with == "model unloaded" and scheduler.loaded == []


# -- close and shutdown ---------------------------------------------------------------------------

async def test_close_waits_for_a_running_request_before_freeing_its_model(make: Make) -> None:
    scheduler, _ = make()
    request = Held(scheduler, A)
    runner = await request.runner()
    closing = asyncio.create_task(scheduler.close(grace=60))
    await settle()
    assert not closing.done() and runner.engine.closed_with is None
    with pytest.raises(Busy, match=SHUTTING_DOWN):
        await use_once(scheduler, B)
    await request.finish()
    await within(closing)
    assert runner.engine.closed_with == "model unloaded" and scheduler.loaded == []


async def test_shutdown_after_its_grace_closes_engines_under_running_requests(
        make: Make) -> None:
    scheduler, _ = make()
    request = Held(scheduler, A)
    runner = await request.runner()
    await within(scheduler.shutdown(grace=0))
    assert runner.engine.closed_with == SHUTTING_DOWN and scheduler.loaded == []
    await request.finish()  # its release after the close is harmless
    assert runner.refs == 0 and runner._timer is None and scheduler.loaded == []
