"""Which models are loaded: loading off the event loop, LRU eviction, keep-alive, num_ctx.

Handlers ask for a model by name and get a `Runner` (model + engine) held for the duration of
their request; the scheduler never formats HTTP and never touches tokens.

Concurrency contract (one event loop, no lock):

* The bookkeeping (`_current`, `_runners`, `_closes`, `_loading`, `_loads`, `Runner.refs`) only
  changes in synchronous stretches between two awaits, so every change is atomic. No await is
  ever taken while it is half done, so there is no lock to hold (one would never be contended).
* A model's load is one task (`_Load`) that its requests await through `asyncio.shield`: one
  that goes away does not cancel it for the others. In the step the load ends, each request
  still waiting is handed a reference and the runner starts serving, so nothing can evict it in
  between. A failed load fails every waiter with the same error and is forgotten, so the next
  request loads again.
* Everything awaits one model's own work only: its load, its close, or (a load waiting for room,
  `close` waiting for requests) `_changed`, which is set whenever references, residency or loads
  change. So a request for a loaded model, `unload`, `loaded` and `set_registry` never wait
  behind another model's load or idle wait.
* Every runner that holds memory counts against OLLAMA_MAX_LOADED_MODELS and is listed by
  `loaded`: current ones, retired ones (an old entry's or a too small num_ctx's, finishing their
  requests) and closing ones; so does a load once it has been given room. Nothing is resident
  unseen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from ollamalite.errors import Busy, ModelNotFound
from ollamalite.registry.gguf_header import GGUFInfo, read_header
from ollamalite.registry.models_file import ModelEntry, Registry, bundled_model_path
from ollamalite.runtime.engine.cpu import CpuPlan, CpuPolicy
from ollamalite.runtime.engine.engine import Engine
from ollamalite.runtime.engine.llama import LlamaModel
from ollamalite.runtime.engine.prompt_cache import PromptCache
from ollamalite.runtime.engine.prompt_disk import PromptDisk
from ollamalite.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_NUM_CTX = 4096
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
SHUTTING_DOWN = "server is shutting down"
DEFAULT_CACHE_RAM = 8 << 30
CLOSE_GRACE_S = 5.0  # how long `close` lets running requests finish when not told


@dataclass(eq=False)
class Runner:
    """A loaded model and the engine thread serving it."""

    entry: ModelEntry
    info: GGUFInfo
    model: LlamaModel
    engine: Engine
    num_ctx: int
    keep_alive: float = 0.0  # set by the scheduler: the entry's, else the server's
    refs: int = 0
    expires_at: float = 0.0
    retired: bool = False  # serves no new request: closed once its requests end
    _timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Memory it holds, as `/api/ps` reports it: weights plus the KV cache of every slot."""
        kv_bytes = self.model.kv_bytes_per_token(self.engine.kv_cache_type)
        return self.model.size + kv_bytes * self.num_ctx * self.engine.n_slots

    def close(self, reason: str = "model unloaded") -> None:
        """Blocking: joins the engine thread (its jobs fail with `reason`) and frees
        llama.cpp memory."""
        self.engine.close(reason)
        self.model.close()


# Builds a runner for an entry and a requested num_ctx (the tests pass a fake one).
Loader = Callable[[ModelEntry, int | None], Awaitable[Runner]]
# Told of each model loaded: its name and the seconds the load took (the server's metrics).
LoadObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Lease:
    """A runner held by one request, and the seconds that request spent loading it."""

    runner: Runner
    load_duration: float


@dataclass(eq=False)
class _Load:
    """One model loading; the requests waiting for it share its task."""

    key: str
    entry: ModelEntry
    task: asyncio.Task[Runner] = field(init=False)
    waiters: int = 0  # each is handed a reference when the load succeeds
    has_room: bool = False  # counts as a loaded model, and is no longer dropped when unwanted


