"""Wire schemas (marshmallow) of Anthropic's Messages API (/v1/messages, its count_tokens).

They check types and ranges with Anthropic's field names, so a bad request is a 400 naming the
field the client sent; `server/anthropic.py` then maps the loaded request to the internal one.
Unknown fields (`metadata`, `service_tier`, `cache_control` on blocks, ...) are ignored, as
Anthropic's compatible servers do. Content blocks are checked per `type` here; a type the
adapter cannot map is refused there, by name.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from ollamalite.wire import Body

# `system` inside `messages`: Claude Code sends one after user turns (a beta Anthropic offers).
ROLES = ("user", "assistant", "system")


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


def _optional(field: type[fields.Field], **kw: Any) -> fields.Field:
    return field(load_default=None, allow_none=True, **kw)


class Blocks(fields.Field):
    """`content` or `system`: a string, or a list of blocks (objects with a string `type`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(b, dict) and isinstance(b.get("type"), str)
                                           for b in value):
            return value
        raise ValidationError("must be a string or a list of content blocks with a type")


class TextBlock(_Lenient):
    text = fields.String(required=True)


class ImageSource(_Lenient):
    type = fields.String(required=True, validate=validate.OneOf(("base64", "url")))
    media_type = _optional(fields.String)
    data = _optional(fields.String)
    url = _optional(fields.String)


class ImageBlock(_Lenient):
    source = fields.Nested(ImageSource, required=True)


class ToolUseBlock(_Lenient):
    id = fields.String(required=True)
    name = fields.String(required=True)
    input = fields.Dict(load_default=dict)


class ToolResultBlock(_Lenient):
    tool_use_id = fields.String(required=True)
    content = Blocks(load_default="")
    is_error = _optional(fields.Boolean)


class ThinkingBlock(_Lenient):
    thinking = fields.String(required=True)
    signature = _optional(fields.String)


class RedactedThinkingBlock(_Lenient):
    data = _optional(fields.String)


# The request blocks the adapter maps, by `type`; others (`document`, ...) are refused.
BLOCKS: dict[str, Schema] = {
    "text": TextBlock(), "image": ImageBlock(), "tool_use": ToolUseBlock(),
    "tool_result": ToolResultBlock(), "thinking": ThinkingBlock(),
    "redacted_thinking": RedactedThinkingBlock()}


class Message(_Lenient):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = Blocks(required=True)


class Tool(_Lenient):
    """A client tool; a server tool (`web_search_20250305`, ...) is refused by the adapter."""

    name = fields.String(required=True, validate=validate.Length(min=1))
    description = _optional(fields.String)
    input_schema = fields.Dict(load_default=dict)
    type = _optional(fields.String)


class ToolChoice(_Lenient):
    type = fields.String(required=True, validate=validate.OneOf(("auto", "any", "tool", "none")))
    name = _optional(fields.String)


class Thinking(_Lenient):
    type = fields.String(required=True,
                         validate=validate.OneOf(("enabled", "disabled", "adaptive")))
    budget_tokens = _optional(fields.Integer, validate=validate.Range(min=1))


class CountTokensRequest(Body):
    """What the prompt is made of: count_tokens takes just this."""

    model = fields.String(required=True, validate=validate.Length(min=1))
    messages = fields.List(fields.Nested(Message), required=True, validate=validate.Length(
        min=1, error="at least one message is required"))
    system = _optional(Blocks)
    tools = _optional(fields.List, cls_or_instance=fields.Nested(Tool))
    tool_choice = fields.Nested(ToolChoice, load_default=None, allow_none=True)
    thinking = fields.Nested(Thinking, load_default=None, allow_none=True)


class MessagesRequest(CountTokensRequest):
    # 0 evaluates the prompt only: Anthropic's way to warm its cache (and our prefix cache)
    max_tokens = fields.Integer(required=True, validate=validate.Range(min=0))
    stream = fields.Boolean(load_default=False, allow_none=True)
    stop_sequences = _optional(fields.List, cls_or_instance=fields.String())
    temperature = _optional(fields.Float, validate=validate.Range(min=0, max=1))
    top_p = _optional(fields.Float, validate=validate.Range(min=0, max=1))
    top_k = _optional(fields.Integer, validate=validate.Range(min=0))


MESSAGES = MessagesRequest()
COUNT_TOKENS = CountTokensRequest()
