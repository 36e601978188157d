"""Model lifecycle routes: /api/create, /api/copy, /api/delete and /api/blobs/:digest."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ollamalite.errors import NotFound
from ollamalite.registry import edits
from ollamalite.registry.blobs import CHUNK, DIGEST, BlobStore, parse_digest
from ollamalite.server.keys import LIBRARY, SETTINGS
from ollamalite.server.openapi import EMPTY_OK, MODEL_ERRORS, STREAMED, Reply, Route
from ollamalite.server.request import read_body
from ollamalite.server.stream import NdjsonStream, json_response
from ollamalite.wire import load, native

BLOBS = web.AppKey("blobs", BlobStore)
_DIGEST_PARAM = {"digest": {"type": "string", "pattern": f"^{DIGEST.pattern}$"}}


async def create(request: web.Request) -> web.StreamResponse:
    """All the work is done before the first line, so any failure keeps its HTTP status."""
    req = load(native.CREATE, await read_body(request))
    statuses = await edits.create(request.app[LIBRARY], request.app[BLOBS], req)
    if not req["stream"]:
        return json_response({"status": "success"})
    out = NdjsonStream(request)
    for status in [*statuses, "success"]:
        await out.send({"status": status})
    return await out.close()


async def copy(request: web.Request) -> web.Response:
    req = load(native.COPY, await read_body(request))
    await edits.copy(request.app[LIBRARY], req["source"], req["destination"])
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    req = load(native.DELETE, await read_body(request))
    await edits.delete(request.app[LIBRARY], req["model"] or req["name"],
                           request.app[SETTINGS].models_dir)
    return web.Response(status=200)


async def _find_blob(request: web.Request) -> tuple[str, bool]:
    hex_digest = parse_digest(request.match_info["digest"])
    path = await asyncio.get_running_loop().run_in_executor(None, request.app[BLOBS].find,
                                                            hex_digest)
    return hex_digest, path is not None


async def head_blob(request: web.Request) -> web.Response:
    hex_digest, present = await _find_blob(request)
    if not present:
        raise NotFound(f'blob "sha256:{hex_digest}" not found')
    return web.Response(status=200)


async def post_blob(request: web.Request) -> web.Response:
    """200 without reading the body if the blob is here already; 201 once stored. The body is
    read as a stream, so the app's limit on JSON bodies does not apply to it."""
    hex_digest, present = await _find_blob(request)
    if present:
        return web.Response(status=200)
    await request.app[BLOBS].receive(hex_digest, request.content.iter_chunked(CHUNK),
                                     request.content_length)
    return web.Response(status=201)


ROUTES = (
    Route("POST", "/api/create", create, "Makes a model: from another model, a local GGUF or "
          "an uploaded blob, with a template, system, parameters and messages on top.",
          native.CREATE, STREAMED, MODEL_ERRORS),
    Route("POST", "/api/copy", copy, "Copies a model under a new name.", native.COPY, EMPTY_OK,
          MODEL_ERRORS),
    Route("DELETE", "/api/delete", delete, "Deletes a model from models.yaml (and its file if "
          "ollamalite made it).", native.DELETE, EMPTY_OK, MODEL_ERRORS),
    Route("HEAD", "/api/blobs/{digest}", head_blob, "Whether a blob (`sha256:<hex>`) is here.",
          replies=EMPTY_OK, errors=MODEL_ERRORS, params=_DIGEST_PARAM),
    Route("POST", "/api/blobs/{digest}", post_blob, "Uploads a blob; its sha256 must match.",
          replies=(Reply(200, "The blob was here already.", ()),
                   Reply(201, "The blob is stored.", ())), errors=(400, 507), upload=True,
          params=_DIGEST_PARAM),
)
