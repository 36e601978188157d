"""Uploaded blobs (`POST /api/blobs/sha256:<hex>`), kept under `data_dir/blobs/sha256-<hex>`.

An upload is streamed to a temporary file in that folder while it is hashed, in executor
threads (never the whole body in memory, never a file write on the event loop), and renamed
into place only if its digest matches. A GGUF blob that /api/create turns into a model is
moved to `data_dir/models/sha256-<hex>.gguf`; it still counts as present under its digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import AsyncIterator

from ollamalite.errors import BadRequest
from ollamalite.settings import Settings

DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
CHUNK = 1 << 20


def parse_digest(text: str) -> str:
    """`sha256:<hex>` (or `sha256-<hex>`) -> lower-case hex; anything else is a 400."""
    match = DIGEST.fullmatch(text)
    if match is None:
        raise BadRequest("invalid digest format")
    return match.group(1).lower()


class BlobStore:
    def __init__(self, settings: Settings) -> None:
        self.blobs_dir = settings.blobs_dir
        self.models_dir = settings.models_dir

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

    async def receive(self, hex_digest: str, chunks: AsyncIterator[bytes]) -> None:
        """Store an upload; a digest mismatch is a 400 and leaves nothing on disk."""
        loop = asyncio.get_running_loop()
        sink = await loop.run_in_executor(None, _Sink, self.blobs_dir, hex_digest)
        try:
            async for chunk in chunks:
                await loop.run_in_executor(None, sink.write, chunk)
            got = await loop.run_in_executor(None, sink.finish)
            if got != hex_digest:
                raise BadRequest(f'digest mismatch, expected "sha256:{hex_digest}", '
                                 f'got "sha256:{got}"')
            await loop.run_in_executor(None, os.replace, sink.path, self.blob_path(hex_digest))
        except BaseException:
            await loop.run_in_executor(None, sink.discard)
            raise

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

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.file.write(chunk)

    def finish(self) -> str:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