class Scheduler:
    def __init__(self, settings: Settings, registry: Registry,
                 loader: Loader | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self._loader = loader or self._load
        self._current: OrderedDict[str, Runner] = OrderedDict()  # serving new requests; LRU first
        self._runners: list[Runner] = []  # resident and not closing: current or retired
        self._closes: dict[Runner, asyncio.Task[None]] = {}  # being freed, still resident
        self._loading: dict[str, _Load] = {}  # the load a new request for the model joins
        self._loads: set[_Load] = set()  # every unfinished load, superseded ones too
        self._changed = asyncio.Event()  # replaced by a fresh one each time it is set
        self._requests = 0  # inside `use`: generating, or waiting for a slot or a load
        self._shutting_down = False
        self.cpu = CpuPolicy(settings.repack, settings.data_dir)
        self.prompt_cache = _prompt_cache(settings)
        self.on_load: LoadObserver = lambda name, seconds: None

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
        """Every model holding memory, retired or being freed ones too (/api/ps shows them)."""
        return [*self._runners, *self._closes]

    @property
    def waiting(self) -> int:
        """Requests waiting for a model to load or for a free slot of its engine."""
        return sum(load.waiters for load in self._loads) + \
            sum(runner.engine.queued for runner in self._runners)

    async def set_registry(self, registry: Registry) -> None:
        """Serve a new registry. A model whose entry is gone or now loads differently is
        retired: its running requests finish on it, new ones load afresh, and it is closed
        once idle (awaited here if it already is). A load under such an entry goes on for its
        waiters only. Other models take the new entry."""
        self.registry = registry
        for key, load in list(self._loading.items()):
            if _successor(registry, load.entry) is None:
                del self._loading[key]
        closes = []
        for key, runner in list(self._current.items()):
            entry = _successor(registry, runner.entry)
            if entry is not None:
                runner.entry = entry
                continue
            log.info("%s: removed or changed in the models file, unloading", runner.entry.name)
            del self._current[key]
            closes.append(self._retire(runner))
        await _all_freed([task for task in closes if task is not None])

    @asynccontextmanager
    async def use(self, name: str, num_ctx: int | None = None,
                  keep_alive: float | None = None) -> AsyncIterator[Lease]:
        """Hold a loaded model for one request; afterwards its keep-alive clock restarts."""
        self.entry(name)  # an unknown model is a 404, never a queued request
        self._admit()
        try:
            started = time.perf_counter()
            runner, loaded = await self._acquire(name, num_ctx)
            try:
                yield Lease(runner, time.perf_counter() - started if loaded else 0.0)
            finally:
                self._release(runner, keep_alive)
                closing = self._closes.get(runner)
                if closing is not None:  # this request's keep_alive 0 (or its retirement)
                    await asyncio.shield(closing)  # frees it before the reply: /api/ps agrees
        finally:
            self._requests -= 1

    def _admit(self) -> None:
        """Beyond what the slots of the loaded models can serve, at most `max_queue` requests
        wait (OLLAMA_MAX_QUEUE); more get Ollama's 503 at once instead of an unbounded wait."""
        if self._shutting_down:
            raise Busy(SHUTTING_DOWN)
        capacity = self.settings.num_parallel * self.settings.max_loaded_models
        if self._requests >= capacity + self.settings.max_queue:
            raise Busy(QUEUE_FULL, retry_after=1)
        self._requests += 1

    async def unload(self, name: str) -> None:
        """Unload now if idle, otherwise as soon as the running requests finish. A load in
        progress is left alone: its requests came after the model this one saw."""
        runner = self._current.get(self.entry(name).name.lower())
        if runner is not None:
            runner.keep_alive = 0.0
            if runner.refs == 0:
                await _all_freed([self._start_close(runner)])

    async def shutdown(self, grace: float) -> None:
        """Refuse new requests, give running ones `grace` seconds to finish, then end the
        rest (their streams get a final error line) and free every model."""
        await self.close(SHUTTING_DOWN, grace)

    async def close(self, reason: str = "model unloaded", grace: float = CLOSE_GRACE_S) -> None:
        """Refuse new requests and free every model. Requests and loads still running get
        `grace` seconds to end; then the engines close under them, failing their jobs with
        `reason`."""
        self._shutting_down = True
        if not await self._wait_for(self._quiet, grace):
            log.info("shutdown: ending %d running requests", sum(r.refs for r in self._runners))
        for runner in list(self._runners):
            self._start_close(runner, reason)
        await _all_freed(list(self._closes.values()))
        if self.prompt_cache is not None:  # what the engines handed it reaches the disk
            await asyncio.to_thread(self.prompt_cache.close)

    def _quiet(self) -> bool:
        return not self._loads and all(runner.refs == 0 for runner in self._runners)

    # -- acquiring: a loaded runner, or the load of one ------------------------------------

    async def _acquire(self, name: str, num_ctx: int | None) -> tuple[Runner, bool]:
        """A reference to a runner of `name` whose context covers `num_ctx`, and whether this
        request waited for a load."""
        waited = False
        while True:
            entry = self.entry(name)
            key = entry.name.lower()
            runner = self._current.get(key)
            if runner is not None and _covers(runner, num_ctx):
                self._take(key, runner)
                return runner, waited
            runner = await self._join(self._load_for(key, entry, num_ctx))
            waited = True
            if _covers(runner, num_ctx):
                return runner, True
            self._release(runner, None)  # it joined a load for less context than it needs

    def _take(self, key: str, runner: Runner) -> None:
        runner.refs += 1
        _cancel_timer(runner)
        self._current.move_to_end(key)

    def _load_for(self, key: str, entry: ModelEntry, num_ctx: int | None) -> _Load:
        """The model's load in progress, else a new one. A loaded runner with too small a
        context is retired first: its requests finish on it, new ones wait for the load."""
        load = self._loading.get(key)
        if load is not None:
            return load
        small = self._current.pop(key, None)
        if small is not None:
            log.info("%s: num_ctx %d > loaded %d, reloading", entry.name, num_ctx, small.num_ctx)
            self._retire(small)
        load = _Load(key, entry)
        load.task = asyncio.get_running_loop().create_task(self._run_load(load, num_ctx))
        load.task.add_done_callback(_retrieve)
        self._loading[key] = load
        self._loads.add(load)
        return load

    async def _join(self, load: _Load) -> Runner:
        """Wait for `load`, holding on success the reference it hands each waiter."""
        load.waiters += 1
        try:
            return await asyncio.shield(load.task)
        except asyncio.CancelledError:
            self._leave(load)
            raise

    def _leave(self, load: _Load) -> None:
        """A waiter went away. A reference it was handed already is released as any other
        (keep-alive applies); a load nobody waits for is dropped while it only waits for room,
        but once loading it finishes (a thread cannot be stopped) and then idles."""
        task = load.task
        if task.done():
            if not task.cancelled() and task.exception() is None:
                self._release(task.result(), None)
            return
        load.waiters -= 1
        if load.waiters == 0 and not load.has_room:
            task.cancel()
            self._end_load(load)

    async def _run_load(self, load: _Load, num_ctx: int | None) -> Runner:
        try:
            await self._make_room(load)
            started = time.perf_counter()
            runner = await self._loader(load.entry, num_ctx)
        except BaseException:
            self._end_load(load)
            raise
        self.on_load(load.entry.name, time.perf_counter() - started)
        current = self._end_load(load)
        self._runners.append(runner)
        if self._shutting_down:  # `close` may have swept already: nobody else would free it
            await _all_freed([self._start_close(runner, SHUTTING_DOWN)])
            raise Busy(SHUTTING_DOWN)
        self._install(load, runner, current)
        return runner

    def _end_load(self, load: _Load) -> bool:
        """Forget a finished or dropped load; whether new requests were still joining it."""
        self._loads.discard(load)
        self._notify()
        if self._loading.get(load.key) is not load:
            return False
        del self._loading[load.key]
        return True

    def _install(self, load: _Load, runner: Runner, current: bool) -> None:
        """Hand a reference to each request still waiting, in the step the load ends; the
        runner serves new requests too unless the registry moved on while it loaded."""
        entry = load.entry
        runner.keep_alive = entry.keep_alive if entry.keep_alive is not None else \
            self.settings.keep_alive
        runner.refs = load.waiters
        newest = _successor(self.registry, entry) if current else None
        if newest is None:
            self._retire(runner)
            return
        runner.entry = newest
        self._current[load.key] = runner
        if runner.refs == 0:
            self._arm_timer(runner)

    # -- room, idling and freeing ----------------------------------------------------------

    async def _make_room(self, load: _Load) -> None:
        """Wait until one more model fits under OLLAMA_MAX_LOADED_MODELS, closing idle ones
        least recently used first; Busy after OLLAMA_LOAD_TIMEOUT."""
        if not await self._wait_for(self._room_or_evict, self.settings.load_timeout):
            raise Busy("timed out waiting for a busy model to make room (loaded models are "
                       f"at OLLAMA_MAX_LOADED_MODELS={self.settings.max_loaded_models})",
                       retry_after=5)
        load.has_room = True

    def _room_or_evict(self) -> bool:
        """Whether one more model fits. If not, and the models being freed already will not
        make room, start freeing the least recently used idle one."""
        limit = self.settings.max_loaded_models
        held = len(self._runners) + sum(load.has_room for load in self._loads)
        if held + len(self._closes) < limit:
            return True
        idle = next((runner for runner in self._current.values() if runner.refs == 0), None)
        if held >= limit and idle is not None:
            self._start_close(idle)
        return False

    async def _wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Whether `ready()` came true within `timeout` seconds (checked after each change)."""
        try:
            async with asyncio.timeout(timeout):
                while not ready():
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _notify(self) -> None:
        """References, residency or loads changed: wake whatever waits for room or quiet."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _release(self, runner: Runner, keep_alive: float | None) -> None:
        runner.refs -= 1
        if keep_alive is not None and not runner.retired:
            runner.keep_alive = keep_alive
        if runner.refs == 0 and runner in self._runners:  # not already closed under it
            self._arm_timer(runner)
        self._notify()

    def _retire(self, runner: Runner) -> asyncio.Task[None] | None:
        """Serve no new request with `runner` (no longer current): it is closed once idle,
        now if it already is (the closing task is returned then)."""
        runner.retired, runner.keep_alive = True, 0.0
        _cancel_timer(runner)
        return self._start_close(runner) if runner.refs == 0 else None

    def _arm_timer(self, runner: Runner) -> None:
        """An idle runner's keep-alive: 0 (always so once retired) frees it now, infinity
        never."""
        _cancel_timer(runner)
        if runner.keep_alive == 0:
            self._start_close(runner)
            return
        runner.expires_at = time.time() + runner.keep_alive
        if runner.keep_alive != float("inf"):
            runner._timer = asyncio.get_running_loop().call_later(
                runner.keep_alive, self._start_close, runner)

    def _start_close(self, runner: Runner, reason: str = "model unloaded") -> asyncio.Task[None]:
        """Free a resident runner off the event loop; until it is freed it stays in `loaded`
        and counts against the loaded models."""
        _cancel_timer(runner)
        self._runners.remove(runner)
        key = runner.entry.name.lower()
        if self._current.get(key) is runner:
            del self._current[key]
        task = asyncio.get_running_loop().create_task(self._free(runner, reason))
        self._closes[runner] = task
        return task

    async def _free(self, runner: Runner, reason: str) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, runner.close, reason)
        finally:
            del self._closes[runner]
            self._notify()
        log.info("unloaded %s", runner.entry.name)

    async def _load(self, entry: ModelEntry, num_ctx: int | None) -> Runner:
        """The real loader: header, weights and engine, each off the event loop."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, read_header, entry.path)
        ctx = context_size(entry, info, num_ctx)
        slots = entry.num_parallel or self.settings.num_parallel
        kv_type, flash = _kv_cache(entry, self.settings)
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
                                     prefix_cache=self.settings.prefix_cache,
                                     kv_cache_type=kv_type, flash_attention=flash,
                                     speculative=self._speculative(entry),
                                     prompt_cache=self.prompt_cache,
                                     deterministic=self.settings.deterministic))
        except Exception:
            model.close()
            raise
        elapsed = time.perf_counter() - started
        log.info("loaded %s (%d slots x %d tokens, %s KV cache, flash attention %s) in %.2fs",
                 entry.name, slots, ctx, kv_type, flash, elapsed)
        return Runner(entry=entry, info=info, model=model, engine=engine, num_ctx=ctx)

    def _speculative(self, entry: ModelEntry) -> bool:
        """The entry's own `speculative`, else the server's setting."""
        return self.settings.speculative if entry.speculative is None else entry.speculative


async def _all_freed(closes: list[asyncio.Task[None]]) -> None:
    """Wait for closes that must finish even if the waiter is cancelled."""
    if closes:
        await asyncio.shield(asyncio.gather(*closes))


def _retrieve(task: asyncio.Task[Runner]) -> None:
    """Mark a failed load's error as seen: its waiters got it, and there may be none left."""
    if not task.cancelled():
        task.exception()


