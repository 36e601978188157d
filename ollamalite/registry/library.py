"""The models on offer while the server runs: models.yaml plus discovered models, kept current.

Edits made through the API go through `edit` (file write in a thread, then an immediate
reload); edits made by hand are noticed by `watch` (a cheap stat of the file and the scanned
folders every couple of seconds) or by `reload` on SIGHUP. A file that no longer parses is
logged and the previous registry stays in service.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from ollamalite.errors import ApiError, ConfigError
from ollamalite.registry import discovery
from ollamalite.registry.models_file import ModelsFile, Registry
from ollamalite.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_SECONDS = 2.0
Signature = tuple[tuple[str, int, int], ...]


class Library:
    """Keeps `registry` current and hands each new one to `serve` (the scheduler's
    `set_registry`), which is how the registry reaches the layers above it."""

    def __init__(self, settings: Settings, models_file: ModelsFile, registry: Registry,
                 serve: Callable[[Registry], Awaitable[None]]) -> None:
        self.settings = settings
        self.models_file = models_file
        self.registry = registry
        self._serve = serve
        self._signature: Signature = self._stat()
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task] = set()

    async def edit(self, change: Callable[[ModelsFile], T]) -> T:
        """Apply one ModelsFile edit off the event loop, then serve the result at once."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, change, self.models_file)
        except ConfigError as exc:  # the file on disk is broken, or the edit would break it
            raise ApiError(str(exc)) from None
        await self.reload()
        return result

    async def reload(self, only_if_changed: bool = False) -> bool:
        """Re-read models.yaml and rescan; False when nothing changed or the file is broken."""
        async with self._lock:
            loop = asyncio.get_running_loop()
            try:
                registry = await loop.run_in_executor(None, self._read, only_if_changed)
            except ConfigError as exc:
                log.error("%s (still serving the previous models)", exc)
                return False
            if registry is None:
                return False
            await self._serve(registry)
            self.registry = registry
            return True

    def reload_soon(self) -> None:
        """For a signal handler: reload in a task that is kept until it finishes."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Poll for edits made outside the server (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            try:
                changed = await self.reload(only_if_changed=True)
            except Exception:  # a folder gone unreadable must not end the watching
                log.exception("cannot rescan the models")
                continue
            if changed:
                log.info("%s changed: now serving %d models", self.models_file.path,
                         len(self.registry.models))

    def _read(self, only_if_changed: bool) -> Registry | None:
        """Blocking. The signature is taken first, so a write racing this read is seen later."""
        signature = self._stat()
        if only_if_changed and signature == self._signature:
            return None
        path = self.models_file.path
        had_file = any(entry[0] == str(path) for entry in self._signature)
        self._signature = signature
        if had_file and not path.exists():  # not the same as "none yet": keep what we serve
            raise ConfigError(f"{path}: the models file was removed")
        return discovery.extend(self.models_file.load(), self.settings.ollama_models)

    def _stat(self) -> Signature:
        """What changes when the file is edited or a GGUF or manifest is added or removed."""
        manifests = self.settings.ollama_models / "manifests"
        paths = [self.models_file.path, *self.registry.model_dirs, manifests]
        if manifests.is_dir():
            paths.extend(Path(folder) for folder, _, _ in os.walk(manifests))
        signature = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue
            signature.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(signature)
