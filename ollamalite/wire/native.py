"""Wire schemas (marshmallow): every request body is loaded and checked here.

Unknown top-level fields are ignored, as Ollama does; wrong types are 400s naming the field.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, ClassVar, Mapping

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from ollamalite.durations import keep_alive_seconds
from ollamalite.options import STRING_OR_LIST, OptionsSchema, validate_options
from ollamalite.registry.names import NAME_RE
from ollamalite.wire import Body

ROLES = ("system", "user", "assistant", "tool")


class KeepAlive(fields.Field):
    """A number of seconds or a Go duration string; negative means forever."""

    json_schema: ClassVar[dict[str, Any]] = {"type": ["number", "string"]}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        try:
            return keep_alive_seconds(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


class Options(fields.Nested):
    """Ollama `options`, checked key by key by `validate_options` (unknown keys are logged and
    ignored), which loads them with `OptionsSchema`: nested here so the document shows it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(OptionsSchema, allow_none=True, **kwargs)

    def deserialize(self, value: Any, attr: str | None = None,
                    data: Mapping[str, Any] | None = None, **kwargs: Any) -> dict:
        """`null` is no options, as in Ollama (marshmallow would hand the handler None)."""
        return {} if value is None else super().deserialize(value, attr, data, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a valid mapping type.")
        return validate_options(value)


class Format(fields.Field):
    """`"json"`, a JSON-schema object, or empty (the schema itself is checked when it is
    turned into a grammar: `structured.grammar_for`)."""

    json_schema: ClassVar[dict[str, Any]] = {"anyOf": [{"enum": ["", "json"]},
                                                       {"type": "object"}]}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value in (None, ""):
            return None
        if value == "json" or isinstance(value, dict):
            return value
        raise ValidationError(f'invalid format: {value!r}; expected "json" or a valid JSON '
                              "Schema object")


class Think(fields.Field):
    json_schema: ClassVar[dict[str, Any]] = {"enum": [True, False, "high", "medium", "low",
                                                      "max"]}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or value in ("high", "medium", "low", "max"):
            return value
        raise ValidationError('must be a boolean or one of "high", "medium", "low", "max"')


class Base64(fields.String):
    """Standard base64 (padded, no `data:` prefix), as Go decodes Ollama's `[]byte` images.

    Checked while the body is loaded, so bad data is named before any capability check."""

    json_schema: ClassVar[dict[str, Any]] = {"type": "string", "format": "byte"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationError(f"illegal base64 data: {exc}") from None
        return text


class Base64List(fields.List):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(Base64(), **kwargs)


class ModelRequest(Body):
    """Fields shared by every request that names a model."""

    model = fields.String(load_default="")
    keep_alive = KeepAlive(load_default=None, allow_none=True)
    options = Options(load_default=dict)


class CompletionRequest(ModelRequest):
    stream = fields.Boolean(load_default=True)
    format = Format(load_default=None, allow_none=True)
    think = Think(load_default=None, allow_none=True)
    truncate = fields.Boolean(load_default=True)
    shift = fields.Boolean(load_default=True)
    logprobs = fields.Boolean(load_default=False)
    top_logprobs = fields.Integer(load_default=0, validate=validate.Range(min=0, max=20))


class GenerateRequest(CompletionRequest):
    prompt = fields.String(load_default="")
    suffix = fields.String(load_default="")
    system = fields.String(load_default=None, allow_none=True)
    template = fields.String(load_default=None, allow_none=True)
    context = fields.List(fields.Integer(strict=True), load_default=None, allow_none=True)
    raw = fields.Boolean(load_default=False)
    images = Base64List(load_default=None, allow_none=True)

    @validates_schema
    def _raw_mode(self, data: dict, **kwargs: Any) -> None:
        if data.get("raw") and (data.get("template") or data.get("system") or data.get("context")):
            raise ValidationError("raw mode does not support template, system, or context")

    @validates_schema
    def _infill_mode(self, data: dict, **kwargs: Any) -> None:
        if data.get("suffix") and (data.get("template") or data.get("system")):
            raise ValidationError("suffix (fill-in-the-middle) does not use a template or system")


class FunctionCall(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    arguments = fields.Dict(load_default=dict)


class ToolCall(Schema):
    """An assistant's earlier call, sent back in the conversation (arguments an object)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String()
    function = fields.Nested(FunctionCall, required=True)


class FunctionDef(Schema):
    """A tool's function; everything besides the name goes to the template as sent."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)


class Tool(Schema):
    class Meta:
        unknown = INCLUDE

    type = fields.String(load_default="function")
    function = fields.Nested(FunctionDef, required=True)


class Message(Schema):
    class Meta:
        unknown = EXCLUDE

    # Checked (after lower-casing) by _known_role; the enum is for the document.
    role = fields.String(required=True, metadata={"enum": list(ROLES)})
    content = fields.String(load_default="", allow_none=True)
    thinking = fields.String(load_default=None, allow_none=True)
    images = Base64List(load_default=None, allow_none=True)
    tool_calls = fields.List(fields.Nested(ToolCall), load_default=None, allow_none=True)
    tool_name = fields.String(load_default=None, allow_none=True)
    tool_call_id = fields.String(load_default=None, allow_none=True)

    @pre_load
    def _lower_role(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("role"), str):
            data = {**data, "role": data["role"].lower()}
        return data

    @validates_schema
    def _known_role(self, data: dict, **kwargs: Any) -> None:
        if data["role"] not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}", "role")


class ChatRequest(CompletionRequest):
    messages = fields.List(fields.Nested(Message), load_default=list)
    tools = fields.List(fields.Nested(Tool), load_default=None, allow_none=True)


class EmbedInput(fields.Field):
    """`/api/embed`'s `input`: a string (empty: nothing) or a list of strings, as a list."""

    json_schema: ClassVar[dict[str, Any]] = STRING_OR_LIST

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list:
        if value is None or value == "":
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ValidationError("invalid input type: expected a string or a list of strings")


class EmbedRequest(ModelRequest):
    input = EmbedInput(load_default=list, allow_none=True)
    truncate = fields.Boolean(load_default=True)
    dimensions = fields.Integer(strict=True, load_default=None, allow_none=True,
                                validate=validate.Range(min=1))


class EmbeddingsRequest(ModelRequest):
    """The legacy `/api/embeddings`: one `prompt`."""

    prompt = fields.String(load_default="")


class ShowRequest(ModelRequest):
    name = fields.String(load_default="")
    verbose = fields.Boolean(load_default=False)
    system = fields.String(load_default=None, allow_none=True)


class PullRequest(ShowRequest):
    insecure = fields.Boolean(load_default=False)
    stream = fields.Boolean(load_default=True)


class License(fields.Field):
    """A string or a list of strings, kept as a list."""

    json_schema: ClassVar[dict[str, Any]] = STRING_OR_LIST

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValidationError("must be a string or a list of strings")
        return [s for s in items if s]


class PresetMessage(Schema):
    """A `messages` entry of /api/create: a turn put before every conversation."""

    class Meta:
        unknown = EXCLUDE

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = fields.String(load_default="", allow_none=True)
    images = Base64List(load_default=None, allow_none=True)


def _new_name() -> fields.String:
    """A name a model is created, copied or deleted under: `names.is_valid` checks it where
    it is used; the pattern is for the document."""
    return fields.String(load_default="", metadata={"pattern": NAME_RE.pattern})


class CreateRequest(Body):
    model = _new_name()
    name = _new_name()
    stream = fields.Boolean(load_default=True)
    from_ = fields.String(data_key="from", load_default="")
    files = fields.Dict(fields.String(), fields.String(), load_default=None, allow_none=True)
    template = fields.String(load_default="", allow_none=True)
    system = fields.String(load_default="", allow_none=True)
    license = License(load_default=list, allow_none=True)
    parameters = fields.Dict(fields.String(), load_default=None, allow_none=True)
    messages = fields.List(fields.Nested(PresetMessage), load_default=None, allow_none=True)
    modelfile = fields.String(load_default="")  # the form before Ollama 0.5.5
    # Accepted by Ollama, refused here with a 400 rather than ignored:
    quantize = fields.String(load_default="")
    quantization = fields.String(load_default="")
    adapters = fields.Dict(load_default=None, allow_none=True)
    draft_files = fields.Dict(load_default=None, allow_none=True)
    remote_host = fields.String(load_default="")
    renderer = fields.String(load_default="")
    parser = fields.String(load_default="")
    requires = fields.String(load_default="")
    info = fields.Dict(load_default=None, allow_none=True)


class CopyRequest(Schema):
    class Meta:
        unknown = EXCLUDE

    source = _new_name()
    destination = _new_name()


class DeleteRequest(Schema):
    class Meta:
        unknown = EXCLUDE

    model = _new_name()
    name = _new_name()


GENERATE = GenerateRequest()
CHAT = ChatRequest()
SHOW = ShowRequest()
PULL = PullRequest()
CREATE = CreateRequest()
COPY = CopyRequest()
DELETE = DeleteRequest()
EMBED = EmbedRequest()
EMBEDDINGS = EmbeddingsRequest()
