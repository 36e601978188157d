"""How the NDJSON writer reports engine failures: a status before the first byte, a final
`{"error"}` line after it. The engine is replaced by a scripted event source (pure logic)."""

from __future__ import annotations

import json

from aiohttp import web

from ollamalite.generation.run import Generation
from ollamalite.runtime.engine.jobs import Event, Failed, TextChunk
from ollamalite.server.ollama import GenerateShape, respond
from tests.scripted import post_once, scripted


async def fetch(events: list[Event], stream: bool) -> tuple[int, str, str]:
    async def write(request: web.Request) -> web.StreamResponse:
        return await respond(request, Generation("m", scripted(events), 0.0, 0.0),
                             GenerateShape("m"), stream)
    return await post_once(write)


async def test_failure_after_first_chunk_is_a_final_error_line() -> None:
    status, ctype, body = await fetch([TextChunk("Hel", 1), Failed("boom")], True)
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and ctype == "application/x-ndjson"
    assert lines[0]["response"] == "Hel" and lines[0]["done"] is False
    assert lines[1:] == [{"error": "boom"}]


async def test_failure_before_any_output_is_a_real_status() -> None:
    for stream in (True, False):
        status, ctype, body = await fetch([Failed("boom")], stream)
        assert (status, json.loads(body)) == (500, {"error": "boom"})
        assert ctype.startswith("application/json")
