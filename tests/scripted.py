"""Response writers driven by scripted engine events, behind the real error middleware: the
wire format of a stream (NDJSON lines, SSE events, error lines) without a model."""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ollamalite.runtime.engine.jobs import Event
from ollamalite.server.app import errors_middleware


async def scripted(events: Iterable[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


async def post_once(respond: Callable[[web.Request], Awaitable[web.StreamResponse]],
                    path: str = "/") -> tuple[int, str, str]:
    """Status, Content-Type and body of one POST to an app whose only route is `respond`."""
    app = web.Application(middlewares=[errors_middleware])
    app.router.add_post(path, respond)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post(path)
        return resp.status, resp.headers["Content-Type"], await resp.text()
