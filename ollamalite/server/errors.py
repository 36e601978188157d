"""How an error looks on the wire: Anthropic's envelope under /v1/messages, OpenAI's elsewhere
under /v1, Ollama's `{"error"}` everywhere else.

One home for the shape, so the error middleware, a stream's last line and the gate's refusals
(401, 413) all answer a client in the protocol it speaks.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ollamalite.server import anthropic, openai
from ollamalite.server.openapi import api_of
from ollamalite.server.stream import json_response


def error_body(request: web.Request, status: int, message: str) -> dict[str, Any]:
    api = api_of(request.path)
    if api == "anthropic":
        return anthropic.error_body(status, message)
    if api == "openai":
        return openai.error_body(status, message)
    return {"error": message}


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    return json_response(error_body(request, status, message), status=status)
