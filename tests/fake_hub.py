"""A local stand-in for the Hugging Face Hub and for plain file hosts, on 127.0.0.1.

It answers the routes huggingface_hub and ollamalite's downloader use: `GET /api/models/<repo>`
(the repo listing with LFS size and sha256, as `model_info(files_metadata=True)` asks for),
`GET /<repo>/resolve/<revision>/<file>` (a 302 to a content-addressed `/cdn/<sha256>` URL, as the
hub redirects LFS files), and `GET /files/<name>` for plain URLs (or a redirect elsewhere).
Downloads honour `Range: bytes=N-`, can be told to cut the connection after N bytes or to leave
out Content-Length, and every request is recorded.
It runs its own event loop in a thread so that synchronous tests and a server subprocess can
both reach it.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import web
from gguf import GGUFWriter

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PIECE = 256 * 1024


@dataclass
class Served:
    """One request as the server saw it."""

    path: str
    range: str | None


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    wrong_sha256: set[str] = field(default_factory=set)  # file names listed with a wrong hash
    cut_after: dict[str, int] = field(default_factory=dict)  # one-shot: send N bytes, then close
    pace: float = 0.0  # seconds to wait between 256 KiB pieces of a download
    ranges: bool = True  # False: ignore Range headers, always send the whole file
    lengths: bool = True  # False: send files chunked, without Content-Length
    redirects: dict[str, str] = field(default_factory=dict)  # file name -> Location of a 302
    seen: list[Served] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/models/{user}/{repo}", self._model_info)
        app.router.add_get("/{user}/{repo}/resolve/{revision}/{file:.+}", self._resolve)
        app.router.add_get("/cdn/{sha256}", self._cdn)
        app.router.add_get("/files/{name}", self._file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def requests_for(self, suffix: str) -> list[Served]:
        return [s for s in self.seen if s.path.endswith(suffix)]

    # -- routes ---------------------------------------------------------------------------------

    async def _model_info(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['user']}/{request.match_info['repo']}"
        self.seen.append(Served(request.path_qs, None))
        if repo not in self.repos:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        siblings = [{"rfilename": name, "size": len(data), "blobId": "0" * 40,
                     "lfs": {"size": len(data), "sha256": self._listed_sha256(name, data),
                             "pointerSize": 134}}
                    for name, data in self.repos[repo].items()]
        siblings.append({"rfilename": "README.md", "size": 5, "blobId": "1" * 40})
        return web.json_response({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                  "siblings": siblings})

    def _listed_sha256(self, name: str, data: bytes) -> str:
        if name in self.wrong_sha256:
            return hashlib.sha256(data + b"!").hexdigest()
        return hashlib.sha256(data).hexdigest()

    async def _resolve(self, request: web.Request) -> web.Response:
        self.seen.append(Served(request.path, request.headers.get("Range")))
        repo = f"{request.match_info['user']}/{request.match_info['repo']}"
        data = self.repos.get(repo, {}).get(request.match_info["file"])
        if data is None or request.match_info["revision"] != COMMIT:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        sha = hashlib.sha256(data).hexdigest()
        self.files.setdefault(f"cdn-{sha}", data)
        raise web.HTTPFound(f"/cdn/{sha}")

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, f"cdn-{request.match_info['sha256']}")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        location = self.redirects.get(request.match_info["name"])
        if location is not None:
            self.seen.append(Served(request.path, request.headers.get("Range")))
            raise web.HTTPFound(location)
        return await self._send(request, request.match_info["name"])

    async def _send(self, request: web.Request, key: str) -> web.StreamResponse:
        """The file, or the part from `Range: bytes=N-` (206), cut short when told to."""
        self.seen.append(Served(request.path, request.headers.get("Range")))
        data = self.files.get(key)
        if data is None:
            raise web.HTTPNotFound()
        start = _range_start(request.headers.get("Range")) if self.ranges else 0
        if start >= len(data) > 0:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        resp = web.StreamResponse(status=206 if start else 200)
        if self.lengths:
            resp.content_length = len(data) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        cut = self.cut_after.pop(key, None)
        body = memoryview(data)[start:start + cut] if cut is not None else memoryview(data)[start:]
        for at in range(0, len(body), PIECE):
            await resp.write(body[at:at + PIECE])
            await asyncio.sleep(self.pace)
        if cut is not None:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp


def _range_start(header: str | None) -> int:
    if not header:
        return 0
    assert header.startswith("bytes=") and header.endswith("-"), header
    return int(header[len("bytes="):-1])


def tiny_gguf(n_floats: int) -> bytes:
    """A valid GGUF (header and one f32 tensor) to download; too small a model to run."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.gguf"
        writer = GGUFWriter(str(path), "llama")
        writer.add_name("tiny")
        writer.add_tensor("weights", np.arange(n_floats, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()
