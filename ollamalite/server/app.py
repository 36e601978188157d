"""The aiohttp application: the gate (gate.py), the errors middleware, routes, scheduler
lifecycle."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from ollamalite.errors import ApiError
from ollamalite.pull.download import Limits
from ollamalite.pull.puller import Puller, Register
from ollamalite.registry.blobs import BlobStore
from ollamalite.registry.gguf_header import file_digest
from ollamalite.registry.library import Library
from ollamalite.registry.models_file import ModelsFile, Registry
from ollamalite.runtime.scheduler import Scheduler
from ollamalite.server import (anthropic, gate, metrics, models, observe, ollama, openai, openapi,
                               responses)
from ollamalite.server.errors import error_body, error_response
from ollamalite.server.keys import LIBRARY, PULLER, SCHEDULER, SETTINGS
from ollamalite.server.stream import STREAM
from ollamalite.settings import Settings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SHUTDOWN_GRACE_S = 2.0
INTERNAL_ERROR = "internal error"  # the details go to the log, not to the client


def _router_error(request: web.Request, status: int, text: str) -> web.Response:
    """Unknown path or method: Ollama's router answers plain text; /v1 clients expect JSON."""
    if openapi.api_of(request.path) != "ollama":
        return error_response(request, status, text)
    return web.Response(status=status, text=text)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as its API's error object (or Ollama's plain-text 404/405)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return await _failed(request, exc.status, exc.message, exc.headers)
    except web.HTTPNotFound:
        return _router_error(request, 404, "404 page not found")
    except web.HTTPMethodNotAllowed:
        return _router_error(request, 405, "405 method not allowed")
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        log.info("%s %s: client disconnected", request.method, request.path)
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return await _failed(request, 500, INTERNAL_ERROR)


async def _failed(request: web.Request, status: int, message: str,
                  headers: dict[str, str] | None = None) -> web.StreamResponse:
    """An error response; or, once a stream has started (its status is sent), the stream's
    last line, never a second response."""
    stream = request.get(STREAM)
    if stream is not None:
        return await stream.fail(error_body(request, status, message))
    response = error_response(request, status, message)
    response.headers.update(headers or {})
    return response


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
    app = web.Application(middlewares=[observe.observe, *gate.middlewares(settings),
                                       errors_middleware],
                          client_max_size=settings.max_body)
    app[SETTINGS] = settings
    app[SCHEDULER] = Scheduler(settings, registry)
    app[LIBRARY] = Library(settings, ModelsFile(registry.path), registry,
                           app[SCHEDULER].set_registry)
    app[PULLER] = Puller(settings.models_dir, _registrar(app[LIBRARY]),
                         Limits(settings.max_download, settings.pull_private))
    app.cleanup_ctx.append(_scheduler_ctx)
    app.on_shutdown.append(_finish_requests)
    app.on_response_prepare.append(gate.add_cors_headers)
    app[models.BLOBS] = BlobStore(settings)
    openapi.add_routes(app, (*ollama.ROUTES, *models.ROUTES, *openai.ROUTES, *responses.ROUTES,
                             *anthropic.ROUTES,
                             *openapi.ROUTES_OF_DOCUMENT))
    metrics.add_routes(app)
    return app
