"""Wire schemas per protocol (marshmallow): what a request may hold, loaded into plain dicts
(`native` for Ollama's /api, `openai` for /v1), and `load`, which checks a body with any of
them."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from ollamalite.errors import BadRequest, describe


def load(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a decoded JSON body; errors become one readable 400 message."""
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise BadRequest(describe(exc.messages)) from None