def _probe_model(entry: ModelEntry | None) -> Path | None:
    try:
        bundled = bundled_model_path()
    except FileNotFoundError:
        bundled = None
    if bundled is not None and bundled.is_file():
        return bundled
    return entry.path if entry is not None else None


def _kv_cache(entry: ModelEntry, settings: Settings) -> tuple[str, str]:
    """The entry's KV cache type and flash attention switch, else the server's. llama.cpp
    refuses a quantised V cache without flash attention, so with flash attention forced off
    the cache falls back to f16, logged, as Ollama does."""
    kv_type = entry.kv_cache_type or settings.kv_cache_type
    flash = entry.flash_attention or settings.flash_attention
    if kv_type != "f16" and flash == "off":
        log.warning("%s: a %s KV cache needs flash attention, which is off: using f16",
                    entry.name, kv_type)
        kv_type = "f16"
    return kv_type, flash


def _loads_alike(new: ModelEntry, old: ModelEntry) -> bool:
    """Whether a loaded model can serve the new entry without loading again."""
    load_keys = ("num_ctx", "num_batch", "num_thread", "use_mmap", "use_mlock")
    return (new.path == old.path and new.num_ctx == old.num_ctx
            and new.num_parallel == old.num_parallel and new.speculative == old.speculative
            and new.kv_cache_type == old.kv_cache_type
            and new.flash_attention == old.flash_attention
            and all(new.options.get(k) == old.options.get(k) for k in load_keys))


