"""`/api/pull` without HTTP: resolve a source, download it, verify it, register it, and say so
in Ollama's progress objects (`pulling manifest`, `pulling <digest12>`…, `verifying sha256
digest`, `writing manifest`, `success`)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from ollamalite.errors import ConfigError
from ollamalite.pull import sources
from ollamalite.pull.download import Download, Limits, PullError, progress_line
from ollamalite.pull.sources import Source
from ollamalite.registry.gguf_header import GGUFError, file_digest, read_header

log = logging.getLogger(__name__)
Register = Callable[[str, Path], Awaitable[None]]


class Puller:
    """Pulls into `models_dir`, within `limits`; one download per file at a time (a second
    pull of the same file waits for the first, then finds it done or resumes its partial file)."""

    def __init__(self, models_dir: Path, register: Register, limits: Limits = Limits()) -> None:
        self.models_dir = models_dir
        self.register = register
        self.limits = limits
        # A lock lives while some pull holds or awaits it.
        self._locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    async def pull(self, model: str, insecure: bool) -> AsyncIterator[dict[str, Any]]:
        """Progress objects for pulling `model`; failures raise ApiError (PullError)."""
        yield {"status": "pulling manifest"}
        source = await asyncio.to_thread(sources.resolve, model, insecure)
        final = self.models_dir / source.relpath
        try:
            lock = self._locks.setdefault(final, asyncio.Lock())
            async with lock:
                async for line in self._fetch(source, final):
                    yield line
            yield {"status": "writing manifest"}
            await self.register(source.name, final)
        except (OSError, ConfigError) as exc:
            raise PullError(f"pull {source.name}: {exc}") from None
        log.info("pulled %s into %s", source.name, final)
        yield {"status": "success"}

    async def _fetch(self, source: Source, final: Path) -> AsyncIterator[dict[str, Any]]:
        """Download, verify and move the file into place, unless it is already there."""
        if await _already_there(source, final):
            size = (await asyncio.to_thread(final.stat)).st_size
            yield progress_line(source, size, size)
            yield {"status": "verifying sha256 digest"}
            return
        download = Download(source, final, self.limits)
        async for line in download.run():
            yield line
        yield {"status": "verifying sha256 digest"}
        await download.verify()
        await _check_gguf(download)
        await download.install()


async def _check_gguf(download: Download) -> None:
    """Only a GGUF whose header reads becomes a model; anything else is deleted."""
    try:
        await asyncio.to_thread(read_header, download.partial)
    except GGUFError as exc:
        await download.discard()
        raise PullError(f"{download.source.url} is not a GGUF model ({exc}); the file was "
                        "deleted") from None


async def _already_there(source: Source, final: Path) -> bool:
    """An earlier pull (perhaps under another name) left this very file in place."""
    try:
        size = (await asyncio.to_thread(final.stat)).st_size
    except FileNotFoundError:
        return False
    if source.size is not None and size != source.size:
        return False
    return source.sha256 is None or await asyncio.to_thread(file_digest, final) == source.sha256

