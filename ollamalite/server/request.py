"""What every handler does with its request: read the JSON body, name the model, reach the
scheduler."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ollamalite.errors import BadRequest
from ollamalite.runtime.scheduler import Scheduler
from ollamalite.server.keys import SCHEDULER


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("missing request body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("invalid JSON: nested too deeply") from None


def require_model(req: dict[str, Any]) -> str:
    name = req.get("model") or req.get("name")
    if not name:
        raise BadRequest("model is required")
    return name


def scheduler_of(request: web.Request) -> Scheduler:
    return request.app[SCHEDULER]
