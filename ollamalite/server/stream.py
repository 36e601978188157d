"""NDJSON responses: one compact JSON object per line, flushed as each line is written.

The response starts on the first line, so an error before any output still gets a real status.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

NDJSON = "application/x-ndjson"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status,
                        content_type="application/json", charset="utf-8")


def created_at() -> str:
    """RFC 3339 with nanosecond-style fraction and `Z`, as Ollama writes `created_at`."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_time(ts: float) -> str:
    """Ollama writes `modified_at`/`expires_at` in the server's local time with its offset."""
    return datetime.fromtimestamp(ts).astimezone().isoformat()


class NdjsonStream:
    """Writes lines to a StreamResponse that is prepared lazily on the first line."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def send(self, obj: Any) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await self.response.prepare(self.request)
        await self.response.write(dumps(obj) + b"\n")

    async def close(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write_eof()
        return self.response
