"""Which models are loaded: loading off the event loop, LRU eviction, keep-alive, num_ctx.

Handlers ask for a model by name and get a `Runner` (model + engine) held for the duration of
their request; the scheduler never formats HTTP and never touches tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from ollamalite.errors import Busy, ModelNotFound
from ollamalite.registry.gguf_header import GGUFInfo, read_header
from ollamalite.registry.models_file import ModelEntry, Registry, bundled_model_path
from ollamalite.runtime.engine.cpu import CpuPlan, CpuPolicy
from ollamalite.runtime.engine.engine import Engine
from ollamalite.runtime.engine.llama import LlamaModel
from ollamalite.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_NUM_CTX = 4096
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
SHUTTING_DOWN = "server is shutting down"


@dataclass(eq=False)
class Runner:
    """A loaded model and the engine thread serving it."""

    entry: ModelEntry
    info: GGUFInfo
    model: LlamaModel
    engine: Engine
    num_ctx: int
    keep_alive: float
    refs: int = 0
    expires_at: float = 0.0
    retired: bool = False  # its entry was deleted or changed: closed once its requests end
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Memory it holds, as `/api/ps` reports it: weights plus the KV cache of every slot."""
        return self.model.size + self.model.kv_bytes_per_token * self.num_ctx * \
            self.engine.n_slots

    def close(self, reason: str = "model unloaded") -> None:
        """Blocking: joins the engine thread (its jobs fail with `reason`) and frees
        llama.cpp memory."""
        self.engine.close(reason)
        self.model.close()


@dataclass(frozen=True)
class Lease:
    """A runner held by one request, and the seconds that request spent loading it."""

    runner: Runner
    load_duration: float


