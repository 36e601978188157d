"""What every handler does with its request: read the JSON body, name the model, reach the
scheduler."""

from __future__ import annotations

import asyncio
import json
import json.scanner
from typing import Any

from aiohttp import web

from ollamalite.errors import ApiError, BadRequest
from ollamalite.runtime.scheduler import Scheduler
from ollamalite.server.keys import SCHEDULER, SETTINGS

PARSE_INLINE_MAX = 1 << 20  # bodies up to this size parse on the event loop (well under 10 ms)


async def read_body(request: web.Request) -> Any:
    raw = await _read(request)
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        if len(raw) <= PARSE_INLINE_MAX:
            return json.loads(raw)
        return await asyncio.to_thread(parse_yielding, raw)
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # also a number past Python's int digit limit, beside bad JSON
        raise BadRequest(f"invalid JSON: {exc}") from None


async def _read(request: web.Request) -> bytes:
    """The body, up to OLLAMALITE_MAX_BODY (aiohttp's `client_max_size`); a body announced
    larger is refused before any of it is read."""
    limit = request.app[SETTINGS].max_body
    too_large = ApiError(f"request body too large: the limit is {limit} bytes "
                         "(OLLAMALITE_MAX_BODY)", status=413)
    if (request.content_length or 0) > limit:
        raise too_large
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None


def parse_yielding(raw: bytes) -> Any:
    """`json.loads`, for a thread: json's C scanner holds the GIL for a whole document, so it
    would stall the event loop from any thread; the Python scanner lets the loop run between
    values. Strings are still scanned in C, so a body of base64 images parses as fast."""
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def require_model(req: dict[str, Any]) -> str:
    name = req.get("model") or req.get("name")
    if not name:
        raise BadRequest("model is required")
    return name


def scheduler_of(request: web.Request) -> Scheduler:
    return request.app[SCHEDULER]
