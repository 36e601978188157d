"""Streamed responses: Ollama's NDJSON (one compact JSON object per line), OpenAI's
server-sent events (`data: {json}` and a blank line) and Anthropic's named ones (an `event:`
line first), each flushed as it is written.

The response starts on the first object, so an error before any output still gets a real status;
a started stream is kept on its request (`STREAM`), so an error after that can end it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timezone
from typing import Any, AsyncIterator, TypeVar

from aiohttp import web

T = TypeVar("T")
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"


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

    content_type = NDJSON

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    def frame(self, obj: Any) -> bytes:
        return dumps(obj) + b"\n"

    async def write(self, data: bytes) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": self.content_type})
            await self.response.prepare(self.request)
            self.request[STREAM] = self
        await self.response.write(data)

    async def send(self, obj: Any) -> None:
        await self.write(self.frame(obj))

    async def close(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write_eof()
        return self.response

    async def fail(self, error: Any) -> web.StreamResponse:
        """Ends a started stream with one error object: the status is sent already, and a
        second response would corrupt the stream. A client gone meanwhile is not an error."""
        with contextlib.suppress(ConnectionResetError):
            await self.send(error)
            return await self.close()
        assert self.response is not None
        return self.response


STREAM = web.RequestKey("stream", NdjsonStream)


class SseStream(NdjsonStream):
    """OpenAI's streams: each object is one `data:` event; `done()` sends `data: [DONE]`."""

    content_type = EVENT_STREAM

    def frame(self, obj: Any) -> bytes:
        return b"data: " + dumps(obj) + b"\n\n"

    async def done(self) -> web.StreamResponse:
        await self.write(b"data: [DONE]\n\n")
        return await self.close()


class EventStream(SseStream):
    """Anthropic's and OpenAI's Responses streams: each object is an event named by its
    `type` (`event: <type>` before its `data:`), which is how the SDKs dispatch them; there is
    no `[DONE]`. A payload without a `type` (OpenAI's error object) is a bare `data:` event."""

    def frame(self, obj: Any) -> bytes:
        kind = obj.get("type") if isinstance(obj, dict) else None
        data = super().frame(obj)
        return b"event: " + kind.encode() + b"\n" + data if isinstance(kind, str) else data


async def heartbeat(items: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """`items`, with a None whenever `interval` seconds pass without one: the moments to send
    a keep-alive while the model evaluates a long prompt. Close it (`aclosing`): the pending
    item is then cancelled and awaited, so a client gone stops the work, and `items` can be
    closed after it."""
    iterator = aiter(items)
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