def _successor(registry: Registry, entry: ModelEntry) -> ModelEntry | None:
    """`entry` as `registry` has it, if a model loaded for `entry` can serve that."""
    newest = registry.get(entry.name)
    return newest if newest is not None and _loads_alike(newest, entry) else None


def _prompt_cache(settings: Settings) -> PromptCache | None:
    """The host-memory prompt cache and its disk, as configured (None when both are off)."""
    cache_ram = host_cache_size(settings.cache_ram)
    disk = (PromptDisk(settings.prompt_cache_dir, settings.cache_disk) if settings.cache_disk
            else None)
    return PromptCache(cache_ram, disk) if cache_ram or disk else None


def host_cache_size(configured: int | None) -> int:
    """The prompt cache's bound: as configured, else a quarter of the memory free now, at most
    DEFAULT_CACHE_RAM (llama-server's `--cache-ram` default)."""
    if configured is not None:
        return configured
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(DEFAULT_CACHE_RAM, free // 4)


def context_size(entry: ModelEntry, info: GGUFInfo, requested: int | None) -> int:
    """Tokens per slot to load: the entry's configured size, grown (never shrunk: a request's
    own limit is applied per request) by `requested`, capped at the trained context."""
    configured = entry.num_ctx or entry.options.get("num_ctx") or DEFAULT_NUM_CTX
    return max(16, min(max(requested or 0, configured), info.context_length))


def _covers(runner: Runner, num_ctx: int | None) -> bool:
    """Whether `runner` serves a request for `num_ctx` without loading again: what would be
    loaded for it, capped as above, is no larger than what is loaded."""
    return context_size(runner.entry, runner.info, num_ctx) <= runner.num_ctx


def _cancel_timer(runner: Runner) -> None:
    if runner._timer is not None:
        runner._timer.cancel()
        runner._timer = None

