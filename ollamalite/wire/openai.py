"""Wire schemas (marshmallow) of the OpenAI-compatible API under /v1.

They check types and ranges with OpenAI's field names, so a bad request is a 400 naming the
field the client sent; `server/openai.py` then translates the loaded request into Ollama's.
Unknown fields are ignored, as Ollama and OpenAI do; fields OpenAI defines but ollamalite cannot
honour (`n` > 1, `logit_bias`, `echo`, ...) are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from ollamalite.options import STRING_OR_LIST, StopField
from ollamalite.wire import Body
from ollamalite.wire.native import ROLES as NATIVE_ROLES

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "ultra", "max")
ROLES = (*NATIVE_ROLES, "developer")  # OpenAI's newer name for the system role


class _Lenient(Schema):
    class Meta:
        unknown = EXCLUDE


class Content(fields.Field):
    """A message's `content`: a string, a list of content parts (objects), or null."""

    json_schema: ClassVar[dict[str, Any]] = {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "object"}}]}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) for part in value):
            return value
        raise ValidationError("must be a string or a list of content parts")


class OneOrList(fields.Field):
    """A string, or a list of strings (OpenAI's `prompt` and `input`)."""

    json_schema: ClassVar[dict[str, Any]] = STRING_OR_LIST

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValidationError("must be a string or a list of strings")
        return items


class FunctionCall(_Lenient):
    name = fields.String(required=True)
    arguments = fields.String(load_default="{}")


class ToolCall(_Lenient):
    id = fields.String(load_default=None, allow_none=True)
    type = fields.String(load_default="function")
    function = fields.Nested(FunctionCall, required=True)


class ChatMessage(_Lenient):
    # Checked (after lower-casing) by server/openai.py; the enum is for the document.
    role = fields.String(required=True, metadata={"enum": list(ROLES)})
    content = Content(load_default=None, allow_none=True)
    name = fields.String(load_default=None, allow_none=True)
    reasoning = fields.String(load_default=None, allow_none=True)
    tool_calls = fields.List(fields.Nested(ToolCall), load_default=None, allow_none=True)
    tool_call_id = fields.String(load_default=None, allow_none=True)


class StreamOptions(_Lenient):
    include_usage = fields.Boolean(load_default=False)


class JsonSchemaFormat(_Lenient):
    name = fields.String(load_default=None, allow_none=True)
    schema = fields.Dict(load_default=None, allow_none=True)


class ResponseFormat(_Lenient):
    type = fields.String(required=True,
                         validate=validate.OneOf(("text", "json_object", "json_schema")))
    json_schema = fields.Nested(JsonSchemaFormat, load_default=None, allow_none=True)


class Reasoning(_Lenient):
    effort = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(EFFORTS))


def _optional(field: type[fields.Field], **kw: Any) -> fields.Field:
    return field(load_default=None, allow_none=True, **kw)


def _only(value: Any, message: str) -> validate.Validator:
    return validate.Equal(value, error=message)


class GenerationRequest(Body):
    """Fields every /v1 generation request has (/v1/responses too)."""

    model = fields.String(load_default="")
    stream = fields.Boolean(load_default=False, allow_none=True)
    temperature = _optional(fields.Float, validate=validate.Range(min=0, max=2))
    top_p = _optional(fields.Float, validate=validate.Range(min=0, max=1))


class SamplingRequest(GenerationRequest):
    """Fields /v1/chat/completions and /v1/completions share."""

    stream_options = fields.Nested(StreamOptions, load_default=None, allow_none=True)
    max_tokens = _optional(fields.Integer, validate=validate.Range(min=1))
    frequency_penalty = _optional(fields.Float, validate=validate.Range(min=-2, max=2))
    presence_penalty = _optional(fields.Float, validate=validate.Range(min=-2, max=2))
    seed = _optional(fields.Integer)
    stop = StopField(load_default=None, allow_none=True)
    n = _optional(fields.Integer, validate=_only(1, "only n=1 is supported"))
    logit_bias = _optional(fields.Dict, validate=validate.Length(
        max=0, error="not supported"))