class Scheduler:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._loaded: OrderedDict[str, Runner] = OrderedDict()
        self._lock = asyncio.Lock()
        self._released = asyncio.Condition()
        self._requests = 0  # inside `use`: generating, or waiting for a slot or a load
        self._closing = False
        self.cpu = CpuPolicy(settings.repack, settings.data_dir)

    async def cpu_plan(self, entry: ModelEntry | None = None) -> CpuPlan | None:
        """How this process loads models on this CPU (decided once, off the event loop). A
        probe, if one is needed, decodes with the small bundled model when it is installed,
        else with `entry`'s; None when there is neither yet."""
        model = _probe_model(entry)
        return None if model is None else await asyncio.to_thread(self.cpu.plan, model)

    def entry(self, name: str) -> ModelEntry:
        entry = self.registry.get(name)
        if entry is None:
            raise ModelNotFound(name)
        return entry

    @property
    def loaded(self) -> list[Runner]:
        return list(self._loaded.values())

    async def set_registry(self, registry: Registry) -> None:
        """Serve a new registry. A loaded model whose entry is gone or now loads differently
        is retired (closed once idle; new requests load afresh); others take the new entry."""
        async with self._lock:
            self.registry = registry
            for key, runner in list(self._loaded.items()):
                entry = registry.get(runner.entry.name)
                if entry is not None and _loads_alike(entry, runner.entry):
                    runner.entry = entry
                    continue
                log.info("%s: removed or changed in the models file, unloading", runner.entry.name)
                del self._loaded[key]
                runner.retired, runner.keep_alive = True, 0.0
                if runner.refs == 0:
                    await self._unload(runner)

    @asynccontextmanager
    async def use(self, name: str, num_ctx: int | None = None,
                  keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """Hold a loaded model for one request; afterwards its keep-alive clock restarts."""
        entry = self.entry(name)
        self._admit()
        try:
            started = time.perf_counter()
            runner, fresh = await self._acquire(entry, num_ctx)
            try:
                yield Lease(runner, time.perf_counter() - started if fresh else 0.0)
            finally:
                await self._release(runner, keep_alive)
        finally:
            self._requests -= 1

    def _admit(self) -> None:
        """Beyond what the slots of the loaded models can serve, at most `max_queue` requests
        wait (OLLAMA_MAX_QUEUE); more get Ollama's 503 at once instead of an unbounded wait."""
        if self._closing:
            raise Busy(SHUTTING_DOWN)
        capacity = self.settings.num_parallel * self.settings.max_loaded_models
        if self._requests >= capacity + self.settings.max_queue:
            raise Busy(QUEUE_FULL, retry_after=1)
        self._requests += 1

    async def unload(self, name: str) -> None:
        """Unload now if idle, otherwise as soon as the running requests finish."""
        key = self.entry(name).name.lower()
        async with self._lock:
            runner = self._loaded.get(key)
            if runner is not None:
                runner.keep_alive = 0.0
                if runner.refs == 0:
                    await self._unload(runner)

    async def shutdown(self, grace: float) -> None:
        """Refuse new requests, give running ones `grace` seconds to finish, then end the
        rest (their streams get a final error line) and free every model."""
        self._closing = True
        try:
            async with self._released:
                await asyncio.wait_for(self._released.wait_for(
                    lambda: all(r.refs == 0 for r in self._loaded.values())), grace)
        except asyncio.TimeoutError:
            log.info("shutdown: ending %d running requests",
                     sum(r.refs for r in self._loaded.values()))
        await self.close(SHUTTING_DOWN)

    async def close(self, reason: str = "model unloaded") -> None:
        for runner in list(self._loaded.values()):
            await self._unload(runner, reason)

    async def _acquire(self, entry: ModelEntry, num_ctx: int | None) -> tuple[Runner, bool]:
        """Loading goes on if the requester disconnects (it holds the lock and a thread);
        the reference it would have held is then released as soon as the load is done."""
        task = asyncio.ensure_future(self._acquire_locked(entry, num_ctx))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is None:
            runner, _ = task.result()
            asyncio.ensure_future(self._release(runner, None))

    async def _acquire_locked(self, entry: ModelEntry,
                              num_ctx: int | None) -> tuple[Runner, bool]:
        key = entry.name.lower()
        async with self._lock:
            runner = self._loaded.get(key)
            if runner is not None and num_ctx is not None and num_ctx > runner.num_ctx:
                log.info("%s: num_ctx %d > loaded %d, reloading", entry.name, num_ctx,
                         runner.num_ctx)
                await self._wait_idle(runner)
                await self._unload(runner)
                runner = None
            fresh = runner is None
            if runner is None:
                await self._make_room()
                runner = await self._load(entry, num_ctx)
                self._loaded[key] = runner
            self._loaded.move_to_end(key)
            runner.refs += 1
            _cancel_timer(runner)
            return runner, fresh

    async def _release(self, runner: Runner, keep_alive: float | None) -> None:
        runner.refs -= 1
        if keep_alive is not None and not runner.retired:
            runner.keep_alive = keep_alive
        if runner.refs == 0:
            self._arm_timer(runner)
        async with self._released:
            self._released.notify_all()

    def _arm_timer(self, runner: Runner) -> None:
        _cancel_timer(runner)
        if runner.keep_alive == 0:
            asyncio.get_running_loop().create_task(self._expire(runner))
            return
        runner.expires_at = time.time() + runner.keep_alive
        if runner.keep_alive != float("inf"):
            loop = asyncio.get_running_loop()
            runner._timer = loop.call_later(
                runner.keep_alive, lambda: loop.create_task(self._expire(runner)))

    async def _expire(self, runner: Runner) -> None:
        async with self._lock:
            current = self._loaded.get(runner.entry.name.lower()) is runner
            if runner.refs == 0 and (current or runner.retired):
                await self._unload(runner)

    async def _make_room(self) -> None:
        while len(self._loaded) >= self.settings.max_loaded_models:
            idle = [r for r in self._loaded.values() if r.refs == 0]
            if idle:
                await self._unload(idle[0])
                continue
            async with self._released:
                try:
                    await asyncio.wait_for(self._released.wait(), self.settings.load_timeout)
                except asyncio.TimeoutError:
                    raise Busy("timed out waiting for a busy model to make room (loaded "
                               f"models are at OLLAMA_MAX_LOADED_MODELS="
                               f"{self.settings.max_loaded_models})", retry_after=5) from None

    async def _wait_idle(self, runner: Runner) -> None:
        async with self._released:
            await self._released.wait_for(lambda: runner.refs == 0)

    async def _load(self, entry: ModelEntry, num_ctx: int | None) -> Runner:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, read_header, entry.path)
        ctx = _context_size(entry, info, num_ctx)
        slots = entry.num_parallel or self.settings.num_parallel
        opts = entry.options
        plan = await self.cpu_plan(entry)
        assert plan is not None  # an entry always gives the probe a model
        model = await loop.run_in_executor(
            None, lambda: LlamaModel(entry.path, extra_bufts=plan.extra_bufts,
                                     use_mmap=opts.get("use_mmap", True),
                                     use_mlock=opts.get("use_mlock", False)))
        try:
            engine = await loop.run_in_executor(
                None, lambda: Engine(model, slots, ctx, n_batch=opts.get("num_batch", 512),
                                     n_threads=opts.get("num_thread", self.settings.num_threads),
                                     prefix_cache=self.settings.prefix_cache))
        except Exception:
            model.close()
            raise
        elapsed = time.perf_counter() - started
        log.info("loaded %s (%d slots x %d tokens) in %.2fs", entry.name, slots, ctx, elapsed)
        keep_alive = entry.keep_alive if entry.keep_alive is not None else self.settings.keep_alive
        return Runner(entry=entry, info=info, model=model, engine=engine, num_ctx=ctx,
                      keep_alive=keep_alive)

    async def _unload(self, runner: Runner, reason: str = "model unloaded") -> None:
        _cancel_timer(runner)
        key = runner.entry.name.lower()
        if self._loaded.get(key) is runner:
            del self._loaded[key]
        await asyncio.get_running_loop().run_in_executor(None, runner.close, reason)
        log.info("unloaded %s", runner.entry.name)


def _probe_model(entry: ModelEntry | None) -> Path | None:
    try:
        bundled = bundled_model_path()
    except FileNotFoundError:
        bundled = None
    if bundled is not None and bundled.is_file():
        return bundled
    return entry.path if entry is not None else None


def _loads_alike(new: ModelEntry, old: ModelEntry) -> bool:
    """Whether a loaded model can serve the new entry without loading again."""
    load_keys = ("num_ctx", "num_batch", "num_thread", "use_mmap", "use_mlock")
    return (new.path == old.path and new.num_ctx == old.num_ctx
            and new.num_parallel == old.num_parallel
            and all(new.options.get(k) == old.options.get(k) for k in load_keys))


def _context_size(entry: ModelEntry, info: GGUFInfo, requested: int | None) -> int:
    wanted = requested or entry.num_ctx or entry.options.get("num_ctx") or DEFAULT_NUM_CTX
    return max(16, min(wanted, info.context_length))


def _cancel_timer(runner: Runner) -> None:
    if runner._timer is not None:
        runner._timer.cancel()
        runner._timer = None

