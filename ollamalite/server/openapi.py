"""The routes, declared once, and the OpenAPI 3.1 document made from them.

Each routes module lists its endpoints as `Route`s: `add_routes` hands them to aiohttp's router
and remembers them, and `document` describes the same list, with the request body of each taken
from the marshmallow schema that loads it (through apispec). A route cannot be served without
being documented, and the tests compare the router with the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.openapi import OpenAPIConverter
from marshmallow import Schema, fields

from ollamalite import __version__
from ollamalite.server.stream import EVENT_STREAM, NDJSON, json_response

JSON = "application/json"
TEXT = "text/plain"
OCTETS = "application/octet-stream"
OPENAI_PREFIX = "/v1/"
ANTHROPIC_PREFIX = "/v1/messages"

# What each error status means, whichever route answers it.
_ERROR_MEANINGS = {
    400: "The request is invalid: unreadable JSON, a wrong field, a bad name or value.",
    401: "The server needs an API key (OLLAMALITE_API_KEY) and got none or another.",
    404: "The model (or blob) does not exist.",
    413: "The body is larger than OLLAMALITE_MAX_BODY (OLLAMALITE_MAX_UPLOAD for a blob).",
    500: "The model failed to load or to run.",
    502: "The download source failed or answered wrongly.",
    503: "The server is busy (queue full, shutting down); `Retry-After` says when to retry.",
    507: "Not enough disk space for the upload.",
}
_OLLAMA_ERROR = {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string"}}}
_OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_ANTHROPIC_ERROR = {"type": "object", "required": ["type", "error"], "properties": {
    "type": {"const": "error"}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}}}
_ERROR_SCHEMAS = {"ollama": "OllamaError", "openai": "OpenAIError",
                  "anthropic": "AnthropicError"}
_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Reply:
    """A success status, what it means, and the media types its body may have (none: empty)."""

    status: int
    description: str
    media: tuple[str, ...] = (JSON,)


OK = (Reply(200, "Success."),)
EMPTY_OK = (Reply(200, "Done; the body is empty.", ()),)
STREAMED = (Reply(200, "One JSON object, or a stream when `stream` is true.", (JSON, NDJSON)),)
SSE = (Reply(200, "One JSON object, or server-sent events when `stream` is true.",
             (JSON, EVENT_STREAM)),)
MODEL_ERRORS = (400, 404)
RUN_ERRORS = (400, 404, 500, 503)


@dataclass(frozen=True)
class Route:
    """One endpoint: what aiohttp calls, and what the document says about it. `body` is the
    schema that loads its JSON body; `upload` means a raw byte body instead; `params` gives
    the JSON Schema of a path parameter that is not just any string."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: Schema | None = None
    replies: tuple[Reply, ...] = OK
    errors: tuple[int, ...] = ()
    upload: bool = False
    params: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        """aiohttp answers HEAD wherever it answers GET, and so does the document."""
        return (self.method, "HEAD") if self.method == "GET" else (self.method,)


ROUTES = web.AppKey("routes", tuple)


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Serve `routes` (a GET answers HEAD too) and keep them for the document."""
    routes = tuple(routes)
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path, route.handler)
    app[ROUTES] = (*app.get(ROUTES, ()), *routes)


def api_of(path: str) -> str:
    """The API a path belongs to, which picks its error shape: `anthropic` under /v1/messages,
    `openai` elsewhere under /v1, `ollama` everywhere else."""
    if path.startswith(ANTHROPIC_PREFIX):
        return "anthropic"
    return "openai" if path.startswith(OPENAI_PREFIX) else "ollama"


def document(routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    plugin = MarshmallowPlugin(schema_name_resolver=_component_name)
    spec = APISpec(title="ollamalite", version=__version__, openapi_version="3.1.0",
                   plugins=[plugin], info={"description": (
                       "The Ollama REST API (/api), its OpenAI-compatible API (/v1) and "
                       "Anthropic's Messages API (/v1/messages), served by ollamalite over "
                       "llama.cpp.")})
    assert plugin.converter is not None  # set by APISpec
    plugin.converter.add_attribute_function(_declared_schema)
    spec.components.schema("OllamaError", _OLLAMA_ERROR)
    spec.components.schema("OpenAIError", _OPENAI_ERROR)
    spec.components.schema("AnthropicError", _ANTHROPIC_ERROR)
    for route in routes:
        spec.path(path=_PATH_PARAM.sub(r"{\1}", route.path),
                  operations={m.lower(): _operation(route, m) for m in route.methods})
    return spec.to_dict()


def _component_name(schema: type[Schema] | Schema) -> str:
    """`native.ToolCall` and `openai.ToolCall` are different schemas: name them apart."""
    cls = schema if isinstance(schema, type) else type(schema)
    return f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}"


def _declared_schema(self: OpenAPIConverter, field: fields.Field, **kwargs: Any
                     ) -> dict[str, Any]:
    """A custom wire field says what JSON it takes in `json_schema` (apispec sees only that it
    is some field); null is added where the field allows it."""
    schema = getattr(field, "json_schema", None)
    if schema is None:
        return {}
    if not field.allow_none:
        return dict(schema)
    return {"anyOf": [*schema.get("anyOf", [schema]), {"type": "null"}]}


def _operation(route: Route, method: str) -> dict[str, Any]:
    api = api_of(route.path)
    error = _ERROR_SCHEMAS[api]
    bodies = method != "HEAD"
    responses = {str(r.status): _response(r.description, r.media if bodies else ())
                 for r in route.replies}
    responses.update({str(status): _response(_ERROR_MEANINGS[status], (JSON,) if bodies else (),
                                              error) for status in _errors(route)})
    operation: dict[str, Any] = {"summary": route.summary, "tags": [api],
                                 "responses": responses}
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": route.params.get(name, {"type": "string"})}
                  for name in _PATH_PARAM.findall(route.path)]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {JSON: {"schema": route.body}}}
    elif route.upload:
        operation["requestBody"] = {"required": True, "content": {
            OCTETS: {"schema": {"type": "string", "format": "binary"}}}}
    return operation


def _errors(route: Route) -> list[int]:
    """The route's own error statuses, and the gate's: 401 everywhere but `/` (gate._open), 413
    wherever a body is read."""
    gate = [*([401] if route.path != "/" else []), *([413] if route.body or route.upload else [])]
    return sorted({*route.errors, *gate})


def _response(description: str, media: tuple[str, ...], error: str | None = None
              ) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{error}"} if error else {}
    return {"description": description,
            **({"content": {m: {"schema": schema} for m in media}} if media else {})}


async def serve_document(request: web.Request) -> web.Response:
    return json_response(document(request.app[ROUTES]))


ROUTES_OF_DOCUMENT = (Route("GET", "/api/openapi.json", serve_document,
                            "This document: every route, its request body and its replies."),)