class ChatCompletionRequest(SamplingRequest):
    messages = fields.List(fields.Nested(ChatMessage), required=True, validate=validate.Length(
        min=1, error="[] is too short - 'messages'"))
    max_completion_tokens = _optional(fields.Integer, validate=validate.Range(min=1))
    response_format = fields.Nested(ResponseFormat, load_default=None, allow_none=True)
    tools = _optional(fields.List, cls_or_instance=fields.Dict())
    tool_choice = fields.Raw(load_default=None, allow_none=True)
    reasoning_effort = _optional(fields.String, validate=validate.OneOf(EFFORTS))
    reasoning = fields.Nested(Reasoning, load_default=None, allow_none=True)
    logprobs = _optional(fields.Boolean)
    top_logprobs = _optional(fields.Integer, validate=validate.Range(min=0, max=20))


class CompletionRequest(SamplingRequest):
    prompt = OneOrList(load_default=list, validate=validate.Length(
        max=1, error="only one prompt per request is supported"))
    suffix = _optional(fields.String)
    echo = _optional(fields.Boolean, validate=_only(False, "not supported"))
    best_of = _optional(fields.Integer, validate=_only(1, "only best_of=1 is supported"))
    logprobs = _optional(fields.Integer, validate=validate.Range(min=0, max=5))


class EmbeddingRequest(_Lenient):
    model = fields.String(load_default="")
    input = OneOrList(required=True, validate=validate.Length(min=1, error="invalid input"))
    dimensions = _optional(fields.Integer, validate=validate.Range(min=1))
    encoding_format = fields.String(load_default="float", validate=validate.OneOf(
        ("float", "base64"),
        error="Invalid value for 'encoding_format' = {input}. Supported values: "
              "['float', 'base64']."))


# -- /v1/responses --------------------------------------------------------------------------------

class InputItem(_Lenient):
    """One item of a Responses `input`: a message (`type` may be left out when `role` is
    set), a function call, its output, or an earlier reasoning; server/responses.py tells
    them apart."""

    type = _optional(fields.String)
    role = _optional(fields.String)
    content = Content(load_default=None, allow_none=True)
    call_id = _optional(fields.String)
    name = _optional(fields.String)
    arguments = _optional(fields.String)
    output = Content(load_default=None, allow_none=True)
    summary = _optional(fields.List, cls_or_instance=fields.Dict())


class ResponseInput(fields.Field):
    """`input`: a string (one user message) or a list of items."""

    json_schema: ClassVar[dict[str, Any]] = {"anyOf": [
        {"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]}
    _items = fields.List(fields.Nested(InputItem))

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError("must be a string or a list of input items")
        if not value:
            raise ValidationError("[] is too short - 'input'")
        return self._items.deserialize(value, attr, data, **kwargs)


class TextFormat(_Lenient):
    """`text.format`: flat, unlike chat's `response_format` (no `json_schema` wrapper)."""

    type = fields.String(required=True,
                         validate=validate.OneOf(("text", "json_object", "json_schema")))
    name = _optional(fields.String)
    schema = _optional(fields.Dict)
    strict = _optional(fields.Boolean)


class TextConfig(_Lenient):
    format = fields.Nested(TextFormat, load_default=None, allow_none=True)


def _stateless(value: Any) -> None:
    """Any value: nothing is stored to continue from."""
    raise ValidationError("not supported: responses are not stored, send the whole "
                          "conversation as input")


class ResponsesRequest(GenerationRequest):
    """/v1/responses, stateless as Ollama's: what needs stored responses is refused."""

    input = ResponseInput(required=True)
    instructions = _optional(fields.String)
    max_output_tokens = _optional(fields.Integer, validate=validate.Range(min=1))
    tools = _optional(fields.List, cls_or_instance=fields.Dict())
    tool_choice = fields.Raw(load_default=None, allow_none=True)
    parallel_tool_calls = fields.Boolean(load_default=True, allow_none=True)
    text = fields.Nested(TextConfig, load_default=None, allow_none=True)
    reasoning = fields.Nested(Reasoning, load_default=None, allow_none=True)
    metadata = _optional(fields.Dict)
    include = _optional(fields.List, cls_or_instance=fields.String())
    top_logprobs = _optional(fields.Integer, validate=validate.Range(min=0, max=20))
    previous_response_id = _optional(fields.String, validate=_stateless)
    conversation = fields.Raw(load_default=None, allow_none=True, validate=_stateless)
    background = _optional(fields.Boolean, validate=_only(False, "not supported"))


CHAT = ChatCompletionRequest()
COMPLETION = CompletionRequest()
EMBEDDING = EmbeddingRequest()
RESPONSES = ResponsesRequest()
