"""Wire schemas per protocol (marshmallow): what a request may hold, loaded into plain dicts
(`native` for Ollama's /api, `openai` for /v1, `anthropic` for /v1/messages), `Body`, the base
of a whole request's schema, and `load`, which checks a body with any of them."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, pre_load

from ollamalite.errors import BadRequest, describe


class Body(Schema):
    """A whole request body: a JSON object (anything else is a 400 saying so, not a marshmallow
    type error); fields a schema does not know are ignored, as the APIs served here do."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def _reject_non_object(self, data: Any, **kwargs: Any) -> Any:
        if not isinstance(data, dict):
            raise ValidationError("request body must be a JSON object")
        return data


def load(schema: Schema, body: Any) -> dict[str, Any]:
    """Validate a decoded JSON body; errors become one readable 400 message."""
    try:
        return schema.load(body)
    except ValidationError as exc:
        raise BadRequest(describe(exc.messages)) from None
