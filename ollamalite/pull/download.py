"""Resumable, verified downloads of one file over HTTP(S) with aiohttp.

Bytes go to `<final>.partial`, hashed as they are written; a later attempt resumes it with
`Range: bytes=N-` after re-hashing the N bytes already there. Only a complete file whose size
and sha256 match is moved (atomically) to its final name. All file I/O and hashing run on one
worker thread per download, so the event loop never blocks and writes stay in order.

A download is bounded by its `Limits`: it connects only where `guard` allows, and it stops (and
deletes its partial file) at `max_size` bytes or at the size it was announced, counted as the
bytes arrive, whatever Content-Length said. A known size is checked against the free disk
space before the body is read.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable

import aiohttp

from ollamalite.errors import ApiError
from ollamalite.pull import guard
from ollamalite.pull.sources import Source
from ollamalite.registry.blobs import ensure_room
from ollamalite.settings import DEFAULT_MAX_TRANSFER

WRITE_CHUNK = 1 << 20
PROGRESS_INTERVAL = 0.25  # seconds; a line is also sent for every 1% of the file
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


class PullError(ApiError):
    """A failed download; the message says whether the partial file was kept."""


class Refused(PullError):
    """A download that must not go on: its partial file is deleted."""

    status = 400


@dataclass(frozen=True)
class Limits:
    """What a download may do: fetch at most `max_size` bytes (0: no cap), and connect to
    loopback and private addresses (`private`) or only to public ones."""

    max_size: int = DEFAULT_MAX_TRANSFER
    private: bool = True


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


class _Partial:
    """`<final>.partial` and the sha256 of its bytes; used only from the download's thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.file: IO[bytes] | None = None
        self.size = 0

    def open(self, limit: int | None) -> int:
        """Open for appending after hashing what is there; a part longer than `limit` (the
        known file size) cannot be a prefix of the file and starts over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "r+b" if self.path.exists() else "w+b")
        size = self.file.seek(0, os.SEEK_END)
        if limit is not None and size > limit:
            return self.restart()
        self.file.seek(0)
        while chunk := self.file.read(WRITE_CHUNK):
            self.hasher.update(chunk)
        self.size = size
        return size

    def restart(self) -> int:
        assert self.file is not None
        self.file.seek(0)
        self.file.truncate()
        self.hasher = hashlib.sha256()
        self.size = 0
        return 0

    def delete(self) -> None:
        """Close and remove: what was refused is not kept for a resume."""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.path.unlink(missing_ok=True)
        self.size = 0

    def write(self, data: bytes) -> None:
        assert self.file is not None
        self.file.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Flush to disk; an empty part is not worth keeping."""
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
        if self.size == 0:
            self.path.unlink(missing_ok=True)


