"""Uploaded blobs (`POST /api/blobs/sha256:<hex>`), kept under `data_dir/blobs/sha256-<hex>`.

An upload is streamed to a temporary file in that folder while it is hashed, in executor
threads (never the whole body in memory, never a file write on the event loop), and renamed
into place only if its digest matches. A GGUF blob that /api/create turns into a model is
moved to `data_dir/models/sha256-<hex>.gguf`; it still counts as present under its digest.

Uploads are bounded by `max_upload`, counted as the bytes arrive whatever Content-Length said,
and by the free disk space Content-Length asks for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import AsyncIterator

from ollamalite.errors import ApiError, BadRequest
from ollamalite.settings import Settings

DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
CHUNK = 1 << 20


def parse_digest(text: str) -> str:
    """`sha256:<hex>` (or `sha256-<hex>`) -> lower-case hex; anything else is a 400."""
    match = DIGEST.fullmatch(text)
    if match is None:
        raise BadRequest("invalid digest format")
    return match.group(1).lower()


def ensure_room(folder: Path, size: int) -> None:
    """Blocking: refuse (507) a file that would not fit, rather than fill the disk with it."""
    free = shutil.disk_usage(folder).free
    if size > free:
        raise ApiError(f"not enough disk space: {size} bytes needed, {free} free", 507)


class BlobStore:
    def __init__(self, settings: Settings) -> None:
        self.blobs_dir = settings.blobs_dir
        self.models_dir = settings.models_dir
        self.max_upload = settings.max_upload

    def blob_path(self, hex_digest: str) -> Path:
        return self.blobs_dir / f"sha256-{hex_digest}"

    def model_path(self, hex_digest: str) -> Path:
        return self.models_dir / f"sha256-{hex_digest}.gguf"

    def find(self, hex_digest: str) -> Path | None:
        """Blocking (stat): where the blob is, as uploaded or already made a model."""
        for path in (self.blob_path(hex_digest), self.model_path(hex_digest)):
            if path.is_file():
                return path
        return None

    async def receive(self, hex_digest: str, chunks: AsyncIterator[bytes],
                      size: int | None) -> None:
        """Store an upload of `size` bytes (None: not announced); one too large (413), with no
        room (507) or whose digest does not match (400) leaves nothing on disk."""
        self._check_size(size or 0)
        loop = asyncio.get_running_loop()
        sink = await loop.run_in_executor(None, _Sink, self.blobs_dir, hex_digest)
        try:
            if size is not None:
                await loop.run_in_executor(None, ensure_room, self.blobs_dir, size)
            async for chunk in chunks:
                self._check_size(sink.size + len(chunk))
                await loop.run_in_executor(None, sink.write, chunk)
            got = await loop.run_in_executor(None, sink.finish)
            if got != hex_digest:
                raise BadRequest(f'digest mismatch, expected "sha256:{hex_digest}", '
                                 f'got "sha256:{got}"')
            await loop.run_in_executor(None, os.replace, sink.path, self.blob_path(hex_digest))
        except BaseException:
            await loop.run_in_executor(None, sink.discard)
            raise

    def _check_size(self, size: int) -> None:
        if self.max_upload and size > self.max_upload:
            raise ApiError(f"blob too large: over the {self.max_upload} bytes "
                           "OLLAMALITE_MAX_UPLOAD allows", 413)

    def adopt(self, hex_digest: str) -> Path:
        """Blocking: move an uploaded blob into the models folder (a no-op if it is there)."""
        target = self.model_path(hex_digest)
        source = self.blob_path(hex_digest)
        if not target.is_file():
            self.models_dir.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        elif source.is_file():
            source.unlink()
        return target


class _Sink:
    """A temporary file next to its final place, and the running hash of what went in."""

    def __init__(self, folder: Path, hex_digest: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=f"sha256-{hex_digest}-partial-")
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
