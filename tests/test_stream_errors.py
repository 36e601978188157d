"""How the NDJSON writer reports engine failures: a status before the first byte, a final
`{"error"}` line after it. The engine is replaced by a scripted event source (pure logic)."""

from __future__ import annotations

import json
from typing import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ollamalite.engine.jobs import Event, Failed, TextChunk
from ollamalite.server.app import errors_middleware
from ollamalite.server.generation import GenerateShape, NativeRun
from ollamalite.server.ollama import _respond


def app_streaming(events: list[Event], stream: bool) -> web.Application:
    async def scripted() -> AsyncIterator[Event]:
        for event in events:
            yield event

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _respond(request, NativeRun(GenerateShape("m"), scripted(), stream, 0.0, 0.0))

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_post("/", handler)
    return app


async def fetch(app: web.Application) -> tuple[int, str, str]:
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/")
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_failure_after_first_chunk_is_a_final_error_line() -> None:
    status, ctype, body = await fetch(app_streaming([TextChunk("Hel", 1), Failed("boom")], True))
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and ctype == "application/x-ndjson"
    assert lines[0]["response"] == "Hel" and lines[0]["done"] is False
    assert lines[1:] == [{"error": "boom"}]


async def test_failure_before_any_output_is_a_real_status() -> None:
    for stream in (True, False):
        status, ctype, body = await fetch(app_streaming([Failed("boom")], stream))
        assert (status, json.loads(body)) == (500, {"error": "boom"})
        assert ctype.startswith("application/json")