class Download:
    """One attempt at getting `source` into `final`: `run()` streams progress objects, then
    `verify()` checks size and sha256 and `install()` renames the file into place."""

    def __init__(self, source: Source, final: Path, limits: Limits = Limits()) -> None:
        self.source = source
        self.final = final
        self.limits = limits
        self.total = source.size
        self._part = _Partial(partial_path(final))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pull")
        self._last = (0.0, -1)

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def run(self) -> AsyncIterator[dict[str, Any]]:
        """Download the rest of the file; an interruption keeps the partial file for later."""
        try:
            offset = await self._io(self._part.open, self.total)
            if self.total is None or offset < self.total:
                async for line in self._transfer(offset):
                    yield line
            yield self._progress()
        except Refused:
            await self._io(self._part.delete)
            raise
        finally:
            await self._io(self._part.close)
            self._thread.shutdown(wait=False)

    async def _transfer(self, offset: int) -> AsyncIterator[dict[str, Any]]:
        headers = {**self.source.headers, **({"Range": f"bytes={offset}-"} if offset else {})}
        connector = aiohttp.TCPConnector(socket_factory=guard.socket_factory(self.limits.private))
        try:
            async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session, \
                    session.get(self.source.url, headers=headers) as resp:
                has_body = await self._accept(resp, offset)
                yield self._progress()
                if has_body:
                    async for line in self._copy(resp):
                        yield line
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error,
                                                                             guard.Forbidden):
                raise Refused(f"pull refused: {exc.host}: {exc.os_error}") from None
            kept = self._part.size
            keep = "; the partial file is kept: pull again to resume" if kept else ""
            raise PullError(f"download interrupted after {kept} bytes: {_describe(exc)}{keep}",
                            502) from None

    async def _accept(self, resp: aiohttp.ClientResponse, offset: int) -> bool:
        """Resume on 206 from our offset; a 200 means the server sent the whole file again.

        Returns False when there is nothing to read (416: the part already is the file)."""
        content_range = resp.headers.get("Content-Range", "")
        if resp.status == 206 and offset:
            match = _CONTENT_RANGE.match(content_range)
            if match is None or int(match[1]) != offset:
                raise PullError(f"download failed: the server answered a resume at byte "
                                f"{offset} with Content-Range {content_range!r}", 502)
            self._learn_total(int(match[2]) if match[2] != "*" else None)
            await self._check_total(offset)
            return True
        if resp.status == 416 and offset and content_range == f"bytes */{offset}":
            self._learn_total(offset)
            return False
        if resp.status != 200:
            raise PullError(f"download failed: {self.source.url}: HTTP {resp.status} "
                            f"{resp.reason or ''}".rstrip(), 502)
        if offset:
            await self._io(self._part.restart)
        self._learn_total(resp.content_length)
        await self._check_total(0)
        return True

    def _learn_total(self, total: int | None) -> None:
        if self.total is None:
            self.total = total
        elif total is not None and total != self.total:
            raise PullError(f"size mismatch: the hub lists {self.total} bytes, the download "
                            f"server {total}", 502)

    async def _check_total(self, offset: int) -> None:
        """Before the body: a known size over the cap, or more than the disk has room for, is
        refused rather than downloaded."""
        if self.total is not None:
            self._check_size(self.total)
            await self._io(ensure_room, self.final.parent, self.total - offset)

    def _check_size(self, size: int) -> None:
        """`size` bytes may be kept: within the cap, and within the size announced."""
        cap = self.limits.max_size
        if cap and size > cap:
            raise Refused(f"download refused: the file is larger than OLLAMALITE_MAX_DOWNLOAD "
                          f"({cap} bytes); the partial file was deleted")
        if self.total is not None and size > self.total:
            raise Refused(f"size mismatch, file must be downloaded again: want {self.total} "
                          f"bytes, got more", 500)

    async def _copy(self, resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        buffer = bytearray()
        try:
            async for chunk in resp.content.iter_any():
                self._check_size(self._part.size + len(buffer) + len(chunk))
                buffer += chunk
                if len(buffer) >= WRITE_CHUNK:
                    await self._io(self._part.write, bytes(buffer))
                    buffer.clear()
                    if self._due():
                        yield self._progress()
        finally:
            if buffer and not _cancelling():
                await self._io(self._part.write, bytes(buffer))

    def _due(self) -> bool:
        when, done = self._last
        step = (self.total or 0) // 100
        return time.monotonic() - when >= PROGRESS_INTERVAL or self._part.size - done >= step > 0

    def _progress(self) -> dict[str, Any]:
        self._last = (time.monotonic(), self._part.size)
        return progress_line(self.source, self._part.size, self.total)

    async def verify(self) -> str:
        """Check the finished part's size and sha256 (hashed while writing; a longer part was
        refused as it arrived); returns the hex.

        A short part is kept for a resume; a wrong one is deleted, and the error says so."""
        size, digest = self._part.size, self._part.hasher.hexdigest()
        if self.total is not None and size < self.total:
            raise PullError(f"download incomplete: {size} of {self.total} bytes; the partial "
                            "file is kept: pull again to resume")
        if self.source.sha256 is not None and digest != self.source.sha256:
            await self.discard()
            raise PullError(f"digest mismatch, file must be downloaded again: want "
                            f"sha256:{self.source.sha256}, got sha256:{digest}")
        return digest

    @property
    def partial(self) -> Path:
        return self._part.path

    async def discard(self) -> None:
        await asyncio.to_thread(self._part.path.unlink, missing_ok=True)

    async def install(self) -> None:
        await asyncio.to_thread(os.replace, self._part.path, self.final)


def progress_line(source: Source, completed: int, total: int | None) -> dict[str, Any]:
    """Ollama's per-layer line: `pulling <12 hex>` with digest, total (when known), completed."""
    digest = source.digest
    line: dict[str, Any] = {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}"}
    if total is not None:
        line["total"] = total
    line["completed"] = completed
    return line


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the server closed the connection early"
    return str(exc) or type(exc).__name__
