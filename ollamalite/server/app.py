"""The aiohttp application: middleware (errors, CORS), routes, scheduler lifecycle."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from pathlib import Path
from typing import AsyncIterator, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ollamalite.errors import ApiError
from ollamalite.pull.puller import Puller, Register
from ollamalite.registry.blobs import BlobStore
from ollamalite.registry.gguf_header import file_digest
from ollamalite.registry.library import Library
from ollamalite.registry.models_file import ModelsFile, Registry
from ollamalite.runtime.scheduler import Scheduler
from ollamalite.server import models, ollama, openai, openapi
from ollamalite.server.keys import LIBRARY, PULLER, SCHEDULER, SETTINGS
from ollamalite.server.stream import json_response
from ollamalite.settings import Settings

log = logging.getLogger(__name__)
Handler = openapi.Handler
CORS_HEADERS = "ollamalite.cors_headers"

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
DEFAULT_ORIGINS = tuple(
    f"{scheme}://{host}{port}" for host in _LOCAL_HOSTS for scheme in ("http", "https")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
ALLOW_HEADERS = ", ".join([
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta",
    *(f"x-stainless-{h}" for h in ("arch", "async", "custom-poll-interval", "helper-method",
                                   "lang", "os", "package-version", "poll-helper",
                                   "retry-count", "runtime", "runtime-version", "timeout")),
])
SHUTDOWN_GRACE_S = 2.0
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    """The error shape the route's API uses: OpenAI's envelope under /v1, Ollama's elsewhere."""
    if request.path.startswith(openapi.OPENAI_PREFIX):
        return json_response(openai.error_body(status, message), status=status)
    return json_response({"error": message}, status=status)


def _router_error(request: web.Request, status: int, text: str) -> web.Response:
    """Unknown path or method: Ollama's router answers plain text; /v1 clients expect JSON."""
    if request.path.startswith(openapi.OPENAI_PREFIX):
        return error_response(request, status, text)
    return web.Response(status=status, text=text)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as its API's error object (or Ollama's plain-text 404/405)."""
    try:
        return await handler(request)
    except ApiError as exc:
        response = error_response(request, exc.status, exc.message)
        response.headers.update(exc.headers)
        return response
    except web.HTTPNotFound:
        return _router_error(request, 404, "404 page not found")
    except web.HTTPMethodNotAllowed:
        return _router_error(request, 405, "405 method not allowed")
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        log.info("%s %s: client disconnected", request.method, request.path)
        raise
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(request, 500, f"internal error: {exc}")


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    return any(pattern == "*" or fnmatch.fnmatchcase(origin, pattern) for pattern in allowed)


def _same_origin(request: web.Request, origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def cors_middleware(origins: tuple[str, ...]) -> Callable:
    allowed = origins + DEFAULT_ORIGINS

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not origin or _same_origin(request, origin):
            return await handler(request)
        if not origin_allowed(origin, allowed):
            return web.Response(status=403)
        request[CORS_HEADERS] = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "43200"})
        return await handler(request)

    return cors


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Runs as every response (streamed ones too) is prepared, after the handler chose it."""
    response.headers.update(request.get(CORS_HEADERS, {}))


async def _warm_digests(registry: Registry) -> None:
    """Hash model files in the background so the first /api/tags answers at once."""
    loop = asyncio.get_running_loop()
    for entry in registry.models.values():
        if entry.digest:
            continue
        try:
            await loop.run_in_executor(None, file_digest, entry.path)
        except OSError as exc:  # /api/tags reports it when asked
            log.warning("%s: cannot hash %s: %s", entry.name, entry.path, exc)


async def _finish_requests(app: web.Application) -> None:
    """On SIGINT/SIGTERM, after the listening socket closed: running requests get a moment to
    finish, then their streams end with an error line, before aiohttp's own timeout cancels
    what is left."""
    await app[SCHEDULER].shutdown(SHUTDOWN_GRACE_S)


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    scheduler = app[SCHEDULER]
    # Decided (and logged) at start-up, so the first request rarely waits for an AMX probe.
    tasks = [asyncio.create_task(scheduler.cpu_plan()),
             asyncio.create_task(_warm_digests(scheduler.registry)),
             asyncio.create_task(app[LIBRARY].watch())]
    yield
    for task in tasks:
        task.cancel()
    await scheduler.close()


def _registrar(library: Library) -> Register:
    """A pulled model joins models.yaml (a round-trip edit) and is served at once."""
    async def register(name: str, path: Path) -> None:
        await library.edit(lambda models_file: models_file.add(name, {"path": str(path)}))

    return register


def create_app(settings: Settings, registry: Registry) -> web.Application:
    app = web.Application(middlewares=[cors_middleware(settings.origins), errors_middleware],
                          client_max_size=64 * 1024 * 1024)
    app[SETTINGS] = settings
    app[SCHEDULER] = Scheduler(settings, registry)
    app[LIBRARY] = Library(settings, ModelsFile(registry.path), registry,
                           app[SCHEDULER].set_registry)
    app[PULLER] = Puller(settings.models_dir, _registrar(app[LIBRARY]))
    app.cleanup_ctx.append(_scheduler_ctx)
    app.on_shutdown.append(_finish_requests)
    app.on_response_prepare.append(_add_cors_headers)
    app[models.BLOBS] = BlobStore(settings)
    openapi.add_routes(app, (*ollama.ROUTES, *models.ROUTES, *openai.ROUTES,
                             *openapi.ROUTES_OF_DOCUMENT))
    return app
