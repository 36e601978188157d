"""The outermost middleware: measures every request (refusals by the gate too), then writes
its access-log line and feeds the metrics.

What the generation did (model, tokens, time to first token) is filled in by the generation
core into the request's `RequestStats` (generation/stats.py), so no protocol adapter logs or
counts anything itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ollamalite.generation import stats
from ollamalite.generation.stats import RequestStats
from ollamalite.logs import FIELDS
from ollamalite.server.metrics import METRICS

access_log = logging.getLogger("ollamalite.access")

_REQUEST_LINE = ("method", "path", "status")  # written first, without their names
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: what the gate refuses is logged and counted too."""
    with stats.track() as tracked:
        status = 500  # an exception no inner middleware turned into a response
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_GONE
            raise
        finally:
            _log(request, status, tracked)
            metrics = request.app.get(METRICS)  # absent when OLLAMALITE_METRICS=0
            if metrics is not None:
                metrics.observe(request.path, status, tracked)


def access_fields(request: web.Request, status: int, tracked: RequestStats) -> dict[str, Any]:
    """The access log's fields: the keys of a JSON line."""
    ttft = None if tracked.ttft is None else round(tracked.ttft, 4)
    return {"method": request.method, "path": request.path, "status": status,
            "model": tracked.model or None, "prompt_tokens": tracked.prompt_tokens,
            "generated_tokens": tracked.generated_tokens, "ttft": ttft,
            "total": round(time.perf_counter() - tracked.started, 4),
            "client": request.remote}


def _log(request: web.Request, status: int, tracked: RequestStats) -> None:
    """`POST /api/chat 200 model=smollm2:135m prompt_tokens=31 ... client=127.0.0.1`: times in
    seconds, `-` for what the request did not have."""
    fields = access_fields(request, status, tracked)
    pairs = " ".join(f"{key}={'-' if value is None else value}" for key, value in fields.items()
                     if key not in _REQUEST_LINE)
    access_log.info("%s %s %d %s", request.method, request.path, status, pairs,
                    extra={FIELDS: fields})
